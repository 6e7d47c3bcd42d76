//! What can go wrong in the coordinator, and the gRPC status each case becomes.

use tonic::{Code, Status};

/// Every error the coordinator reports to a client or a worker.
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
    /// Every task id reserved in the journal is handed out and the next block is not
    /// durable yet (the journal is slow or away).
    #[error("task ids are being reserved in the journal, which is slow or away; retry")]
    IdsNotReserved,
    /// A worker's first message was not a Hello.
    #[error("the first message on a worker stream must be a hello")]
    HelloExpected,
    /// A worker stream ended or stalled before its Hello.
    #[error("the worker stream ended or stalled before its hello")]
    NoHello,
    /// A worker sent a second Hello.
    #[error("worker {0} sent a second hello")]
    DuplicateHello(String),
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
    /// A peer's message that does not decode, or is too large (the status says which).
    #[error("{}", .0.message())]
    PeerMessage(Status),
    /// A worker written off for silence (it may reconnect).
    #[error("worker {0} was written off: silent past its liveness lease of {1}; reconnect to resume")]
    WrittenOff(String, String),
    /// A worker stream whose outbound queue filled up (the worker stopped reading).
    #[error("worker {0} stopped reading its stream; its session is ended")]
    StreamFull(String),
    /// A setting is out of its range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The TLS settings would not work (a local worker would refuse the certificate).
    #[error("TLS: {0}")]
    TlsConfig(String),
    /// A worker with this id is already connected.
    #[error("worker {0} is already connected")]
    WorkerExists(String),
    /// A message without its oneof set.
    #[error("empty message from worker {0}")]
    EmptyMessage(String),
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
    /// The state directory could not be read or written.
    #[error("{0}")]
    Journal(String),
    /// The coordinator is shutting down and takes no new work.
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// The local spawner cannot find the worker binary.
    #[error("worker binary {0} not found: build it with `cargo build --bins` or pass --worker-bin")]
    WorkerBinaryMissing(String),
    /// The Lambda spawner's settings are incomplete (no function, no region, no advertise URL).
    #[error("lambda spawner: {0}")]
    LambdaConfig(String),
    /// The state answered an event with a reply of another kind (a defect, never the
    /// caller's doing).
    #[error("internal: {0}")]
    Internal(String),
    /// Binding or serving failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection service setup failed.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// An I/O error outside a request (binding, spawning).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::EmptyFunction
            | Error::UnknownFunction(..)
            | Error::BadFunctionName(_)
            | Error::InvalidHello(_)
            | Error::InvalidSample(..)
            | Error::ResultForUnknownTask(..)
            | Error::EmptyMessage(_) => Code::InvalidArgument,
            Error::PeerMessage(s) => s.code(),
            Error::ResultNotHeld(..) | Error::ResultEvicted(..) => Code::FailedPrecondition,
            // Too large (gRPC's own code for a message over its limit, used for every size
            // limit alike) or too many.
            Error::PayloadTooLarge { .. }
            | Error::KeyTooLong(..)
            | Error::TooManyIds(..)
            | Error::PoolFull(_)
            | Error::PoolBytesFull { .. }
            | Error::TooManyFunctions(_)
            | Error::StreamFull(_) => Code::ResourceExhausted,
            Error::UnknownTask(_) => Code::NotFound,
            Error::HelloExpected | Error::DuplicateHello(_) | Error::NoHello => Code::FailedPrecondition,
            Error::WorkerExists(_) | Error::IdempotencyKeyReused(..) => Code::AlreadyExists,
            Error::ShuttingDown | Error::Journal(_) | Error::WrittenOff(..) | Error::IdsNotReserved => {
                Code::Unavailable
            }
            Error::Config(_) | Error::TlsConfig(_) => Code::InvalidArgument,
            Error::WorkerBinaryMissing(_)
            | Error::Internal(_)
            | Error::LambdaConfig(_)
            | Error::Transport(_)
            | Error::Reflection(_)
            | Error::Io(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// Result with the coordinator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
