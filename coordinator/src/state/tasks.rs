//! Client events: submit, cancel, get, watch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_proto::Bytes;
use carpool_proto::pb::{self, TaskState, coordinator_message::Kind};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info};

use super::{Effects, State, Task, TaskId, unix_ms};
use crate::config::BUILTIN_FUNCTIONS;
use crate::error::{Error, Result};
use crate::journal::Recovered;

/// A finished task, delivered to whoever waits for it.
#[derive(Clone, Debug)]
pub struct Completion {
    /// The waiter's own tag (a Map call's `seq`).
    pub tag: u64,
    /// The final result.
    pub result: Arc<pb::TaskResult>,
}

/// The id a submission gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// A new task with this id.
    New(TaskId),
    /// Its idempotency key already names this task.
    Existing(TaskId),
}

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
}

/// Someone waiting for a task's result (a Run, Watch or Map call).
#[derive(Clone, Debug)]
pub struct Waiter {
    /// Where the completion goes; a closed receiver is simply skipped.
    pub tx: UnboundedSender<Completion>,
    /// Echoed in the completion.
    pub tag: u64,
}

impl Waiter {
    fn notify(&self, result: &Arc<pb::TaskResult>) {
        let _ = self.tx.send(Completion {
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
        if payload_len > self.config.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                size: payload_len,
                limit: self.config.max_payload_bytes,
            });
        }
        if !self.config.serves(function) {
            let mut known: Vec<&str> = BUILTIN_FUNCTIONS.to_vec();
            known.extend(self.config.exec_functions.iter().map(|(n, _)| n.as_str()));
            return Err(Error::UnknownFunction(function.to_owned(), known.join(", ")));
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
                    self.follow(id, w);
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
        if let Some(&existing) = self.keys.get(&sub.key) {
            debug!(task = existing, "idempotent resubmission");
            return Ok(Reserved::Existing(existing));
        }
        self.validate(&sub.function, sub.payload.len())?;
        let pending: u64 = self.functions.values().map(|f| f.pending).sum();
        if pending >= self.config.max_pending {
            return Err(Error::PoolFull(pending));
        }
        let id = self.next_task;
        self.next_task += 1;
        if !sub.key.is_empty() {
            self.keys.insert(sub.key.clone(), id);
        }
        Ok(Reserved::New(id))
    }

    /// Undoes a reservation whose task could not be written.
    pub fn unreserve(&mut self, id: TaskId, key: &str) {
        if self.keys.get(key) == Some(&id) {
            self.keys.remove(key);
        }
        self.early_waiters.remove(&id);
    }

    /// Makes `waiter` follow task `id` (now, if it has finished).
    pub fn follow(&mut self, id: TaskId, waiter: Waiter) {
        match self.tasks.get_mut(id) {
            Some(task) => match &task.result {
                Some(r) => waiter.notify(r),
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

    /// Loads what a journal held: unfinished tasks go back to their pools (in id order),
    /// finished ones keep their results; keys and the id counter carry on.
    pub fn restore(&mut self, recovered: Recovered, now: Instant, fx: &mut Effects) {
        let mut functions = Vec::new();
        let (mut pending, mut done) = (0usize, 0usize);
        for (id, stored) in recovered.tasks {
            let key = self.function_key(&stored.function);
            if !stored.key.is_empty() {
                self.keys.insert(stored.key.clone(), id);
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
                    attempts: result.as_ref().map_or(0, |r| r.attempts),
                    worker: None,
                    submitted_unix_ms: stored.submitted_unix_ms,
                    result,
                    waiters: Vec::new(),
                },
            );
            if let Some(f) = self.functions.get_mut(&key) {
                match state {
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
            done,
            next_id = self.next_task,
            "restored from the journal"
        );
        for f in functions {
            self.dispatch(&f, now, fx);
        }
    }

    /// Forgets finished tasks older than the retention (memory and journal).
    pub(super) fn expire(&mut self, now: Instant) {
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
                if let Some(j) = &self.journal {
                    j.forget(id);
                }
            }
        }
    }

    /// Records a task's final result, wakes its waiters and frees its payload.
    pub(super) fn finish(&mut self, id: TaskId, result: pb::TaskResult, now: Instant) {
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
            w.notify(&result);
        }
        if let Some(j) = &self.journal {
            j.finish(id, result.clone());
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
                    w.send(Kind::Cancel(pb::Cancel { task_ids: vec![id] }));
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

    /// Subscribes `tx` to the results of `ids` (tag = task id): finished ones are sent at
    /// once. Every id is checked before anything is subscribed. Returns how many distinct
    /// results will be delivered.
    pub fn watch(&mut self, ids: &[TaskId], tx: &UnboundedSender<Completion>) -> Result<usize> {
        if let Some(missing) = ids.iter().find(|id| !self.tasks.contains_key(**id)) {
            return Err(Error::UnknownTask(*missing));
        }
        let mut unique: Vec<TaskId> = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        for id in &unique {
            if let Some(t) = self.tasks.get_mut(*id) {
                let waiter = Waiter {
                    tx: tx.clone(),
                    tag: *id,
                };
                match &t.result {
                    Some(r) => waiter.notify(r),
                    None => t.waiters.push(waiter),
                }
            }
        }
        Ok(unique.len())
    }
}
