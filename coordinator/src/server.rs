//! Serving: binds the services (with reflection and health) on a given listener and runs
//! until a shutdown future resolves, then drains the fleet.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use carpool_proto::FILE_DESCRIPTOR_SET;
use carpool_proto::pb::cluster_server::ClusterServer;
use carpool_proto::pb::tasks_server::TasksServer;
use carpool_proto::pb::workers_server::WorkersServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, ServerTlsConfig};
use tracing::{debug, info, warn};

use crate::auth::bearer;
use crate::config::{Config, SpawnerKind};
use crate::error::Result;
use crate::hub::Hub;
use crate::journal::Journal;
use crate::service::cluster::ClusterService;
use crate::service::tasks::TasksService;
use crate::service::workers::WorkersService;
use crate::spawner::{ExternalSpawner, LocalSpawner, Spawner};

/// HTTP/2 keepalive on the server side: tonic leaves it off, and idle connections are cut
/// by load balancers while a frozen Lambda stops answering.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a keepalive ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long shutdown waits for clients to close their connections.
pub const CLIENT_GRACE: Duration = Duration::from_secs(1);
/// How long shutdown waits for workers to finish their tasks.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// The URL workers on this machine dial to reach `addr` (an unspecified address becomes
/// loopback).
pub fn local_url(addr: SocketAddr, tls: bool) -> String {
    let ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

/// Serves the coordinator on `listener` until `shutdown` resolves, then tells every worker
/// to drain, waits for them (at most [`DRAIN_LIMIT`]), ends what is left and returns.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let addr = listener.local_addr()?;
    let config = Arc::new(config);
    let stop = CancellationToken::new();
    let spawner: Arc<dyn Spawner> = match config.spawner {
        SpawnerKind::Local => Arc::new(LocalSpawner::new(&config, local_url(addr, config.tls.is_some()))?),
        SpawnerKind::External => Arc::new(ExternalSpawner),
        SpawnerKind::Lambda => {
            Arc::new(crate::lambda::LambdaSpawner::new(&config, local_url(addr, config.tls.is_some())).await?)
        }
    };
    let (journal, recovered) = match &config.state_dir {
        Some(dir) => {
            let (j, r) = Journal::open(dir)?;
            (Some(j), Some(r))
        }
        None => (None, None),
    };
    let hub = Hub::new(config.clone(), spawner, stop.clone(), journal);
    if let Some(r) = recovered {
        hub.update(|s, now, fx| s.restore(r, now, fx));
    }
    hub.start_sweeper();

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TasksServer<TasksService>>().await;
    health.set_serving::<ClusterServer<ClusterService>>().await;
    health.set_serving::<WorkersServer<WorkersService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // Leave room above the payload limit for the envelope, so an oversize payload reaches
    // our own check (INVALID_ARGUMENT with the sizes) instead of the codec's.
    let max_message = config
        .max_payload_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024);

    let server_stop = CancellationToken::new();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        let identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    let server = builder
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            TasksServer::new(TasksService::new(hub.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
            bearer(config.client_token.clone(), "Tasks"),
        ))
        .add_service(InterceptedService::new(
            ClusterServer::new(ClusterService::new(hub.clone())),
            bearer(config.client_token.clone(), "Cluster"),
        ))
        .add_service(InterceptedService::new(
            WorkersServer::new(WorkersService::new(hub.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
            bearer(config.worker_token.clone(), "Workers"),
        ))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            server_stop.clone().cancelled_owned(),
        );
    info!(%addr, spawner = ?config.spawner, "coordinator serving");
    let server = tokio::spawn(server);

    shutdown.await;
    info!("shutting down: draining workers");
    let left = hub.drain(DRAIN_LIMIT).await;
    if left > 0 {
        warn!(left, "workers still connected after the drain limit; ending them");
    }
    stop.cancel();
    server_stop.cancel();
    hub.tracker().close();
    if tokio::time::timeout(DRAIN_LIMIT, hub.tracker().wait())
        .await
        .is_err()
    {
        warn!("background tasks did not end in time");
    }
    // Graceful shutdown also waits for idle client connections to go away; give them a
    // moment, then stop regardless: every stream that mattered has been drained above.
    let abort = server.abort_handle();
    match tokio::time::timeout(CLIENT_GRACE, server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) if join.is_cancelled() => {}
        Ok(Err(join)) => warn!(%join, "server task failed"),
        Err(_) => {
            debug!("clients still connected at shutdown; closing their connections");
            abort.abort();
        }
    }
    info!("coordinator stopped");
    Ok(())
}
