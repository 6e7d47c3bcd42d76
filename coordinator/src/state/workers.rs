//! Worker and spawner events: connect (or resume), sample, results, stream loss, the
//! liveness sweep, task timeouts and spawn outcomes.
//!
//! A worker's life: attached (stream up) -> detached (stream broke; keeps its tasks for
//! the reconnect grace) -> attached again on a hello with the same id, or finalized: billed,
//! its running tasks given back to the front of the pool (or failed, out of attempts).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use carpool_proto::payload;
use carpool_proto::pb::{self, TaskState, coordinator_message::Kind, worker_task_result::Outcome};
use tracing::{debug, info, warn};

use super::{Effects, State, TaskId, Timer, Worker, WorkerId, WorkerTx};
use crate::billing;
use crate::error::{Error, Result};
use crate::scheduler::{self, Learned};

/// Cold starts kept per function for Stats' median and maximum.
const RECENT_COLD_STARTS: usize = 1024;

/// The largest CPU figure a sample may carry: a worker allotted a small share of a vCPU
/// (Lambda at 128 MB) that bursts over every core of a large machine.
const MAX_CPU_FRACTION: f64 = 1024.0;

/// How many times its limit a worker's memory may be reported at: a local process is not
/// stopped at its memory size (a Lambda instance would be), so a worker over it is real, if
/// out of memory; beyond this the figure is nonsense.
const MAX_MEMORY_OVER_LIMIT: u64 = 1024;

/// Longest wait before spawning again after consecutive spawn failures.
const MAX_SPAWN_BACKOFF: Duration = Duration::from_secs(10);

/// How a worker stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The worker closed it: the session is over.
    Closed,
    /// It broke (reset, keepalive timeout): the worker may come back within the grace.
    Broken,
    /// The worker broke the protocol: it is written off at once.
    Violation,
}

