//! What a connected worker reports: resource samples (which move its limit and its place
//! in the index) and results (which free its slots and end tasks).

use std::time::{Duration, Instant};

use carpool_messages::payload;
use carpool_messages::pb::{self, TaskState, coordinator_message::Kind, worker_task_result::Outcome};
use tracing::{debug, trace};

use super::{Effects, State, WorkerId};
use crate::billing;
use crate::error::{Error, Result};
use crate::scheduler::{self, Learned, Verdict};

/// The largest CPU figure a sample may carry: a worker allotted a small share of a vCPU
/// (Lambda at 128 MB) that bursts over every core of a large machine.
const MAX_CPU_FRACTION: f64 = 1024.0;
/// The most CPU wait a sample may report, over the allotment (threads waiting for a CPU:
/// far more than any worker runs).
const MAX_CPU_WAIT: f64 = 1_048_576.0;

/// The longest a runtime copy's init may be reported to take: Lambda's longest invocation
/// (15 minutes). Longer is nonsense, and would hold the function's scale-out back.
const MAX_COPY_INIT_MS: u32 = 900_000;

/// How many times its limit a worker's memory may be reported at: a local process is not
/// stopped at its memory size (a Lambda instance would be), so a worker over it is real, if
/// out of memory; beyond this the figure is nonsense.
const MAX_MEMORY_OVER_LIMIT: u64 = 1024;

