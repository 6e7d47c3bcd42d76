//! Client events: submit, cancel, get, watch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_messages::Bytes;
use carpool_messages::pb::{self, TaskState, coordinator_message::Kind};
use tracing::{debug, info};

use super::{Effects, JournalOp, Observation, Outbound, State, Task, TaskId, Waiter};
use super::{Recovered, StoredTask};
use crate::config::BUILTIN_FUNCTIONS;
use crate::error::{Error, Result};
use crate::scheduler;

/// What a submission still needs once the state has taken it.
#[derive(Debug)]
pub enum Submitted {
    /// Nothing: it is in its pool (no journal), or its key names a task already taken.
    Done(TaskId),
    /// Its record, to write to the journal before it is acknowledged.
    Write(TaskId, Box<StoredTask>),
    /// Its key names a task whose record is still being written (a client retrying while
    /// its first attempt is in flight): it is acknowledged only once that write is, and
    /// refused with that write's error if it fails.
    Pending(TaskId),
}

impl Submitted {
    /// The task's id, whichever way it was taken.
    pub fn id(&self) -> TaskId {
        match self {
            Submitted::Done(id) | Submitted::Write(id, _) | Submitted::Pending(id) => *id,
        }
    }
}

/// The longest idempotency key accepted.
pub(crate) const MAX_KEY_BYTES: usize = 1024;

/// The most task ids one Watch call may follow.
pub(crate) const MAX_WATCH_IDS: usize = 10_000;

/// A task as a client submits it.
#[derive(Clone, Debug, Default)]
pub struct Submission {
    /// The function that runs it.
    pub function: String,
    /// Its input.
    pub payload: Bytes,
    /// Per-attempt timeout; `None`: the coordinator's default.
    pub timeout: Option<Duration>,
    /// Idempotency key; empty: none.
    pub key: String,
    /// When it was submitted (Unix ms), stamped by the caller: the state reads no clock.
    pub submitted_unix_ms: u64,
    /// Finish within this time from now (`SubmitRequest.deadline_ms`); `None`: no deadline.
    /// Checked at submission against what is measured, and not kept past it.
    pub deadline: Option<Duration>,
}

impl Submission {
    /// A submission without timeout or key.
    pub fn new(function: impl Into<String>, payload: Bytes) -> Self {
        Self {
            function: function.into(),
            payload,
            ..Self::default()
        }
    }

    /// What an idempotency key stands for: a stable digest of the function, the timeout and
    /// the payload (SHA-256, first 8 bytes), kept in the journal, so that a key reused with
    /// other parameters is refused also after a restart.
    pub fn fingerprint(&self) -> u64 {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.function.as_bytes());
        h.update([0]);
        h.update(self.timeout.map_or(0, |t| t.as_millis() as u64).to_le_bytes());
        h.update(&self.payload);
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

impl Waiter {
    fn notify(&self, result: &Arc<pb::TaskResult>, effects: &mut Effects) {
        effects.out.push(Outbound::Complete {
            waiter: self.id,
            tag: self.tag,
            result: result.clone(),
        });
    }
}

impl State {
    /// Refuses an empty function name or one a name may not be.
    pub(super) fn check_named(function: &str) -> Result<()> {
        if function.is_empty() {
            return Err(Error::EmptyFunction);
        }
        crate::config::check_function_name(function).map_err(Error::BadFunctionName)
    }

    /// Refuses a function this coordinator does not serve, naming the ones it does.
    pub(super) fn check_served(&self, function: &str) -> Result<()> {
        if self.config.serves(function) {
            return Ok(());
        }
        let known: Vec<String> = match self.config.fleet.spawner {
            crate::config::SpawnerKind::Local => BUILTIN_FUNCTIONS
                .iter()
                .map(|s| (*s).to_owned())
                .chain(self.config.functions.exec.iter().map(|(n, _)| n.clone()))
                .collect(),
            _ => self.config.functions.only.clone(),
        };
        Err(Error::UnknownFunction(function.to_owned(), known.join(", ")))
    }

