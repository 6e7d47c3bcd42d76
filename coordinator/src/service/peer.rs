//! Errors a peer causes before any handler runs, in the contract's codes.
//!
//! - Bytes that do not decode are INVALID_ARGUMENT: carpool-proto's codec says so itself.
//! - A message over the size limit is RESOURCE_EXHAUSTED (gRPC's own code for a message that
//!   is too large), where tonic says OUT_OF_RANGE: [`PeerErrorsLayer`] rewrites it on every
//!   unary response (tonic answers those before the handler runs), and [`from_peer`] does
//!   for the messages handlers read from a stream (Map, Connect).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::{Code, Status};

/// What tonic's decoder says of a message over its limit.
const TOO_LARGE: &str = "Error, decoded message length too large";

/// An error reading a peer's message, as the contract's status if it is the peer's fault
/// (undecodable bytes, a message too large); `None` for a transport failure (the peer went
/// away, the connection broke).
pub(crate) fn from_peer(status: &Status) -> Option<Status> {
    match status.code() {
        Code::InvalidArgument | Code::ResourceExhausted => Some(status.clone()),
        Code::OutOfRange if status.message().starts_with(TOO_LARGE) => Some(too_large(status)),
        _ => None,
    }
}

fn too_large(status: &Status) -> Status {
    Status::resource_exhausted(format!(
        "the message is larger than this coordinator accepts ({}); send less per message",
        status.message().trim_start_matches("Error, ")
    ))
}

/// Rewrites a too-large OUT_OF_RANGE into RESOURCE_EXHAUSTED on every response.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PeerErrorsLayer;

impl<S> tower::Layer<S> for PeerErrorsLayer {
    type Service = PeerErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerErrors(inner)
    }
}

/// The service [`PeerErrorsLayer`] wraps.
#[derive(Clone, Debug)]
pub(crate) struct PeerErrors<S>(S);

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for PeerErrors<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let response = self.0.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            // A trailers-only response (an error before any message) carries its status
            // in the headers.
            if let Some(status) = Status::from_header_map(response.headers())
                && status.code() == Code::OutOfRange
                && status.message().starts_with(TOO_LARGE)
            {
                let _ = too_large(&status).add_header(response.headers_mut());
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_not_the_peers_fault_but_bad_messages_are() {
        let big = Status::out_of_range(format!(
            "{TOO_LARGE}: found 9437202 bytes, the limit is: 8454144 bytes"
        ));
        let mapped = from_peer(&big).map(|s| (s.code(), s.message().to_owned()));
        assert!(
            matches!(&mapped, Some((Code::ResourceExhausted, m)) if m.contains("found 9437202 bytes")),
            "{mapped:?}"
        );
        assert_eq!(
            from_peer(&Status::invalid_argument("x")).map(|s| s.code()),
            Some(Code::InvalidArgument)
        );
        assert!(from_peer(&Status::unknown("h2 protocol error")).is_none());
        assert!(from_peer(&Status::cancelled("gone")).is_none());
    }
}
