//! Worker and spawner events: connect, sample, results, disconnect, spawn outcome.

use std::time::{Duration, Instant};

use carpool_proto::payload;
use carpool_proto::pb::{self, TaskState, coordinator_message::Kind, worker_task_result::Outcome};
use tracing::{debug, info, warn};

use super::{Effects, State, Timer, Worker, WorkerId, WorkerTx};
use crate::billing;
use crate::error::{Error, Result};
use crate::scheduler;

/// Longest wait before spawning again after consecutive spawn failures.
const MAX_SPAWN_BACKOFF: Duration = Duration::from_secs(10);

impl State {
    /// A worker said hello: register it, welcome it, and give it work.
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
        if self.workers.contains_key(&id) {
            return Err(Error::WorkerExists(hello.worker_id));
        }
        let function = self.function_key(&hello.function);
        let mut instance = hello.instance;
        if let Some(s) = self.starting.remove(&id) {
            if let Some(f) = self.functions.get_mut(&s.function) {
                f.starting = f.starting.saturating_sub(1);
            }
            if instance.is_empty() {
                instance = s.instance;
            }
            debug!(worker = %id, cold_start_ms = now.duration_since(s.since).as_millis() as u64, "started worker connected");
        } else if let Some(f) = self.functions.get_mut(&function) {
            // Started elsewhere (external spawner, or by hand): still one invocation.
            f.workers_started += 1;
        }
        let slots = match hello.slots {
            0 => self.config.slots.unwrap_or(hello.vcpus),
            n => n,
        }
        .max(1);
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
            slots,
            timeout,
            connected_at: now,
            instance,
            sample: None,
            cpu: 0.0,
            mem: 0.0,
            running: Vec::new(),
            assigned_total: 0,
            done: 0,
            idle_since: now,
            stopping: false,
            tx,
        };
        worker.send(Kind::Welcome(pb::Welcome {
            sample_interval_ms: self.config.sample_interval.as_millis() as u64,
            slots,
        }));
        // Look again when it reaches its deadline fraction, to drain it.
        let until = scheduler::until_deadline(&self.rules, &worker.view(now));
        fx.timers.push((until, Timer::Worker(id.clone(), conn)));
        info!(worker = %id, function = %function, slots, timeout_ms = timeout.as_millis() as u64, "connected");
        self.workers.insert(id.clone(), worker);
        if let Some(f) = self.functions.get_mut(&function) {
            f.workers.insert(id.clone());
            f.consecutive_spawn_failures = 0;
            f.spawn_blocked_until = None;
        }
        self.dispatch(&function, now, fx);
        self.evaluate(&id, now, fx);
        Ok(conn)
    }

    /// A resource sample arrived.
    pub fn sample(&mut self, id: &WorkerId, s: pb::ResourceSample, now: Instant, fx: &mut Effects) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        w.cpu = if s.cpu.is_finite() { s.cpu } else { 0.0 };
        w.mem = if s.memory_limit_bytes > 0 {
            s.memory_used_bytes as f64 / s.memory_limit_bytes as f64
        } else {
            0.0
        };
        w.sample = Some(s);
        let function = w.function.clone();
        self.dispatch(&function, now, fx);
        self.evaluate(id, now, fx);
    }

    /// Results arrived: record those the worker really holds, then refill it.
    pub fn results(
        &mut self,
        id: &WorkerId,
        results: Vec<pb::WorkerTaskResult>,
        now: Instant,
        fx: &mut Effects,
    ) {
        let Some(function) = self.workers.get(id).map(|w| w.function.clone()) else {
            return;
        };
        for r in results {
            let held = self.workers.get_mut(id).and_then(|w| {
                let pos = w
                    .running
                    .iter()
                    .position(|&(t, a)| t == r.task_id && a == r.attempt)?;
                w.running.swap_remove(pos);
                w.done += 1;
                if w.running.is_empty() {
                    w.idle_since = now;
                }
                Some(())
            });
            let running = self
                .tasks
                .get(&r.task_id)
                .is_some_and(|t| t.state == TaskState::Running && t.attempts == r.attempt);
            if held.is_none() || !running {
                warn!(worker = %id, task = r.task_id, attempt = r.attempt, "ignored a result for a task this worker does not hold");
                continue;
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
            );
        }
        self.dispatch(&function, now, fx);
        self.evaluate(id, now, fx);
    }

    /// A worker's stream ended, whatever the reason: bill its life, return its running
    /// tasks to the front of the pool (or fail those out of attempts), and refill.
    pub fn disconnect(&mut self, id: &WorkerId, conn: u64, now: Instant, fx: &mut Effects) {
        if self.workers.get(id).is_none_or(|w| w.conn != conn) {
            return;
        }
        let Some(w) = self.workers.remove(id) else {
            return;
        };
        let alive = now.saturating_duration_since(w.connected_at);
        let gb_ms = billing::billed_gb_ms(alive, w.memory_mb);
        let lost = w.running.len();
        info!(worker = %id, alive_ms = alive.as_millis() as u64, tasks_done = w.done, lost, "disconnected");
        let max_attempts = self.config.max_attempts;
        let mut requeue = Vec::new();
        let mut failed = Vec::new();
        for (task_id, attempt) in w.running.iter().rev() {
            match self.tasks.get_mut(task_id) {
                Some(t) if t.state == TaskState::Running && t.attempts == *attempt => {
                    if t.attempts >= max_attempts {
                        failed.push((*task_id, t.attempts));
                    } else {
                        t.state = TaskState::Pending;
                        requeue.push(*task_id);
                    }
                }
                _ => {}
            }
        }
        if let Some(f) = self.functions.get_mut(&w.function) {
            f.billed_gb_ms += gb_ms;
            f.workers.remove(id);
            f.running = f.running.saturating_sub((requeue.len() + failed.len()) as u64);
            f.retried += requeue.len() as u64;
            f.pending += requeue.len() as u64;
            for task_id in &requeue {
                warn!(task = task_id, worker = %id, "worker lost; task back to the pool");
                f.pool.push_front(*task_id);
            }
        }
        for (task_id, attempts) in failed {
            warn!(task = task_id, worker = %id, attempts, "worker lost; task out of attempts");
            self.finish(
                task_id,
                pb::TaskResult {
                    task_id,
                    state: TaskState::Failed as i32,
                    error: format!(
                        "task {task_id} failed: its worker was lost on each of {attempts} attempts (last: worker {id} whose stream ended)"
                    ),
                    worker_id: id.to_string(),
                    attempts,
                    ..Default::default()
                },
            );
        }
        let function = w.function.clone();
        self.dispatch(&function, now, fx);
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
        warn!(worker = %id, function = %s.function, reason, backoff_ms = backoff.as_millis() as u64, "spawn failed");
        fx.timers.push((backoff, Timer::Function(s.function.clone())));
        self.dispatch(&s.function, now, fx);
    }
}
