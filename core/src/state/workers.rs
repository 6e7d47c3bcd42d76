//! Worker events: connect (or resume, or claim tasks after a coordinator restart), stream
//! loss (samples and results are in `progress`).
//!
//! A worker's life: attached (stream up) -> detached (stream broke; keeps its tasks for
//! the reconnect grace) -> attached again on a hello with the same id, or finalized: billed,
//! its running tasks given back to the front of the pool (or failed, out of attempts).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_messages::pb::{self, TaskState, coordinator_message::Kind};
use tracing::{info, warn};

use super::{Conn, Effects, JournalOp, Outbound, State, TaskId, Timer, Worker, WorkerId};
use crate::billing;
use crate::error::{Error, Result};
use crate::scheduler::{self, AfterLostAttempt};

/// A worker gone this close to the end of its life (or later) reached its deadline.
const DEADLINE_TOLERANCE: Duration = Duration::from_millis(250);

/// Cold starts kept per function for Stats' median and maximum, and a successor's lead
/// where none is known at the size new workers get.
const RECENT_COLD_STARTS: usize = 1024;

/// Cold starts kept per function and memory size, for a successor's lead at its size (more
/// than [`FEW_COLD_STARTS`], so their slow end comes to be read off them).
const RECENT_COLD_STARTS_AT_SIZE: usize = 256;

/// Below this many cold starts known, their slow end is not read off the samples alone.
const FEW_COLD_STARTS: usize = 100;

/// The spread of the cold starts' logarithm assumed at least while few are known (their
/// 99th percentile then at least 3.2 times their geometric mean): the max of a few draws is
/// not the tail's end (one draw in n + 1 passes the max of n), and a successor started by
/// it arrives late. Lambda's cold starts have such a tail; a local worker's few
/// milliseconds make the margin a few milliseconds.
const COLD_START_LOG_SPREAD: f64 = 0.5;

/// The 99th percentile of a normal, in standard deviations.
const Z99: f64 = 2.326;

/// The slow end of the recent cold starts (ms): their 99th percentile, and while fewer than
/// [`FEW_COLD_STARTS`] are known, no less than that of a log-normal fitted to them with at
/// least [`COLD_START_LOG_SPREAD`] of spread.
fn slow_end(values: &std::collections::VecDeque<u64>) -> u64 {
    let p99 = percentile(values, 0.99);
    if values.len() >= FEW_COLD_STARTS || values.is_empty() {
        return p99;
    }
    let logs: Vec<f64> = values.iter().map(|&v| (v.max(1) as f64).ln()).collect();
    let n = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / n;
    let sd = if logs.len() >= 2 {
        (logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let fitted = (mean + Z99 * sd.max(COLD_START_LOG_SPREAD)).exp();
    p99.max(fitted.round().min(u64::MAX as f64) as u64)
}

/// The recent cold starts (ms) of a function's workers, at one size or at any, and their
/// slow end ([`slow_end`]): how long before a worker's admissions end its successor is
/// started.
#[derive(Debug, Default)]
pub(super) struct ColdStarts {
    recent: std::collections::VecDeque<u64>,
    slow: Option<Duration>,
}

impl ColdStarts {
    /// One more, keeping the last `keep`.
    fn push(&mut self, ms: u64, keep: usize) {
        if self.recent.len() >= keep {
            self.recent.pop_front();
        }
        self.recent.push_back(ms);
        self.slow = Some(Duration::from_millis(slow_end(&self.recent)));
    }

    /// Their slow end; `None` until one is known.
    pub(super) fn slow(&self) -> Option<Duration> {
        self.slow
    }

    /// The recent ones, oldest first.
    pub(super) fn recent(&self) -> impl Iterator<Item = u64> + '_ {
        self.recent.iter().copied()
    }
}

/// The `q` quantile (nearest rank) of `values`; 0 for none.
fn percentile(values: &std::collections::VecDeque<u64>, q: f64) -> u64 {
    let mut v: Vec<u64> = values.iter().copied().collect();
    if v.is_empty() {
        return 0;
    }
    let at = (((v.len() as f64) * q).ceil() as usize).clamp(1, v.len()) - 1;
    *v.select_nth_unstable(at).1
}

/// Where a new worker came from, as its hello finds it.
pub(super) struct Arrival {
    /// Where its bill starts: its spawn, or its hello.
    pub(super) billed_from: Instant,
    /// From its spawn to its hello (0: not ours).
    pub(super) cold_start_ms: u64,
    /// Where it runs (its hello's, or what the spawner said).
    pub(super) instance: String,
    /// Past the fleet cap: it is sent away at once.
    pub(super) surplus: bool,
    /// What a task of its function is expected to take at its size (the figure it reads).
    pub(super) expected: Arc<crate::scheduler::life::Figure>,
}

/// The bounds of a Hello (anything outside is INVALID_ARGUMENT): memory from Lambda's
/// smallest size to a large VM's, vCPUs, slots, a week of life (one table with the
/// coordinator's and the worker's flags, [`carpool_messages::bounds`]), and the lengths of names.
pub(crate) const HELLO_MEMORY_MB: std::ops::RangeInclusive<u32> = carpool_messages::bounds::MEMORY_MB;
/// See [`HELLO_MEMORY_MB`].
pub(crate) const HELLO_MAX_VCPUS: u32 = carpool_messages::bounds::MAX_VCPUS;
/// See [`HELLO_MEMORY_MB`].
pub(crate) const HELLO_MAX_SLOTS: u32 = carpool_messages::bounds::MAX_SLOTS;
/// See [`HELLO_MEMORY_MB`].
pub(crate) const HELLO_MAX_TIMEOUT: Duration = carpool_messages::bounds::MAX_TIMEOUT;
/// See [`HELLO_MEMORY_MB`].
pub(crate) const MAX_ID_BYTES: usize = 256;
/// Tasks a reconnecting worker may say it runs.
pub(crate) const HELLO_MAX_RUNNING: usize = HELLO_MAX_SLOTS as usize;

/// How a worker stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// The worker closed it: the session is over.
    Closed,
    /// It broke (reset, keepalive timeout): the worker may come back within the grace.
    Broken,
    /// The worker broke the protocol: it is written off at once, and told why.
    Violation(Error),
}

