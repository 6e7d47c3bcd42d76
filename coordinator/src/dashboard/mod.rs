//! The dashboard's figures: what the page at `/` of `--metrics-listen` shows, as one JSON
//! frame per update.
//!
//! Three sources, none inside the state's lock for longer than a Stats call:
//! - counts, limits, workers and the bill come from the same Stats and ListWorkers snapshots
//!   the RPCs return (so the page agrees with them), read once per update for every open
//!   page together;
//! - times per function (schedule-to-start, execution) and the latest failures come out of
//!   the state's observations, recorded by the driver after the lock is let go, with a few
//!   relaxed atomic additions per task;
//! - the history (pending, running and the concurrency limits over the last minutes) is kept
//!   here, one point per update, bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use carpool_proto::{pb, unix_ms};
use serde_json::{Value, json};

use crate::billing;
use crate::state::Observation;

/// Failures the page lists (the latest).
pub(crate) const FAILURES_KEPT: usize = 20;
/// Points of history kept (at two updates a second: five minutes).
pub(crate) const HISTORY_POINTS: usize = 600;
/// Points of history each update carries (a page that missed a few updates fills its gap).
const HISTORY_PER_UPDATE: usize = 4;
/// Workers listed on the page (the rest are counted).
const WORKERS_LISTED: usize = 200;
/// Functions listed on the page, the busiest first (the rest are counted).
const FUNCTIONS_LISTED: usize = 50;
/// Functions whose limits the history keeps, the busiest first.
const FUNCTIONS_CHARTED: usize = 8;
/// Updates a rate is measured over (five seconds).
const RATE_POINTS: usize = 10;
/// Functions whose times are kept (the state admits at most `--max-functions`; this bounds
/// the recorder whatever that is).
const FUNCTIONS_TIMED: usize = 4096;
/// Sub-buckets per doubling of a [`Times`] histogram: percentiles within 1/8 (12.5 %).
const SUB_BUCKETS: u64 = 8;
/// Buckets of a [`Times`] histogram: exact below 16 ms, then 8 per doubling up to 2^44 ms.
const TIME_BUCKETS: usize = 16 + 40 * SUB_BUCKETS as usize;

/// A log-linear histogram of whole milliseconds, recorded with two relaxed atomic additions
/// and no lock.
#[derive(Debug)]
struct Times {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
}

