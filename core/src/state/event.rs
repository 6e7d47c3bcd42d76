//! Every way the coordinator's state can change, in one place: an [`Event`] goes into
//! [`State::handle`] with the time, and what the state decided comes out as [`Effects`]
//! (what to send, write, spawn and arm) and a [`Reply`] for the caller. The driver, the
//! simulator and the tests all speak it; nothing outside `state` changes the state otherwise.

use std::time::Instant;

use carpool_messages::pb::{self, TaskState};

use super::{
    Conn, Effects, Recovered, SpawnOutcome, State, StreamEnd, Submission, Submitted, TaskId, Timer, Waiter,
    WaiterId, WorkerId,
};
use crate::error::{Error, Result};

/// Something that happened to the coordinator.
#[derive(Debug)]
pub enum Event {
    /// A client submits a task (Submit, Run, an item of Map); `waiter` hears its end.
    Submit {
        /// What is submitted.
        submission: Submission,
        /// Who hears the task's end, if anyone.
        waiter: Option<Waiter>,
    },
    /// A submission's record is durable: it enters its pool.
    Accepted(TaskId),
    /// A submission's record could not be written: the task is forgotten, and whoever
    /// waits on it told why.
    NotAccepted {
        /// The task.
        id: TaskId,
        /// Why its record was not written.
        why: String,
    },
    /// A client cancels a task.
    Cancel(TaskId),
    /// A Map call's budget is spent: the pending tasks it follows end, CANCELLED with
    /// `reason`; running ones finish.
    StopPending {
        /// The call's waiter.
        waiter: WaiterId,
        /// The error their results carry.
        reason: String,
    },
    /// A client waits for the ends of these tasks.
    Watch {
        /// The tasks.
        ids: Vec<TaskId>,
        /// Who hears their ends.
        waiter: WaiterId,
    },
    /// A worker opens a stream and says who it is (a new worker, or one coming back).
    Hello(pb::Hello),
    /// A worker's resource sample.
    Sample {
        /// The worker.
        worker: WorkerId,
        /// What it measured.
        sample: pb::ResourceSample,
    },
    /// A worker's finished tasks.
    Results {
        /// The worker.
        worker: WorkerId,
        /// Its results, in the order sent.
        results: Vec<pb::WorkerTaskResult>,
    },
    /// A worker's stream `conn` ended.
    Disconnect {
        /// The worker.
        worker: WorkerId,
        /// Its connection that ended (an older one's end changes nothing).
        conn: Conn,
        /// How the stream ended.
        end: StreamEnd,
    },
    /// The queue of messages to the worker on `conn` is full: it is not reading.
    StreamFull(Conn),
    /// A spawn started, failed, or its process exited.
    Spawn(SpawnOutcome),
    /// The periodic look at the fleet: silent workers, spawns that never said hello,
    /// detached workers past their grace.
    Sweep,
    /// A timer the state armed went off.
    Timer(Timer),
    /// Task ids below this are reserved durably: they may be handed out.
    IdsReserved(TaskId),
    /// What a journal held, loaded at start or at a takeover.
    Restore(Recovered),
    /// The coordinator is shutting down: nothing new is taken, every worker told to leave.
    Drain,
    /// An operator asks that what was learned of a function be forgotten (its handler
    /// changed): its levels and what each size cost, at every size.
    Relearn(String),
}

/// What the caller of [`State::handle`] learns beyond the effects.
#[derive(Debug)]
pub enum Reply {
    /// Nothing to say.
    Done,
    /// A submission was taken: its id, and whether its record must be written first.
    Submitted(Submitted),
    /// The state a cancelled task is in now.
    Cancelled(TaskState),
    /// How many of the watched tasks had not ended yet.
    Watching(usize),
    /// A worker's stream was welcomed as this connection.
    Connected(Conn),
    /// How many workers were told to leave.
    Drained(usize),
    /// How many pending tasks a [`Event::StopPending`] ended.
    Stopped(usize),
    /// What an [`Event::Relearn`] forgot: how many sizes' levels, how many sizes' costs.
    Relearned {
        /// Sizes whose learned level was forgotten.
        levels: usize,
        /// Sizes whose cost per task was forgotten.
        costs: usize,
    },
}

