//! Tasks bounded by their own timeout on workers whose admissions have ended for time.
//!
//! A worker stops admitting once the longest recent task of its function would no longer
//! fit in what is left of its life ([`scheduler::life`]). Until it ends, its slots free one
//! by one and are paid for all the same. A task with its own timeout is known to end within
//! it: where that fits what is left (with the slack), such a worker still takes it. A task
//! without one may be as long as the longest, and waits for a worker that has the life.

use std::time::{Duration, Instant};

use carpool_messages::pb::{self, TaskState};
use tracing::debug;

use super::book::{Book, Task};
use super::effects::{Effects, JournalOp, Timer};
use super::parts::{FunctionPool, Worker};
use super::roster::Roster;
use super::{TaskId, WorkerId, pop_pending, rekey};
use crate::scheduler::{self, Rules};

/// How many pending tasks one pass looks through for those with their own timeout.
const LOOK_AHEAD: usize = 256;

/// One dispatch pass: what every assignment needs, and the assignments per worker, in the
/// order the workers were first chosen.
pub(super) struct Pass<'a> {
    pub(super) rules: &'a Rules,
    pub(super) now: Instant,
    pub(super) journaled: bool,
    /// `--task-timeout`, for tasks without their own.
    pub(super) task_timeout: Option<Duration>,
    pub(super) batches: Vec<(WorkerId, Vec<pb::TaskAssignment>)>,
}

impl Pass<'_> {
    /// Starts pending task `task` on worker `w`: its counts, its journal record, the
    /// worker's running tasks and rank, its timeout's timer, and its assignment. `late`:
    /// `w`'s admissions have ended for time, and the task's own timeout still fits.
    pub(super) fn start(
        &mut self,
        f: &mut FunctionPool,
        (task_id, task): (TaskId, &mut Task),
        (worker_id, w): (WorkerId, &mut Worker),
        late: bool,
        effects: &mut Effects,
    ) {
        let now = self.now;
        if late {
            f.taken_late += 1;
        }
        // From pending to running, in its function's counts too.
        let before = task.phase();
        task.state = TaskState::Running;
        task.attempts += 1;
        task.worker = Some(worker_id.clone());
        task.attempt_started = Some(now);
        f.tasks.moved(Some(before), Some(task.phase()));
        if self.journaled {
            effects.journal.push(JournalOp::Started(task_id, task.attempts));
        }
        w.running
            .push((task_id, task.attempts), now, task.timeout.is_some());
        w.assigned_total += 1;
        if w.running.len() as u32 >= w.limit.value() {
            w.limit.filled(now);
            tracing::trace!(worker = %worker_id, limit = w.limit.value(), "limit filled");
        }
        // One more task changes its rank, or makes it full.
        rekey(f, &worker_id, w, self.rules, now);
        debug!(task = task_id, worker = %worker_id, attempt = task.attempts, "assigned");
        let limit = task.timeout.or(self.task_timeout);
        if let Some(limit) = limit {
            effects.timers.push((limit, Timer::Task(task_id, task.attempts)));
        }
        let assignment = pb::TaskAssignment {
            task_id,
            attempt: task.attempts,
            function: task.function.to_string(),
            payload: task.payload().clone(),
            timeout_ms: limit.map_or(0, |l| l.as_millis().clamp(1, u128::from(u64::MAX)) as u64),
        };
        match w.batch {
            Some(i) => self.batches[i].1.push(assignment),
            None => {
                w.batch = Some(self.batches.len());
                self.batches.push((worker_id, vec![assignment]));
            }
        }
    }
}

/// The workers of `function` whose admissions have ended for time and that have room for
/// a task (slots, CPU, memory, quota).
pub(super) fn candidates(workers: &Roster, function: &str, rules: &Rules, now: Instant) -> Vec<WorkerId> {
    if rules.admission != scheduler::Admission::Duration {
        return Vec::new();
    }
    workers
        .iter()
        .filter(|(_, w)| w.function.as_ref() == function && ending_with_room(w, rules, now))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Whether `w`'s admissions have ended for time and it has room for a task (and the
/// slack's life left).
fn ending_with_room(w: &Worker, rules: &Rules, now: Instant) -> bool {
    scheduler::takes_bounded(rules, &w.view(now), Duration::ZERO)
}

/// Of `ending` (see [`candidates`]), the first with life left for a task bounded by
/// `timeout`; those with no room left any more are dropped from it (one look at each).
pub(super) fn fitting(
    ending: &mut Vec<WorkerId>,
    workers: &Roster,
    timeout: Duration,
    rules: &Rules,
    now: Instant,
) -> Option<WorkerId> {
    let mut found = None;
    ending.retain(|id| {
        let Some(w) = workers.get(id) else {
            return false;
        };
        let v = w.view(now);
        if !scheduler::takes_bounded(rules, &v, Duration::ZERO) {
            return false;
        }
        if found.is_none() && scheduler::takes_bounded(rules, &v, timeout) {
            found = Some(id.clone());
        }
        true
    });
    found
}

/// With no worker admitting any task: looks through the first pending tasks of `f` for
/// those with their own timeout, and starts each on a worker of `ending` that it fits. The
/// others keep their places in the pool.
pub(super) fn place(
    f: &mut FunctionPool,
    ending: &mut Vec<WorkerId>,
    workers: &mut Roster,
    book: &mut Book,
    pass: &mut Pass<'_>,
    effects: &mut Effects,
) {
    let mut kept: Vec<TaskId> = Vec::new();
    while kept.len() < LOOK_AHEAD && !ending.is_empty() {
        let Some(task_id) = pop_pending(&mut f.pool, book) else {
            break;
        };
        let worker = book
            .get(task_id)
            .and_then(|t| t.timeout)
            .and_then(|t| fitting(ending, workers, t, pass.rules, pass.now));
        let started = match (worker, book.get_mut(task_id)) {
            (Some(id), Some(task)) => match workers.get_mut(&id) {
                Some(w) => {
                    debug!(task = task_id, worker = %id, "bounded task on a worker whose admissions ended");
                    pass.start(f, (task_id, task), (id, w), true, effects);
                    true
                }
                None => false,
            },
            _ => false,
        };
        if !started {
            kept.push(task_id);
        }
    }
    for &id in kept.iter().rev() {
        f.pool.push_front(id);
    }
}
