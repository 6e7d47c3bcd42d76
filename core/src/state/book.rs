//! The task book: every task the coordinator holds, by id, with what only the book keeps
//! consistent with them: the idempotency keys, the ids handed out and reserved, the
//! bytes held in payloads and results, the order tasks finished in (retention and
//! eviction), and the tasks held back after a restart.
//!
//! A task's payload and result are private to this file: they change only through
//! [`Book::insert`], [`Book::finish`], [`Book::remove`], eviction and expiry, so the byte
//! counts that `--max-pending-bytes` and `--max-result-bytes` are checked against always
//! equal what is held. (A task's phase, which its function's counts follow, changes
//! through `counts.rs`.)

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_messages::Bytes;
use carpool_messages::pb::{self, TaskState};

use super::table::Table;
use super::{TaskId, Waiter, WorkerId};
use crate::error::{Error, Result};

/// A task the coordinator holds.
#[derive(Debug)]
pub(super) struct Task {
    pub(super) function: Arc<str>,
    /// Emptied once the task has finished.
    payload: Bytes,
    pub(super) state: TaskState,
    /// Taken but not yet acknowledged: its record is being written to the journal. It
    /// counts as pending and is outside its pool until `State::accepted`.
    pub(super) accepting: bool,
    /// Restored as running at a restart, held out of its pool for its worker to claim (its
    /// id is among the book's held tasks too, in order).
    pub(super) held: bool,
    pub(super) attempts: u32,
    pub(super) worker: Option<WorkerId>,
    pub(super) submitted_unix_ms: u64,
    /// Its result once finished (`None` again once evicted from memory).
    result: Option<Arc<pb::TaskResult>>,
    pub(super) waiters: Vec<Waiter>,
    /// Per-attempt limit.
    pub(super) timeout: Option<Duration>,
    /// Its idempotency key (empty: none), forgotten with it.
    pub(super) key: String,
    /// The GB-ms of the bill its attempts are estimated to have taken, finished and lost
    /// (see `TaskResult.billed_gb_s`).
    pub(super) spent_gb_ms: f64,
    /// When its current attempt was given to its worker (running only).
    pub(super) attempt_started: Option<Instant>,
}

impl Task {
    /// A pending task, not yet attempted.
    pub(super) fn new(
        function: Arc<str>,
        payload: Bytes,
        timeout: Option<Duration>,
        key: String,
        submitted_unix_ms: u64,
    ) -> Self {
        Self {
            function,
            payload,
            state: TaskState::Pending,
            accepting: false,
            held: false,
            attempts: 0,
            worker: None,
            submitted_unix_ms,
            result: None,
            waiters: Vec::new(),
            timeout,
            key,
            spent_gb_ms: 0.0,
            attempt_started: None,
        }
    }

    /// A task as a journal kept it: finished ones with their result (and their state).
    pub(super) fn restored(mut self, result: Option<Arc<pb::TaskResult>>) -> Self {
        if let Some(r) = &result {
            self.state = r.state();
            self.attempts = r.attempts;
        }
        self.result = result;
        self
    }

    /// Its input (empty once finished).
    pub(super) fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Its result, while held in memory.
    pub(super) fn result(&self) -> Option<&Arc<pb::TaskResult>> {
        self.result.as_ref()
    }

    /// Finished, with its result evicted from memory.
    pub(super) fn evicted(&self) -> bool {
        self.result.is_none() && !matches!(self.state, TaskState::Pending | TaskState::Running)
    }
}

/// What a result costs in memory, as `--max-result-bytes` counts it: its encoded size and
/// its struct.
fn result_size(result: &pb::TaskResult) -> u64 {
    use prost::Message;
    (result.encoded_len() + std::mem::size_of::<pb::TaskResult>()) as u64
}

