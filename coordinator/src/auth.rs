//! Bearer tokens: one for workers (the Workers service), one for clients (Tasks, Cluster).
//! A missing or wrong token is UNAUTHENTICATED, and is logged without the token.

pub use carpool_proto::Secret;
use tonic::{Request, Status};
use tracing::warn;

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An interceptor that admits requests carrying `authorization: Bearer <token>`; with no
/// token configured it admits everything.
pub fn bearer(
    token: Option<Secret>,
    service: &'static str,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let Some(expected) = &token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(p) if same(p.as_bytes(), expected.expose().as_bytes()) => Ok(request),
            Some(_) => {
                warn!(service, "rejected a request with a wrong token");
                Err(Status::unauthenticated(format!(
                    "wrong bearer token for the {service} service"
                )))
            }
            None => {
                warn!(service, "rejected a request without a token");
                Err(Status::unauthenticated(format!(
                    "the {service} service needs an `authorization: Bearer <token>` header"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(header: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut()
                .insert("authorization", h.parse().expect("ascii"));
        }
        r
    }

    #[test]
    fn right_token_passes_wrong_and_missing_are_unauthenticated() {
        let mut check = bearer(Some(Secret::new("s3cret\n")), "Tasks");
        assert!(check(with(Some("Bearer s3cret"))).is_ok());
        let wrong = check(with(Some("Bearer nope"))).expect_err("wrong token");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(!wrong.message().contains("s3cret"));
        let missing = check(with(None)).expect_err("no token");
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn no_configured_token_admits_everyone() {
        assert!(bearer(None, "Tasks")(with(None)).is_ok());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        assert_eq!(format!("{:?}", Secret::new("abc")), "Secret(<redacted>)");
    }
}