impl State {
    /// A resource sample arrived. Impossible values are a protocol violation.
    pub(super) fn sample(
        &mut self,
        id: &WorkerId,
        s: pb::ResourceSample,
        now: Instant,
        effects: &mut Effects,
    ) -> Result<()> {
        let Some(w) = self.workers.get_mut(id) else {
            return Ok(());
        };
        let problem = if !s.cpu.is_finite() || !(0.0..=MAX_CPU_FRACTION).contains(&s.cpu) {
            Some(format!(
                "cpu {} is not a fraction of the vCPU allotment in [0, {MAX_CPU_FRACTION}]",
                s.cpu
            ))
        } else if !s.cpu_wait.is_finite() || !(0.0..=MAX_CPU_WAIT).contains(&s.cpu_wait) {
            Some(format!(
                "cpu_wait {} is not a fraction of the vCPU allotment in [0, {MAX_CPU_WAIT}]",
                s.cpu_wait
            ))
        } else if s.copy_init_ms > MAX_COPY_INIT_MS {
            Some(format!(
                "copy_init_ms {} is longer than a worker's longest life ({MAX_COPY_INIT_MS} ms)",
                s.copy_init_ms
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
            wait: s.cpu_wait,
            mem: w.mem,
            running: s.running_tasks,
            youngest: Duration::from_millis(u64::from(s.youngest_task_ms)),
            peak: s.memory_peak_bytes as f64 / s.memory_limit_bytes as f64,
        };
        // A worker's copies' init, when it reports a new figure (a sample repeats it).
        let copy_init = (s.copy_init_ms > 0
            && w.sample.as_ref().is_none_or(|p| p.copy_init_ms != s.copy_init_ms))
        .then(|| (Duration::from_millis(u64::from(s.copy_init_ms)), w.vcpus));
        w.sample = Some(s);
        let (before, was_settled) = (w.limit.value(), w.limit.settled());
        // A worker whose admissions have just ended for time is no longer filled: its
        // completions fall off as it drains, which says nothing of its level (a rise judged
        // on them would be undone, and the level it proved never learned). Tasks with a
        // timeout of their own that still fit fill it again, and windows are judged again.
        if !w.drained && scheduler::assess(&self.rules, &w.view(now)) == Verdict::Draining {
            w.drained = true;
            w.limit.unfilled();
        }
        let moved = w.limit.observe(&w.limit_params, observation, now);
        // What the controller saw and did, for replaying a run in its unit tests.
        trace!(worker = %id, cpu = observation.cpu, wait = observation.wait, mem = observation.mem, peak = observation.peak, running = observation.running, youngest_ms = observation.youngest.as_millis() as u64, limit = w.limit.value(), "limit sample");
        let (after, settled) = (w.limit.value(), w.limit.settled());
        // The first time it runs its whole level, the cost of reaching a level from cold
        // is known (its spawn, its runtime copies' init, paced).
        let reached = (!w.reached && observation.running >= before.max(1)).then(|| {
            w.reached = true;
            now.saturating_duration_since(w.billed_from)
        });
        let function = w.function.clone();
        let memory_mb = w.memory_mb;
        let peak = w.peak_mem;
        let teaches = !w.before_relearn;
        if after != before {
            debug!(worker = %id, from = before, to = after, why = ?moved, "concurrency limit moved");
            w.send(Kind::Limit(pb::Limit { slots: after }), effects);
        }
        if let Some(f) = self.functions.get_mut(&function) {
            f.peak_mem = f.peak_mem.max(peak);
            if let Some(after) = reached {
                f.reach.level_reached(after);
            }
            if let Some((init, vcpus)) = copy_init {
                f.reach.copy_init(init, vcpus);
            }
        }
        if teaches && settled && (after != before || !was_settled) {
            let level = Learned {
                level: after,
                settled: true,
            };
            self.learn(&function, memory_mb, level, effects);
        }
        self.dispatch_after_change(&function, Some(id), now, effects);
        self.evaluate(id, now, effects);
        self.rearm_successor(id, now, effects);
        Ok(())
    }

    /// Results arrived: record those the worker holds, ignore late ones for tasks taken
    /// from it, refuse those it never held. Then refill it.
    pub(super) fn results(
        &mut self,
        id: &WorkerId,
        results: Vec<pb::WorkerTaskResult>,
        now: Instant,
        effects: &mut Effects,
    ) -> Result<()> {
        let Some(w) = self.workers.get(id) else {
            return Ok(());
        };
        let function = w.function.clone();
        for r in &results {
            let held = w.running.iter().any(|&(t, _)| t == r.task_id) || w.released.contains(&r.task_id);
            if !self.book.contains(r.task_id) {
                return Err(Error::ResultForUnknownTask(id.to_string(), r.task_id));
            }
            if !held {
                return Err(Error::ResultNotHeld(id.to_string(), r.task_id));
            }
        }
        let max_output = self.config.limits.max_payload_bytes;
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
            // The tasks this attempt shared its worker with, itself included.
            let sharing = w.running.len();
            w.running.swap_remove(pos);
            let first = w.done == 0;
            w.done += 1;
            let took = match r.duration_us {
                0 => Duration::from_millis(r.finished_unix_ms.saturating_sub(r.started_unix_ms)),
                us => Duration::from_micros(us),
            };
            let spawned_for = now.saturating_duration_since(w.billed_from);
            w.limit.completed(took);
            // A task with its own timeout that took more than a share of it: the level
            // stretched it toward its bound.
            let bound = self.book.get(r.task_id).and_then(|t| t.timeout);
            if bound.is_some_and(|b| took.as_secs_f64() > b.as_secs_f64() * scheduler::limit::BOUND_SHARE) {
                w.limit.near_bound(now.checked_sub(took).unwrap_or(now));
            }
            trace!(worker = %id, task = r.task_id, duration_us = took.as_micros() as u64, "limit completion");
            let memory_mb = w.memory_mb;
            if w.running.is_empty() {
                w.idle_since = now;
            }
            // What this attempt alone would bill (Lambda's way), and its share of its worker.
            let alone = billing::billed_gb_ms(took, memory_mb);
            let share = self
                .learned
                .cost(&function, memory_mb)
                .per_task()
                .unwrap_or(alone / sharing.max(1) as f64);
            self.update_task(r.task_id, |t| t.spent_gb_ms += share);
            let bounded = bound.is_some();
            if let Some(f) = self.functions.get_mut(&function) {
                f.request_gb_ms += alone;
                f.requests += 1;
                f.reach.task(took);
                f.durations(memory_mb).push(took, bounded);
                if first {
                    f.reach.first_result(spawned_for, took);
                }
            }
            let (state, output, error) = match r.outcome {
                Some(Outcome::Output(bytes)) if bytes.len() > max_output => (
                    TaskState::Failed,
                    None,
                    format!(
                        "the task's output of {} bytes is over the limit of {max_output} bytes (--max-payload-bytes)",
                        bytes.len()
                    ),
                ),
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
                    // Set from the task's attempts in `finish`.
                    billed_gb_s: 0.0,
                },
                now,
                effects,
            );
        }
        self.dispatch_after_change(&function, Some(id), now, effects);
        self.evaluate(id, now, effects);
        Ok(())
    }
}