/// The tasks and what is kept with them.
#[derive(Debug)]
pub(super) struct Book {
    table: Table<Task>,
    /// The next id to hand out.
    next: TaskId,
    /// Ids below this may be handed out (reserved in the journal; `TaskId::MAX` without one).
    id_limit: TaskId,
    /// A reservation of more ids is on its way to the journal.
    reserving: bool,
    /// Idempotency keys of submissions, to their task and its fingerprint.
    keys: HashMap<String, (TaskId, u64)>,
    /// Finished tasks in the order they finished, for the retention sweep.
    finished: VecDeque<(Instant, TaskId)>,
    /// The first `evicted` of [`Book::finished`] have had their results evicted from
    /// memory (oldest first).
    evicted: usize,
    /// Bytes of payloads held for unfinished tasks.
    payload_bytes: u64,
    /// Bytes of results held in memory (kept under `max_result_bytes` by eviction).
    result_bytes: u64,
    max_result_bytes: u64,
    /// Tasks restored as running at a restart and held out of their pools, in id order.
    held: BTreeSet<TaskId>,
}

impl Book {
    /// An empty book that keeps at most `max_result_bytes` of results in memory.
    pub(super) fn new(max_result_bytes: u64) -> Self {
        Self {
            table: Table::default(),
            next: 1,
            id_limit: TaskId::MAX,
            reserving: false,
            keys: HashMap::new(),
            finished: VecDeque::new(),
            evicted: 0,
            payload_bytes: 0,
            result_bytes: 0,
            max_result_bytes,
            held: BTreeSet::new(),
        }
    }

    pub(super) fn get(&self, id: TaskId) -> Option<&Task> {
        self.table.get(id)
    }