impl State {
    /// A worker said hello: register it (or resume its session), welcome it, give it work.
    /// Returns its connection number (to pass to [`State::disconnect`]).
    pub fn connect(&mut self, hello: pb::Hello, tx: WorkerTx, now: Instant, fx: &mut Effects) -> Result<u64> {
        if self.draining {
            return Err(Error::ShuttingDown);
        }
        if hello.worker_id.is_empty() {
            return Err(Error::InvalidHello("worker_id is empty"));
        }
        if hello.function.is_empty() {
            return Err(Error::InvalidHello("function is empty"));
        }
        if hello.vcpus == 0 {
            return Err(Error::InvalidHello("vcpus is 0"));
        }
        if hello.memory_mb == 0 {
            return Err(Error::InvalidHello("memory_mb is 0"));
        }
        let id = WorkerId::new(&hello.worker_id);
        if let Some(existing) = self.workers.get(&id) {
            let same_instance = !hello.instance.is_empty() && hello.instance == existing.instance;
            if (existing.tx.is_some() && !same_instance) || existing.function.as_ref() != hello.function {
                return Err(Error::WorkerExists(hello.worker_id));
            }
            return Ok(self.resume(&id, &hello.running_task_ids, tx, now, fx));
        }
        let function = self.function_key(&hello.function);
        let mut instance = hello.instance;
        let mut cold_start_ms = 0;
        if let Some(s) = self.starting.remove(&id) {
            cold_start_ms = now.saturating_duration_since(s.since).as_millis() as u64;
            if let Some(f) = self.functions.get_mut(&s.function) {
                f.starting = f.starting.saturating_sub(1);
                f.cold_starts += 1;
                if f.recent_cold_starts.len() >= RECENT_COLD_STARTS {
                    f.recent_cold_starts.pop_front();
                }
                f.recent_cold_starts.push_back(cold_start_ms);
            }
            if instance.is_empty() {
                instance = s.instance;
            }
            info!(worker = %id, cold_start_ms, "spawned worker connected");
        } else if let Some(f) = self.functions.get_mut(&function) {
            // Started elsewhere (external spawner, or by hand): still one invocation.
            f.workers_started += 1;
        }
        let learned = self.learned_limit(&function, hello.memory_mb);
        let limit = scheduler::initial_limit(&self.rules, hello.slots, hello.max_slots, learned, hello.vcpus);
        let limit_params = scheduler::worker_limits(&self.rules, hello.max_slots);
        let slots = limit.value();
        let timeout = match hello.timeout_ms {
            0 => self.config.execution_timeout,
            ms => Duration::from_millis(ms),
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        let worker = Worker {
            function: function.clone(),
            conn,
            vcpus: hello.vcpus,
            memory_mb: hello.memory_mb,
            limit,
            limit_params,
            timeout,
            connected_at: now,
            instance,
            cold_start_ms,
            sample: None,
            cpu: 0.0,
            mem: 0.0,
            running: Vec::new(),
            assigned_total: 0,
            done: 0,
            idle_since: now,
            stopping: false,
            tx: Some(tx),
            detached_since: None,
            last_seen: now,
            recheck_at: None,
            released: VecDeque::new(),
            indexed: None,
            batch: None,
            peak_mem: 0.0,
        };
        worker.send(Kind::Welcome(pb::Welcome {
            sample_interval_ms: self.config.sample_interval.as_millis() as u64,
            slots,
        }));
        // Look again when it reaches its deadline fraction, to drain it.
        let until = scheduler::until_deadline(&self.rules, &worker.view(now));
        fx.timers.push((until, Timer::Worker(id.clone(), conn)));
        info!(worker = %id, function = %function, slots, phase = worker.limit.phase().as_str(), timeout_ms = timeout.as_millis() as u64, "connected");
        self.workers.insert(id.clone(), worker);
        if let Some(f) = self.functions.get_mut(&function) {
            f.max_slots = f.max_slots.max(slots);
            f.workers += 1;
            f.consecutive_spawn_failures = 0;
            f.spawn_blocked_until = None;
        }
        self.dispatch_near(&function, Some(&id), now, fx);
        self.evaluate(&id, now, fx);
        Ok(conn)
    }

    /// The same worker is back on a new stream: keep the tasks both sides agree it runs,
    /// give back those it lost, cancel those it runs but no longer holds.
    fn resume(&mut self, id: &WorkerId, has: &[TaskId], tx: WorkerTx, now: Instant, fx: &mut Effects) -> u64 {
        let conn = self.next_conn;
        self.next_conn += 1;
        let Some(w) = self.workers.get_mut(id) else {
            return conn;
        };
        let has: HashSet<TaskId> = has.iter().copied().collect();
        let lost: Vec<(TaskId, u32)> = w
            .running
            .iter()
            .filter(|(t, _)| !has.contains(t))
            .copied()
            .collect();
        let stray: Vec<TaskId> = has
            .iter()
            .filter(|t| !w.running.iter().any(|(r, _)| r == *t))
            .copied()
            .collect();
        w.conn = conn;
        w.tx = Some(tx);
        w.detached_since = None;
        w.last_seen = now;
        for (t, _) in &lost {
            w.release(*t, now);
        }
        w.send(Kind::Welcome(pb::Welcome {
            sample_interval_ms: self.config.sample_interval.as_millis() as u64,
            slots: w.limit.value(),
        }));
        if !stray.is_empty() {
            w.send(Kind::Cancel(pb::Cancel {
                task_ids: stray.clone(),
            }));
        }
        let until = scheduler::until_deadline(&self.rules, &w.view(now));
        fx.timers.push((until, Timer::Worker(id.clone(), conn)));
        let function = w.function.clone();
        info!(worker = %id, kept = w.running.len(), lost = lost.len(), cancelled = stray.len(), "resumed");
        self.give_back(&lost, &format!("worker {id} came back without it"), now);
        self.dispatch_near(&function, Some(id), now, fx);
        self.evaluate(id, now, fx);
        conn
    }

    /// A resource sample arrived. Impossible values are a protocol violation.
    pub fn sample(
        &mut self,
        id: &WorkerId,
        s: pb::ResourceSample,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<()> {
        let Some(w) = self.workers.get_mut(id) else {
            return Ok(());
        };
        let problem = if !s.cpu.is_finite() || !(0.0..=MAX_CPU_FRACTION).contains(&s.cpu) {
            Some(format!(
                "cpu {} is not a fraction of the vCPU allotment in [0, {MAX_CPU_FRACTION}]",
                s.cpu
            ))
        } else if s.memory_limit_bytes == 0 {
            Some("memory_limit_bytes is 0".to_owned())
        } else if s.memory_used_bytes > s.memory_limit_bytes.saturating_mul(MAX_MEMORY_OVER_LIMIT) {
            Some(format!(
                "memory_used_bytes {} is far above memory_limit_bytes {}",
                s.memory_used_bytes, s.memory_limit_bytes
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(Error::InvalidSample(id.to_string(), p));
        }
        w.last_seen = now;
        w.cpu = s.cpu;
        w.mem = s.memory_used_bytes as f64 / s.memory_limit_bytes as f64;
        w.peak_mem = w
            .peak_mem
            .max(w.mem)
            .max(s.memory_peak_bytes as f64 / s.memory_limit_bytes as f64);
        let observation = scheduler::Observation {
            cpu: s.cpu,
            mem: w.mem,
            running: s.running_tasks,
            youngest: Duration::from_millis(u64::from(s.youngest_task_ms)),
        };
        w.sample = Some(s);
        let (before, was_settled) = (w.limit.value(), w.limit.settled());
        let moved = w.limit.observe(&w.limit_params, observation, now);
        let (after, settled) = (w.limit.value(), w.limit.settled());
        let function = w.function.clone();
        let memory_mb = w.memory_mb;
        let peak = w.peak_mem;
        if after != before {
            debug!(worker = %id, from = before, to = after, why = ?moved, "concurrency limit moved");
            w.send(Kind::Limit(pb::Limit { slots: after }));
        }
        if let Some(f) = self.functions.get_mut(&function) {
            f.peak_mem = f.peak_mem.max(peak);
        }
        if settled && (after != before || !was_settled) {
            let level = Learned {
                level: after,
                settled: true,
            };
            self.learn(&function, memory_mb, level);
        }
        self.dispatch_near(&function, Some(id), now, fx);
        self.evaluate(id, now, fx);
        Ok(())
    }

    /// Results arrived: record those the worker holds, ignore late ones for tasks taken
    /// from it, refuse those it never held. Then refill it.
    pub fn results(
        &mut self,
        id: &WorkerId,
        results: Vec<pb::WorkerTaskResult>,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<()> {
        let Some(w) = self.workers.get(id) else {
            return Ok(());
        };
        let function = w.function.clone();
        for r in &results {
            let held = w.running.iter().any(|&(t, _)| t == r.task_id) || w.released.contains(&r.task_id);
            if !self.tasks.contains_key(r.task_id) {
                return Err(Error::ResultForUnknownTask(id.to_string(), r.task_id));
            }
            if !held {
                return Err(Error::ResultNotHeld(id.to_string(), r.task_id));
            }
        }
        for r in results {
            let Some(w) = self.workers.get_mut(id) else {
                break;
            };
            w.last_seen = now;
            let Some(pos) = w
                .running
                .iter()
                .position(|&(t, a)| t == r.task_id && a == r.attempt)
            else {
                debug!(worker = %id, task = r.task_id, attempt = r.attempt, "ignored a late result");
                continue;
            };
            w.running.swap_remove(pos);
            w.done += 1;
            w.limit.completed(match r.duration_us {
                0 => Duration::from_millis(r.finished_unix_ms.saturating_sub(r.started_unix_ms)),
                us => Duration::from_micros(us),
            });
            if w.running.is_empty() {
                w.idle_since = now;
            }
            if let Some(f) = self.functions.get_mut(&function) {
                f.running = f.running.saturating_sub(1);
            }
            let (state, output, error) = match r.outcome {
                Some(Outcome::Output(bytes)) => (
                    TaskState::Succeeded,
                    Some(payload::from_bytes(bytes)),
                    String::new(),
                ),
                Some(Outcome::Error(e)) => (TaskState::Failed, None, e),
                None => (
                    TaskState::Failed,
                    None,
                    "the worker sent a result without output or error".to_owned(),
                ),
            };
            debug!(task = r.task_id, worker = %id, state = state.as_str_name(), "finished");
            self.finish(
                r.task_id,
                pb::TaskResult {
                    task_id: r.task_id,
                    state: state as i32,
                    output,
                    error,
                    worker_id: id.to_string(),
                    attempts: r.attempt,
                    started_unix_ms: r.started_unix_ms,
                    finished_unix_ms: r.finished_unix_ms,
                },
                now,
            );
        }
        self.dispatch_near(&function, Some(id), now, fx);
        self.evaluate(id, now, fx);
        Ok(())
    }

    /// A worker's stream ended. Closed or violated: the worker is finalized now. Broken:
    /// it keeps its tasks for the reconnect grace (the sweep finalizes it after that).
    pub fn disconnect(&mut self, id: &WorkerId, conn: u64, end: StreamEnd, now: Instant, fx: &mut Effects) {
        let Some(w) = self.workers.get_mut(id).filter(|w| w.conn == conn) else {
            return;
        };
        if end == StreamEnd::Broken && !self.config.reconnect_grace.is_zero() && !self.draining {
            info!(worker = %id, running = w.running.len(), grace_ms = self.config.reconnect_grace.as_millis() as u64, "stream broke; waiting for the worker to reconnect");
            w.tx = None;
            w.detached_since = Some(now);
            self.unindex(id);
            return;
        }
        let cause = match end {
            StreamEnd::Closed => "its worker closed the stream",
            StreamEnd::Broken => "its worker's stream broke",
            StreamEnd::Violation => "its worker broke the protocol",
        };
        self.finalize(id, cause, now, fx);
    }

    /// Writes a worker off: bills its life and gives its running tasks back.
    fn finalize(&mut self, id: &WorkerId, cause: &str, now: Instant, fx: &mut Effects) {
        self.unindex(id);
        let Some(w) = self.workers.remove(id) else {
            return;
        };
        let alive = now.saturating_duration_since(w.connected_at);
        info!(worker = %id, alive_ms = alive.as_millis() as u64, tasks_done = w.done, lost = w.running.len(), cause, "worker gone");
        // A limit that only rose proved the level it reached: the next worker starts there.
        if let Some(risen) = w.limit.proven().filter(|l| !l.settled) {
            let known = self.learned_limit(&w.function, w.memory_mb);
            if known.is_none_or(|k| !k.settled && k.level < risen.level) {
                self.learn(&w.function, w.memory_mb, risen);
            }
        }
        if let Some(f) = self.functions.get_mut(&w.function) {
            f.billed_gb_ms += billing::billed_gb_ms(alive, w.memory_mb);
            f.workers = f.workers.saturating_sub(1);
        }
        if !w.running.is_empty() {
            self.give_back(&w.running, &format!("{cause} (worker {id})"), now);
        }
        self.dispatch(&w.function, now, fx);
    }

    /// Returns running task attempts to the front of their pool, in order, or fails those
    /// out of attempts with `cause`. The caller has removed them from their worker.
    fn give_back(&mut self, tasks: &[(TaskId, u32)], cause: &str, now: Instant) {
        let max_attempts = self.config.max_attempts;
        for &(task_id, attempt) in tasks.iter().rev() {
            let Some(t) = self.tasks.get_mut(task_id) else {
                continue;
            };
            if t.state != TaskState::Running || t.attempts != attempt {
                continue;
            }
            let function = t.function.clone();
            if let Some(f) = self.functions.get_mut(&function) {
                f.running = f.running.saturating_sub(1);
            }
            if t.attempts >= max_attempts {
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
                );
            } else {
                warn!(task = task_id, attempt, cause, "task back to the pool");
                t.state = TaskState::Pending;
                if let Some(f) = self.functions.get_mut(&function) {
                    f.retried += 1;
                    f.pending += 1;
                    f.pool.push_front(task_id);
                }
            }
        }
    }

    /// A task attempt's timer fired: if that attempt still runs, cancel it on its worker
    /// and give it back (or fail it).
    pub(super) fn time_out(&mut self, id: TaskId, attempt: u32, now: Instant, fx: &mut Effects) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        if t.state != TaskState::Running || t.attempts != attempt {
            return;
        }
        let limit = t.timeout.or(self.config.task_timeout).unwrap_or_default();
        let (function, worker) = (t.function.clone(), t.worker.clone());
        if let Some(wid) = &worker
            && let Some(w) = self.workers.get_mut(wid)
        {
            w.release(id, now);
            w.send(Kind::Cancel(pb::Cancel { task_ids: vec![id] }));
        }
        if let Some(f) = self.functions.get_mut(&function) {
            f.timed_out += 1;
        }
        let cause = format!("it ran past its timeout of {} ms", limit.as_millis());
        self.give_back(&[(id, attempt)], &cause, now);
        self.dispatch_near(&function, worker.as_ref(), now, fx);
        if let Some(wid) = worker {
            self.evaluate(&wid, now, fx);
        }
    }

    /// The liveness sweep: finalizes workers silent past their lease and detached workers
    /// past the reconnect grace.
    pub fn sweep(&mut self, now: Instant, fx: &mut Effects) {
        self.expire(now);
        let lease = self.config.liveness_lease();
        let grace = self.config.reconnect_grace;
        let mut gone = Vec::new();
        for (id, w) in &self.workers {
            match w.detached_since {
                Some(since) if now.saturating_duration_since(since) >= grace => {
                    gone.push((id.clone(), "its worker did not reconnect within the grace period"));
                }
                None if now.saturating_duration_since(w.last_seen) > lease => {
                    gone.push((id.clone(), "its worker went silent past its liveness lease"));
                }
                _ => {}
            }
        }
        // In id order, so their tasks go back to the pool in the same order every time.
        gone.sort();
        for (id, cause) in gone {
            self.finalize(&id, cause, now, fx);
        }
        let start_timeout = self.config.start_timeout;
        let never_connected: Vec<WorkerId> = self
            .starting
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.since) > start_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        if never_connected.is_empty() {
            return;
        }
        let reason = format!(
            "the worker did not connect within the start timeout of {}",
            humantime::format_duration(start_timeout)
        );
        for id in never_connected {
            self.spawn_failed(&id, &reason, now, fx);
        }
    }

    /// The spawner started the worker; `instance` says where (a pid, a request id).
    pub fn spawned(&mut self, id: &WorkerId, instance: String) {
        if let Some(s) = self.starting.get_mut(id) {
            s.instance = instance;
        } else if let Some(w) = self.workers.get_mut(id)
            && w.instance.is_empty()
        {
            w.instance = instance;
        }
    }

    /// The worker's process ended. Still starting: a failed spawn. Connected or waiting to
    /// reconnect: it will not, so it is written off now rather than after the grace.
    pub fn process_exited(&mut self, id: &WorkerId, reason: &str, now: Instant, fx: &mut Effects) {
        if self.starting.contains_key(id) {
            self.spawn_failed(id, reason, now, fx);
        } else if self.workers.contains_key(id) {
            self.finalize(id, "its worker process exited", now, fx);
        }
    }

    /// A spawn failed, or the worker ended before it said hello: release the capacity it
    /// reserved and try again after a backoff, so pending tasks are never stranded.
    pub fn spawn_failed(&mut self, id: &WorkerId, reason: &str, now: Instant, fx: &mut Effects) {
        let Some(s) = self.starting.remove(id) else {
            return;
        };
        let Some(f) = self.functions.get_mut(&s.function) else {
            return;
        };
        f.starting = f.starting.saturating_sub(1);
        f.spawn_failures += 1;
        f.consecutive_spawn_failures += 1;
        let backoff = Duration::from_millis(100)
            .saturating_mul(1 << f.consecutive_spawn_failures.min(10))
            .min(MAX_SPAWN_BACKOFF);
        f.spawn_blocked_until = Some(now + backoff);
        f.last_spawn_error = reason.to_owned();
        f.last_spawn_error_at = Some(now);
        warn!(worker = %id, function = %s.function, reason, backoff_ms = backoff.as_millis() as u64, "spawn failed");
        fx.timers.push((backoff, Timer::Function(s.function.clone())));
        self.dispatch(&s.function, now, fx);
    }
}
