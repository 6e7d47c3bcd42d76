//! What can go wrong in the coordinator, and the gRPC status each case becomes.

use carpool_core::Kind;
use tonic::{Code, Status};

/// Every error the coordinator reports to a client or a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A refusal of the core (the state): its kind decides the status.
    #[error(transparent)]
    Core(#[from] carpool_core::Error),
    /// A worker's first message was not a Hello.
    #[error("the first message on a worker stream must be a hello")]
    HelloExpected,
    /// A worker stream ended or stalled before its Hello.
    #[error("the worker stream ended or stalled before its hello")]
    NoHello,
    /// A worker sent a second Hello.
    #[error("worker {0} sent a second hello")]
    DuplicateHello(String),
    /// A peer's message that does not decode, or is too large (the status says which).
    #[error("{}", .0.message())]
    PeerMessage(Status),
    /// A setting is out of its range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The TLS settings would not work (a local worker would refuse the certificate).
    #[error("TLS: {0}")]
    TlsConfig(String),
    /// A message without its oneof set.
    #[error("empty message from worker {0}")]
    EmptyMessage(String),
    /// The state directory could not be read or written.
    #[error("{0}")]
    Journal(String),
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
            Error::Core(core) => match core.kind() {
                Kind::Invalid => Code::InvalidArgument,
                Kind::NotFound => Code::NotFound,
                Kind::Exists => Code::AlreadyExists,
                Kind::Precondition => Code::FailedPrecondition,
                // gRPC's own code for a message over its limit, used for every limit alike.
                Kind::Exhausted => Code::ResourceExhausted,
                Kind::Unavailable => Code::Unavailable,
                Kind::Internal => Code::Internal,
            },
            Error::EmptyMessage(_) | Error::Config(_) | Error::TlsConfig(_) => Code::InvalidArgument,
            Error::PeerMessage(s) => s.code(),
            Error::HelloExpected | Error::DuplicateHello(_) | Error::NoHello => Code::FailedPrecondition,
            Error::Journal(_) => Code::Unavailable,
            Error::WorkerBinaryMissing(_)
            | Error::LambdaConfig(_)
            | Error::Transport(_)
            | Error::Reflection(_)
            | Error::Io(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl Error {
    /// This error as the core takes it (a peer's protocol violation, ending its stream): a
    /// core refusal as it is, any other as a violation of the kind its status says.
    pub(crate) fn into_core(self) -> carpool_core::Error {
        if let Error::Core(core) = self {
            return core;
        }
        let status = Status::from(self);
        let kind = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Kind::Invalid,
            Code::NotFound => Kind::NotFound,
            Code::AlreadyExists => Kind::Exists,
            Code::FailedPrecondition => Kind::Precondition,
            Code::ResourceExhausted => Kind::Exhausted,
            Code::Unavailable => Kind::Unavailable,
            _ => Kind::Internal,
        };
        carpool_core::Error::Violation {
            kind,
            message: status.message().to_owned(),
        }
    }
}

/// A core refusal as the gRPC status a caller gets.
pub(crate) fn status(e: carpool_core::Error) -> Status {
    Error::from(e).into()
}

/// Result with the coordinator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
