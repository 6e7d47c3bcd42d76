//! `/metrics` in the Prometheus exposition format (OpenMetrics text), on its own address
//! (`--metrics-listen`), never on the gRPC port.
//!
//! Two sources, neither inside the state's lock for longer than a Stats call:
//! - what the state observed (task times, cold starts, shutdowns, spawn failures) comes out
//!   of each event as [`Observation`]s, recorded by the driver after the lock is let go;
//! - counts and levels (tasks by outcome, retries, spawns, the bill, pending, workers, limits)
//!   are read from the same Stats snapshot the Stats RPC returns, at each scrape, so the two
//!   always agree.
//!
//! Labels are low-cardinality only: `function` (bounded by `--max-functions`), `outcome`,
//! `reason`, `state`, `spawner`. Never a task id or a worker id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use carpool_proto::pb;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tracing::warn;

use crate::config::SpawnerKind;

use crate::state::Observation;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabel {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    function: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerStateLabels {
    function: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpawnLabels {
    function: String,
    spawner: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SizeLabels {
    function: String,
    memory_mb: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the coordinator exports, and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    /// Submitted to started, per task.
    to_start: TimeHistogram,
    /// Started to finished on the worker, per task.
    execution: TimeHistogram,
    /// Submitted to result, per task.
    to_result: TimeHistogram,
    /// Asked for to hello, per spawned worker.
    cold_start: TimeHistogram,
    /// Shutdowns sent, by reason.
    shutdowns: Family<ReasonLabel, Counter>,
    /// Failed spawns, by reason.
    spawn_failures: Family<ReasonLabel, Counter>,
    /// Stats-derived counters, brought up to the snapshot at each scrape.
    tasks: Family<OutcomeLabels, Counter>,
    retries: Family<FunctionLabel, Counter>,
    /// A worker's life: attempts killed at a deadline, successors, tasks refused for time
    /// and bounded tasks taken late.
    killed_at_deadline: Family<FunctionLabel, Counter>,
    successors: Family<FunctionLabel, Counter>,
    refused_for_time: Family<FunctionLabel, Counter>,
    taken_late: Family<FunctionLabel, Counter>,
    handover_wait: Family<FunctionLabel, FloatCounter>,
    spawns: Family<SpawnLabels, Counter>,
    billed: Family<FunctionLabel, FloatCounter>,
    cost: Family<FunctionLabel, FloatCounter>,
    /// Stats-derived levels.
    pending: Family<FunctionLabel, Gauge>,
    slots_in_use: Family<FunctionLabel, Gauge>,
    workers: Family<WorkerStateLabels, Gauge>,
    limit: Family<FunctionLabel, FloatGauge>,
    learned: Family<FunctionLabel, Gauge>,
    /// The duration a task of a function is expected to take (admission's figure).
    duration_bound: Family<FunctionLabel, FloatGauge>,
    /// The share of a fresh worker's life in which it takes tasks without their own timeout.
    admitting_share: Family<FunctionLabel, FloatGauge>,
    /// The memory size a new worker of a function gets now.
    size: Family<FunctionLabel, Gauge>,
    /// Billed GB-s per finished task, per function and memory size tried.
    size_cost: Family<SizeLabels, FloatGauge>,
    /// Bytes held in memory, by kind (payloads of unfinished tasks, results).
    held: Family<HeldLabel, Gauge>,
    /// The spawner, as the `spawner` label of spawns.
    spawner: &'static str,
    /// One scrape at a time (each brings the counters up to its snapshot).
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Finite buckets of a [`TimeHistogram`]: 1 ms doubling to 131 s, then +Inf.
const BUCKETS: usize = 18;

/// A histogram of whole milliseconds, exported in seconds, recorded with three relaxed
/// atomic additions and no lock (prometheus-client's own histogram takes a mutex per
/// observation, which on the dispatch path cost several per cent of Map throughput).
#[derive(Clone, Debug, Default)]
pub(crate) struct TimeHistogram(Arc<TimeCounts>);

#[derive(Debug, Default)]
struct TimeCounts {
    /// Observations per bucket: `[i]` holds those in (2^(i-1), 2^i] ms, `[BUCKETS]` the
    /// rest (+Inf).
    buckets: [AtomicU64; BUCKETS + 1],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl TimeHistogram {
    /// Records one observation of `ms` milliseconds.
    pub(crate) fn observe_ms(&self, ms: u64) {
        let bucket = if ms <= 1 {
            0
        } else {
            (u64::BITS - (ms - 1).leading_zeros()) as usize
        };
        self.0.buckets[bucket.min(BUCKETS)].fetch_add(1, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

impl EncodeMetric for TimeHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = (0..=BUCKETS)
            .map(|i| {
                let bound = if i == BUCKETS {
                    f64::INFINITY
                } else {
                    f64::from(1u32 << i) / 1000.0
                };
                (bound, self.0.buckets[i].load(Ordering::Relaxed))
            })
            .collect();
        // The count is the sum of the buckets read, so the two always agree in one scrape.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A new metric, registered in `registry` under `name` (after the prefix) with `help`
/// and, if given, its `unit`: each metric is made and registered in one place.
fn made<M>(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> M
where
    M: prometheus_client::registry::Metric + Clone + Default,
{
    let metric = M::default();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, metric.clone()),
        None => registry.register(name, help, metric.clone()),
    }
    metric
}

impl Metrics {
    /// The metrics of a coordinator whose workers come from `spawner`.
    pub(crate) fn new(spawner: SpawnerKind) -> Self {
        let mut registry = Registry::with_prefix("carpool");
        let r = &mut registry;
        let m = Self {
            to_start: made(
                r,
                "task_schedule_to_start",
                "Time from a task's submission to the start of the attempt that ended it",
                Some(Unit::Seconds),
            ),
            execution: made(
                r,
                "task_execution",
                "Time a task's last attempt ran on its worker",
                Some(Unit::Seconds),
            ),
            to_result: made(
                r,
                "task_submit_to_result",
                "Time from a task's submission to its result",
                Some(Unit::Seconds),
            ),
            cold_start: made(
                r,
                "worker_cold_start",
                "Time from a spawn request to the worker's hello",
                Some(Unit::Seconds),
            ),
            shutdowns: made(
                r,
                "worker_shutdowns",
                "Shutdowns sent to workers, by reason",
                None,
            ),
            spawn_failures: made(r, "spawn_failures", "Spawns that failed, by reason", None),
            tasks: made(r, "tasks", "Tasks that ended, by function and outcome", None),
            retries: made(
                r,
                "task_retries",
                "Attempts given back to the pool for another try",
                None,
            ),
            killed_at_deadline: made(
                r,
                "task_killed_at_deadline",
                "Attempts lost because their worker reached the end of its life while they ran",
                None,
            ),
            successors: made(
                r,
                "worker_successors",
                "Workers started ahead of time to take over from workers whose admissions were ending",
                None,
            ),
            refused_for_time: made(
                r,
                "task_refused_for_time",
                "Times a task was not given to a worker for lack of life left",
                None,
            ),
            taken_late: made(
                r,
                "task_taken_late",
                "Tasks bounded by their own timeout taken by a worker whose admissions had ended for time",
                None,
            ),
            duration_bound: made(
                r,
                "task_duration_bound",
                "What a task of a function is expected to take (the longest of its recent attempts; 0: not known yet)",
                Some(Unit::Seconds),
            ),
            admitting_share: made(
                r,
                "worker_admitting_share",
                "Share of a fresh worker's life in which it takes tasks without a timeout of their own (below the deadline fraction: a life short for the function's tasks)",
                None,
            ),
            handover_wait: made(
                r,
                "handover_wait_seconds",
                "Time tasks waited while every live worker of their function had ended its admissions",
                None,
            ),
            spawns: made(r, "worker_spawns", "Workers started that said hello", None),
            billed: made(
                r,
                "billed_gigabyte_seconds",
                "Billed GB-seconds of workers (Lambda's model; live workers up to now)",
                None,
            ),
            cost: made(r, "cost_usd", "The bill in USD: GB-seconds and requests", None),
            pending: made(r, "tasks_pending", "Tasks waiting for a worker", None),
            slots_in_use: made(r, "slots_in_use", "Tasks running on workers", None),
            workers: made(r, "workers", "Workers by state (live, starting)", None),
            limit: made(
                r,
                "concurrency_limit",
                "Mean concurrency limit of a function's live workers",
                None,
            ),
            learned: made(
                r,
                "concurrency_learned",
                "Concurrency level learned for a function at the coordinator's memory size (0: none)",
                None,
            ),
            size: made(
                r,
                "memory_size",
                "The memory size a new worker of a function gets now (--memory-sizes)",
                Some(Unit::Bytes),
            ),
            size_cost: made(
                r,
                "size_cost_per_task_gigabyte_seconds",
                "Billed GB-seconds per finished task of a function's workers at each memory size tried",
                None,
            ),
            held: made(
                r,
                "held",
                "Bytes held in memory: payloads of unfinished tasks (--max-pending-bytes) and results (--max-result-bytes)",
                Some(Unit::Bytes),
            ),
            spawner: match spawner {
                SpawnerKind::Local => "local",
                SpawnerKind::Lambda => "lambda",
                SpawnerKind::External => "external",
            },
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        // Known label values start at zero, so a rate over them exists before the first.
        for reason in ["idle", "deadline", "ineligible", "drain", "surplus"] {
            drop(m.shutdowns.get_or_create(&ReasonLabel { reason }));
        }
        for reason in ["spawner", "exited", "no_hello"] {
            drop(m.spawn_failures.get_or_create(&ReasonLabel { reason }));
        }
        Self { registry, ..m }
    }

    /// Records what one event observed.
    pub(crate) fn observe(&self, observed: &[Observation]) {
        for o in observed {
            match *o {
                Observation::Finished {
                    to_start_ms,
                    execution_ms,
                    to_result_ms,
                    ..
                } => {
                    for (h, ms) in [
                        (&self.to_start, to_start_ms),
                        (&self.execution, execution_ms),
                        (&self.to_result, to_result_ms),
                    ] {
                        if let Some(ms) = ms {
                            h.observe_ms(ms);
                        }
                    }
                }
                Observation::ColdStart(ms) => self.cold_start.observe_ms(ms),
                Observation::Shutdown(reason) => {
                    let reason = shutdown_reason(reason);
                    self.shutdowns.get_or_create(&ReasonLabel { reason }).inc();
                }
                Observation::SpawnFailed(reason) => {
                    self.spawn_failures.get_or_create(&ReasonLabel { reason }).inc();
                }
                // Counted from Stats (tasks by outcome); the dashboard lists them.
                Observation::Failed { .. } => {}
            }
        }
    }

    /// The exposition, with the Stats-derived metrics brought up to `stats`, and the bytes
    /// held in memory (payloads, results).
    pub(crate) fn render(&self, stats: &pb::StatsResponse, held: (u64, u64)) -> String {
        let _one = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.held
            .get_or_create(&HeldLabel { kind: "payloads" })
            .set(gauge(held.0));
        self.held
            .get_or_create(&HeldLabel { kind: "results" })
            .set(gauge(held.1));
        for f in &stats.functions {
            let function = || FunctionLabel {
                function: f.function.clone(),
            };
            for (outcome, n) in [
                ("succeeded", f.succeeded),
                ("failed", f.failed),
                ("cancelled", f.cancelled),
            ] {
                let labels = OutcomeLabels {
                    function: f.function.clone(),
                    outcome,
                };
                catch_up(&self.tasks.get_or_create(&labels), n);
            }
            catch_up(&self.retries.get_or_create(&function()), f.retried);
            catch_up(
                &self.killed_at_deadline.get_or_create(&function()),
                f.killed_at_deadline,
            );
            catch_up(&self.successors.get_or_create(&function()), f.successors_started);
            catch_up(
                &self.refused_for_time.get_or_create(&function()),
                f.refused_for_time,
            );
            catch_up(&self.taken_late.get_or_create(&function()), f.taken_late);
            catch_up(
                &self.handover_wait.get_or_create(&function()),
                f.handover_wait_ms as f64 / 1000.0,
            );
            self.duration_bound
                .get_or_create(&function())
                .set(f.duration_bound_ms as f64 / 1000.0);
            self.admitting_share
                .get_or_create(&function())
                .set(f.admitting_share);
            let spawns = SpawnLabels {
                function: f.function.clone(),
                spawner: self.spawner,
            };
            catch_up(&self.spawns.get_or_create(&spawns), f.workers_started);
            catch_up(&self.billed.get_or_create(&function()), f.billed_gb_ms / 1000.0);
            catch_up(&self.cost.get_or_create(&function()), f.cost_usd);
            self.pending.get_or_create(&function()).set(gauge(f.pending));
            self.slots_in_use.get_or_create(&function()).set(gauge(f.running));
            for (state, n) in [("live", f.workers_live), ("starting", f.workers_starting)] {
                let labels = WorkerStateLabels {
                    function: f.function.clone(),
                    state,
                };
                self.workers.get_or_create(&labels).set(i64::from(n));
            }
            self.limit.get_or_create(&function()).set(f.slots_mean);
            self.learned
                .get_or_create(&function())
                .set(i64::from(f.slots_learned));
            self.size
                .get_or_create(&function())
                .set(i64::from(f.memory_mb) * 1024 * 1024);
            for s in &f.sizes {
                let labels = SizeLabels {
                    function: f.function.clone(),
                    memory_mb: s.memory_mb,
                };
                if s.tasks > 0 {
                    self.size_cost.get_or_create(&labels).set(s.gb_s_per_task);
                } else {
                    // Not measured, or forgotten (Relearn): no figure, not the last one.
                    self.size_cost.remove(&labels);
                }
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

/// Raises a counter to `target` (Stats counts only grow; a function forgotten and seen
/// again starts lower, and its counter then waits until it passes the old figure).
fn catch_up<N, A>(c: &Counter<N, A>, target: N)
where
    N: PartialOrd + std::ops::Sub<Output = N> + Copy,
    A: prometheus_client::metrics::counter::Atomic<N>,
{
    let now = c.get();
    if target > now {
        c.inc_by(target - now);
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn shutdown_reason(r: pb::ShutdownReason) -> &'static str {
    match r {
        pb::ShutdownReason::Idle => "idle",
        pb::ShutdownReason::Deadline => "deadline",
        pb::ShutdownReason::Ineligible => "ineligible",
        pb::ShutdownReason::Drain => "drain",
        pb::ShutdownReason::Surplus => "surplus",
        _ => "other",
    }
}

/// OpenMetrics text as the classic Prometheus text format (0.0.4): a counter family is
/// named with its `_total` suffix, and there are no `# UNIT` or `# EOF` lines.
pub(crate) fn classic(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_lands_in_the_first_bucket_that_holds_it() {
        let h = TimeHistogram::default();
        for ms in [0, 1, 2, 3, 4, 5, 1000, u64::MAX / 4] {
            h.observe_ms(ms);
        }
        let at = |i: usize| h.0.buckets[i].load(Ordering::Relaxed);
        assert_eq!((at(0), at(1), at(2), at(3)), (2, 1, 2, 1), "<=1, 2, 3-4, 5-8 ms");
        assert_eq!(at(10), 1, "1000 ms is in (512, 1024]");
        assert_eq!(at(BUCKETS), 1, "beyond the last bound: +Inf");
        assert_eq!(h.0.count.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn counters_follow_stats_and_observations_fill_the_histograms() {
        let m = Metrics::new(SpawnerKind::Local);
        m.observe(&[
            Observation::Finished {
                function: "echo".into(),
                to_start_ms: Some(3),
                execution_ms: Some(100),
                to_result_ms: Some(103),
            },
            Observation::Shutdown(pb::ShutdownReason::Idle),
            Observation::SpawnFailed("exited"),
        ]);
        let stats = pb::StatsResponse {
            functions: vec![pb::FunctionStats {
                function: "echo".into(),
                succeeded: 7,
                failed: 1,
                pending: 4,
                workers_live: 2,
                billed_gb_ms: 1500.0,
                admitting_share: 0.645,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = m.render(&stats, (0, 0));
        for line in [
            r#"carpool_tasks_total{function="echo",outcome="succeeded"} 7"#,
            r#"carpool_tasks_total{function="echo",outcome="failed"} 1"#,
            r#"carpool_tasks_pending{function="echo"} 4"#,
            r#"carpool_workers{function="echo",state="live"} 2"#,
            r#"carpool_billed_gigabyte_seconds_total{function="echo"} 1.5"#,
            r#"carpool_worker_admitting_share{function="echo"} 0.645"#,
            r#"carpool_worker_shutdowns_total{reason="idle"} 1"#,
            r#"carpool_spawn_failures_total{reason="exited"} 1"#,
            "carpool_task_execution_seconds_count 1",
            "carpool_task_execution_seconds_sum 0.1",
            r#"carpool_task_execution_seconds_bucket{le="0.064"} 0"#,
            r#"carpool_task_execution_seconds_bucket{le="0.128"} 1"#,
            r#"carpool_task_execution_seconds_bucket{le="+Inf"} 1"#,
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let plain = classic(&text);
        assert!(plain.contains("# TYPE carpool_tasks_total counter"), "{plain}");
        assert!(!plain.contains("# EOF") && !plain.contains("# UNIT"));
        // A later snapshot raises the counters to it; an earlier figure never lowers them.
        let mut later = stats.clone();
        later.functions[0].succeeded = 9;
        assert!(m.render(&later, (0, 0)).contains(r#"outcome="succeeded"} 9"#));
        assert!(m.render(&stats, (0, 0)).contains(r#"outcome="succeeded"} 9"#));
    }

    #[test]
    fn a_size_cost_forgotten_by_relearn_leaves_the_metrics() {
        let m = Metrics::new(SpawnerKind::Local);
        let at = |tasks: u64| pb::StatsResponse {
            functions: vec![pb::FunctionStats {
                function: "echo".into(),
                sizes: vec![pb::SizeCost {
                    memory_mb: 1024,
                    tasks,
                    gb_s_per_task: if tasks > 0 { 0.25 } else { 0.0 },
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let line = r#"carpool_size_cost_per_task_gigabyte_seconds{function="echo",memory_mb="1024"} 0.25"#;
        assert!(m.render(&at(40), (0, 0)).contains(line));
        let text = m.render(&at(0), (0, 0));
        assert!(
            !text.contains("carpool_size_cost_per_task_gigabyte_seconds{"),
            "{text}"
        );
    }
}
