//! What can end a worker session abnormally.

/// Every error a worker session can end with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator could not be dialed (a bad URL, or no answer).
    #[error(transparent)]
    Dial(#[from] carpool_proto::DialError),
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
    /// How long until a standby that refused this worker expects to take over from a
    /// coordinator that missed its lease renewal (its [`carpool_proto::TAKEOVER_IN_MS`]),
    /// at most 5 s.
    pub fn takeover_in(&self) -> Option<std::time::Duration> {
        let Error::Status(s) = self else {
            return None;
        };
        if s.code() != tonic::Code::Unavailable {
            return None;
        }
        let ms: u64 = s
            .metadata()
            .get(carpool_proto::TAKEOVER_IN_MS)?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        Some(std::time::Duration::from_millis(ms.min(5_000)))
    }

    /// Whether reconnecting may help: transport failures yes; the coordinator's deliberate
    /// refusals (bad token, duplicate id, protocol violation) and bad settings no.
    pub fn is_retryable(&self) -> bool {
        use tonic::Code;
        match self {
            Error::Dial(carpool_proto::DialError::Connect(..)) | Error::StreamBroken => true,
            Error::Status(s) => matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::DeadlineExceeded
            ),
            Error::Dial(carpool_proto::DialError::BadUrl(..))
            | Error::Protocol(_)
            | Error::Config(_)
            | Error::Handler(_)
            | Error::Io(_) => false,
        }
    }
}

/// Result with the worker's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a standby's UNAVAILABLE with the metadata is a takeover hint, capped at 5 s.
    #[test]
    fn a_takeover_hint_is_read_from_a_standbys_refusal() {
        let with = |code, value: &str| {
            let mut s = tonic::Status::new(code, "standby");
            s.metadata_mut()
                .insert(carpool_proto::TAKEOVER_IN_MS, value.parse().expect("ascii"));
            Error::Status(s)
        };
        assert_eq!(
            with(tonic::Code::Unavailable, "250").takeover_in(),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(
            with(tonic::Code::Unavailable, "999999").takeover_in(),
            Some(std::time::Duration::from_secs(5))
        );
        assert_eq!(with(tonic::Code::Unavailable, "soon").takeover_in(), None);
        assert_eq!(with(tonic::Code::Unauthenticated, "250").takeover_in(), None);
        assert_eq!(Error::Status(tonic::Status::unavailable("x")).takeover_in(), None);
        assert_eq!(Error::StreamBroken.takeover_in(), None);
    }
}
