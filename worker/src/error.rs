//! What can end a worker session abnormally.

/// Every error a worker session can end with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator URL does not parse.
    #[error("invalid coordinator url {0:?}: {1}")]
    BadUrl(String, String),
    /// The coordinator could not be reached.
    #[error("cannot reach the coordinator at {0}: {1}")]
    Connect(String, String),
    /// The coordinator refused the session or broke the stream.
    #[error("coordinator: {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The coordinator sent something out of protocol order.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The outgoing stream closed under us.
    #[error("the stream to the coordinator broke")]
    StreamBroken,
    /// A setting is missing or impossible.
    #[error("configuration: {0}")]
    Config(String),
    /// The handler cannot run tasks (a Lambda runtime that failed to initialize).
    #[error("handler: {0}")]
    Handler(String),
    /// An I/O error (runtime, CPU pinning).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether reconnecting may help: transport failures yes; the coordinator's deliberate
    /// refusals (bad token, duplicate id, protocol violation) and bad settings no.
    pub fn is_retryable(&self) -> bool {
        use tonic::Code;
        match self {
            Error::Connect(..) | Error::StreamBroken => true,
            Error::Status(s) => matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::DeadlineExceeded
            ),
            Error::BadUrl(..) | Error::Protocol(_) | Error::Config(_) | Error::Handler(_) | Error::Io(_) => {
                false
            }
        }
    }
}

/// Result with the worker's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
