//! Serving: binds the services (with reflection and health) on a given listener and runs
//! until a shutdown future resolves, then drains the fleet and closes the journal.
//!
//! Connections are bounded: at most `max_connections` at once (a new one waits to be
//! accepted), at most [`MAX_STREAMS_PER_CONNECTION`] calls on each, and a connection that
//! has not sent its first [`PREFACE_BYTES`] bytes (an HTTP/2 preface, a TLS hello) within
//! `handshake_timeout` of being accepted is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use carpool_proto::FILE_DESCRIPTOR_SET;
use carpool_proto::pb::cluster_server::ClusterServer;
use carpool_proto::pb::tasks_server::TasksServer;
use carpool_proto::pb::workers_server::WorkersServer;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, ServerTlsConfig};
use tracing::{debug, error, info, warn};

use crate::auth::bearer;
use crate::config::{Config, ServerTls, SpawnerKind};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::journal::postgres::Store;
use crate::service::cluster::ClusterService;
use crate::service::peer::PeerErrorsLayer;
use crate::service::tasks::TasksService;
use crate::service::workers::WorkersService;
use crate::spawner::{ExternalSpawner, LocalSpawner, REPORTS, SpawnContext, Spawner};
use crate::state::Event;

/// What one stream may send before the coordinator reads it (HTTP/2's own default)...
const STREAM_WINDOW: u32 = 64 * 1024;

/// ...and a whole connection. The HTTP/2 server cuts a connection off (GOAWAY
/// ENHANCE_YOUR_CALM, "too_many_data_frames") once the overhead of the small frames it holds
/// unread passes half this window; a Map client of the single-message kind sends messages of
/// a dozen bytes, whose overhead is about twenty times their size, so this window leaves room
/// for three such streams running ahead of the coordinator at once.
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// HTTP/2 keepalive on the server side: tonic leaves it off, and idle connections are cut
/// by load balancers while a frozen Lambda stops answering.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a keepalive ping may go unanswered.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long shutdown waits for clients to close their connections.
pub(crate) const CLIENT_GRACE: Duration = Duration::from_secs(1);
/// How long shutdown waits for workers to finish their tasks.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Concurrent calls (HTTP/2 streams) on one connection.
pub(crate) const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// How long a coordinator with `--state-url` waits for its database at start.
pub(crate) const DATABASE_PATIENCE: Duration = Duration::from_secs(60);

/// The URL workers on this machine dial to reach `addr` (an unspecified address becomes
/// loopback).
pub(crate) fn local_url(addr: SocketAddr, tls: bool) -> String {
    let ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

/// How long a start waits for its database before its port answers NOT_SERVING meanwhile.
const QUIET_DATABASE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Serves the coordinator on `listener` until `shutdown` resolves, then tells every worker
/// to drain, waits for them (at most [`DRAIN_LIMIT`]), ends what is left, writes what the
/// journal has queued and returns. `config` is checked first ([`Config::validate`]).
///
/// The steps: open the state (a journal, or a database after standing by for its lease),
/// build the spawner, start the driver on what was recovered, serve the gRPC port and the
/// metrics port, wait for the end (a shutdown, or the lease lost), shut down.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    config.validate()?;
    let addr = listener.local_addr()?;
    let listener = Arc::new(listener);
    let mut shutdown = std::pin::pin!(shutdown);
    let config = Arc::new(config);
    if let (Some(tls), SpawnerKind::Local) = (&config.listen.tls, config.fleet.spawner) {
        local_workers_accept(tls)?;
    }
    let url = local_url(addr, config.listen.tls.is_some());
    // One budget of connections for both ports: idle or slow metrics connections cannot
    // use up the descriptors the gRPC port needs.
    let permits = Arc::new(Semaphore::new(config.listen.max_connections));
    // The metrics port: bound now (a port taken is an error at start). With --state-url it
    // serves from the start, so that a standby's page says it is one and who is active;
    // without, once this coordinator is active (a scrape before waits in the backlog). It
    // stops when `run` returns.
    let web_stop = CancellationToken::new();
    let _web_stops = web_stop.clone().drop_guard();
    let (role, roles) = watch::channel(crate::web::Role::Standby(String::new()));
    let mut metrics_listener = match config.listen.metrics_listen {
        Some(at) => Some(
            TcpListener::bind(at)
                .await
                .map_err(|e| Error::Config(format!("--metrics-listen {at}: {e}")))?,
        ),
        None => None,
    };
    let serve_web = |listener: TcpListener| {
        tokio::spawn(crate::web::serve(
            listener,
            roles.clone(),
            config.listen.metrics_token.clone(),
            permits.clone(),
            config.listen.handshake_timeout,
            web_stop.clone(),
        ))
    };
    if config.journal.state_url.is_some()
        && let Some(l) = metrics_listener.take()
    {
        serve_web(l);
    }
    let Some(opened) = open_state(&listener, &config, &url, &role, shutdown.as_mut()).await? else {
        info!("stopped while standing by");
        return Ok(());
    };
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (reports, outcomes) = mpsc::channel(REPORTS);
    let context = SpawnContext {
        reports,
        tracker: tracker.clone(),
        stop: stop.clone(),
    };
    let spawner = build_spawner(&config, url, context).await?;
    let driver = Driver::new(
        config.clone(),
        spawner,
        outcomes,
        tracker,
        stop.clone(),
        opened.journal,
    );
    if let Some(mut r) = opened.recovered {
        r.unix_ms = carpool_proto::unix_ms();
        driver.apply(Event::Restore(r));
    }
    driver.start_sweeper();

    let server_stop = CancellationToken::new();
    let server = serve_grpc(listener, &config, &driver, permits.clone(), &server_stop).await?;
    info!(%addr, spawner = ?config.fleet.spawner, "coordinator serving");
    role.send_replace(crate::web::Role::Active(crate::web::Scrapes {
        driver: driver.clone(),
        metrics: driver.metrics(),
        recorder: driver.recorder(),
    }));
    if let Some(l) = metrics_listener.take() {
        serve_web(l);
    }

    let lost = opened
        .lease
        .as_ref()
        .map(|held| held.store.lost.clone())
        .unwrap_or_default();
    tokio::select! {
        () = &mut shutdown => {}
        () = lost.cancelled() => {
            // Another coordinator is active: it owns the tasks now. Stop at once, writing
            // nothing (the writer is fenced already) and telling no worker to drain.
            error!("this coordinator lost its lease to another; stopping");
            stop.cancel();
            server_stop.cancel();
            return Err(Error::Journal("lost the lease to another coordinator".into()));
        }
    }
    shut_down(&driver, &stop, &server_stop, opened.lease, server).await
}