impl State {
    /// Applies `event` at `now`: what it decided is added to `effects`, and its answer (or
    /// its refusal, before anything changed) is returned.
    pub fn handle(&mut self, now: Instant, event: Event, effects: &mut Effects) -> Result<Reply> {
        let reply = self.apply(now, event, effects);
        self.watch_handovers(now);
        reply
    }

    fn apply(&mut self, now: Instant, event: Event, effects: &mut Effects) -> Result<Reply> {
        Ok(match event {
            Event::Submit { submission, waiter } => {
                Reply::Submitted(self.submit(submission, waiter, now, effects)?)
            }
            Event::Accepted(id) => {
                self.accepted(id, now, effects);
                Reply::Done
            }
            Event::NotAccepted { id, why } => {
                self.not_accepted(id, &why, effects);
                Reply::Done
            }
            Event::Cancel(id) => Reply::Cancelled(self.cancel(id, now, effects)?),
            Event::StopPending { waiter, reason } => {
                Reply::Stopped(self.stop_pending(waiter, &reason, now, effects))
            }
            Event::Watch { ids, waiter } => Reply::Watching(self.watch(&ids, waiter, effects)?),
            Event::Hello(hello) => Reply::Connected(self.connect(hello, now, effects)?),
            Event::Sample { worker, sample } => {
                self.sample(&worker, sample, now, effects)?;
                Reply::Done
            }
            Event::Results { worker, results } => {
                self.results(&worker, results, now, effects)?;
                Reply::Done
            }
            Event::Disconnect { worker, conn, end } => {
                self.disconnect(&worker, conn, end, now, effects);
                Reply::Done
            }
            Event::StreamFull(conn) => {
                self.stream_full(conn, now, effects);
                Reply::Done
            }
            Event::Spawn(outcome) => {
                self.spawn_outcome(outcome, now, effects);
                Reply::Done
            }
            Event::Sweep => {
                self.sweep(now, effects);
                Reply::Done
            }
            Event::Timer(timer) => {
                self.on_timer(timer, now, effects);
                Reply::Done
            }
            Event::IdsReserved(until) => {
                self.ids_reserved(until);
                Reply::Done
            }
            Event::Restore(recovered) => {
                self.restore(recovered, now, effects);
                Reply::Done
            }
            Event::Drain => Reply::Drained(self.drain(effects)),
            Event::Relearn(function) => {
                let (levels, costs) = self.relearn(&function, effects)?;
                Reply::Relearned { levels, costs }
            }
        })
    }
}

impl Reply {
    /// The submission's outcome, for the caller of an [`Event::Submit`].
    pub fn submitted(self) -> Result<Submitted> {
        match self {
            Reply::Submitted(s) => Ok(s),
            other => Err(other.unexpected("a submission")),
        }
    }

    /// The task's state, for the caller of an [`Event::Cancel`].
    pub fn cancelled(self) -> Result<TaskState> {
        match self {
            Reply::Cancelled(s) => Ok(s),
            other => Err(other.unexpected("a cancellation")),
        }
    }

    /// How many watched tasks have not ended, for the caller of an [`Event::Watch`].
    pub fn watching(self) -> Result<usize> {
        match self {
            Reply::Watching(n) => Ok(n),
            other => Err(other.unexpected("a watch")),
        }
    }

    /// The connection, for the caller of an [`Event::Hello`].
    pub fn connected(self) -> Result<Conn> {
        match self {
            Reply::Connected(c) => Ok(c),
            other => Err(other.unexpected("a hello")),
        }
    }

    fn unexpected(&self, to: &str) -> Error {
        Error::Internal(format!("the state answered {to} with {self:?}"))
    }
}