impl Default for Times {
    fn default() -> Self {
        Self {
            buckets: (0..TIME_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
        }
    }
}

/// The bucket of `ms`: exact below 16, then [`SUB_BUCKETS`] per doubling.
fn bucket_of(ms: u64) -> usize {
    if ms < 16 {
        return ms as usize;
    }
    let exp = u64::from(63 - ms.leading_zeros()); // ≥ 4
    let sub = (ms >> (exp - 3)) & (SUB_BUCKETS - 1);
    let i = 16 + (exp - 4) * SUB_BUCKETS + sub;
    (i as usize).min(TIME_BUCKETS - 1)
}

/// The largest value bucket `i` holds.
fn bucket_top(i: usize) -> u64 {
    if i < 16 {
        return i as u64;
    }
    let j = (i - 16) as u64;
    let exp = 4 + j / SUB_BUCKETS;
    let sub = j % SUB_BUCKETS;
    // Values with this exponent and sub-bucket: (8 + sub) << (exp - 3) up to the next less one.
    ((SUB_BUCKETS + sub + 1) << (exp - 3)) - 1
}

/// The middle of bucket `i`.
fn bucket_middle(i: usize) -> u64 {
    let low = if i == 0 { 0 } else { bucket_top(i - 1) + 1 };
    low + (bucket_top(i) - low) / 2
}

impl Times {
    fn observe(&self, ms: u64) {
        self.buckets[bucket_of(ms)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The values at quantiles `qs` (each the middle of the bucket it falls in: within a
    /// sixteenth of the true figure), and how many were recorded; `None` with nothing
    /// recorded.
    fn quantiles(&self, qs: &[f64]) -> Option<(Vec<u64>, u64)> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let out = qs
            .iter()
            .map(|q| {
                let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
                let mut seen = 0;
                for (i, n) in counts.iter().enumerate() {
                    seen += n;
                    if seen >= rank {
                        return bucket_middle(i);
                    }
                }
                bucket_middle(TIME_BUCKETS - 1)
            })
            .collect();
        Some((out, total))
    }

    fn json(&self) -> Value {
        match self.quantiles(&[0.5, 0.95, 0.99]) {
            Some((q, n)) => json!({ "n": n, "p50": q[0], "p95": q[1], "p99": q[2] }),
            None => json!({ "n": 0 }),
        }
    }
}

/// The times of one function's tasks.
#[derive(Debug, Default)]
struct FunctionTimes {
    to_start: Times,
    execution: Times,
}

/// One failed task, as the page lists it.
#[derive(Debug, Clone)]
struct Failure {
    at_unix_ms: u64,
    function: Arc<str>,
    task_id: u64,
    worker_id: String,
    error: String,
}

/// What the state's observations bring the dashboard: times per function, the latest
/// failures. Held by the driver, which records every event's observations here.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    times: RwLock<HashMap<Arc<str>, Arc<FunctionTimes>>>,
    failures: Mutex<VecDeque<Failure>>,
}

impl Recorder {
    /// Records what one event observed.
    /// A batch of results is one function's: its times are looked up once for the run of
    /// observations that shares it, not once per task.
    pub(crate) fn observe(&self, observed: &[Observation]) {
        let mut last: Option<(&Arc<str>, Arc<FunctionTimes>)> = None;
        for o in observed {
            match o {
                Observation::Finished {
                    function,
                    to_start_ms,
                    execution_ms,
                    ..
                } => {
                    let times = match &last {
                        Some((f, t)) if Arc::ptr_eq(f, function) || f == &function => t.clone(),
                        _ => {
                            let Some(t) = self.times_of(function) else {
                                continue;
                            };
                            last = Some((function, t.clone()));
                            t
                        }
                    };
                    if let Some(ms) = to_start_ms {
                        times.to_start.observe(*ms);
                    }
                    if let Some(ms) = execution_ms {
                        times.execution.observe(*ms);
                    }
                }
                Observation::Failed {
                    function,
                    task_id,
                    worker_id,
                    error,
                } => {
                    let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
                    if failures.len() == FAILURES_KEPT {
                        failures.pop_front();
                    }
                    failures.push_back(Failure {
                        at_unix_ms: unix_ms(),
                        function: function.clone(),
                        task_id: *task_id,
                        worker_id: worker_id.clone(),
                        error: error.clone(),
                    });
                }
                _ => {}
            }
        }
    }

    /// The times of `function`, made on its first task; `None` past [`FUNCTIONS_TIMED`].
    fn times_of(&self, function: &Arc<str>) -> Option<Arc<FunctionTimes>> {
        if let Some(t) = self
            .times
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(function)
        {
            return Some(t.clone());
        }
        let mut times = self.times.write().unwrap_or_else(PoisonError::into_inner);
        if times.len() >= FUNCTIONS_TIMED && !times.contains_key(function) {
            return None;
        }
        Some(times.entry(function.clone()).or_default().clone())
    }
}

/// One point of history: per function, pending, running and its live workers' limits.
#[derive(Debug, Clone)]
struct Point {
    seq: u64,
    at_unix_ms: u64,
    /// Pending and running over every function.
    pending: u64,
    running: u64,
    /// The busiest functions' figures.
    functions: Vec<(String, FunctionPoint)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct FunctionPoint {
    pending: u64,
    running: u64,
    workers: u32,
    limit_mean: f64,
    limit_min: u32,
    limit_max: u32,
}

impl Point {
    fn json(&self) -> Value {
        let functions: serde_json::Map<String, Value> = self
            .functions
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    json!({
                        "pending": p.pending,
                        "running": p.running,
                        "workers": p.workers,
                        "limit_mean": round2(p.limit_mean),
                        "limit_min": p.limit_min,
                        "limit_max": p.limit_max,
                    }),
                )
            })
            .collect();
        json!({
            "seq": self.seq,
            "t": self.at_unix_ms,
            "pending": self.pending,
            "running": self.running,
            "functions": functions,
        })
    }
}

