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
    InvalidHello(&'static str),
    /// A worker with this id is already connected.
    #[error("worker {0} is already connected")]
    WorkerExists(String),
    /// A message without its oneof set.
    #[error("empty message from worker {0}")]
    EmptyMessage(String),
    /// The pending pool is at `--max-pending`.
    #[error("the pool is full: {0} tasks pending (--max-pending); retry later")]
    PoolFull(u64),
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
    #[error("state directory: {0}")]
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
            | Error::PayloadTooLarge { .. }
            | Error::InvalidHello(_)
            | Error::InvalidSample(..)
            | Error::ResultForUnknownTask(..)
            | Error::EmptyMessage(_) => Code::InvalidArgument,
            Error::ResultNotHeld(..) => Code::FailedPrecondition,
            Error::PoolFull(_) => Code::ResourceExhausted,
            Error::UnknownTask(_) => Code::NotFound,
            Error::HelloExpected | Error::DuplicateHello(_) | Error::NoHello => Code::FailedPrecondition,
            Error::WorkerExists(_) => Code::AlreadyExists,
            Error::ShuttingDown | Error::Journal(_) => Code::Unavailable,
            Error::WorkerBinaryMissing(_)
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
