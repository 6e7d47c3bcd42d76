//! The coordinator's web listener, serving `/metrics`: its own listener (`--metrics-listen`) under the coordinator's one
//! budget of connections, the optional bearer token, and the two exposition formats
//! (OpenMetrics for Prometheus, the classic text for `curl` and `promtool`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::Secret;
use crate::driver::Driver;
use crate::metrics::{Metrics, classic};

/// The content type of the OpenMetrics exposition (what Prometheus asks for first).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic text format (what `curl` and `promtool` get).
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a scrape reads, and the token it must bring.
#[derive(Clone)]
pub(crate) struct Scrapes {
    pub driver: Driver,
    pub metrics: Arc<Metrics>,
    pub token: Option<Secret>,
}

/// Serves `/metrics` on `listener` until `stop`: each connection holds one of `permits`
/// (the coordinator's one budget of connections) while it lives, and must send each request
/// head within `head_timeout` (a silent or slow client is closed).
pub(crate) async fn serve(
    listener: TcpListener,
    scrapes: Scrapes,
    permits: Arc<Semaphore>,
    head_timeout: Duration,
    stop: CancellationToken,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let app = Router::new().route("/metrics", get(scrape)).with_state(scrapes);
    if let Some(addr) = addr {
        info!(%addr, "metrics on /metrics");
    }
    // Past the budget the connection waits for a place, as on the gRPC port.
    while let Some((stream, peer, permit)) = crate::listener::accept(&listener, &permits, &stop).await {
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = connection => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "a metrics connection ended");
                    }
                }
                () = stop.cancelled() => {}
            }
        });
    }
}

async fn scrape(Extract(scrapes): Extract<Scrapes>, headers: HeaderMap) -> Response {
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !crate::auth::admits(scrapes.token.as_ref(), presented) {
        warn!("refused a scrape without the metrics token");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "/metrics needs `authorization: Bearer <token>` (--metrics-token)\n",
        )
            .into_response();
    }
    let (stats, held) = scrapes.driver.read(|s, now| (s.stats(now), s.held_bytes()));
    let open = scrapes.metrics.render(&stats, held);
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], open).into_response()
    } else {
        ([(header::CONTENT_TYPE, TEXT_FORMAT)], classic(&open)).into_response()
    }
}