/// What one update read from the state.
pub(crate) struct Reading {
    pub stats: pb::StatsResponse,
    pub workers: Vec<pb::WorkerInfo>,
    /// The CPU and memory targets of the concurrency limit.
    pub targets: (f64, f64),
}

/// The history of the updates so far, and the frames made from it.
#[derive(Debug, Default)]
pub(crate) struct Board {
    history: VecDeque<Point>,
    seq: u64,
    /// Finished tasks per function at the last [`RATE_POINTS`] updates and the one before
    /// (when, and the counts), for the rates.
    finished: VecDeque<(u64, HashMap<String, u64>)>,
}

/// The JSON of one update for the page (the latest points of history with it), or of a
/// page's first frame (all of it).
pub(crate) type Frame = String;

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The finished tasks of `f`'s counters (succeeded, failed, cancelled).
fn finished(f: &pb::FunctionStats) -> u64 {
    f.succeeded + f.failed + f.cancelled
}

impl Board {
    /// Adds the point `reading` shows to the history (the oldest leaves past
    /// [`HISTORY_POINTS`]).
    pub(crate) fn record(&mut self, reading: &Reading) {
        self.seq += 1;
        let now = unix_ms();
        let mut per: HashMap<&str, FunctionPoint> = HashMap::new();
        for w in &reading.workers {
            if w.state == pb::WorkerState::Starting as i32 {
                continue;
            }
            let p = per.entry(w.function.as_str()).or_insert(FunctionPoint {
                limit_min: u32::MAX,
                ..Default::default()
            });
            p.workers += 1;
            p.limit_mean += f64::from(w.slots);
            p.limit_min = p.limit_min.min(w.slots);
            p.limit_max = p.limit_max.max(w.slots);
        }
        let (mut pending, mut running) = (0, 0);
        for f in &reading.stats.functions {
            pending += f.pending;
            running += f.running;
            if f.pending + f.running > 0 || per.contains_key(f.function.as_str()) {
                let p = per.entry(&f.function).or_default();
                p.pending = f.pending;
                p.running = f.running;
            }
        }
        let mut functions: Vec<(String, FunctionPoint)> = per
            .into_iter()
            .map(|(name, mut p)| {
                if p.workers > 0 {
                    p.limit_mean /= f64::from(p.workers);
                } else {
                    p.limit_min = 0;
                }
                (name.to_owned(), p)
            })
            .collect();
        // The busiest (the most workers, then the most work), then by name.
        functions.sort_by(|a, b| {
            (b.1.workers, b.1.pending + b.1.running)
                .cmp(&(a.1.workers, a.1.pending + a.1.running))
                .then_with(|| a.0.cmp(&b.0))
        });
        functions.truncate(FUNCTIONS_CHARTED);
        functions.sort_by(|a, b| a.0.cmp(&b.0));
        if self.history.len() == HISTORY_POINTS {
            self.history.pop_front();
        }
        self.history.push_back(Point {
            seq: self.seq,
            at_unix_ms: now,
            pending,
            running,
            functions,
        });
        if self.finished.len() > RATE_POINTS {
            self.finished.pop_front();
        }
        self.finished.push_back((
            now,
            reading
                .stats
                .functions
                .iter()
                .map(|f| (f.function.clone(), finished(f)))
                .collect(),
        ));
    }

    /// Finished tasks per second of `function` over the last [`RATE_POINTS`] updates (0
    /// with fewer than two).
    fn rate(&self, function: &str) -> f64 {
        let (Some((t0, first)), Some((t1, last))) = (self.finished.front(), self.finished.back()) else {
            return 0.0;
        };
        let secs = t1.saturating_sub(*t0) as f64 / 1000.0;
        if secs <= 0.0 {
            return 0.0;
        }
        // A function not yet seen at the first point had finished nothing then.
        let a = first.get(function).copied().unwrap_or(0);
        let b = last.get(function).copied().unwrap_or(0);
        b.saturating_sub(a) as f64 / secs
    }