/// Checks a hello's fields against their bounds.
fn check_hello(h: &pb::Hello) -> Result<()> {
    let problem = if h.worker_id.is_empty() || h.worker_id.len() > MAX_ID_BYTES {
        format!("worker_id must be 1 to {MAX_ID_BYTES} bytes")
    } else if let Err(e) = crate::config::check_function_name(&h.function) {
        e
    } else if h.vcpus == 0 || h.vcpus > HELLO_MAX_VCPUS {
        format!("vcpus {} is not in 1..={HELLO_MAX_VCPUS}", h.vcpus)
    } else if !HELLO_MEMORY_MB.contains(&h.memory_mb) {
        format!(
            "memory_mb {} is not in {}..={} (128 MB to 256 GiB)",
            h.memory_mb,
            HELLO_MEMORY_MB.start(),
            HELLO_MEMORY_MB.end()
        )
    } else if h.slots > HELLO_MAX_SLOTS || h.max_slots > HELLO_MAX_SLOTS {
        format!("slots and max_slots must be at most {HELLO_MAX_SLOTS}")
    } else if Duration::from_millis(h.timeout_ms) > HELLO_MAX_TIMEOUT {
        format!("timeout_ms {} is over a week", h.timeout_ms)
    } else if h.instance.len() > MAX_ID_BYTES {
        format!("instance must be at most {MAX_ID_BYTES} bytes")
    } else if h.running_task_ids.len() > HELLO_MAX_RUNNING || h.recent_results.len() > HELLO_MAX_RUNNING {
        format!("running_task_ids and recent_results hold at most {HELLO_MAX_RUNNING} entries each")
    } else if !h.running_attempts.is_empty() && h.running_attempts.len() != h.running_task_ids.len() {
        "running_attempts must have one entry per running_task_ids entry, or none".to_owned()
    } else {
        return Ok(());
    };
    Err(Error::InvalidHello(problem))
}

