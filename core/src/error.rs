//! What the core refuses, and of which kind each refusal is. The service layer maps a
//! [`Kind`] to a gRPC status; the core knows nothing of gRPC.

/// Every refusal or failure the core's state reports for an event.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The function name is empty.
    #[error("function name is empty")]
    EmptyFunction,
    /// No worker of this coordinator can run the function.
    #[error("unknown function {0:?}: this coordinator serves {1}")]
    UnknownFunction(String, String),
    /// The payload is larger than `--max-payload-bytes`.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// No task has this id.
    #[error("task {0} not found")]
    UnknownTask(u64),
    /// No task has this idempotency key (never used, or its task was forgotten).
    #[error("no task has idempotency key {0:?}")]
    UnknownKey(String),
    /// Every task id reserved in the journal is handed out and the next block is not
    /// durable yet (the journal is slow or away).
    #[error("task ids are being reserved in the journal, which is slow or away; retry")]
    IdsNotReserved,
    /// A Hello with missing or impossible fields.
    #[error("invalid hello: {0}")]
    InvalidHello(String),
    /// A function name that is too long or has characters a name may not have.
    #[error("invalid function name: {0}")]
    BadFunctionName(String),
    /// An idempotency key already used for a submission with other parameters.
    #[error(
        "idempotency key {0:?} already names task {1}, submitted with another function, payload or timeout"
    )]
    IdempotencyKeyReused(String, u64),
    /// An idempotency key over the length limit.
    #[error("idempotency key of {0} bytes exceeds the limit of {1} bytes")]
    KeyTooLong(usize, usize),
    /// Too many task ids in one Watch.
    #[error("{0} task ids in one Watch; at most {1}")]
    TooManyIds(usize, usize),
    /// Every function entry is in use (`--max-functions`).
    #[error("this coordinator already keeps {0} functions busy (--max-functions); retry later")]
    TooManyFunctions(usize),
    /// A worker written off for silence (it may reconnect).
    #[error("worker {0} was written off: silent past its liveness lease of {1}; reconnect to resume")]
    WrittenOff(String, String),
    /// A worker stream whose outbound queue filled up (the worker stopped reading).
    #[error("worker {0} stopped reading its stream; its session is ended")]
    StreamFull(String),
    /// A worker with this id is already connected.
    #[error("worker {0} is already connected")]
    WorkerExists(String),
    /// A submission's deadline cannot be met, by what is measured of its function.
    #[error("{0}")]
    DeadlineUnreachable(String),
    /// A task whose own timeout is longer than a fresh worker's whole life would be killed
    /// at the worker's deadline: refused at once.
    #[error(
        "the task's timeout of {timeout_ms} ms does not fit in a worker's life of {life_ms} ms (--execution-timeout, less {slack_ms} ms for the result's way back): it would be killed at the worker's deadline; give it a shorter timeout or the workers a longer life"
    )]
    LongerThanLife {
        /// The task's timeout.
        timeout_ms: u64,
        /// A fresh worker's life.
        life_ms: u64,
        /// What admission keeps back at the end of a life.
        slack_ms: u64,
    },
    /// The pending pool is at `--max-pending`.
    #[error("the pool is full: {0} tasks pending (--max-pending); retry later")]
    PoolFull(u64),
    /// The payloads of unfinished tasks would pass `--max-pending-bytes`.
    #[error(
        "the pool is full: {held} bytes of payloads are held for unfinished tasks, and {size} more would pass --max-pending-bytes {limit}; retry later"
    )]
    PoolBytesFull {
        /// Bytes held now.
        held: u64,
        /// The refused payload's size.
        size: usize,
        /// The limit.
        limit: u64,
    },
    /// A finished task's result was evicted from memory (past `--max-result-bytes`) and no
    /// journal holds it.
    #[error(
        "task {0} finished ({1}), but its result was evicted from memory (past --max-result-bytes) and no journal keeps it; run the coordinator with --state-dir or --state-url to keep every result readable for --result-retention"
    )]
    ResultEvicted(u64, String),
    /// A sample with values no machine can have.
    #[error("worker {0} sent an impossible sample: {1}")]
    InvalidSample(String, String),
    /// A result for a task id the coordinator never created.
    #[error("worker {0} sent a result for task {1}, which does not exist")]
    ResultForUnknownTask(String, u64),
    /// A result for a task that was never assigned to this worker.
    #[error("worker {0} sent a result for task {1}, which it does not hold")]
    ResultNotHeld(String, u64),
    /// The coordinator is shutting down and takes no new work.
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// The state answered an event with a reply of another kind (a defect, never the
    /// caller's doing).
    #[error("internal: {0}")]
    Internal(String),
    /// A peer broke the protocol in a way only the service layer sees (a message that does
    /// not decode, a second hello): told to the worker as it is, its stream then ended.
    #[error("{message}")]
    Violation {
        /// Of which kind.
        kind: Kind,
        /// What was wrong.
        message: String,
    },
}

/// What kind of refusal an [`Error`] is: what a caller can do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request or message itself is wrong: sending it again changes nothing.
    Invalid,
    /// What it names does not exist.
    NotFound,
    /// What it would create exists already.
    Exists,
    /// It does not fit the state it was sent in (e.g. a result for a task not held).
    Precondition,
    /// A limit is reached: retry later, or send less.
    Exhausted,
    /// The coordinator cannot take it now (shutting down, journal away): retry.
    Unavailable,
    /// A defect, never the caller's doing.
    Internal,
}

impl Error {
    /// The kind of this refusal.
    pub fn kind(&self) -> Kind {
        match self {
            Error::EmptyFunction
            | Error::UnknownFunction(..)
            | Error::BadFunctionName(_)
            | Error::InvalidHello(_)
            | Error::InvalidSample(..)
            | Error::ResultForUnknownTask(..) => Kind::Invalid,
            Error::ResultNotHeld(..)
            | Error::ResultEvicted(..)
            | Error::DeadlineUnreachable(_)
            | Error::LongerThanLife { .. } => Kind::Precondition,
            Error::PayloadTooLarge { .. }
            | Error::KeyTooLong(..)
            | Error::TooManyIds(..)
            | Error::PoolFull(_)
            | Error::PoolBytesFull { .. }
            | Error::TooManyFunctions(_)
            | Error::StreamFull(_) => Kind::Exhausted,
            Error::UnknownTask(_) | Error::UnknownKey(_) => Kind::NotFound,
            Error::WorkerExists(_) | Error::IdempotencyKeyReused(..) => Kind::Exists,
            Error::ShuttingDown | Error::WrittenOff(..) | Error::IdsNotReserved => Kind::Unavailable,
            Error::Internal(_) => Kind::Internal,
            Error::Violation { kind, .. } => *kind,
        }
    }
}

/// Result with the core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