    /// The frame of the latest point: the figures of `reading`, `recorder`'s times and
    /// failures, and the history: its latest points, or with `whole` all of it (a page's
    /// first frame).
    pub(crate) fn frame(&self, reading: &Reading, recorder: &Recorder, whole: bool) -> Frame {
        let mut body = self.figures(reading, recorder);
        let skip = if whole {
            0
        } else {
            self.history.len().saturating_sub(HISTORY_PER_UPDATE)
        };
        body["history"] = Value::Array(self.history.iter().skip(skip).map(Point::json).collect());
        body.to_string()
    }

    fn figures(&self, reading: &Reading, recorder: &Recorder) -> Value {
        let stats = &reading.stats;
        let times = recorder
            .times
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut listed: Vec<&pb::FunctionStats> = stats.functions.iter().collect();
        listed.sort_by(|a, b| {
            (b.workers_live + b.workers_starting, b.pending + b.running)
                .cmp(&(a.workers_live + a.workers_starting, a.pending + a.running))
                .then_with(|| a.function.cmp(&b.function))
        });
        listed.truncate(FUNCTIONS_LISTED);
        listed.sort_by(|a, b| a.function.cmp(&b.function));
        let functions: Vec<Value> = listed
            .into_iter()
            .map(|f| {
                let t = times.get(f.function.as_str());
                let lambda_usd = billing::cost_usd(f.request_billed_gb_ms, f.requests);
                json!({
                    "name": f.function,
                    "pending": f.pending,
                    "running": f.running,
                    "succeeded": f.succeeded,
                    "failed": f.failed,
                    "cancelled": f.cancelled,
                    "retried": f.retried,
                    "timed_out": f.timed_out,
                    "killed_at_deadline": f.killed_at_deadline,
                    "rate": round2(self.rate(&f.function)),
                    "memory_mb": f.memory_mb,
                    "memory_reason": f.memory_reason,
                    "slots_mean": round2(f.slots_mean),
                    "slots_learned": f.slots_learned,
                    "workers_live": f.workers_live,
                    "workers_starting": f.workers_starting,
                    "workers_started": f.workers_started,
                    "cold_starts": f.cold_starts,
                    "cold_start_p50_ms": f.cold_start_p50_ms,
                    "cold_start_max_ms": f.cold_start_max_ms,
                    "memory_peak_fraction": round2(f.memory_peak_fraction),
                    "to_start_ms": t.map_or_else(|| json!({"n": 0}), |t| t.to_start.json()),
                    "execution_ms": t.map_or_else(|| json!({"n": 0}), |t| t.execution.json()),
                    "billed_gb_s": f.billed_gb_ms / 1000.0,
                    "cost_usd": f.cost_usd,
                    "lambda_gb_s": f.request_billed_gb_ms / 1000.0,
                    "lambda_usd": lambda_usd,
                    "last_spawn_error": f.last_spawn_error,
                })
            })
            .collect();
        let workers: Vec<Value> = reading
            .workers
            .iter()
            .take(WORKERS_LISTED)
            .map(|w| {
                let sample = w.last_sample.unwrap_or_default();
                let mem = if sample.memory_limit_bytes > 0 {
                    sample.memory_used_bytes as f64 / sample.memory_limit_bytes as f64
                } else {
                    0.0
                };
                json!({
                    "id": w.worker_id,
                    "function": w.function,
                    "state": worker_state(w.state),
                    "running": w.running_tasks,
                    "limit": w.slots,
                    "limit_max": w.slots_max,
                    "phase": w.slots_phase,
                    "vcpus": w.vcpus,
                    "memory_mb": w.memory_mb,
                    "cpu": round2(sample.cpu),
                    "cpu_wait": round2(sample.cpu_wait),
                    "memory": round2(mem),
                    "age_ms": w.age_ms,
                    "life_left_ms": w.life_left_ms,
                    "done": w.tasks_done,
                    "cold_start_ms": w.cold_start_ms,
                })
            })
            .collect();
        let failures: Vec<Value> = recorder
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .map(|f| {
                json!({
                    "t": f.at_unix_ms,
                    "function": f.function.as_ref(),
                    "task_id": f.task_id,
                    "worker_id": f.worker_id,
                    "error": f.error,
                })
            })
            .collect();
        let total = stats.total.clone().unwrap_or_default();
        let lambda_usd = billing::cost_usd(total.request_billed_gb_ms, total.requests);
        json!({
            "role": "active",
            "t": unix_ms(),
            "uptime_ms": stats.uptime_ms,
            "targets": { "cpu": reading.targets.0, "memory": reading.targets.1 },
            "total": {
                "pending": total.pending,
                "running": total.running,
                "succeeded": total.succeeded,
                "failed": total.failed,
                "cancelled": total.cancelled,
                "retried": total.retried,
                "workers_live": total.workers_live,
                "workers_starting": total.workers_starting,
                "workers_started": total.workers_started,
                "cold_start_p50_ms": total.cold_start_p50_ms,
                "last_spawn_error": total.last_spawn_error,
            },
            "bill": {
                "billed_gb_s": total.billed_gb_ms / 1000.0,
                "cost_usd": total.cost_usd,
                "invocations": total.workers_started,
                "lambda_gb_s": total.request_billed_gb_ms / 1000.0,
                "lambda_usd": lambda_usd,
                "lambda_requests": total.requests,
                "saving": if lambda_usd > 0.0 { 1.0 - total.cost_usd / lambda_usd } else { 0.0 },
            },
            "functions": functions,
            "workers": workers,
            "workers_unlisted": reading.workers.len().saturating_sub(WORKERS_LISTED),
            "functions_unlisted": stats.functions.len().saturating_sub(FUNCTIONS_LISTED),
            "failures": failures,
        })
    }
}

