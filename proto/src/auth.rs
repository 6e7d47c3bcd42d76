//! What every peer needs to authenticate: a redacted [`Secret`] and the [`Bearer`]
//! interceptor that attaches it to each call as `authorization: Bearer <token>`.

use std::fmt;
use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret (surrounding whitespace, e.g. a file's trailing newline, is dropped).
    pub fn new(value: &str) -> Self {
        Self(Arc::from(value.trim()))
    }

    /// A token given as a flag's value or in a file (`flag` names them in errors); `None`
    /// when neither is given. An empty token is refused.
    pub fn from_value_or_file(
        value: Option<&str>,
        file: Option<&std::path::Path>,
        flag: &str,
    ) -> Result<Option<Self>, String> {
        let secret = match (value, file) {
            (Some(v), _) => Self::new(v),
            (None, Some(path)) => Self::new(
                &std::fs::read_to_string(path).map_err(|e| format!("{flag}-file {}: {e}", path.display()))?,
            ),
            (None, None) => return Ok(None),
        };
        if secret.expose().is_empty() {
            return Err(format!("{flag} is empty"));
        }
        Ok(Some(secret))
    }

    /// The secret itself, for the few places that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Clone, Debug, Default)]
pub struct Bearer {
    header: Option<MetadataValue<Ascii>>,
}

impl Bearer {
    /// An interceptor for `token`; fails if the token is not valid header text.
    pub fn new(token: Option<&Secret>) -> Result<Self, String> {
        let header = match token {
            Some(t) => Some(
                format!("Bearer {}", t.expose())
                    .parse()
                    .map_err(|_| "the token must be printable ASCII".to_owned())?,
            ),
            None => None,
        };
        Ok(Self { header })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}