impl State {
    /// A worker said hello: register it (or resume its session), welcome it, give it work.
    /// Returns its connection number (to pass to [`State::disconnect`]).
    pub(super) fn connect(
        &mut self,
        mut hello: pb::Hello,
        now: Instant,
        effects: &mut Effects,
    ) -> Result<Conn> {
        if self.draining {
            return Err(Error::ShuttingDown);
        }
        check_hello(&hello)?;
        let id = WorkerId::new(&hello.worker_id);
        if let Some(existing) = self.workers.get(&id) {
            let same_instance = !hello.instance.is_empty() && hello.instance == existing.instance;
            if (existing.attached && !same_instance) || existing.function.as_ref() != hello.function {
                return Err(Error::WorkerExists(hello.worker_id));
            }
            return Ok(self.resume(&id, &mut hello, now, effects));
        }
        self.make_room(&hello.function)?;
        let function = self.function_key(&hello.function);
        let arrival = self.arrival(&id, &function, &hello, now, effects);
        let surplus = arrival.surplus;
        let conn = self.admit(&id, &function, &hello, arrival, now, effects);
        if !hello.running_task_ids.is_empty() {
            // A worker the coordinator does not know that runs tasks: its session outlived
            // this coordinator's (a restart) or its lease. It keeps what is still wanted.
            self.claim(
                &id,
                &hello.running_task_ids,
                &hello.running_attempts,
                now,
                effects,
            );
        }
        self.recover_results(&id, std::mem::take(&mut hello.recent_results), now, effects);
        if surplus {
            self.stop(&id, pb::ShutdownReason::Surplus, effects);
        } else {
            self.dispatch_after_change(&function, Some(&id), now, effects);
        }
        self.evaluate(&id, now, effects);
        Ok(conn)
    }

    /// Where a new worker comes from: a spawn of ours (its cold start measured and billed
    /// from its spawn), one written off as never started that arrived late (surplus past
    /// the cap), or one started by someone else (billed from now).
    fn arrival(
        &mut self,
        id: &WorkerId,
        function: &Arc<str>,
        hello: &pb::Hello,
        now: Instant,
        effects: &mut Effects,
    ) -> Arrival {
        let mut arrival = Arrival {
            billed_from: now,
            cold_start_ms: 0,
            instance: hello.instance.clone(),
            surplus: false,
            expected: Arc::default(),
        };
        if let Some(s) = self.spawns.end(id) {
            let cold_start_ms = now.saturating_duration_since(s.since).as_millis() as u64;
            if let Some(f) = self.functions.get_mut(&s.function) {
                f.cold_starts += 1;
                f.recent_cold_starts.push(cold_start_ms, RECENT_COLD_STARTS);
                // At its size too (a bigger size buys more CPU for its init), for as many
                // sizes as durations are kept for.
                let size = hello.memory_mb;
                if f.cold_starts_at.contains_key(&size)
                    || f.cold_starts_at.len() < super::parts::MAX_DURATION_SIZES
                {
                    f.cold_starts_at
                        .entry(size)
                        .or_default()
                        .push(cold_start_ms, RECENT_COLD_STARTS_AT_SIZE);
                }
                // Lambda bills a cold sandbox's init as well as its requests.
                f.request_gb_ms +=
                    billing::billed_gb_ms(Duration::from_millis(cold_start_ms), hello.memory_mb);
                effects
                    .observed
                    .push(super::Observation::ColdStart(cold_start_ms));
            }
            if arrival.instance.is_empty() {
                arrival.instance = s.instance;
            }
            arrival.billed_from = s.since;
            arrival.cold_start_ms = cold_start_ms;
            info!(worker = %id, cold_start_ms, "spawned worker connected");
        } else if self.spawns.arrived_late(id) {
            // Written off as never started, it started late after all (Lambda queues an
            // asynchronous invoke it cannot run yet): welcome within the cap, else send away.
            arrival.surplus = self.fleet_full(function);
            info!(worker = %id, surplus = arrival.surplus, "a worker written off as never started arrived late");
        }
        arrival
    }

