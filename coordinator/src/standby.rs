//! A coordinator with `--state-url` that does not hold the lease stands by: it answers
//! every Tasks, Cluster and Workers call with UNAVAILABLE naming the active coordinator,
//! reports NOT_SERVING on `grpc.health.v1` (so a load balancer routes to the active one),
//! and tries for the lease every [`POLL`] until it gets it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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
pub(crate) async fn until_active(
    listener: Arc<TcpListener>,
    store: &Store,
    config: &Config,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<i64>> {
    let active = match store.acquire().await {
        Ok(Lease::Ours(term)) => return Ok(Some(term)),
        Ok(Lease::Held(url)) => url,
        Err(e) => {
            warn!(error = %e, "cannot read the lease yet");
            String::new()
        }
    };
    info!(active = %active, "standing by: another coordinator holds the lease");
    let active = Arc::new(Mutex::new(active));
    let answer = active.clone();
    let server = NotServing::start(listener, config, move || {
        let url = answer.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let to = if url.is_empty() {
            "unknown yet".to_owned()
        } else {
            url
        };
        format!("this coordinator is a standby; the active coordinator is {to}")
    })
    .await?;
    let outcome = loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = &mut shutdown => break None,
        }
        match store.acquire().await {
            Ok(Lease::Ours(term)) => break Some(term),
            Ok(Lease::Held(url)) => {
                let mut current = active.lock().unwrap_or_else(PoisonError::into_inner);
                if *current != url {
                    info!(active = %url, "the lease changed hands");
                    *current = url;
                }
            }
            Err(e) => warn!(error = %e, "cannot read the lease; retrying"),
        }
    };
    server.stop().await;
    if let Some(term) = outcome {
        info!(term, "took the lease: this coordinator is active");
    }
    Ok(outcome)
}

/// The listener served with every Tasks, Cluster and Workers call refused (UNAVAILABLE, with
/// the message `why` gives at that moment) and NOT_SERVING on `grpc.health.v1`: while a
/// coordinator stands by, or waits for its database.
pub(crate) struct NotServing {
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
}

impl NotServing {
    pub(crate) async fn start(
        listener: Arc<TcpListener>,
        config: &Config,
        why: impl Fn() -> String + Clone + Send + Sync + 'static,
    ) -> Result<Self> {
        let (health, health_service) = tonic_health::server::health_reporter();
        for service in SERVICES {
            health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        let refuse = move || {
            let message = why();
            async move { Status::unavailable(message).into_http::<axum::body::Body>() }
        };
        let routes = tonic::service::Routes::new(health_service)
            .prepare()
            .into_axum_router()
            .fallback(refuse);
        let stop = CancellationToken::new();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            let identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);
            builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
        }
        let server = builder
            .add_routes(tonic::service::Routes::from(routes))
            .serve_with_incoming_shutdown(
                crate::server::incoming(
                    listener,
                    Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
                    config.handshake_timeout,
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
