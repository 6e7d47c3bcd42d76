//! Bearer tokens: one for workers (the Workers service), one for clients (Tasks, Cluster).
//! A missing or wrong token is UNAUTHENTICATED, and is logged without the token.

pub use carpool_proto::Secret;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};
use tracing::warn;

/// What an `authorization` header holds.
enum Presented<'a> {
    /// No header (or one that is not text).
    Missing,
    /// A header with another scheme than Bearer.
    OtherScheme,
    /// A Bearer token.
    Token(&'a str),
}

/// Reads `value` as `<scheme> <credentials>`; the scheme is case-insensitive (RFC 7235)
/// and may be followed by more than one space.
fn parse(value: Option<&str>) -> Presented<'_> {
    let Some(v) = value else {
        return Presented::Missing;
    };
    match v.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Presented::Token(token.trim_start_matches(' '))
        }
        _ => Presented::OtherScheme,
    }
}

/// Whether an HTTP request with `header` (its `authorization`) carries `expected` as a
/// Bearer token (compared in constant time); with no token expected, every request does.
pub(crate) fn admits(expected: Option<&Secret>, header: Option<&str>) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    matches!(parse(header), Presented::Token(p) if bool::from(p.as_bytes().ct_eq(expected.expose().as_bytes())))
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
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match parse(header) {
            Presented::Token(p) if bool::from(p.as_bytes().ct_eq(expected.expose().as_bytes())) => {
                Ok(request)
            }
            Presented::Token(_) => {
                warn!(service, "rejected a request with a wrong token");
                Err(Status::unauthenticated(format!(
                    "wrong bearer token for the {service} service"
                )))
            }
            Presented::OtherScheme => {
                warn!(service, "rejected a request with another authorization scheme");
                Err(Status::unauthenticated(format!(
                    "the {service} service takes the Bearer scheme: `authorization: Bearer <token>`"
                )))
            }
            Presented::Missing => {
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
    fn the_scheme_is_case_insensitive_and_another_scheme_is_named() {
        let mut check = bearer(Some(Secret::new("s3cret")), "Tasks");
        for h in ["bearer s3cret", "BEARER s3cret", "Bearer  s3cret"] {
            assert!(check(with(Some(h))).is_ok(), "{h}");
        }
        let basic = check(with(Some("Basic czNjcmV0"))).expect_err("basic");
        assert!(basic.message().contains("Bearer scheme"), "{}", basic.message());
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
