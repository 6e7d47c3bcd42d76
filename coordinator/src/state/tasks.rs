//! Client events: submit, cancel, get, watch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_proto::Bytes;
use carpool_proto::pb::{self, TaskState, coordinator_message::Kind};
use tracing::{debug, info};

use super::{Effects, JournalOp, Outbound, State, Task, TaskId, Waiter, unix_ms};
use crate::config::BUILTIN_FUNCTIONS;
use crate::error::{Error, Result};
use crate::journal::Recovered;

/// The id a submission gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// A new task with this id.
    New(TaskId),
    /// Its idempotency key already names this task.
    Existing(TaskId),
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
    fn notify(&self, result: &Arc<pb::TaskResult>, fx: &mut Effects) {
        fx.out.push(Outbound::Complete {
            waiter: self.id,
            tag: self.tag,
            result: result.clone(),
        });
    }
}

impl State {
    /// Checks a submission without changing anything.
    pub fn validate(&self, function: &str, payload_len: usize) -> Result<()> {
        if self.draining {
            return Err(Error::ShuttingDown);
        }
        if function.is_empty() {
            return Err(Error::EmptyFunction);
        }
        crate::config::check_function_name(function).map_err(Error::BadFunctionName)?;
        if payload_len > self.config.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                size: payload_len,
                limit: self.config.max_payload_bytes,
            });
        }
        if !self.config.serves(function) {
            let known: Vec<String> = match self.config.spawner {
                crate::config::SpawnerKind::Local => BUILTIN_FUNCTIONS
                    .iter()
                    .map(|s| (*s).to_owned())
                    .chain(self.config.exec_functions.iter().map(|(n, _)| n.clone()))
                    .collect(),
                _ => self.config.functions.clone(),
            };
            return Err(Error::UnknownFunction(function.to_owned(), known.join(", ")));
        }
        if !self.has_room_for(function) {
            return Err(Error::TooManyFunctions(self.config.max_functions));
        }
        Ok(())
    }

    /// Accepts a task into its function's pool and places it at once if a worker can
    /// take it; `waiter` (if any) gets its result. A known idempotency key returns the
    /// task it was first used for (and `waiter` follows that task). Without a journal this
    /// is the whole of a submission; with one, the service calls [`State::reserve`], writes
    /// the task, then [`State::insert`].
    pub fn submit(
        &mut self,
        sub: Submission,
        waiter: Option<Waiter>,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<TaskId> {
        match self.reserve(&sub)? {
            Reserved::Existing(id) => {
                if let Some(w) = waiter {
                    self.follow(id, w, fx);
                }
                Ok(id)
            }
            Reserved::New(id) => {
                self.insert(id, sub, waiter, now, fx);
                Ok(id)
            }
        }
    }

    /// Checks a submission and gives it an id (or the id its idempotency key already has),
    /// changing nothing else.
    pub fn reserve(&mut self, sub: &Submission) -> Result<Reserved> {
        if let Some(&(existing, fingerprint)) = self.keys.get(&sub.key) {
            if fingerprint != sub.fingerprint() {
                return Err(Error::IdempotencyKeyReused(sub.key.clone(), existing));
            }
            debug!(task = existing, "idempotent resubmission");
            return Ok(Reserved::Existing(existing));
        }
        self.validate(&sub.function, sub.payload.len())?;
        if sub.key.len() > MAX_KEY_BYTES {
            return Err(Error::KeyTooLong(sub.key.len(), MAX_KEY_BYTES));
        }
        let pending: u64 = self.functions.values().map(|f| f.pending).sum();
        if pending >= self.config.max_pending {
            return Err(Error::PoolFull(pending));
        }
        self.make_room(&sub.function)?;
        let id = self.next_task;
        self.next_task += 1;
        if !sub.key.is_empty() {
            self.keys.insert(sub.key.clone(), (id, sub.fingerprint()));
        }
        Ok(Reserved::New(id))
    }

    /// Undoes a reservation whose task could not be written.
    pub fn unreserve(&mut self, id: TaskId, key: &str) {
        if self.keys.get(key).is_some_and(|(k, _)| *k == id) {
            self.keys.remove(key);
        }
        self.early_waiters.remove(&id);
    }

    /// Makes `waiter` follow task `id` (now, if it has finished).
    pub fn follow(&mut self, id: TaskId, waiter: Waiter, fx: &mut Effects) {
        match self.tasks.get_mut(id) {
            Some(task) => match &task.result {
                Some(r) => waiter.notify(r, fx),
                None => task.waiters.push(waiter),
            },
            None => self.early_waiters.entry(id).or_default().push(waiter),
        }
    }

    /// Puts a reserved task in its pool and places it.
    pub fn insert(
        &mut self,
        id: TaskId,
        sub: Submission,
        waiter: Option<Waiter>,
        now: Instant,
        fx: &mut Effects,
    ) {
        let function = sub.function.as_str();
        let key = self.function_key(function);
        let mut waiters: Vec<Waiter> = self.early_waiters.remove(&id).unwrap_or_default();
        waiters.extend(waiter);
        self.tasks.insert(
            id,
            Task {
                function: key.clone(),
                payload: sub.payload,
                timeout: sub.timeout,
                key: sub.key,
                state: TaskState::Pending,
                attempts: 0,
                worker: None,
                submitted_unix_ms: unix_ms(),
                result: None,
                waiters,
            },
        );
        if let Some(f) = self.functions.get_mut(&key) {
            f.pool.push_back(id);
            f.pending += 1;
        }
        debug!(task = id, function, "submitted");
        self.dispatch(function, now, fx);
    }

    /// Loads what a journal held: finished tasks keep their results; unfinished ones go
    /// back to their pools (in id order), except those that were running, which are held
    /// back for the reconnect grace so that their workers can claim them; keys, attempt
    /// counts, learned levels and the id counter carry on.
    pub fn restore(&mut self, recovered: Recovered, now: Instant, fx: &mut Effects) {
        let mut functions = Vec::new();
        let (mut pending, mut done) = (0usize, 0usize);
        let hold_back = !self.config.reconnect_grace.is_zero();
        for (id, stored, started) in recovered.tasks {
            let key = self.function_key(&stored.function);
            if !stored.key.is_empty() {
                self.keys.insert(stored.key.clone(), (id, stored.fingerprint));
            }
            let result = stored.result.map(Arc::new);
            let state = result.as_ref().map_or(TaskState::Pending, |r| r.state());
            self.tasks.insert(
                id,
                Task {
                    function: key.clone(),
                    payload: stored.payload,
                    timeout: (stored.timeout_ms > 0).then(|| Duration::from_millis(stored.timeout_ms)),
                    key: stored.key,
                    state,
                    attempts: result.as_ref().map_or(started, |r| r.attempts),
                    worker: None,
                    submitted_unix_ms: stored.submitted_unix_ms,
                    result,
                    waiters: Vec::new(),
                },
            );
            if let Some(f) = self.functions.get_mut(&key) {
                match state {
                    TaskState::Pending if started > 0 && hold_back => {
                        self.orphans.insert(id);
                        pending += 1;
                    }
                    TaskState::Pending => {
                        f.pool.push_back(id);
                        f.pending += 1;
                        pending += 1;
                    }
                    TaskState::Succeeded => f.succeeded += 1,
                    TaskState::Failed => f.failed += 1,
                    _ => f.cancelled += 1,
                }
            }
            if state != TaskState::Pending {
                done += 1;
                self.finished.push_back((now, id));
            }
            if !functions.contains(&key) {
                functions.push(key);
            }
        }
        self.next_task = self.next_task.max(recovered.next_id);
        for ((function, memory_mb), level) in recovered.learned {
            let key = self.function_key(&function);
            self.learned.insert((key, memory_mb), level);
        }
        info!(
            pending,
            held_back = self.orphans.len(),
            done,
            next_id = self.next_task,
            "restored from the journal"
        );
        if !self.orphans.is_empty() {
            fx.timers
                .push((self.config.reconnect_grace, super::Timer::Orphans));
        }
        for f in functions {
            self.dispatch(&f, now, fx);
        }
    }

    /// Forgets finished tasks older than the retention (memory and journal).
    pub(super) fn expire(&mut self, now: Instant, fx: &mut Effects) {
        let retention = self.config.result_retention;
        while let Some(&(at, id)) = self.finished.front() {
            if now.saturating_duration_since(at) < retention {
                break;
            }
            self.finished.pop_front();
            if let Some(task) = self.tasks.remove(id) {
                if !task.key.is_empty() {
                    self.keys.remove(&task.key);
                }
                if self.journaled {
                    fx.journal.push(JournalOp::Forget(id));
                }
            }
        }
    }

    /// Records a task's final result, wakes its waiters and frees its payload.
    pub(super) fn finish(&mut self, id: TaskId, result: pb::TaskResult, now: Instant, fx: &mut Effects) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        let state = result.state();
        if let Some(f) = self.functions.get_mut(&task.function) {
            match state {
                TaskState::Succeeded => f.succeeded += 1,
                TaskState::Failed => f.failed += 1,
                _ => f.cancelled += 1,
            }
        }
        task.state = state;
        task.payload = Bytes::new();
        let result = Arc::new(result);
        for w in task.waiters.drain(..) {
            w.notify(&result, fx);
        }
        if self.journaled {
            fx.journal.push(JournalOp::Finish(id, result.clone()));
        }
        task.result = Some(result);
        self.finished.push_back((now, id));
    }

    /// Cancels a task: a pending one leaves the pool, a running one is cancelled on its
    /// worker (whose slot is freed at once). Returns the state after the call.
    pub fn cancel(&mut self, id: TaskId, now: Instant, fx: &mut Effects) -> Result<TaskState> {
        let task = self.tasks.get(id).ok_or(Error::UnknownTask(id))?;
        let (state, function, worker, attempts) = (
            task.state,
            task.function.clone(),
            task.worker.clone(),
            task.attempts,
        );
        match state {
            TaskState::Pending => {
                if let Some(f) = self.functions.get_mut(&function) {
                    f.pending = f.pending.saturating_sub(1);
                }
            }
            TaskState::Running => {
                if let Some(f) = self.functions.get_mut(&function) {
                    f.running = f.running.saturating_sub(1);
                }
                if let Some(wid) = &worker
                    && let Some(w) = self.workers.get_mut(wid)
                {
                    w.release(id, now);
                    w.send(Kind::Cancel(pb::Cancel { task_ids: vec![id] }), fx);
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
                error: format!("task {id} was cancelled by a client"),
                worker_id: worker.as_ref().map(|w| w.to_string()).unwrap_or_default(),
                attempts,
                ..Default::default()
            },
            now,
            fx,
        );
        if let Some(wid) = worker {
            self.dispatch_near(&function, Some(&wid), now, fx);
            self.evaluate(&wid, now, fx);
        }
        Ok(TaskState::Cancelled)
    }

    /// Everything known about one task.
    pub fn get(&self, id: TaskId) -> Result<pb::TaskInfo> {
        let t = self.tasks.get(id).ok_or(Error::UnknownTask(id))?;
        Ok(pb::TaskInfo {
            task_id: id,
            function: t.function.to_string(),
            state: t.state as i32,
            attempts: t.attempts,
            worker_id: t.worker.as_ref().map(|w| w.to_string()).unwrap_or_default(),
            submitted_unix_ms: t.submitted_unix_ms,
            result: t.result.as_deref().cloned(),
        })
    }

    /// Subscribes waiter `who` to the results of `ids` (tag = task id): finished ones are
    /// sent at once. Every id is checked before anything is subscribed. Returns how many
    /// distinct results will be delivered.
    pub fn watch(&mut self, ids: &[TaskId], who: super::WaiterId, fx: &mut Effects) -> Result<usize> {
        if ids.len() > MAX_WATCH_IDS {
            return Err(Error::TooManyIds(ids.len(), MAX_WATCH_IDS));
        }
        if let Some(missing) = ids.iter().find(|id| !self.tasks.contains_key(**id)) {
            return Err(Error::UnknownTask(*missing));
        }
        let mut unique: Vec<TaskId> = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        for id in &unique {
            if let Some(t) = self.tasks.get_mut(*id) {
                let waiter = Waiter { id: who, tag: *id };
                match &t.result {
                    Some(r) => waiter.notify(r, fx),
                    None => t.waiters.push(waiter),
                }
            }
        }
        Ok(unique.len())
    }
}
