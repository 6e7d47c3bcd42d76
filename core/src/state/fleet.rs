//! The fleet's timers and spawn outcomes: task timeouts, the liveness sweep, tasks held back
//! after a restart, and what spawners report (started, failed, exited).

use std::time::Instant;

use carpool_messages::pb::{self, TaskState, coordinator_message::Kind};
use tracing::{info, warn};

use super::{Effects, JournalOp, Observation, State, TaskId, Timer, WorkerId};
use crate::error::Error;
use crate::scheduler;

/// The longest a spawn failure's reason is kept (Stats, logs).
const MAX_REASON_CHARS: usize = 300;

/// A failure's reason on one line: whitespace (an emulator's whole HTML page, say)
/// collapsed, and cut short.
pub(super) fn one_line(reason: &str) -> String {
    let mut line = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = line.char_indices().nth(MAX_REASON_CHARS) {
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

impl State {
    /// A task attempt's timer fired: if that attempt still runs, cancel it on its worker
    /// and give it back (or fail it).
    pub(super) fn time_out(&mut self, id: TaskId, attempt: u32, now: Instant, effects: &mut Effects) {
        let Some(t) = self.book.get(id) else {
            return;
        };
        if t.state != TaskState::Running || t.attempts != attempt {
            return;
        }
        let limit = t.timeout.or(self.config.limits.task_timeout).unwrap_or_default();
        let (function, worker) = (t.function.clone(), t.worker.clone());
        let mut on = None;
        if let Some(wid) = &worker
            && let Some(w) = self.workers.get_mut(wid)
        {
            on = Some((w.memory_mb, w.running.len()));
            // Past its own timeout: the level stretched it past its bound (a timeout set for
            // every task by --task-timeout is the operator's, and says nothing of the level).
            if t.timeout.is_some() {
                w.limit.near_bound(t.attempt_started.unwrap_or(now));
            }
            w.release(id, now);
            w.send(Kind::Cancel(pb::Cancel { task_ids: vec![id] }), effects);
        }
        if let Some(f) = self.functions.get_mut(&function) {
            f.timed_out += 1;
        }
        let cause = format!("it ran past its timeout of {} ms", limit.as_millis());
        self.give_back(&[(id, attempt)], on, &cause, now, effects);
        self.dispatch_after_change(&function, worker.as_ref(), now, effects);
        if let Some(wid) = worker {
            self.evaluate(&wid, now, effects);
        }
    }

    /// The liveness sweep: finalizes workers silent past their lease (telling them, so a
    /// live one reconnects) and detached workers past the reconnect grace; writes off spawns
    /// that never connected; forgets results past their retention.
    pub(super) fn sweep(&mut self, now: Instant, effects: &mut Effects) {
        self.expire(now, effects);
        let lease = self.config.fleet.liveness_lease();
        let grace = self.config.fleet.reconnect_grace;
        // The sweep runs many times a lease. A gap of half a lease or more since the last
        // one is this process's own pause (a stalled VM, SIGSTOP, a long page-in): its
        // workers' silence is its own, so they get a fresh lease and grace, not a write-off.
        let gap = self
            .last_sweep
            .replace(now)
            .map(|last| now.saturating_duration_since(last));
        if let Some(gap) = gap.filter(|g| *g >= lease / 2) {
            warn!(
                paused_ms = gap.as_millis() as u64,
                workers = self.workers.len(),
                "this coordinator was paused; its workers get a fresh lease"
            );
            for w in self.workers.values_mut() {
                w.last_seen = w.last_seen.max(now);
                if let Some(since) = w.detached_since.as_mut() {
                    *since = (*since).max(now);
                }
            }
            return;
        }
        let mut gone = Vec::new();
        for (id, w) in self.workers.iter() {
            match w.detached_since {
                Some(since) if now.saturating_duration_since(since) >= grace => {
                    gone.push((id.clone(), false));
                }
                None if now.saturating_duration_since(w.last_seen) > lease => {
                    gone.push((id.clone(), true));
                }
                _ => {}
            }
        }
        // In id order, so their tasks go back to the pool in the same order every time.
        gone.sort();
        for (id, silent) in gone {
            if silent {
                let cause = "its worker went silent past its liveness lease";
                let error = Error::WrittenOff(id.to_string(), humantime::format_duration(lease).to_string());
                self.finalize(&id, cause, Some(error), now, effects);
            } else {
                let cause = "its worker did not reconnect within the grace period";
                self.finalize(&id, cause, None, now, effects);
            }
        }
        let start_timeout = self.config.fleet.start_timeout;
        let never_connected = self.spawns.overdue(now, start_timeout);
        if never_connected.is_empty() {
            return;
        }
        let reason = format!(
            "the worker did not connect within the start timeout of {}",
            humantime::format_duration(start_timeout)
        );
        for id in never_connected {
            // It may still start (Lambda queues an Event invoke it cannot run yet).
            self.spawns.write_off(&id);
            self.spawn_failed(&id, "no_hello", &reason, now, effects);
        }
    }

    /// Tasks held back after a restart that no worker claimed within the grace go back to
    /// work, to the front of their pools. The attempt the restart cost them is not counted
    /// against `--max-attempts` (it is given back, in the journal too): a coordinator's
    /// restart is not the task's fault.
    pub(super) fn release_orphans(&mut self, now: Instant, effects: &mut Effects) {
        let orphans = self.book.take_held();
        if orphans.is_empty() {
            return;
        }
        info!(
            tasks = orphans.len(),
            "tasks running at the restart and claimed by no worker go back to work, their attempt not counted"
        );
        let mut functions = Vec::new();
        for id in orphans.into_iter().rev() {
            let released = self.update_task(id, |t| {
                let held = std::mem::take(&mut t.held);
                (held && t.state == TaskState::Pending).then(|| {
                    t.attempts = t.attempts.saturating_sub(1);
                    (t.function.clone(), t.attempts)
                })
            });
            let Some(Some((function, attempts))) = released else {
                continue;
            };
            if self.journaled {
                effects.journal.push(JournalOp::Started(id, attempts));
            }
            if let Some(f) = self.functions.get_mut(&function) {
                f.pool.push_front(id);
                f.retried += 1;
            }
            if !functions.contains(&function) {
                functions.push(function);
            }
        }
        for f in functions {
            self.dispatch(&f, now, effects);
        }
    }

    /// How many more workers of `function` may start (see [`scheduler::fleet_room`]).
    pub(super) fn fleet_room(&self, function: &str) -> usize {
        let of_function = self.workers.of(function) + self.spawns.of(function) as usize;
        let total = self.workers.len() + self.spawns.len();
        scheduler::fleet_room(
            of_function,
            total,
            self.config.fleet.max_workers,
            self.config.fleet.max_fleet,
        )
    }

    /// Whether `function`'s fleet (or the whole fleet) is at its cap.
    pub(super) fn fleet_full(&self, function: &str) -> bool {
        self.fleet_room(function) == 0
    }

    /// The spawner started the worker; `instance` says where (a pid, a request id).
    pub(super) fn spawned(&mut self, id: &WorkerId, instance: String) {
        if self.spawns.contains(id) {
            self.spawns.started(id, instance);
        } else if let Some(w) = self.workers.get_mut(id)
            && w.instance.is_empty()
        {
            w.instance = instance;
        }
    }

    /// What a spawner reported about a spawn.
    pub(super) fn spawn_outcome(
        &mut self,
        outcome: super::SpawnOutcome,
        now: Instant,
        effects: &mut Effects,
    ) {
        match outcome {
            super::SpawnOutcome::Started { id, instance } => self.spawned(&id, instance),
            super::SpawnOutcome::Failed { id, reason } => {
                self.spawn_failed(&id, "spawner", &reason, now, effects);
            }
            super::SpawnOutcome::Exited { id, reason } => self.process_exited(&id, &reason, now, effects),
        }
    }

    /// The worker's process ended. Still starting: a failed spawn. Connected or waiting to
    /// reconnect: it will not, so it is written off now rather than after the grace.
    pub(crate) fn process_exited(
        &mut self,
        id: &WorkerId,
        reason: &str,
        now: Instant,
        effects: &mut Effects,
    ) {
        if self.spawns.contains(id) {
            self.spawn_failed(id, "exited", reason, now, effects);
        } else if self.workers.contains_key(id) {
            self.finalize(id, "its worker process exited", None, now, effects);
        }
    }

    /// A spawn failed, or the worker ended before it said hello: release the capacity it
    /// reserved and try again after a backoff, so pending tasks are never stranded. After
    /// `--max-spawn-failures` failures in a row, the function's pending tasks fail with the
    /// cause instead (a function no worker can run is not respawned for ever).
    /// `kind` names the failure for the metrics (see [`Observation::SpawnFailed`]).
    pub(crate) fn spawn_failed(
        &mut self,
        id: &WorkerId,
        kind: &'static str,
        reason: &str,
        now: Instant,
        effects: &mut Effects,
    ) {
        let Some(s) = self.spawns.end(id) else {
            return;
        };
        effects.observed.push(Observation::SpawnFailed(kind));
        let reason = one_line(reason);
        let limit = self.config.fleet.max_spawn_failures;
        let Some(f) = self.functions.get_mut(&s.function) else {
            return;
        };
        f.spawn_failures += 1;
        f.consecutive_spawn_failures += 1;
        let backoff = scheduler::spawn_backoff(f.consecutive_spawn_failures);
        f.spawn_blocked_until = Some(now + backoff);
        f.last_spawn_error.clone_from(&reason);
        f.last_spawn_error_at = Some(now);
        let given_up = scheduler::give_up_spawning(f.consecutive_spawn_failures, limit);
        warn!(worker = %id, function = %s.function, reason, backoff_ms = backoff.as_millis() as u64, "spawn failed");
        if given_up {
            f.consecutive_spawn_failures = 0;
            let cause = format!(
                "no worker of function {} could be started ({limit} spawns in a row failed; the last: {reason})",
                s.function
            );
            self.fail_pending(&s.function, &cause, now, effects);
        }
        effects
            .timers
            .push((backoff, Timer::Function(s.function.clone())));
        self.dispatch(&s.function, now, effects);
    }

    /// Fails every pending task of `function` with `cause`.
    fn fail_pending(&mut self, function: &str, cause: &str, now: Instant, effects: &mut Effects) {
        let Some(f) = self.functions.get_mut(function) else {
            return;
        };
        // Each leaves its count as it fails (see `finish`).
        let pool = std::mem::take(&mut f.pool);
        warn!(
            function,
            tasks = pool.len(),
            cause,
            "failing the function's pending tasks"
        );
        for id in pool {
            if self.book.get(id).is_some_and(|t| t.state == TaskState::Pending) {
                let result = pb::TaskResult {
                    task_id: id,
                    state: TaskState::Failed as i32,
                    error: format!("task {id} failed: {cause}"),
                    ..Default::default()
                };
                self.finish(id, result, now, effects);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_one_short_line() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
        let page = "<html>\n<body>".repeat(100);
        let line = one_line(&page);
        assert!(
            !line.contains('\n') && line.chars().count() <= MAX_REASON_CHARS + 3,
            "{line}"
        );
    }
}