    /// The task, to change anything but its payload and result (which change through the
    /// book). Its phase changes through `counts.rs`, which calls this.
    pub(super) fn get_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        self.table.get_mut(id)
    }

    pub(super) fn contains(&self, id: TaskId) -> bool {
        self.table.contains_key(id)
    }

    #[cfg(test)]
    pub(super) fn values(&self) -> impl Iterator<Item = &Task> {
        self.table.values()
    }

    /// The task an idempotency key names, with the submission's fingerprint.
    pub(super) fn by_key(&self, key: &str) -> Option<(TaskId, u64)> {
        self.keys.get(key).copied()
    }

    /// Bytes held in memory: payloads of unfinished tasks, and results.
    pub(super) fn held_bytes(&self) -> (u64, u64) {
        (self.payload_bytes, self.result_bytes)
    }

    /// Whether a payload of `size` bytes fits under `limit` with those held.
    pub(super) fn payload_fits(&self, size: usize, limit: u64) -> Result<()> {
        if self.payload_bytes + size as u64 > limit {
            return Err(Error::PoolBytesFull {
                held: self.payload_bytes,
                size,
                limit,
            });
        }
        Ok(())
    }

    /// Hands out the next id, if it is reserved.
    pub(super) fn next_id(&mut self) -> Result<TaskId> {
        if self.next >= self.id_limit {
            return Err(Error::IdsNotReserved);
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }

    /// The next id that would be handed out.
    pub(super) fn peek_id(&self) -> TaskId {
        self.next
    }

    /// Once half of the reserved ids are handed out, the end of the next block of `block`
    /// ids to reserve in the journal (one reservation at a time; never without a journal).
    pub(super) fn reservation(&mut self, block: u64) -> Option<TaskId> {
        if self.id_limit == TaskId::MAX || self.reserving || self.next + block / 2 < self.id_limit {
            return None;
        }
        self.reserving = true;
        Some(self.id_limit.saturating_add(block))
    }

    /// The journal holds the reservation of the ids below `until`.
    pub(super) fn reserved(&mut self, until: TaskId) {
        self.id_limit = self.id_limit.max(until);
        self.reserving = false;
    }

    /// Carries on from a journal's ids: the next to hand out and what is reserved (0: no
    /// reservation recorded).
    pub(super) fn restore_ids(&mut self, next: TaskId, reserved_until: TaskId) {
        self.next = self.next.max(next);
        if reserved_until > 0 {
            self.id_limit = reserved_until;
        }
    }

    /// Adds task `id`, its key (with the submission's `fingerprint`) and its bytes. A
    /// finished one is put at the end of the finished order (retention from `now`).
    pub(super) fn insert(&mut self, id: TaskId, task: Task, fingerprint: u64, now: Instant) {
        if !task.key.is_empty() {
            self.keys.insert(task.key.clone(), (id, fingerprint));
        }
        self.payload_bytes += task.payload.len() as u64;
        if let Some(r) = &task.result {
            self.result_bytes += result_size(r);
        }
        if !matches!(task.state, TaskState::Pending | TaskState::Running) {
            self.finished.push_back((now, id));
        }
        if task.held {
            self.held.insert(id);
        }
        self.table.insert(id, task);
    }

    /// Forgets task `id`: its bytes and its key go with it.
    pub(super) fn remove(&mut self, id: TaskId) -> Option<Task> {
        let task = self.table.remove(id)?;
        self.payload_bytes = self.payload_bytes.saturating_sub(task.payload.len() as u64);
        if let Some(r) = &task.result {
            self.result_bytes = self.result_bytes.saturating_sub(result_size(r));
        }
        if !task.key.is_empty() && self.keys.get(&task.key).is_some_and(|(k, _)| *k == id) {
            self.keys.remove(&task.key);
        }
        self.held.remove(&id);
        Some(task)
    }

    /// Task `id` finished with `result` at `now` (its state is changed by the caller): its
    /// payload is dropped, its result held, and the oldest results evicted past the limit.
    pub(super) fn finish(&mut self, id: TaskId, result: Arc<pb::TaskResult>, now: Instant) {
        let Some(task) = self.table.get_mut(id) else {
            return;
        };
        self.payload_bytes = self.payload_bytes.saturating_sub(task.payload.len() as u64);
        task.payload = Bytes::new();
        self.result_bytes += result_size(&result);
        if let Some(old) = task.result.replace(result) {
            self.result_bytes = self.result_bytes.saturating_sub(result_size(&old));
        }
        self.finished.push_back((now, id));
        self.evict();
    }

    /// Evicts the oldest results held in memory until they fit.
    pub(super) fn evict(&mut self) {
        while self.result_bytes > self.max_result_bytes && self.evicted < self.finished.len() {
            let (_, id) = self.finished[self.evicted];
            self.evicted += 1;
            if let Some(result) = self.table.get_mut(id).and_then(|t| t.result.take()) {
                self.result_bytes = self.result_bytes.saturating_sub(result_size(&result));
                tracing::debug!(task = id, "result evicted from memory");
            }
        }
    }

    /// The next finished task older than `retention` at `now`, out of the finished order
    /// (the caller forgets it).
    pub(super) fn expired(&mut self, now: Instant, retention: Duration) -> Option<TaskId> {
        let &(at, id) = self.finished.front()?;
        if now.saturating_duration_since(at) < retention {
            return None;
        }
        self.finished.pop_front();
        self.evicted = self.evicted.saturating_sub(1);
        Some(id)
    }

    /// How many tasks are held back after a restart.
    pub(super) fn held_count(&self) -> usize {
        self.held.len()
    }

    /// A held-back task was claimed by its worker.
    pub(super) fn unhold(&mut self, id: TaskId) {
        self.held.remove(&id);
    }

    /// Every task still held back, in id order, no longer held by the book.
    pub(super) fn take_held(&mut self) -> BTreeSet<TaskId> {
        std::mem::take(&mut self.held)
    }

    /// The bytes and keys agree with the tasks (the unit tests' check).
    #[cfg(test)]
    pub(super) fn check(&self) {
        let payloads: u64 = self.table.values().map(|t| t.payload.len() as u64).sum();
        let results: u64 = self
            .table
            .values()
            .filter_map(|t| t.result.as_deref())
            .map(result_size)
            .sum();
        assert_eq!(
            (self.payload_bytes, self.result_bytes),
            (payloads, results),
            "held bytes drifted"
        );
        for (key, (id, _)) in &self.keys {
            assert!(
                self.table.get(*id).is_some_and(|t| &t.key == key),
                "key {key} names task {id}, which does not hold it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(key: &str, payload: &'static [u8]) -> Task {
        Task::new(
            Arc::from("f"),
            Bytes::from_static(payload),
            None,
            key.to_owned(),
            0,
        )
    }

    fn result(id: TaskId, output: &'static [u8]) -> Arc<pb::TaskResult> {
        Arc::new(pb::TaskResult {
            task_id: id,
            state: TaskState::Succeeded as i32,
            output: Some(carpool_messages::payload::from_bytes(Bytes::from_static(output))),
            ..Default::default()
        })
    }

    #[test]
    fn bytes_follow_payloads_and_results_through_finish_and_remove() {
        let now = Instant::now();
        let mut b = Book::new(u64::MAX);
        b.insert(1, task("k1", b"12345"), 11, now);
        b.insert(2, task("", b"123"), 0, now);
        assert_eq!(b.held_bytes().0, 8);
        assert!(b.payload_fits(2, 10).is_ok());
        assert!(matches!(
            b.payload_fits(3, 10),
            Err(Error::PoolBytesFull { held: 8, .. })
        ));
        b.finish(1, result(1, b"out"), now);
        assert_eq!(b.held_bytes().0, 3, "a finished task's payload is dropped");
        assert!(b.held_bytes().1 > 0);
        assert!(
            b.get(1)
                .is_some_and(|t| t.payload().is_empty() && t.result().is_some())
        );
        b.check();
        assert_eq!(b.by_key("k1"), Some((1, 11)));
        b.remove(1);
        assert_eq!(b.by_key("k1"), None, "the key goes with its task");
        assert_eq!(b.held_bytes(), (3, 0));
        b.check();
    }

    #[test]
    fn eviction_keeps_results_under_the_limit_oldest_first_and_expiry_forgets_in_order() {
        let t0 = Instant::now();
        let one = result_size(&result(1, b"xx"));
        let mut b = Book::new(2 * one);
        for id in 1..=3 {
            b.insert(id, task("", b"p"), 0, t0);
            if let Some(t) = b.get_mut(id) {
                t.state = TaskState::Succeeded;
            }
            b.finish(id, result(id, b"xx"), t0 + Duration::from_secs(id));
        }
        assert!(
            b.get(1).is_some_and(Task::evicted),
            "the oldest result is evicted"
        );
        assert!(b.get(3).is_some_and(|t| t.result().is_some()));
        assert_eq!(b.held_bytes(), (0, 2 * one));
        b.check();
        let at = t0 + Duration::from_secs(12);
        assert_eq!(b.expired(at, Duration::from_secs(10)), Some(1));
        assert_eq!(b.expired(at, Duration::from_secs(10)), Some(2));
        assert_eq!(b.expired(at, Duration::from_secs(10)), None, "task 3 is younger");
    }

    #[test]
    fn ids_are_handed_out_only_below_the_reservation() {
        let mut b = Book::new(u64::MAX);
        assert_eq!(b.next_id().ok(), Some(1));
        assert_eq!(b.reservation(100), None, "without a journal nothing is reserved");
        b.restore_ids(10, 12);
        assert_eq!(b.peek_id(), 10);
        assert_eq!(b.reservation(100), Some(112));
        assert_eq!(b.reservation(100), None, "one reservation at a time");
        assert_eq!(b.next_id().ok(), Some(10));
        assert_eq!(b.next_id().ok(), Some(11));
        assert!(matches!(b.next_id(), Err(Error::IdsNotReserved)));
        b.reserved(112);
        assert_eq!(b.next_id().ok(), Some(12));
    }

    #[test]
    fn held_tasks_are_kept_in_order_until_claimed_or_taken() {
        let now = Instant::now();
        let mut b = Book::new(u64::MAX);
        for id in [5, 3, 4] {
            let mut t = task("", b"");
            t.held = true;
            b.insert(id, t, 0, now);
        }
        b.unhold(4);
        assert_eq!(b.held_count(), 2);
        assert_eq!(b.take_held().into_iter().collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(b.held_count(), 0);
    }
}
