//! What an event asks for, returned by the state and carried out by its driver once the
//! lock is released: messages down worker streams, the end of a stream, results for the
//! clients that wait for them, journal writes, spawns and timers. The state itself sends
//! nothing and writes nothing.

use std::sync::Arc;
use std::time::Duration;

use carpool_messages::pb;

use super::{TaskId, WorkerId};
use crate::error::Error;
use crate::scheduler::Learned;

/// One connection of a worker: the driver keeps the stream behind each number.
pub type Conn = u64;

/// A client waiting for results (a Run, Watch or Map call): the driver keeps the channel
/// behind each handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaiterId(pub u64);

/// Someone waiting for a task's result, and the tag its result carries back (a Map call's
/// `seq`, a Watch's task id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiter {
    /// Whose channel.
    pub id: WaiterId,
    /// Echoed with the result.
    pub tag: u64,
}

/// A message for a peer.
#[derive(Debug)]
pub enum Outbound {
    /// Down a worker's stream.
    Message {
        /// The connection.
        conn: Conn,
        /// What to send.
        message: pb::CoordinatorMessage,
    },
    /// End a worker's stream: with `error` as its status, or cleanly with none.
    End {
        /// The connection.
        conn: Conn,
        /// Why, if the worker is to hear an error.
        error: Option<Error>,
    },
    /// A finished task's result for a waiter.
    Complete {
        /// Who waits.
        waiter: WaiterId,
        /// Its tag for this task.
        tag: u64,
        /// The result.
        result: Arc<pb::TaskResult>,
    },
    /// A finished task's result for a waiter, evicted from memory: to be read back from the
    /// journal (only with one).
    Load {
        /// Who waits.
        waiter: WaiterId,
        /// Its tag for this task.
        tag: u64,
        /// The task.
        task: TaskId,
    },
}

/// A write for the journal (with `--state-dir`). None is waited for: a lost one means a
/// task runs again, or a level is learned again.
#[derive(Debug)]
pub enum JournalOp {
    /// An attempt of a task started (so that attempts keep counting across a restart).
    Started(TaskId, u32),
    /// A task finished with this result.
    Finish(TaskId, Arc<pb::TaskResult>),
    /// A finished task's retention passed.
    Forget(TaskId),
    /// A concurrency level was learned for (function, memory size).
    Learn(Arc<str>, u32, Learned),
    /// What a (function, memory size) has cost, as it stands after a worker of it ended.
    Cost(Arc<str>, u32, crate::scheduler::SizeCost),
    /// Everything learned of a function (its levels and costs, at every size) is forgotten.
    Unlearn(Arc<str>),
    /// Task ids below this may be handed out: reserved in the journal before any is, so
    /// that the next coordinator to load it starts above every id this one could have given.
    Reserve(u64),
}

/// A worker the coordinator asked a spawner to start.
#[derive(Clone, Debug)]
pub struct SpawnRequest {
    /// The id the new worker must say in its hello.
    pub id: WorkerId,
    /// The function it serves.
    pub function: Arc<str>,
    /// Its memory size (MB), chosen for its function (see `--memory-sizes`).
    pub memory_mb: u32,
}

/// What a spawner reports about a worker it was asked to start.
#[derive(Debug)]
pub enum SpawnOutcome {
    /// It was started (a process, an accepted invoke); `instance` says where.
    Started {
        /// The spawn's worker id.
        id: WorkerId,
        /// Where it runs (a pid, a Lambda request id).
        instance: String,
    },
    /// It could not be started.
    Failed {
        /// The spawn's worker id.
        id: WorkerId,
        /// Why, for Stats and the log.
        reason: String,
    },
    /// Its process ended: before its hello a failed spawn, after it the end of its session.
    Exited {
        /// The spawn's worker id.
        id: WorkerId,
        /// How it ended.
        reason: String,
    },
}

/// Deferred re-evaluations.
#[derive(Clone, Debug)]
pub enum Timer {
    /// Look at this worker again (keep-alive ran out, deadline fraction reached);
    /// the number is its connection, so a timer never touches a later connection.
    Worker(WorkerId, Conn),
    /// Try to place and spawn for this function again (after a spawn failure's backoff).
    Function(Arc<str>),
    /// This attempt of this task may have run past its timeout.
    Task(TaskId, u32),
    /// Tasks restored from the journal that were running when the coordinator stopped, and
    /// that no reconnecting worker has claimed within the reconnect grace, go back to work.
    Orphans,
    /// The pause after a restart is over: pending tasks are placed again.
    Settled,
}

/// What the caller carries out once the lock is released.
#[derive(Debug, Default)]
pub struct Effects {
    /// Messages for peers, in order.
    pub out: Vec<Outbound>,
    /// Journal writes, in order.
    pub journal: Vec<JournalOp>,
    /// Workers to start.
    pub spawns: Vec<SpawnRequest>,
    /// Re-evaluations to schedule, after the given delay.
    pub timers: Vec<(Duration, Timer)>,
    /// What the metrics record (after the lock is let go).
    pub observed: Vec<Observation>,
}

/// Something the metrics count or time, as the state saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A task ended. Times in ms; `None` where the task never ran (cancelled while pending,
    /// failed before any attempt) or a clock went backwards.
    Finished {
        /// Its function.
        function: Arc<str>,
        /// Submitted to started (schedule-to-start).
        to_start_ms: Option<u64>,
        /// Started to finished, on its worker.
        execution_ms: Option<u64>,
        /// Submitted to its result.
        to_result_ms: Option<u64>,
    },
    /// A spawned worker said hello this long after it was asked for.
    ColdStart(u64),
    /// A worker was told to shut down.
    Shutdown(pb::ShutdownReason),
    /// A spawn failed: `spawner` (the spawner reported an error), `exited` (its process
    /// ended before hello) or `no_hello` (it did not say hello within the start timeout).
    SpawnFailed(&'static str),
    /// A task ended FAILED (the dashboard lists the latest with their causes).
    Failed {
        /// Its function.
        function: Arc<str>,
        /// The task.
        task_id: u64,
        /// The worker of its last attempt (empty if none ran it).
        worker_id: String,
        /// Its error, cut to [`FAILURE_TEXT`] bytes.
        error: String,
    },
}

/// The most bytes of a failed task's error an [`Observation::Failed`] carries.
pub(super) const FAILURE_TEXT: usize = 512;

impl Effects {
    /// Sends `kind` down connection `conn`.
    pub(super) fn message(&mut self, conn: Conn, kind: pb::coordinator_message::Kind) {
        self.out.push(Outbound::Message {
            conn,
            message: pb::CoordinatorMessage { kind: Some(kind) },
        });
    }
}
