//! A function's task counts, kept by one rule: a task moves between them only when its
//! phase changes, and its phase changes only through [`State::add_task`],
//! [`State::update_task`] and [`State::remove_task`]; `finish`, which holds the task
//! already, uses [`change_task`], and dispatch, which holds the function's pool, moves the
//! count itself, one lookup each. No other code touches a count, so
//! what Stats, dispatch and scale-out read always agrees with the tasks themselves (the
//! state's unit tests recount them after every dispatch).

use super::*;

/// Where a task stands, as its function's counts see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Its record is being written to the journal: pending to its client, outside the pool.
    Accepting,
    /// In its pool, waiting for a worker.
    Pending,
    /// Restored as running at a restart and held out of its pool for its worker to claim
    /// (counted in no count until it is claimed or released).
    Held,
    /// Running on a worker.
    Running,
    /// Ended this way (counted over the coordinator's life: a task forgotten past the
    /// retention stays counted).
    Ended(TaskState),
}

impl Task {
    /// This task's phase.
    pub(super) fn phase(&self) -> Phase {
        match self.state {
            TaskState::Pending if self.accepting => Phase::Accepting,
            TaskState::Pending if self.held => Phase::Held,
            TaskState::Pending => Phase::Pending,
            TaskState::Running => Phase::Running,
            ended => Phase::Ended(ended),
        }
    }
}

/// How many of a function's tasks are in each phase.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct TaskCounts {
    accepting: u64,
    pending: u64,
    running: u64,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
}

impl TaskCounts {
    /// A task moved from `from` to `to` (`None`: it was not counted before, or is
    /// forgotten now). Ended tasks stay counted when forgotten.
    pub(super) fn moved(&mut self, from: Option<Phase>, to: Option<Phase>) {
        if from == to {
            return;
        }
        if let Some(from) = from
            && !matches!(from, Phase::Ended(_) if to.is_none())
            && let Some(count) = self.count(from)
        {
            *count = count.saturating_sub(1);
        }
        if let Some(count) = to.and_then(|to| self.count(to)) {
            *count += 1;
        }
    }

    fn count(&mut self, phase: Phase) -> Option<&mut u64> {
        match phase {
            Phase::Accepting => Some(&mut self.accepting),
            Phase::Pending => Some(&mut self.pending),
            Phase::Held => None,
            Phase::Running => Some(&mut self.running),
            Phase::Ended(TaskState::Succeeded) => Some(&mut self.succeeded),
            Phase::Ended(TaskState::Failed) => Some(&mut self.failed),
            Phase::Ended(_) => Some(&mut self.cancelled),
        }
    }

    /// Submissions whose record is being written.
    pub(super) fn accepting(&self) -> u64 {
        self.accepting
    }
    /// Tasks in the pool, waiting for a worker (what dispatch may place).
    pub(super) fn pending(&self) -> u64 {
        self.pending
    }
    /// Tasks running on a worker.
    pub(super) fn running(&self) -> u64 {
        self.running
    }
    /// Tasks that succeeded, over the coordinator's life.
    pub(super) fn succeeded(&self) -> u64 {
        self.succeeded
    }
    /// Tasks that failed, over the coordinator's life.
    pub(super) fn failed(&self) -> u64 {
        self.failed
    }
    /// Tasks cancelled, over the coordinator's life.
    pub(super) fn cancelled(&self) -> u64 {
        self.cancelled
    }
}

/// Changes `task` with `change`, moving it between its function's counts (in
/// `functions`) if its phase changed. For a caller that already holds the task (finish);
/// [`State::update_task`] finds it by id.
pub(super) fn change_task<R>(
    functions: &mut BTreeMap<Arc<str>, FunctionPool>,
    task: &mut Task,
    change: impl FnOnce(&mut Task) -> R,
) -> R {
    let before = task.phase();
    let out = change(task);
    let after = task.phase();
    if before != after
        && let Some(f) = functions.get_mut(&task.function)
    {
        f.tasks.moved(Some(before), Some(after));
    }
    out
}

impl State {
    /// Adds task `id` to the book (with its key's `fingerprint`; a finished one retained
    /// from `now`), counted in its phase.
    pub(super) fn add_task(&mut self, id: TaskId, task: Task, fingerprint: u64, now: Instant) {
        if let Some(f) = self.functions.get_mut(&task.function) {
            f.tasks.moved(None, Some(task.phase()));
        }
        self.book.insert(id, task, fingerprint, now);
    }

    /// Changes task `id` with `change`, moving it between its function's counts if its
    /// phase changed: the one way a task's state, acceptance or hold changes.
    pub(super) fn update_task<R>(&mut self, id: TaskId, change: impl FnOnce(&mut Task) -> R) -> Option<R> {
        let task = self.book.get_mut(id)?;
        Some(change_task(&mut self.functions, task, change))
    }

    /// Forgets task `id` (an ended one stays counted).
    pub(super) fn remove_task(&mut self, id: TaskId) -> Option<Task> {
        let task = self.book.remove(id)?;
        if let Some(f) = self.functions.get_mut(&task.function) {
            f.tasks.moved(Some(task.phase()), None);
        }
        Some(task)
    }

    /// Recounts every function's tasks from the table and checks the counts agree (the
    /// ended counts are over the coordinator's life, so at least the tasks still held).
    #[cfg(test)]
    pub(super) fn check_counts(&self) {
        self.book.check();
        self.workers.check();
        self.spawns.check();
        let mut recount: std::collections::HashMap<Arc<str>, TaskCounts> = Default::default();
        for task in self.book.values() {
            recount
                .entry(task.function.clone())
                .or_default()
                .moved(None, Some(task.phase()));
        }
        for (name, f) in &self.functions {
            let want = recount.remove(name).unwrap_or_default();
            let have = &f.tasks;
            assert_eq!(
                (have.accepting, have.pending, have.running),
                (want.accepting, want.pending, want.running),
                "the counts of {name} disagree with its tasks"
            );
            assert!(
                have.succeeded >= want.succeeded
                    && have.failed >= want.failed
                    && have.cancelled >= want.cancelled,
                "the ended counts of {name} are below its tasks: {have:?} {want:?}"
            );
        }
    }
}