    /// Checks a submission without changing anything.
    pub fn validate(&self, function: &str, payload_len: usize) -> Result<()> {
        if self.draining {
            return Err(Error::ShuttingDown);
        }
        Self::check_named(function)?;
        if payload_len > self.config.limits.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                size: payload_len,
                limit: self.config.limits.max_payload_bytes,
            });
        }
        self.check_served(function)?;
        if !self.has_room_for(function) {
            return Err(Error::TooManyFunctions(self.config.limits.max_functions));
        }
        Ok(())
    }

    /// Accepts a submission, the one way in: checked, given an id and inserted, all in one
    /// event. Without a journal it enters its pool and is placed at once. With one it waits,
    /// counted as pending but outside the pool, for its record ([`Submitted::Write`]) to be
    /// written: the driver writes it and then calls [`State::accepted`] (or
    /// [`State::not_accepted`]). A known idempotency key returns the task it names, which
    /// `waiter` (if any) then follows; the same key with another submission is refused.
    /// Once half of the reserved ids are handed out, reserves the next block in the journal
    /// (one reservation at a time); ids above what is durable are never handed out.
    fn reserve_ids(&mut self, effects: &mut Effects) {
        if let Some(until) = self.book.reservation(crate::state::ID_BLOCK) {
            debug!(until, "reserving task ids");
            effects.journal.push(JournalOp::Reserve(until));
        }
    }

    /// The journal holds the reservation of the ids below `until`: they may be handed out.
    pub(super) fn ids_reserved(&mut self, until: TaskId) {
        self.book.reserved(until);
    }

    pub(super) fn submit(
        &mut self,
        sub: Submission,
        waiter: Option<Waiter>,
        now: Instant,
        effects: &mut Effects,
    ) -> Result<Submitted> {
        if let Some((existing, fingerprint)) = self.book.by_key(&sub.key) {
            if fingerprint != sub.fingerprint() {
                return Err(Error::IdempotencyKeyReused(sub.key.clone(), existing));
            }
            debug!(task = existing, "idempotent resubmission");
            if let Some(w) = waiter {
                self.readable(existing)?;
                self.follow(existing, w, effects);
            }
            let writing = self.book.get(existing).is_some_and(|t| t.accepting);
            return Ok(if writing {
                Submitted::Pending(existing)
            } else {
                Submitted::Done(existing)
            });
        }
        self.validate(&sub.function, sub.payload.len())?;
        if sub.key.len() > MAX_KEY_BYTES {
            return Err(Error::KeyTooLong(sub.key.len(), MAX_KEY_BYTES));
        }
        let pending: u64 = self
            .functions
            .values()
            .map(|f| f.tasks.pending() + f.tasks.accepting())
            .sum();
        if pending >= self.config.limits.max_pending {
            return Err(Error::PoolFull(pending));
        }
        self.book
            .payload_fits(sub.payload.len(), self.config.limits.max_pending_bytes)?;
        if let Some(timeout) = sub.timeout {
            self.check_life(timeout)?;
        }
        if let Some(deadline) = sub.deadline {
            self.check_deadline(&sub.function, deadline, now)?;
        }
        self.make_room(&sub.function)?;
        let id = self.book.next_id()?;
        self.reserve_ids(effects);
        let fingerprint = sub.fingerprint();
        let record = self.journaled.then(|| StoredTask {
            function: sub.function.clone(),
            payload: sub.payload.clone(),
            timeout_ms: sub.timeout.map_or(0, |t| t.as_millis() as u64),
            key: sub.key.clone(),
            submitted_unix_ms: sub.submitted_unix_ms,
            result: None,
            fingerprint,
            deadline_unix_ms: sub
                .deadline
                .map_or(0, |d| sub.submitted_unix_ms.saturating_add(d.as_millis() as u64)),
        });
        let function = self.function_key(&sub.function);
        let mut task = Task::new(
            function.clone(),
            sub.payload,
            sub.timeout,
            sub.key,
            sub.submitted_unix_ms,
        );
        task.accepting = record.is_some();
        // Collected, not pushed: a vector of exactly what it holds (a push would reserve
        // room for four), kept by every task until it finishes.
        task.waiters = waiter.into_iter().collect();
        if let Some(f) = self.functions.get_mut(&function)
            && f.tasks.pending() + f.tasks.accepting() == 0
        {
            // A new busy spell: the last one's deadlines are behind it.
            f.last_peak = std::mem::take(&mut f.peak_pending);
            f.due = None;
        }
        self.add_task(id, task, fingerprint, now);
        if let Some(f) = self.functions.get_mut(&function) {
            f.peak_pending = f.peak_pending.max(f.tasks.pending() + f.tasks.accepting());
        }
        if let Some(deadline) = sub.deadline
            && let Some(f) = self.functions.get_mut(&function)
        {
            f.urgent_until = f.urgent_until.max(Some(now + deadline));
            let at = now + deadline;
            f.due = Some(f.due.filter(|&d| d > now).map_or(at, |d| d.min(at)));
        }
        debug!(task = id, function = %function, "submitted");
        match record {
            Some(record) => Ok(Submitted::Write(id, Box::new(record))),
            None => {
                self.enter_pool(id, &function, now, effects);
                Ok(Submitted::Done(id))
            }
        }
    }

    /// Refuses a task whose own timeout does not fit in a fresh worker's whole life (with
    /// admission by duration): no worker could run it to its end.
    fn check_life(&self, timeout: Duration) -> Result<()> {
        let life = self.config.fleet.execution_timeout;
        if self.rules.admission == scheduler::Admission::Duration && !scheduler::life::fits(life, timeout) {
            return Err(Error::LongerThanLife {
                timeout_ms: timeout.as_millis() as u64,
                life_ms: life.as_millis() as u64,
                slack_ms: scheduler::life::ADMISSION_SLACK.as_millis() as u64,
            });
        }
        Ok(())
    }

    /// Refuses a deadline that even the soonest finish misses, by what is measured of
    /// `function`: nothing measured yet, nothing refused.
    fn check_deadline(&self, function: &str, deadline: Duration, now: Instant) -> Result<()> {
        let ms = |s: f64| (s * 1000.0).round() as u64;
        if deadline.is_zero() {
            return Err(Error::DeadlineUnreachable(
                "the deadline has passed before the task was submitted".to_owned(),
            ));
        }
        let Some(f) = self.functions.get(function) else {
            return Ok(());
        };
        let Some(task) = f.reach.typical() else {
            return Ok(());
        };
        let ahead = f.tasks.pending() + f.tasks.accepting();
        let first = f.reach.to_first_result();
        // At the size that finishes soonest by what is measured there (a deadline moves new
        // workers to it), else at the size new workers get, by the function's recent median.
        let (size, _) = self.choose_size(function, now);
        let fastest = self
            .sizes
            .iter()
            .filter_map(|&s| {
                let task = f.durations.get(&s)?.median()?.as_secs_f64();
                Some((self.soonest_at(f, function, s, task, ahead)?, task, s))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let (soonest, task, size) = match fastest {
            Some((soonest, task, s)) => (Some(soonest), task, s),
            None => (self.soonest_at(f, function, size, task, ahead), task, size),
        };
        let per_worker = scheduler::new_worker_capacity(&self.rules, self.learned_limit(function, size));
        let possible = (self.workers.of(function) + self.spawns.of(function) as usize) as u64
            + self.fleet_room(function) as u64;
        match soonest {
            Some(soonest) if soonest > deadline.as_secs_f64() => Err(Error::DeadlineUnreachable(format!(
                "the deadline of {} ms cannot be met: the soonest this task can finish is about {} ms ({ahead} tasks ahead of it, {} ms a task at {size} MB, a new worker's first result in {} ms, at most {possible} workers of {per_worker})",
                deadline.as_millis(),
                ms(soonest),
                ms(task),
                first.map_or_else(|| "?".to_owned(), |s| ms(s).to_string()),
            ))),
            _ => Ok(()),
        }
    }

    /// Task `id`'s record is on disk: it enters its pool (unless cancelled meanwhile).
    pub(super) fn accepted(&mut self, id: TaskId, now: Instant, effects: &mut Effects) {
        if !self.book.get(id).is_some_and(|t| t.accepting) {
            return;
        }
        let entered = self.update_task(id, |t| {
            t.accepting = false;
            (t.state == TaskState::Pending).then(|| t.function.clone())
        });
        if let Some(Some(function)) = entered {
            self.enter_pool(id, &function, now, effects);
        }
    }

    /// Task `id`'s record could not be written (`why`): it is forgotten, its key freed, and
    /// whoever followed it through its key is told.
    pub(super) fn not_accepted(&mut self, id: TaskId, why: &str, effects: &mut Effects) {
        if !self.book.get(id).is_some_and(|t| t.accepting) {
            return;
        }
        let Some(t) = self.remove_task(id) else {
            return;
        };
        let result = Arc::new(pb::TaskResult {
            task_id: id,
            state: TaskState::Failed as i32,
            error: format!("task {id} was not accepted: {why}"),
            ..Default::default()
        });
        for w in &t.waiters {
            w.notify(&result, effects);
        }
    }

    /// Puts pending task `id` at the back of its pool and places what can be placed.
    fn enter_pool(&mut self, id: TaskId, function: &Arc<str>, now: Instant, effects: &mut Effects) {
        let bounded = self.book.get(id).is_some_and(|t| t.timeout.is_some());
        if let Some(f) = self.functions.get_mut(function) {
            f.queue(id, bounded);
        }
        self.dispatch(function, now, effects);
    }

    /// Makes `waiter` follow task `id` (now, if it has finished; from the journal, if its
    /// result was evicted: see [`State::readable`]).
    fn follow(&mut self, id: TaskId, waiter: Waiter, effects: &mut Effects) {
        if let Some(task) = self.book.get_mut(id) {
            match task.result() {
                Some(r) => waiter.notify(r, effects),
                None if task.evicted() => effects.out.push(Outbound::Load {
                    waiter: waiter.id,
                    tag: waiter.tag,
                    task: id,
                }),
                None => {
                    // Room for exactly this one (a push would reserve four).
                    task.waiters.reserve_exact(1);
                    task.waiters.push(waiter);
                }
            }
        }
    }

    /// Whether task `id`'s result can be given to a waiter: refused if it was evicted from
    /// memory and no journal keeps it.
    fn readable(&self, id: TaskId) -> Result<()> {
        match self.book.get(id) {
            Some(t) if t.evicted() && !self.journaled => {
                Err(Error::ResultEvicted(id, t.state.as_str_name().to_owned()))
            }
            _ => Ok(()),
        }
    }

    /// Bytes held in memory: payloads of unfinished tasks, and results.
    pub fn held_bytes(&self) -> (u64, u64) {
        self.book.held_bytes()
    }

    /// Loads what a journal held: finished tasks keep their results; unfinished ones go
    /// back to their pools (in id order), except those that were running, which are held
    /// back for the reconnect grace so that their workers can claim them; keys, attempt
    /// counts, learned levels and the id counter carry on.
    pub(super) fn restore(&mut self, recovered: Recovered, now: Instant, effects: &mut Effects) {
        let mut functions = Vec::new();
        let mut with_pending = std::collections::HashSet::new();
        let (mut pending, mut done, mut deadlines) = (0usize, 0usize, 0usize);
        let now_unix = recovered.unix_ms;
        let hold_back = !self.config.fleet.reconnect_grace.is_zero();
        for (id, stored, started) in recovered.tasks {
            let key = self.function_key(&stored.function);
            let result = stored.result.map(Arc::new);
            let state = result.as_ref().map_or(TaskState::Pending, |r| r.state());
            let held = state == TaskState::Pending && started > 0 && hold_back;
            let mut task = Task::new(
                key.clone(),
                stored.payload,
                (stored.timeout_ms > 0).then(|| Duration::from_millis(stored.timeout_ms)),
                stored.key,
                stored.submitted_unix_ms,
            );
            task.held = held;
            // A running attempt that is not held back for its worker was lost to the
            // restart: it does not count against `--max-attempts`.
            task.attempts = if hold_back {
                started
            } else {
                started.saturating_sub(1)
            };
            self.add_task(id, task.restored(result), stored.fingerprint, now);
            // A deadline still ahead hurries its function again, as at its submission.
            if state == TaskState::Pending
                && now_unix > 0
                && let Some(left) = stored.deadline_unix_ms.checked_sub(now_unix).filter(|&l| l > 0)
                && let Some(f) = self.functions.get_mut(&key)
            {
                let at = now + Duration::from_millis(left);
                f.urgent_until = f.urgent_until.max(Some(at));
                f.due = Some(f.due.map_or(at, |d| d.min(at)));
                deadlines += 1;
            }
            if held {
                pending += 1;
            } else if state == TaskState::Pending {
                let bounded = self.book.get(id).is_some_and(|t| t.timeout.is_some());
                if let Some(f) = self.functions.get_mut(&key) {
                    f.queue(id, bounded);
                }
                pending += 1;
                with_pending.insert(key.clone());
            }
            if state != TaskState::Pending {
                done += 1;
            }
            if !functions.contains(&key) {
                functions.push(key);
            }
        }
        self.book.evict();
        self.book.restore_ids(recovered.next_id, recovered.reserved_until);
        for ((function, memory_mb), level) in recovered.learned {
            let key = self.function_key(&function);
            self.learned.learn(&key, memory_mb, level);
        }
        for ((function, memory_mb), cost) in recovered.costs {
            let key = self.function_key(&function);
            self.learned.restore_cost(&key, memory_mb, cost);
        }
        info!(
            pending,
            held_back = self.book.held_count(),
            done,
            deadlines,
            next_id = self.book.peek_id(),
            "restored from the journal"
        );
        if self.book.held_count() > 0 {
            effects
                .timers
                .push((self.config.fleet.reconnect_grace, super::Timer::Orphans));
        }
        if hold_back && !with_pending.is_empty() {
            let pause = super::RESTART_SETTLE.min(self.config.fleet.reconnect_grace);
            effects.timers.push((pause, super::Timer::Settled));
            self.settling = with_pending;
        }
        for f in functions {
            self.dispatch(&f, now, effects);
        }
    }

    /// Forgets finished tasks older than the retention (memory and journal).
    pub(super) fn expire(&mut self, now: Instant, effects: &mut Effects) {
        let retention = self.config.limits.result_retention;
        while let Some(id) = self.book.expired(now, retention) {
            if self.remove_task(id).is_some() && self.journaled {
                effects.journal.push(JournalOp::Forget(id));
            }
        }
    }

    /// Records a task's final result, wakes its waiters and frees its payload.
    pub(super) fn finish(
        &mut self,
        id: TaskId,
        mut result: pb::TaskResult,
        now: Instant,
        effects: &mut Effects,
    ) {
        let Some(task) = self.book.get_mut(id) else {
            return;
        };
        result.billed_gb_s = task.spent_gb_ms / 1000.0;
        let state = result.state();
        // The task moves to its end (and its function's counts with it).
        super::counts::change_task(&mut self.functions, task, |task| task.state = state);
        let since = |from: u64, to: u64| (from > 0 && to >= from).then(|| to - from);
        if state == TaskState::Failed {
            let mut error = result.error.clone();
            if error.len() > super::effects::FAILURE_TEXT {
                let mut cut = super::effects::FAILURE_TEXT;
                while !error.is_char_boundary(cut) {
                    cut -= 1;
                }
                error.truncate(cut);
            }
            effects.observed.push(Observation::Failed {
                function: task.function.clone(),
                task_id: id,
                worker_id: result.worker_id.clone(),
                error,
            });
        }
        effects.observed.push(Observation::Finished {
            function: task.function.clone(),
            to_start_ms: since(task.submitted_unix_ms, result.started_unix_ms),
            execution_ms: since(result.started_unix_ms, result.finished_unix_ms),
            to_result_ms: since(task.submitted_unix_ms, result.finished_unix_ms),
        });
        let result = Arc::new(result);
        // Taken, not drained: a finished task keeps no waiter buffer.
        for w in std::mem::take(&mut task.waiters) {
            w.notify(&result, effects);
        }
        if self.journaled {
            effects.journal.push(JournalOp::Finish(id, result.clone()));
        }
        self.book.finish(id, result, now);
    }

    /// Cancels a task: a pending one leaves the pool, a running one is cancelled on its
    /// worker (whose slot is freed at once). Returns the state after the call.
    pub(super) fn cancel(&mut self, id: TaskId, now: Instant, effects: &mut Effects) -> Result<TaskState> {
        self.end_early(id, format!("task {id} was cancelled by a client"), now, effects)
    }

    /// Ends the pending tasks waiter `who` follows, CANCELLED with `reason` (a Map call
    /// whose budget is spent); running ones finish, and a task still being written to the
    /// journal enters its pool as usual. Returns how many ended.
    pub(super) fn stop_pending(
        &mut self,
        who: super::WaiterId,
        reason: &str,
        now: Instant,
        effects: &mut Effects,
    ) -> usize {
        let ids: Vec<TaskId> = self
            .functions
            .values()
            .flat_map(|f| f.pool.iter().copied())
            .filter(|&id| {
                self.book.get(id).is_some_and(|t| {
                    t.state == TaskState::Pending && !t.accepting && t.waiters.iter().any(|w| w.id == who)
                })
            })
            .collect();
        for &id in &ids {
            let _ = self.end_early(id, reason.to_owned(), now, effects);
        }
        if !ids.is_empty() {
            info!(waiter = who.0, tasks = ids.len(), reason, "stopped pending tasks");
        }
        ids.len()
    }

    /// Ends a pending or running task early, CANCELLED with `error`: a pending one leaves
    /// the pool, a running one is cancelled on its worker (whose slot is freed at once).
    fn end_early(
        &mut self,
        id: TaskId,
        error: String,
        now: Instant,
        effects: &mut Effects,
    ) -> Result<TaskState> {
        let task = self.book.get(id).ok_or(Error::UnknownTask(id))?;
        let (state, function, worker, attempts) = (
            task.state,
            task.function.clone(),
            task.worker.clone(),
            task.attempts,
        );
        match state {
            // It leaves its count as it ends (see `finish`); the pool skips it.
            TaskState::Pending => {}
            TaskState::Running => {
                if let Some(wid) = &worker
                    && let Some(w) = self.workers.get_mut(wid)
                {
                    w.release(id, now);
                    w.send(Kind::Cancel(pb::Cancel { task_ids: vec![id] }), effects);
                }
            }
            done => return Ok(done),
        }
        info!(
            task = id,
            worker = worker.as_ref().map(|w| w.as_str()),
            "cancelled"
        );
        self.finish(
            id,
            pb::TaskResult {
                task_id: id,
                state: TaskState::Cancelled as i32,
                error,
                worker_id: worker.as_ref().map(|w| w.to_string()).unwrap_or_default(),
                attempts,
                ..Default::default()
            },
            now,
            effects,
        );
        if let Some(wid) = worker {
            self.dispatch_after_change(&function, Some(&wid), now, effects);
            self.evaluate(&wid, now, effects);
        }
        Ok(TaskState::Cancelled)
    }

    /// The task submitted with idempotency key `key` (NOT_FOUND if none).
    pub fn task_by_key(&self, key: &str) -> Result<TaskId> {
        self.book
            .by_key(key)
            .map(|(id, _)| id)
            .ok_or_else(|| Error::UnknownKey(key.to_owned()))
    }

    /// Everything known about one task. A finished task whose result was evicted has
    /// `result: None` with a journal (the caller reads it from there) and is refused
    /// without one.
    pub fn get(&self, id: TaskId) -> Result<pb::TaskInfo> {
        self.readable(id)?;
        let t = self.book.get(id).ok_or(Error::UnknownTask(id))?;
        Ok(pb::TaskInfo {
            task_id: id,
            function: t.function.to_string(),
            state: t.state as i32,
            attempts: t.attempts,
            worker_id: t.worker.as_ref().map(|w| w.to_string()).unwrap_or_default(),
            submitted_unix_ms: t.submitted_unix_ms,
            result: t.result().map(|r| r.as_ref().clone()),
        })
    }

    /// Subscribes waiter `who` to the results of `ids` (tag = task id): finished ones are
    /// sent at once. Every id is checked before anything is subscribed. Returns how many
    /// distinct results will be delivered.
    pub(super) fn watch(
        &mut self,
        ids: &[TaskId],
        who: super::WaiterId,
        effects: &mut Effects,
    ) -> Result<usize> {
        if ids.len() > MAX_WATCH_IDS {
            return Err(Error::TooManyIds(ids.len(), MAX_WATCH_IDS));
        }
        if let Some(missing) = ids.iter().find(|id| !self.book.contains(**id)) {
            return Err(Error::UnknownTask(*missing));
        }
        for id in ids {
            self.readable(*id)?;
        }
        let mut unique: Vec<TaskId> = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        for id in &unique {
            self.follow(*id, Waiter { id: who, tag: *id }, effects);
        }
        Ok(unique.len())
    }
}
