//! How clients and workers dial a coordinator: HTTP/2 keepalive on (tonic leaves it off;
//! load balancers cut idle connections and a frozen Lambda stops answering), and TLS for
//! `https://` URLs.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Interval of HTTP/2 keepalive pings.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
/// How long a ping may go unanswered before the connection is declared dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Metadata on a standby's UNAVAILABLE once the active coordinator has missed a lease
/// renewal: in how many ms the lease expires and this standby takes over. A worker that
/// gets it retries that standby then, rather than dialing the silent one again.
pub const TAKEOVER_IN_MS: &str = "carpool-takeover-in-ms";

/// TLS settings for `https://` coordinator URLs.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM of the CA that signed the coordinator's certificate; `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The name to verify the certificate against, when it differs from the URL's host
    /// (e.g. dialing 127.0.0.1 with a certificate for `localhost`).
    pub domain: Option<String>,
}

/// Whether `url` is an `http://` or `https://` URL, the only kinds a coordinator is dialed at.
pub fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// The coordinators a comma-separated list names (an active one and its standbys), in
/// order; a single URL is a list of one.
pub fn coordinator_urls(list: &str) -> Vec<&str> {
    let urls: Vec<&str> = list.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    if urls.is_empty() { vec![list] } else { urls }
}

/// Why a coordinator could not be dialed (the client's and the worker's errors carry it).
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The URL does not parse, or its TLS settings do not fit it.
    #[error("invalid coordinator url {0:?}: {1}")]
    BadUrl(String, String),
    /// The coordinator could not be reached.
    #[error("cannot reach the coordinator at {0}: {1}")]
    Connect(String, String),
}

/// Dials `url` ([`endpoint`]'s settings, then `tune`'s: a worker's tighter keepalive).
pub async fn dial(
    url: &str,
    tls: &TlsOptions,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, DialError> {
    let endpoint = endpoint(url, tls).map_err(|e| DialError::BadUrl(url.to_owned(), e))?;
    tune(endpoint)
        .connect()
        .await
        .map_err(|e| DialError::Connect(url.to_owned(), e.to_string()))
}

/// An endpoint for `url` with keepalive, and TLS when the URL is `https://`.
pub fn endpoint(url: &str, tls: &TlsOptions) -> Result<Endpoint, String> {
    let mut ep = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("invalid coordinator url {url:?}: {e}"))?
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    if url.starts_with("https://") {
        let mut config = match &tls.ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        ep = ep
            .tls_config(config)
            .map_err(|e| format!("TLS settings for {url}: {e}"))?;
    } else if tls.ca_pem.is_some() {
        return Err(format!("a TLS CA was given but {url} is not an https:// URL"));
    }
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::coordinator_urls;

    #[test]
    fn a_list_of_coordinators_splits_on_commas_and_one_url_is_a_list_of_one() {
        assert_eq!(
            coordinator_urls("http://a:1, http://b:2,"),
            vec!["http://a:1", "http://b:2"]
        );
        assert_eq!(coordinator_urls("http://a:1"), vec!["http://a:1"]);
    }
}