    /// Puts a new worker on the roster with its first limit (learned for its function and
    /// size, or its vCPUs), welcomes it and arms its deadline timer. Returns its connection.
    fn admit(
        &mut self,
        id: &WorkerId,
        function: &Arc<str>,
        hello: &pb::Hello,
        arrival: Arrival,
        now: Instant,
        effects: &mut Effects,
    ) -> Conn {
        let learned = self.learned_limit(function, hello.memory_mb);
        let limit = scheduler::initial_limit(&self.rules, hello.slots, hello.max_slots, learned, hello.vcpus);
        let limit_params = scheduler::worker_limits(&self.rules, hello.max_slots);
        let slots = limit.value();
        let timeout = match hello.timeout_ms {
            0 => self.config.fleet.execution_timeout,
            ms => Duration::from_millis(ms),
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        let mut arrival = arrival;
        if let Some(f) = self.functions.get_mut(function) {
            arrival.expected = f.durations(hello.memory_mb).handle();
        }
        let worker = Worker::new(
            function.clone(),
            conn,
            hello,
            (limit, limit_params),
            timeout,
            arrival,
            now,
        );
        worker.send(Kind::Welcome(self.welcome(slots)), effects);
        // Look again when its admissions end, to drain it, and its successor's lead before.
        let until = scheduler::until_deadline(&self.rules, &worker.view(now));
        effects.timers.push((until, Timer::Worker(id.clone(), conn)));
        self.arm_successor(function, until, now, effects);
        info!(worker = %id, function = %function, slots, phase = worker.limit.phase().as_str(), timeout_ms = timeout.as_millis() as u64, "connected");
        self.workers.insert(id.clone(), worker);
        if let Some(f) = self.functions.get_mut(function) {
            f.max_slots = f.max_slots.max(slots);
            // Each worker that said hello is one billed invocation.
            f.workers_started += 1;
            f.life = Some(timeout);
            f.consecutive_spawn_failures = 0;
            f.spawn_blocked_until = None;
        }
        conn
    }

    /// Looks at `function`'s scale-out again when a worker whose admissions end in `until`
    /// is within its successor's lead of that end (see [`State::successor_lead`]).
    fn arm_successor(&self, function: &Arc<str>, until: Duration, now: Instant, effects: &mut Effects) {
        let lead = self.successor_lead(function, now);
        if !lead.is_zero() && until > lead {
            effects
                .timers
                .push((until - lead, Timer::Function(function.clone())));
        }
    }

    /// Looks at `function`'s scale-out again before worker `id`'s next sample if its
    /// admissions will come within its successor's lead by then: while an attempt of its
    /// function still running sets their end (it is expected to take longer than the
    /// figure), the end comes nearer faster than a second a second
    /// ([`scheduler::end_nearing`]), and the timer its hello armed is late.
    pub(super) fn rearm_successor(&self, id: &WorkerId, now: Instant, effects: &mut Effects) {
        if self.rules.admission != scheduler::Admission::Duration || self.rules.max_tasks_per_worker.is_some()
        {
            return;
        }
        let Some(w) = self.workers.get(id) else {
            return;
        };
        let v = w.view(now);
        let nearing = scheduler::end_nearing(&v);
        if nearing <= 1.0 {
            return; // the hello's timer stands
        }
        let left = scheduler::until_deadline(&self.rules, &v);
        let lead = self.successor_lead(&w.function, now);
        if lead.is_zero() || left <= lead {
            return; // within it already: this event's pass starts the successor
        }
        // A millisecond late rather than a rounding early.
        let when = (left - lead).div_f64(nearing) + Duration::from_millis(1);
        if when < self.config.fleet.sample_interval {
            effects.timers.push((when, Timer::Function(w.function.clone())));
        }
    }

    /// The Welcome a new connection gets.
    fn welcome(&self, slots: u32) -> pb::Welcome {
        pb::Welcome {
            sample_interval_ms: self.config.fleet.sample_interval.as_millis() as u64,
            slots,
            max_output_bytes: self.config.limits.max_payload_bytes as u64,
        }
    }

    /// The same worker is back on a new stream: keep the tasks both sides agree it runs,
    /// give back those it lost, claim those it runs that are waiting again, cancel the rest.
    fn resume(&mut self, id: &WorkerId, hello: &mut pb::Hello, now: Instant, effects: &mut Effects) -> Conn {
        let conn = self.next_conn;
        self.next_conn += 1;
        let welcome = self.welcome(self.workers.get(id).map_or(1, |w| w.limit.value()));
        let Some(w) = self.workers.get_mut(id) else {
            return conn;
        };
        // Finished on it while the stream was down counts as kept: its result is repeated.
        let has: HashSet<TaskId> = hello
            .running_task_ids
            .iter()
            .copied()
            .chain(hello.recent_results.iter().map(|r| r.task_id))
            .collect();
        let lost: Vec<(TaskId, u32)> = w
            .running
            .iter()
            .filter(|(t, _)| !has.contains(t))
            .copied()
            .collect();
        let (mut stray, mut stray_attempts) = (Vec::new(), Vec::new());
        for (i, t) in hello.running_task_ids.iter().enumerate() {
            if !w.running.iter().any(|(r, _)| r == t) {
                stray.push(*t);
                stray_attempts.push(hello.running_attempts.get(i).copied().unwrap_or(0));
            }
        }
        w.conn = conn;
        w.attached = true;
        w.detached_since = None;
        w.last_seen = now;
        let on = Some((w.memory_mb, w.running.len()));
        for (t, _) in &lost {
            w.release(*t, now);
        }
        w.send(Kind::Welcome(welcome), effects);
        let until = scheduler::until_deadline(&self.rules, &w.view(now));
        effects.timers.push((until, Timer::Worker(id.clone(), conn)));
        let function = w.function.clone();
        info!(worker = %id, kept = w.running.len(), lost = lost.len(), stray = stray.len(), "resumed");
        self.arm_successor(&function, until, now, effects);
        self.give_back(
            &lost,
            on,
            &format!("worker {id} came back without it"),
            now,
            effects,
        );
        if !stray.is_empty() {
            self.claim(id, &stray, &stray_attempts, now, effects);
        }
        self.recover_results(id, std::mem::take(&mut hello.recent_results), now, effects);
        self.dispatch_after_change(&function, Some(id), now, effects);
        self.evaluate(id, now, effects);
        conn
    }

    /// Results worker `id` sent just before its last stream broke (its hello repeats them):
    /// those of tasks it still holds, or that wait for a worker again (given back, or held
    /// after a restart) at no later attempt, are recorded as if they had just arrived; the
    /// rest (already recorded, running elsewhere, forgotten) are ignored.
    fn recover_results(
        &mut self,
        id: &WorkerId,
        results: Vec<pb::WorkerTaskResult>,
        now: Instant,
        effects: &mut Effects,
    ) {
        if results.is_empty() {
            return;
        }
        let mut waiting = (Vec::new(), Vec::new());
        let mut take = Vec::new();
        for r in results {
            let Some(t) = self.book.get(r.task_id) else {
                continue;
            };
            match t.state {
                TaskState::Pending if r.attempt >= t.attempts => {
                    waiting.0.push(r.task_id);
                    waiting.1.push(r.attempt);
                    take.push(r);
                }
                TaskState::Running if t.worker.as_ref() == Some(id) => take.push(r),
                _ => {}
            }
        }
        if !waiting.0.is_empty() {
            self.claim(id, &waiting.0, &waiting.1, now, effects);
        }
        let n = take.len();
        if let Err(e) = self.results(id, take, now, effects) {
            warn!(worker = %id, error = %e, "a repeated result was refused");
        }
        info!(worker = %id, recovered = n, "recorded results a worker repeated after its stream broke");
    }

    /// Worker `id` says it runs `tasks` (attempts in `attempts`, where it gives them): it
    /// keeps each that still waits for a worker (held back after a restart, or back in its
    /// pool), and is told to cancel the others (unknown, finished, or running elsewhere).
    fn claim(
        &mut self,
        id: &WorkerId,
        tasks: &[TaskId],
        attempts: &[u32],
        now: Instant,
        effects: &mut Effects,
    ) {
        let mut cancel = Vec::new();
        let mut kept = 0;
        for (i, &task_id) in tasks.iter().enumerate() {
            let wanted = self
                .book
                .get(task_id)
                .is_some_and(|t| t.state == TaskState::Pending);
            if !(wanted && self.workers.contains_key(id)) {
                cancel.push(task_id);
                continue;
            }
            // Held back for it or back in its pool (where it stays, skipped): running now.
            let claimed = self.update_task(task_id, |t| {
                let attempt = attempts.get(i).copied().unwrap_or(0).max(t.attempts).max(1);
                t.state = TaskState::Running;
                t.held = false;
                t.attempts = attempt;
                t.worker = Some(id.clone());
                // Its start is the old coordinator's: billed from its claim.
                t.attempt_started = Some(now);
                (attempt, t.timeout)
            });
            let Some((attempt, timeout)) = claimed else {
                continue;
            };
            self.book.unhold(task_id);
            let Some(w) = self.workers.get_mut(id) else {
                continue;
            };
            w.running.push((task_id, attempt), now, timeout.is_some());
            w.assigned_total += 1;
            kept += 1;
            if let Some(limit) = timeout.or(self.config.limits.task_timeout) {
                effects.timers.push((limit, Timer::Task(task_id, attempt)));
            }
            if self.journaled {
                effects.journal.push(JournalOp::Started(task_id, attempt));
            }
        }
        if let Some(w) = self.workers.get_mut(id)
            && !cancel.is_empty()
        {
            w.send(
                Kind::Cancel(pb::Cancel {
                    task_ids: cancel.clone(),
                }),
                effects,
            );
            for t in &cancel {
                w.release(*t, now);
            }
        }
        info!(worker = %id, kept, cancelled = cancel.len(), "reconciled the tasks a worker runs");
    }

    /// A worker's stream ended. Closed or violated: the worker is finalized now (a violator
    /// hears why). Broken: it keeps its tasks for the reconnect grace (the sweep finalizes
    /// it after that).
    pub(super) fn disconnect(
        &mut self,
        id: &WorkerId,
        conn: Conn,
        end: StreamEnd,
        now: Instant,
        effects: &mut Effects,
    ) {
        let Some(w) = self.workers.get_mut(id).filter(|w| w.conn == conn) else {
            effects.out.push(Outbound::End { conn, error: None });
            return;
        };
        match end {
            StreamEnd::Broken if !self.config.fleet.reconnect_grace.is_zero() && !self.draining => {
                info!(worker = %id, running = w.running.len(), grace_ms = self.config.fleet.reconnect_grace.as_millis() as u64, "stream broke; waiting for the worker to reconnect");
                w.attached = false;
                w.detached_since = Some(now);
                effects.out.push(Outbound::End { conn, error: None });
                self.unindex(id);
            }
            StreamEnd::Broken => self.finalize(id, "its worker's stream broke", None, now, effects),
            StreamEnd::Closed => self.finalize(id, "its worker closed the stream", None, now, effects),
            StreamEnd::Violation(e) => {
                self.finalize(id, "its worker broke the protocol", Some(e), now, effects)
            }
        }
    }

    /// Writes a worker off: ends its stream (with `error`, if it is to hear why), bills its
    /// life and gives its running tasks back.
    pub(super) fn finalize(
        &mut self,
        id: &WorkerId,
        cause: &str,
        error: Option<Error>,
        now: Instant,
        effects: &mut Effects,
    ) {
        self.unindex(id);
        let Some(mut w) = self.workers.remove(id) else {
            return;
        };
        // Told to stop, and gone with nothing running and no fault.
        let orderly = w.stopping && w.running.is_empty() && error.is_none();
        effects.out.push(Outbound::End { conn: w.conn, error });
        let alive = now.saturating_duration_since(w.connected_at);
        info!(worker = %id, alive_ms = alive.as_millis() as u64, tasks_done = w.done, lost = w.running.len(), cause, "worker gone");
        // A limit that only rose proved the level it reached: the next worker starts there.
        // Only a worker that ended its session in order teaches that: one written off or
        // broken may have been lost to the very level it was trying. Nor does one whose
        // function was relearned since its hello (it may run the replaced handler).
        let teaches = !w.before_relearn;
        if let Some(risen) = w.limit.proven().filter(|l| teaches && !l.settled && orderly) {
            let known = self.learned_limit(&w.function, w.memory_mb);
            if known.is_none_or(|k| !k.settled && k.level < risen.level) {
                self.learn(&w.function, w.memory_mb, risen, effects);
            }
        }
        let billed = billing::billed_gb_ms(now.saturating_duration_since(w.billed_from), w.memory_mb);
        if let Some(f) = self.functions.get_mut(&w.function) {
            f.billed_gb_ms += billed;
        }
        // What its size cost per task: where the next workers of its function go. A worker
        // that ended in order without ever being given a task started for work others
        // finished first: its bill is the scale-out's (the function's bill counts it), not
        // what a task costs at its size.
        if teaches && !(orderly && w.assigned_total == 0) {
            let cost = self
                .learned
                .record(&w.function, w.memory_mb, (billed, w.done), w.at_known_level);
            if self.journaled {
                effects
                    .journal
                    .push(JournalOp::Cost(w.function.clone(), w.memory_mb, cost));
            }
        }
        if !w.running.is_empty() {
            // Gone at (or past) the end of its life, with tasks running: the deadline
            // killed them (the figure admission by duration drives to zero).
            let gone_at = w.detached_since.unwrap_or(now);
            let at_deadline =
                gone_at.saturating_duration_since(w.connected_at) + DEADLINE_TOLERANCE >= w.timeout;
            let cause = if at_deadline {
                if let Some(f) = self.functions.get_mut(&w.function) {
                    f.killed_at_deadline += w.running.len() as u64;
                }
                warn!(worker = %id, killed = w.running.len(), "a worker reached the end of its life with tasks running");
                format!(
                    "{cause}: it reached the end of its life (worker {id}, {} ms)",
                    w.timeout.as_millis()
                )
            } else {
                format!("{cause} (worker {id})")
            };
            let on = Some((w.memory_mb, w.running.len()));
            // Off the worker first: what they ran no longer bounds its function's figure
            // when they are placed again.
            let lost = w.running.clear();
            self.give_back(&lost, on, &cause, now, effects);
        }
        self.dispatch(&w.function, now, effects);
    }

    /// Returns running task attempts to the front of their pool, in order, or fails those
    /// out of attempts with `cause`. The caller has removed them from their worker, whose
    /// memory size and tasks then running (theirs included) `on` gives: each lost attempt's
    /// share of its worker's bill, from its start to now, is added to its task's bill (an
    /// attempt lost is paid for all the same).
    pub(super) fn give_back(
        &mut self,
        tasks: &[(TaskId, u32)],
        on: Option<(u32, usize)>,
        cause: &str,
        now: Instant,
        effects: &mut Effects,
    ) {
        let max_attempts = self.config.limits.max_attempts;
        for &(task_id, attempt) in tasks.iter().rev() {
            let Some(t) = self.book.get_mut(task_id) else {
                continue;
            };
            if t.state != TaskState::Running || t.attempts != attempt {
                continue;
            }
            if let (Some((memory_mb, sharing)), Some(started)) = (on, t.attempt_started.take()) {
                let ran = billing::billed_gb_ms(now.saturating_duration_since(started), memory_mb);
                t.spent_gb_ms += ran / sharing.max(1) as f64;
            }
            let function = t.function.clone();
            if scheduler::after_lost_attempt(t.attempts, max_attempts) == AfterLostAttempt::Fail {
                warn!(
                    task = task_id,
                    attempts = t.attempts,
                    cause,
                    "task out of attempts"
                );
                let worker_id = t.worker.as_ref().map(ToString::to_string).unwrap_or_default();
                let attempts = t.attempts;
                self.finish(
                    task_id,
                    pb::TaskResult {
                        task_id,
                        state: TaskState::Failed as i32,
                        error: format!("task {task_id} failed after {attempts} attempts; the last one ended because {cause}"),
                        worker_id,
                        attempts,
                        ..Default::default()
                    },
                    now,
                    effects,
                );
            } else {
                warn!(task = task_id, attempt, cause, "task back to the pool");
                self.update_task(task_id, |t| t.state = TaskState::Pending);
                if let Some(f) = self.functions.get_mut(&function) {
                    f.retried += 1;
                    f.pool.push_front(task_id);
                }
            }
        }
    }

    /// A worker's stream could not take another message (its queue is full: it stopped
    /// reading): it is written off.
    pub(super) fn stream_full(&mut self, conn: Conn, now: Instant, effects: &mut Effects) {
        let Some(id) = self
            .workers
            .iter()
            .find(|(_, w)| w.conn == conn)
            .map(|(id, _)| id.clone())
        else {
            return;
        };
        warn!(worker = %id, "the worker stopped reading its stream; writing it off");
        let error = Error::StreamFull(id.to_string());
        self.finalize(
            &id,
            "its worker stopped reading its stream",
            Some(error),
            now,
            effects,
        );
    }
}

#[cfg(test)]
mod slow_end_tests {
    use std::collections::VecDeque;

    use super::*;

    #[test]
    fn a_few_cold_starts_have_a_slow_end_past_their_max() {
        // One of 500 ms: its fitted tail, 3.2 times it (a spread of 0.5 assumed).
        assert_eq!(slow_end(&VecDeque::from([500])), 1600);
        // Several alike: the same; several spread wider than that: their own spread.
        assert_eq!(slow_end(&VecDeque::from([500; 10])), 1600);
        let wide = VecDeque::from([200, 500, 1500, 400, 900]);
        assert!(slow_end(&wide) > 3000, "{}", slow_end(&wide));
        // Enough known: their 99th percentile.
        let many: VecDeque<u64> = (1..=200).collect();
        assert_eq!(slow_end(&many), 198);
        assert_eq!(slow_end(&VecDeque::new()), 0);
    }
}
