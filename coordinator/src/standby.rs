//! A coordinator with `--state-url` that does not hold the lease stands by: it answers
//! every Tasks, Cluster and Workers call with UNAVAILABLE naming the active coordinator,
//! reports NOT_SERVING on `grpc.health.v1` (so a load balancer routes to the active one),
//! and tries for the lease every [`POLL`] until it gets it. Once the active coordinator has
//! missed a renewal (paused, cut off, dead), the standby tries again at the lease's expiry,
//! and its refusals say when it expects to take over, so that workers wait for it rather
//! than dial the silent one again.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::Result;
use crate::journal::postgres::{Lease, Store};

/// How often a standby tries for the lease.
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// The services a standby refuses (and reports NOT_SERVING for).
const SERVICES: [&str; 4] = ["", "carpool.v1.Tasks", "carpool.v1.Cluster", "carpool.v1.Workers"];

/// Waits until this coordinator holds the lease (its term), serving as a standby on
/// `listener` meanwhile; `None` if `shutdown` came first.
/// `seen` is told the active coordinator's URL each time it changes.
pub(crate) async fn until_active(
    listener: Arc<TcpListener>,
    store: &Store,
    config: &Config,
    seen: impl Fn(&str),
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<i64>> {
    let active = match store.acquire().await {
        Ok(Lease::Ours(term)) => return Ok(Some(term)),
        Ok(Lease::Held { url, expires_in }) => Active::seen(url, expires_in, store.lease),
        Err(e) => {
            warn!(error = %e, "cannot read the lease yet");
            Active::default()
        }
    };
    info!(active = %active.url, "standing by: another coordinator holds the lease");
    seen(&active.url);
    let next_poll = active.next_poll();
    let active = Arc::new(Mutex::new(active));
    let answer = active.clone();
    let server = NotServing::start(listener, config, move || {
        answer.lock().unwrap_or_else(PoisonError::into_inner).refusal()
    })
    .await?;
    let mut next_poll = next_poll;
    let outcome = loop {
        tokio::select! {
            () = tokio::time::sleep(next_poll) => {}
            () = &mut shutdown => break None,
        }
        match store.acquire().await {
            Ok(Lease::Ours(term)) => break Some(term),
            Ok(Lease::Held { url, expires_in }) => {
                let mut current = active.lock().unwrap_or_else(PoisonError::into_inner);
                if current.url != url {
                    info!(active = %url, "the lease changed hands");
                    seen(&url);
                }
                let read = Active::seen(url, expires_in, store.lease);
                if read.takeover_at.is_some() && current.takeover_at.is_none() {
                    info!(active = %read.url, expires_in_ms = expires_in.as_millis() as u64, "the active coordinator missed a lease renewal");
                }
                *current = read;
                next_poll = current.next_poll();
            }
            Err(e) => {
                warn!(error = %e, "cannot read the lease; retrying");
                let mut current = active.lock().unwrap_or_else(PoisonError::into_inner);
                current.takeover_at = None;
                next_poll = POLL;
            }
        }
    };
    server.stop().await;
    if let Some(term) = outcome {
        info!(term, "took the lease: this coordinator is active");
    }
    Ok(outcome)
}

/// What a standby last read of the active coordinator's lease.
#[derive(Default)]
struct Active {
    /// Its URL (empty: not known yet).
    url: String,
    /// Set once it has missed a renewal: when its lease expires and this standby takes it.
    takeover_at: Option<Instant>,
}

impl Active {
    /// A lease held by `url` expiring in `expires_in`. A live holder renews every third of
    /// `lease`, so one with less than half a lease left has missed a renewal (paused, cut
    /// off or dead).
    fn seen(url: String, expires_in: Duration, lease: Duration) -> Self {
        Self {
            url,
            takeover_at: (expires_in < lease / 2).then(|| Instant::now() + expires_in),
        }
    }

    /// How long until this standby tries for the lease at its expiry, once the holder
    /// missed a renewal.
    fn takeover_in(&self) -> Option<Duration> {
        self.takeover_at.map(|at| {
            at.saturating_duration_since(Instant::now())
                .saturating_add(EXPIRY_MARGIN)
        })
    }

    /// When to try for the lease next: at its expiry once the holder missed a renewal.
    fn next_poll(&self) -> Duration {
        self.takeover_in().map_or(POLL, |d| d.min(POLL))
    }

    /// The UNAVAILABLE a standby answers: who is active, and once it missed a renewal, in how
    /// many ms this standby expects to take over (metadata [`carpool_proto::TAKEOVER_IN_MS`]).
    fn refusal(&self) -> Status {
        let to = if self.url.is_empty() {
            "unknown yet"
        } else {
            &self.url
        };
        let Some(takeover_in) = self.takeover_in() else {
            return Status::unavailable(format!(
                "this coordinator is a standby; the active coordinator is {to}"
            ));
        };
        let in_ms = takeover_in.as_millis() as u64;
        let mut status = Status::unavailable(format!(
            "this coordinator is a standby; the active coordinator {to} missed its lease renewal, \
             and this one takes over in about {in_ms} ms"
        ));
        if let Ok(value) = in_ms.to_string().parse() {
            status.metadata_mut().insert(carpool_proto::TAKEOVER_IN_MS, value);
        }
        status
    }
}

/// How long after a lease's expiry a standby tries for it (the two clocks are the database's).
const EXPIRY_MARGIN: Duration = Duration::from_millis(20);

/// The listener served with every Tasks, Cluster and Workers call refused (the UNAVAILABLE
/// `why` gives at that moment) and NOT_SERVING on `grpc.health.v1`: while a
/// coordinator stands by, or waits for its database.
pub(crate) struct NotServing {
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
}

impl NotServing {
    pub(crate) async fn start(
        listener: Arc<TcpListener>,
        config: &Config,
        why: impl Fn() -> Status + Clone + Send + Sync + 'static,
    ) -> Result<Self> {
        let (health, health_service) = tonic_health::server::health_reporter();
        for service in SERVICES {
            health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        let refuse = move || {
            let status = why();
            async move { status.into_http::<axum::body::Body>() }
        };
        let routes = tonic::service::Routes::new(health_service)
            .prepare()
            .into_axum_router()
            .fallback(refuse);
        let stop = CancellationToken::new();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &config.listen.tls {
            let identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);
            builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
        }
        let server = builder
            .add_routes(tonic::service::Routes::from(routes))
            .serve_with_incoming_shutdown(
                crate::listener::incoming(
                    listener,
                    Arc::new(tokio::sync::Semaphore::new(config.listen.max_connections)),
                    config.listen.handshake_timeout,
                    stop.clone(),
                ),
                stop.clone().cancelled_owned(),
            );
        Ok(Self {
            stop,
            server: tokio::spawn(server),
        })
    }

    /// Stops serving; open connections are closed (clients and workers reconnect).
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let abort = self.server.abort_handle();
        if tokio::time::timeout(Duration::from_millis(500), self.server)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(2);

    fn hint(status: &Status) -> Option<u64> {
        status
            .metadata()
            .get(carpool_proto::TAKEOVER_IN_MS)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }

    /// A holder that renews (more than half a lease left) is named, with no hint, and the
    /// standby polls at its usual pace.
    #[test]
    fn a_renewing_holder_gets_a_plain_refusal() {
        let a = Active::seen("http://a".into(), Duration::from_millis(1_500), LEASE);
        let refusal = a.refusal();
        assert_eq!(refusal.code(), tonic::Code::Unavailable);
        assert!(refusal.message().contains("http://a"), "{refusal:?}");
        assert_eq!(hint(&refusal), None);
        assert_eq!(a.next_poll(), POLL);
    }

    /// A holder that missed a renewal: the refusal says when the standby takes over, and
    /// the standby tries for the lease at its expiry (sooner than its usual pace).
    #[test]
    fn a_holder_that_missed_a_renewal_gets_a_takeover_hint() {
        let a = Active::seen("http://a".into(), Duration::from_millis(100), LEASE);
        let refusal = a.refusal();
        assert!(
            refusal.message().contains("missed its lease renewal"),
            "{refusal:?}"
        );
        let ms = hint(&refusal).expect("a hint");
        assert!(ms <= 100 + EXPIRY_MARGIN.as_millis() as u64, "{ms}");
        assert!(a.next_poll() <= Duration::from_millis(120));
        // Past its expiry: take it now.
        let gone = Active::seen("http://a".into(), Duration::ZERO, LEASE);
        assert!(gone.next_poll() <= EXPIRY_MARGIN);
        assert!(hint(&gone.refusal()).is_some());
    }

    /// Not yet read: "unknown yet", no hint.
    #[test]
    fn an_unknown_holder_is_said_to_be_unknown() {
        let refusal = Active::default().refusal();
        assert!(refusal.message().contains("unknown yet"), "{refusal:?}");
        assert_eq!(hint(&refusal), None);
    }
}