/// The frame a standby's page shows: it is a standby, and which coordinator is active.
pub(crate) fn standby_frame(active_url: &str) -> Frame {
    json!({ "role": "standby", "t": unix_ms(), "active_url": active_url }).to_string()
}

fn worker_state(state: i32) -> &'static str {
    match pb::WorkerState::try_from(state) {
        Ok(pb::WorkerState::Starting) => "starting",
        Ok(pb::WorkerState::Active) => "active",
        Ok(pb::WorkerState::Draining) => "draining",
        Ok(pb::WorkerState::Stopping) => "stopping",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_whose_top_holds_it_within_an_eighth() {
        for ms in (0..5000).chain([65_535, 65_536, 1 << 30, u64::MAX >> 20]) {
            let i = bucket_of(ms);
            let top = bucket_top(i);
            assert!(top >= ms, "{ms} in bucket {i} of top {top}");
            assert!(
                (top - ms) as f64 <= ms as f64 / 8.0 + 1.0,
                "{ms}: top {top} is more than an eighth above"
            );
            if i > 0 {
                assert!(bucket_top(i - 1) < ms, "{ms} belongs below bucket {i}");
            }
        }
    }

    #[test]
    fn quantiles_follow_the_values() {
        let t = Times::default();
        for ms in 1..=1000 {
            t.observe(ms);
        }
        let (q, n) = t.quantiles(&[0.5, 0.99]).unwrap();
        assert_eq!(n, 1000);
        assert!((470..=530).contains(&q[0]), "{q:?}");
        assert!((930..=1050).contains(&q[1]), "{q:?}");
    }

    #[test]
    fn the_latest_failures_are_kept_newest_first_and_no_more() {
        let r = Recorder::default();
        let f: Arc<str> = Arc::from("f");
        for id in 0..(FAILURES_KEPT as u64 + 5) {
            r.observe(&[Observation::Failed {
                function: f.clone(),
                task_id: id,
                worker_id: "w".into(),
                error: format!("boom {id}"),
            }]);
        }
        let board = Board::default();
        let reading = Reading {
            stats: pb::StatsResponse::default(),
            workers: vec![],
            targets: (0.9, 0.8),
        };
        let v: Value = serde_json::from_str(&board.frame(&reading, &r, false)).unwrap();
        let failures = v["failures"].as_array().unwrap();
        assert_eq!(failures.len(), FAILURES_KEPT);
        assert_eq!(failures[0]["task_id"], FAILURES_KEPT as u64 + 4);
    }

    #[test]
    fn history_is_bounded_and_an_update_carries_its_latest_points() {
        let mut board = Board::default();
        let reading = Reading {
            stats: pb::StatsResponse {
                functions: vec![pb::FunctionStats {
                    function: "f".into(),
                    pending: 3,
                    ..Default::default()
                }],
                ..Default::default()
            },
            workers: vec![pb::WorkerInfo {
                function: "f".into(),
                state: pb::WorkerState::Active as i32,
                slots: 7,
                ..Default::default()
            }],
            targets: (0.9, 0.8),
        };
        for _ in 0..HISTORY_POINTS + 3 {
            board.record(&reading);
        }
        assert_eq!(board.history.len(), HISTORY_POINTS);
        let update: Value =
            serde_json::from_str(&board.frame(&reading, &Recorder::default(), false)).unwrap();
        let full: Value = serde_json::from_str(&board.frame(&reading, &Recorder::default(), true)).unwrap();
        assert_eq!(update["history"].as_array().unwrap().len(), HISTORY_PER_UPDATE);
        assert_eq!(full["history"].as_array().unwrap().len(), HISTORY_POINTS);
        let last = &update["history"][HISTORY_PER_UPDATE - 1];
        assert_eq!(last["seq"], HISTORY_POINTS as u64 + 3);
        assert_eq!(last["functions"]["f"]["limit_max"], 7);
        assert_eq!(last["functions"]["f"]["pending"], 3);
    }

    #[test]
    fn a_thousand_functions_list_the_busiest_fifty_and_chart_eight() {
        let mut board = Board::default();
        let functions: Vec<pb::FunctionStats> = (0..1000u64)
            .map(|i| pb::FunctionStats {
                function: format!("f{i:04}"),
                pending: i,
                running: 1,
                ..Default::default()
            })
            .collect();
        let reading = Reading {
            stats: pb::StatsResponse {
                functions,
                ..Default::default()
            },
            workers: (0..1000)
                .map(|i| pb::WorkerInfo {
                    worker_id: format!("w{i}-a-long-function-name-of-sixty-four-characters-at-most-000"),
                    function: "a-long-function-name-of-sixty-four-characters-at-most-000".into(),
                    state: pb::WorkerState::Active as i32,
                    slots: 256,
                    slots_phase: "probing".into(),
                    last_sample: Some(pb::ResourceSample::default()),
                    ..Default::default()
                })
                .collect(),
            targets: (0.9, 0.8),
        };
        for _ in 0..HISTORY_POINTS {
            board.record(&reading);
        }
        let update = board.frame(&reading, &Recorder::default(), false);
        let v: Value = serde_json::from_str(&update).unwrap();
        let listed = v["functions"].as_array().unwrap();
        assert_eq!(listed.len(), FUNCTIONS_LISTED);
        assert_eq!(listed[0]["name"], "f0950", "the busiest, by name");
        assert_eq!(v["workers"].as_array().unwrap().len(), WORKERS_LISTED);
        assert_eq!(v["workers_unlisted"], 800);
        assert_eq!(v["functions_unlisted"], 950);
        let point = &v["history"][0];
        assert_eq!(point["functions"].as_object().unwrap().len(), FUNCTIONS_CHARTED);
        assert_eq!(
            point["pending"],
            (0..1000u64).sum::<u64>(),
            "totals count every function"
        );
        // What each page is sent stays small, and a first frame's whole history bounded.
        assert!(update.len() < 160 * 1024, "{} bytes", update.len());
        let full = board.frame(&reading, &Recorder::default(), true);
        assert!(full.len() < 1024 * 1024, "{} bytes", full.len());
    }
}