/// What opening the state gave: the journal and what it held, and with `--state-url` the
/// lease this coordinator holds.
struct Opened {
    journal: Option<Journal>,
    recovered: Option<crate::state::Recovered>,
    lease: Option<HeldLease>,
}

/// The lease of an active coordinator on a shared database, renewed until `renewing` is
/// cancelled.
struct HeldLease {
    store: Store,
    term: i64,
    renewing: CancellationToken,
}

/// Opens the state: a journal in `--state-dir`, or the database of `--state-url` once this
/// coordinator holds its lease (standing by meanwhile, and answering NOT_SERVING while the
/// database does not answer); nothing in memory only. `None`: `shutdown` came while standing
/// by.
async fn open_state(
    listener: &Arc<TcpListener>,
    config: &Arc<Config>,
    url: &str,
    role: &watch::Sender<crate::web::Role>,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Opened>> {
    let state_url = match (&config.journal.state_dir, &config.journal.state_url) {
        (Some(dir), _) => {
            let (journal, recovered) = Journal::open(dir)?;
            return Ok(Some(Opened {
                journal: Some(journal),
                recovered: Some(recovered),
                lease: None,
            }));
        }
        (None, None) => {
            return Ok(Some(Opened {
                journal: None,
                recovered: None,
                lease: None,
            }));
        }
        (None, Some(state_url)) => state_url,
    };
    let advertise = config
        .listen
        .advertise_url
        .clone()
        .unwrap_or_else(|| url.to_owned());
    let connecting = Store::connect(
        state_url,
        config.journal.state_ca.as_deref(),
        advertise,
        config.journal.lease,
        DATABASE_PATIENCE,
    );
    tokio::pin!(connecting);
    let store = tokio::select! {
        // A database that answers at once: callers queue a moment, as for any start.
        store = &mut connecting => store,
        // One that does not: meanwhile the port answers NOT_SERVING, and UNAVAILABLE
        // saying why, instead of keeping callers waiting in silence.
        () = tokio::time::sleep(QUIET_DATABASE_WAIT) => {
            let waiting = crate::standby::NotServing::start(listener.clone(), config, || {
                tonic::Status::unavailable("this coordinator is waiting for its database (--state-url)")
            })
            .await?;
            let store = connecting.await;
            waiting.stop().await;
            store
        }
    }?;
    let seen = |active: &str| {
        role.send_replace(crate::web::Role::Standby(active.to_owned()));
    };
    let Some(term) = crate::standby::until_active(listener.clone(), &store, config, seen, shutdown).await?
    else {
        return Ok(None);
    };
    let renewing = CancellationToken::new();
    store.keep(term, renewing.clone());
    let (journal, recovered) = Journal::open_postgres(store.clone(), term).await?;
    Ok(Some(Opened {
        journal: Some(journal),
        recovered: Some(recovered),
        lease: Some(HeldLease {
            store,
            term,
            renewing,
        }),
    }))
}

/// The spawner `--spawner` names; its workers dial `url`.
async fn build_spawner(config: &Config, url: String, context: SpawnContext) -> Result<Arc<dyn Spawner>> {
    Ok(match config.fleet.spawner {
        SpawnerKind::Local => Arc::new(LocalSpawner::new(config, url, context)?),
        SpawnerKind::External => Arc::new(ExternalSpawner::new(context)),
        SpawnerKind::Lambda => Arc::new(crate::spawner::LambdaSpawner::new(config, url, context).await?),
    })
}

/// Serves the gRPC port (Tasks, Cluster and Workers behind their tokens, health,
/// reflection) on `listener` until `server_stop`, in a task of its own.
async fn serve_grpc(
    listener: Arc<TcpListener>,
    config: &Config,
    driver: &Driver,
    permits: Arc<Semaphore>,
    server_stop: &CancellationToken,
) -> Result<tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>> {
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
    // our own check (INVALID_ARGUMENT with the sizes) instead of the codec's, and a worker's
    // batch of results has room for one output at the limit.
    let max_message = config
        .limits
        .max_payload_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.listen.tls {
        let identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    let server = builder
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .layer(PeerErrorsLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            TasksServer::new(TasksService::new(driver.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
            bearer(config.listen.client_token.clone(), "Tasks"),
        ))
        .add_service(InterceptedService::new(
            ClusterServer::new(ClusterService::new(driver.clone())),
            bearer(config.listen.client_token.clone(), "Cluster"),
        ))
        .add_service(InterceptedService::new(
            WorkersServer::new(WorkersService::new(driver.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
            bearer(config.listen.worker_token.clone(), "Workers"),
        ))
        .serve_with_incoming_shutdown(
            crate::listener::incoming(
                listener,
                permits,
                config.listen.handshake_timeout,
                server_stop.clone(),
            ),
            server_stop.clone().cancelled_owned(),
        );
    Ok(tokio::spawn(server))
}

/// A shutdown in order: every worker told to drain and waited for (at most
/// [`DRAIN_LIMIT`]), background tasks ended, the journal's queue written, the lease given
/// up so that a standby takes over at once, then the server stopped.
async fn shut_down(
    driver: &Driver,
    stop: &CancellationToken,
    server_stop: &CancellationToken,
    lease: Option<HeldLease>,
    server: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
) -> Result<()> {
    info!("shutting down: draining workers");
    let left = driver.drain(DRAIN_LIMIT).await;
    if left > 0 {
        warn!(left, "workers still connected after the drain limit; ending them");
    }
    stop.cancel();
    server_stop.cancel();
    driver.tracker().close();
    if tokio::time::timeout(DRAIN_LIMIT, driver.tracker().wait())
        .await
        .is_err()
    {
        warn!("background tasks did not end in time");
    }
    // Results of tasks that finished during the drain are queued: write them before leaving.
    driver.close_journal().await;
    if let Some(held) = &lease {
        held.renewing.cancel();
        held.store.release(held.term).await;
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

/// Checks that a local worker, verifying as it does (the worker CA, the worker domain),
/// would accept the certificate: a certificate made by plain `openssl req -x509` is marked
/// as a CA, which rustls refuses as a server certificate, so no task would ever run.
fn local_workers_accept(tls: &ServerTls) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let bad = |msg: String| Error::TlsConfig(msg);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("--tls-cert does not hold PEM certificates: {e}")))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| bad("--tls-cert holds no certificate".into()))?;
    let ca = std::fs::read(&tls.worker_ca).map_err(|e| bad(format!("{}: {e}", tls.worker_ca.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        let c = c.map_err(|e| bad(format!("{}: {e}", tls.worker_ca.display())))?;
        roots
            .add(c)
            .map_err(|e| bad(format!("{}: {e}", tls.worker_ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| bad(format!("the worker CA {}: {e}", tls.worker_ca.display())))?;
    let name = ServerName::try_from(tls.worker_domain.clone())
        .map_err(|e| bad(format!("--tls-domain {:?}: {e}", tls.worker_domain)))?;
    use rustls::client::danger::ServerCertVerifier as _;
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
        .map_err(|e| {
            bad(format!(
                "local workers would refuse this certificate for {:?} ({e}). A certificate from plain \
                 `openssl req -x509` is marked CA:TRUE, which TLS clients refuse as a server's: add \
                 `-addext basicConstraints=critical,CA:FALSE -addext subjectAltName=DNS:{}`, or sign \
                 the certificate with a CA and pass it as --tls-worker-ca",
                tls.worker_domain, tls.worker_domain
            ))
        })?;
    Ok(())
}
