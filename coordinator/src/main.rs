//! `carpool-coordinator`: serves the task pool and schedules it onto workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use carpool_coordinator::auth::Secret;
use carpool_coordinator::config::{
    Fleet, Functions, Journal, Limits, Listen, LocalWorkers, ScaleOut, ServerTls,
};
use carpool_coordinator::{Config, Placement, SpawnerKind};
use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;

/// carpool's coordinator: keeps a pool of tasks per function and packs them into workers
/// that hold one gRPC stream each, starting new workers only when running ones are full.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on (port 0 picks a free one; the bound address is printed).
    #[arg(long, env = "CARPOOL_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// How workers are started.
    #[arg(long, env = "CARPOOL_SPAWNER", value_enum, default_value_t = SpawnerArg::Local)]
    spawner: SpawnerArg,
    /// Log format on stderr: `text`, or `json` (one object per line, task and worker ids as
    /// fields).
    #[arg(long, env = "CARPOOL_LOG_FORMAT", default_value = "text", value_parser = carpool_proto::LOG_FORMATS)]
    log_format: String,
    /// Serve Prometheus metrics on this address, at /metrics (its own port, never the gRPC
    /// one) [default: off]; e.g. 127.0.0.1:9464 (beyond loopback only with
    /// --allow-unauthenticated: /metrics has no token).
    #[arg(long, env = "CARPOOL_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Fleet cap per function: live plus starting workers.
    #[arg(long, env = "CARPOOL_MAX_WORKERS", default_value_t = 8)]
    max_workers: u32,
    /// Fleet cap over all functions together: live plus starting workers.
    #[arg(long, env = "CARPOOL_MAX_FLEET", default_value_t = 64)]
    max_fleet: u32,
    /// Accept only these functions (comma-separated or repeated) with the external and
    /// Lambda spawners [default: any valid name, up to --max-functions at once].
    #[arg(long, env = "CARPOOL_FUNCTIONS", value_delimiter = ',')]
    functions: Vec<String>,
    /// Most functions known at once; an idle one (nothing pending, running or live, nothing
    /// learned) makes room for a new name, and with none idle a new name is refused.
    #[arg(long, env = "CARPOOL_MAX_FUNCTIONS", default_value_t = 1000)]
    max_functions: usize,
    /// Spawns of a function that may fail in a row before its pending tasks fail with the
    /// cause.
    #[arg(long, env = "CARPOOL_MAX_SPAWN_FAILURES", default_value_t = 10)]
    max_spawn_failures: u32,
    /// Most connections served at once (workers and clients; one past it waits for one to
    /// close).
    #[arg(long, env = "CARPOOL_MAX_CONNECTIONS", default_value_t = 16_384)]
    max_connections: usize,
    /// How long a new connection may take to send its first bytes (HTTP/2 preface or TLS
    /// hello) before it is closed, e.g. "10s".
    #[arg(long, env = "CARPOOL_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// Memory size of spawned workers in MB (billing size; vCPUs follow it unless --vcpus).
    #[arg(long, env = "CARPOOL_MEMORY_MB", default_value_t = 2048)]
    memory_mb: u32,
    /// vCPUs of spawned workers [default: derived from --memory-mb, 1769 MB per vCPU].
    #[arg(long, env = "CARPOOL_VCPUS")]
    vcpus: Option<u32>,
    /// Pin every worker's concurrency limit at this many tasks [default: adaptive: each
    /// worker's limit follows what it measures of itself, from its vCPUs or the learned level].
    #[arg(long, env = "CARPOOL_SLOTS")]
    slots: Option<u32>,
    /// The most tasks an adaptive concurrency limit may rise to.
    #[arg(long, env = "CARPOOL_MAX_SLOTS", default_value_t = 256)]
    max_slots: u32,
    /// CPU as a fraction of a worker's vCPU allotment: above it a worker gets no new task, and
    /// an adaptive limit stops rising at it (may exceed 1, for workers that burst past it).
    #[arg(long, env = "CARPOOL_CPU_THRESHOLD", default_value_t = 0.9)]
    cpu_threshold: f64,
    /// Memory as a fraction of a worker's limit: at or above it a worker gets no new task, and
    /// an adaptive limit falls to what fits under it.
    #[arg(long, env = "CARPOOL_MEM_THRESHOLD", default_value_t = 0.9)]
    mem_threshold: f64,
    /// A worker older than this fraction of its execution timeout drains.
    #[arg(long, env = "CARPOOL_DEADLINE_FRACTION", default_value_t = 0.8)]
    deadline_fraction: f64,
    /// Execution timeout of a worker (Lambda's function timeout), e.g. "15m".
    #[arg(long, env = "CARPOOL_EXECUTION_TIMEOUT", default_value = "15m", value_parser = humantime::parse_duration)]
    execution_timeout: Duration,
    /// How long an idle worker with nothing to do is kept before Shutdown, e.g. "0s", "30s".
    #[arg(long, env = "CARPOOL_KEEP_ALIVE", default_value = "0s", value_parser = humantime::parse_duration)]
    keep_alive: Duration,
    /// Which eligible worker gets a task.
    #[arg(long, env = "CARPOOL_PLACEMENT", value_enum, default_value_t = PlacementArg::Pack)]
    placement: PlacementArg,
    /// When another worker is started for tasks no slot covers: `paced` only for work the
    /// live workers will not have finished before a new one could run its first task
    /// (measured), `eager` at once, as Lambda starts a sandbox per request.
    #[arg(long, env = "CARPOOL_SCALE_OUT", value_enum, default_value_t = ScaleOutArg::Paced)]
    scale_out: ScaleOutArg,
    /// Largest task payload, and largest task output, in bytes [default: 4 MiB less 16 KiB,
    /// so that a full one with its envelope fits in a 4 MiB gRPC message; at most 64 MiB].
    #[arg(long, env = "CARPOOL_MAX_PAYLOAD_BYTES", default_value_t = carpool_coordinator::config::DEFAULT_MAX_PAYLOAD_BYTES)]
    max_payload_bytes: usize,
    /// Attempts per task before it fails because its workers were lost.
    #[arg(long, env = "CARPOOL_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: u32,
    /// Tasks one worker runs over its life (1 = conventional FaaS) [default: unlimited].
    #[arg(long, env = "CARPOOL_MAX_TASKS_PER_WORKER")]
    max_tasks_per_worker: Option<u64>,
    /// How often workers report CPU and memory when nothing else happens.
    #[arg(long, env = "CARPOOL_SAMPLE_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    sample_interval: Duration,
    /// The worker binary the local spawner runs [default: carpool-worker next to this binary].
    #[arg(long, env = "CARPOOL_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
    /// The only local directory local workers' `thumbnail` built-in reads and writes
    /// [default: none: only s3:// objects].
    #[arg(long, env = "CARPOOL_WORKER_DATA_DIR")]
    worker_data_dir: Option<PathBuf>,
    /// A function served by a command in local workers, as NAME=COMMAND (repeatable); the
    /// command reads the payload on stdin and writes the output on stdout.
    #[arg(long = "exec", env = "CARPOOL_EXEC", value_parser = parse_exec)]
    exec_functions: Vec<(String, String)>,
    /// A function served by a Lambda runtime in its workers, as NAME=COMMAND (repeatable),
    /// e.g. `--runtime 'resize=python3 -m awslambdaric app.handler'`: each worker hosts the
    /// Lambda Runtime API and runs copies of the command, one per task it runs at once.
    /// Local workers get it as `--runtime`; Lambda workers in the event.
    #[arg(long = "runtime", env = "CARPOOL_RUNTIME", value_parser = parse_exec)]
    runtime_functions: Vec<(String, String)>,
    /// How long a worker whose stream broke keeps its tasks, waiting for it to reconnect.
    #[arg(long, env = "CARPOOL_RECONNECT_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    reconnect_grace: Duration,
    /// A worker silent for this many sample intervals is treated as lost.
    #[arg(long, env = "CARPOOL_LIVENESS_INTERVALS", default_value_t = 10)]
    liveness_intervals: u32,
    /// Per-attempt task timeout when a submission gives none, e.g. "5m" [default: none].
    #[arg(long, env = "CARPOOL_TASK_TIMEOUT", value_parser = humantime::parse_duration)]
    task_timeout: Option<Duration>,
    /// Pending tasks past which submissions get RESOURCE_EXHAUSTED.
    #[arg(long, env = "CARPOOL_MAX_PENDING", default_value_t = 1_000_000)]
    max_pending: u64,
    /// Bytes of payloads held in memory for unfinished tasks (pending, running), all
    /// functions: a submission past it gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "CARPOOL_MAX_PENDING_BYTES", default_value_t = carpool_coordinator::config::DEFAULT_MAX_PENDING_BYTES)]
    max_pending_bytes: u64,
    /// Bytes of finished tasks' results held in memory: past it the oldest results are
    /// evicted (Get and Watch read them back from --state-dir or --state-url; without a
    /// journal they answer FAILED_PRECONDITION).
    #[arg(long, env = "CARPOOL_MAX_RESULT_BYTES", default_value_t = carpool_coordinator::config::DEFAULT_MAX_RESULT_BYTES)]
    max_result_bytes: u64,
    /// Keep accepted tasks and results here, so they survive a crash and restart [default:
    /// memory only]. A task is acknowledged only once it is on disk.
    #[arg(long, env = "CARPOOL_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Keep them in PostgreSQL instead, e.g. `postgres://carpool@db.internal/carpool`: the
    /// coordinator creates and migrates its tables; several coordinators may share the
    /// database, one active (it holds the lease), the others standing by to take over.
    #[arg(
        long,
        env = "CARPOOL_STATE_URL",
        hide_env_values = true,
        conflicts_with = "state_dir"
    )]
    state_url: Option<String>,
    /// With --state-url and `sslmode=require` in it: the PEM of the CA that signed the
    /// database's certificate [default: the system's roots].
    #[arg(long, env = "CARPOOL_STATE_CA")]
    state_ca: Option<PathBuf>,
    /// With --state-url: how long the active coordinator's lease lasts unrenewed (renewed
    /// every third of it); a standby takes over this long after the active one died at most.
    #[arg(long, env = "CARPOOL_LEASE", default_value = "2s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// How long a finished task's result stays retrievable with Get, e.g. "1h".
    #[arg(long, env = "CARPOOL_RESULT_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    result_retention: Duration,
    /// Serve TLS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, env = "CARPOOL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "CARPOOL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA file local workers verify the certificate with [default: --tls-cert, right for
    /// a self-signed certificate].
    #[arg(long, env = "CARPOOL_TLS_WORKER_CA")]
    tls_worker_ca: Option<PathBuf>,
    /// The certificate name local workers verify (they dial 127.0.0.1).
    #[arg(long, env = "CARPOOL_TLS_DOMAIN", default_value = "localhost")]
    tls_domain: String,
    /// Token workers must send (`authorization: Bearer …`) [default: none required].
    #[arg(
        long,
        env = "CARPOOL_WORKER_TOKEN",
        hide_env_values = true,
        conflicts_with = "worker_token_file"
    )]
    worker_token: Option<String>,
    /// File holding the worker token.
    #[arg(long, env = "CARPOOL_WORKER_TOKEN_FILE")]
    worker_token_file: Option<PathBuf>,
    /// Token clients must send on Tasks and Cluster [default: none required].
    #[arg(
        long,
        env = "CARPOOL_CLIENT_TOKEN",
        hide_env_values = true,
        conflicts_with = "client_token_file"
    )]
    client_token: Option<String>,
    /// File holding the client token.
    #[arg(long, env = "CARPOOL_CLIENT_TOKEN_FILE")]
    client_token_file: Option<PathBuf>,
    /// Token a scraper must send on /metrics (`authorization: Bearer <token>`) [default:
    /// none required].
    #[arg(
        long,
        env = "CARPOOL_METRICS_TOKEN",
        hide_env_values = true,
        conflicts_with = "metrics_token_file"
    )]
    metrics_token: Option<String>,
    /// File holding the metrics token.
    #[arg(long, env = "CARPOOL_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,
    /// Listen beyond loopback without tokens (protected mode off): anyone who reaches the
    /// port may submit tasks, read results, or connect as a worker and take tasks.
    #[arg(long, env = "CARPOOL_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// A spawned worker that has not connected this long after its spawn is written off
    /// (its capacity is released and the spawn counts as failed), e.g. "60s".
    #[arg(long, env = "CARPOOL_START_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    start_timeout: Duration,
    /// The URL Lambda workers dial, e.g. https://carpool.example.com:50051 [default: the
    /// listen address, reachable only from this machine].
    #[arg(long, env = "CARPOOL_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// The Lambda function (name or ARN) whose invocations are the workers (--spawner lambda).
    #[arg(long, env = "CARPOOL_LAMBDA_FUNCTION")]
    lambda_function: Option<String>,
    /// The alias or version of --lambda-function to invoke [default: $LATEST].
    #[arg(long, env = "CARPOOL_LAMBDA_QUALIFIER")]
    lambda_qualifier: Option<String>,
    /// Invoke attempts per spawn: throttling and Lambda service errors are retried with
    /// exponential backoff and jitter; a function or client error is not.
    #[arg(long, env = "CARPOOL_LAMBDA_INVOKE_ATTEMPTS", default_value_t = carpool_coordinator::config::DEFAULT_INVOKE_ATTEMPTS)]
    lambda_invoke_attempts: u32,
    /// Threads that serve the API and the worker streams. Every event takes one lock on the
    /// scheduling state, so more threads mostly add wake-ups from thread to thread (1 doubled
    /// unary Submit throughput against 2 on a 2-core machine); raise it when TLS or a very
    /// large fleet needs more than a core.
    #[arg(long, env = "CARPOOL_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SpawnerArg {
    /// Child processes of carpool-worker on this machine.
    Local,
    /// Workers started elsewhere connect by themselves.
    External,
    /// Asynchronous invocations of an AWS Lambda function (see --lambda-function).
    Lambda,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScaleOutArg {
    /// Only where a new worker would still find enough work when it is ready.
    Paced,
    /// One worker's slots for every uncovered task, at once.
    Eager,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PlacementArg {
    /// Fullest eligible worker first (fewest workers, lowest cost).
    Pack,
    /// Emptiest eligible worker first (lowest latency).
    Spread,
}

fn parse_exec(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, cmd)) if !name.is_empty() && !cmd.is_empty() => Ok((name.to_owned(), cmd.to_owned())),
        _ => Err(format!("expected NAME=COMMAND, got {s:?}")),
    }
}

impl Cli {
    /// Checks what only the flags can get wrong; [`Config::validate`] checks the ranges.
    fn validate(&self) -> Result<(), String> {
        if matches!(self.spawner, SpawnerArg::Lambda) {
            if self
                .lambda_function
                .as_deref()
                .is_none_or(|f| f.trim().is_empty())
            {
                return Err("--spawner lambda needs --lambda-function NAME".into());
            }
            if self.lambda_invoke_attempts == 0 {
                return Err("--lambda-invoke-attempts must be at least 1".into());
            }
        }
        if let Some(url) = &self.advertise_url
            && !carpool_proto::is_http_url(url)
        {
            return Err(format!(
                "--advertise-url must be an http:// or https:// URL, got {url:?}"
            ));
        }
        self.check_protected()
    }

    /// Protected mode (as Redis has it): listening beyond loopback needs tokens for both
    /// kinds of peer, or `--allow-unauthenticated`.
    fn check_protected(&self) -> Result<(), String> {
        if self.allow_unauthenticated {
            return Ok(());
        }
        let client = self.client_token.is_some() || self.client_token_file.is_some();
        let worker = self.worker_token.is_some() || self.worker_token_file.is_some();
        let public = |a: &SocketAddr| !a.ip().is_loopback();
        if public(&self.listen) && !(client && worker) {
            return Err(format!(
                "--listen {} is reachable beyond this machine, and without {} anyone who reaches it may submit tasks, read results or take tasks as a worker: give --client-token (or --client-token-file) and --worker-token (or --worker-token-file), listen on 127.0.0.1, or say --allow-unauthenticated",
                self.listen,
                match (client, worker) {
                    (false, false) => "a client token and a worker token",
                    (false, true) => "a client token",
                    _ => "a worker token",
                }
            ));
        }
        let metrics_token = self.metrics_token.is_some() || self.metrics_token_file.is_some();
        if let Some(m) = self
            .metrics_listen
            .as_ref()
            .filter(|m| public(m) && !metrics_token)
        {
            return Err(format!(
                "--metrics-listen {m} is reachable beyond this machine and /metrics has no token: give --metrics-token (or --metrics-token-file), listen on 127.0.0.1 (behind your scraper's proxy), or say --allow-unauthenticated"
            ));
        }
        Ok(())
    }

    fn into_config(self) -> Result<Config, String> {
        let worker_token = Secret::from_value_or_file(
            self.worker_token.as_deref(),
            self.worker_token_file.as_deref(),
            "--worker-token",
        )?;
        let client_token = Secret::from_value_or_file(
            self.client_token.as_deref(),
            self.client_token_file.as_deref(),
            "--client-token",
        )?;
        let metrics_token = Secret::from_value_or_file(
            self.metrics_token.as_deref(),
            self.metrics_token_file.as_deref(),
            "--metrics-token",
        )?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &PathBuf, flag: &str| {
                    std::fs::read(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
                };
                Some(ServerTls {
                    cert_pem: read(cert, "--tls-cert")?,
                    key_pem: read(key, "--tls-key")?,
                    worker_ca: self.tls_worker_ca.clone().unwrap_or_else(|| cert.clone()),
                    worker_domain: self.tls_domain.clone(),
                })
            }
            _ => None,
        };
        Ok(Config {
            fleet: Fleet {
                spawner: match self.spawner {
                    SpawnerArg::Local => SpawnerKind::Local,
                    SpawnerArg::External => SpawnerKind::External,
                    SpawnerArg::Lambda => SpawnerKind::Lambda,
                },
                max_workers: self.max_workers,
                max_fleet: self.max_fleet,
                max_spawn_failures: self.max_spawn_failures,
                memory_mb: self.memory_mb,
                vcpus: self.vcpus,
                slots: self.slots,
                max_slots: self.max_slots,
                cpu_threshold: self.cpu_threshold,
                mem_threshold: self.mem_threshold,
                deadline_fraction: self.deadline_fraction,
                execution_timeout: self.execution_timeout,
                keep_alive: self.keep_alive,
                placement: match self.placement {
                    PlacementArg::Pack => Placement::Pack,
                    PlacementArg::Spread => Placement::Spread,
                },
                scale_out: match self.scale_out {
                    ScaleOutArg::Paced => ScaleOut::Paced,
                    ScaleOutArg::Eager => ScaleOut::Eager,
                },
                max_tasks_per_worker: self.max_tasks_per_worker,
                sample_interval: self.sample_interval,
                reconnect_grace: self.reconnect_grace,
                liveness_intervals: self.liveness_intervals,
                start_timeout: self.start_timeout,
            },
            listen: Listen {
                metrics_listen: self.metrics_listen,
                max_connections: self.max_connections,
                handshake_timeout: self.handshake_timeout,
                tls,
                worker_token,
                client_token,
                metrics_token,
                advertise_url: self.advertise_url,
            },
            functions: Functions {
                only: self.functions,
                exec: self.exec_functions,
                runtime: self.runtime_functions,
            },
            limits: Limits {
                max_functions: self.max_functions,
                max_payload_bytes: self.max_payload_bytes,
                max_attempts: self.max_attempts,
                task_timeout: self.task_timeout,
                max_pending: self.max_pending,
                max_pending_bytes: self.max_pending_bytes,
                max_result_bytes: self.max_result_bytes,
                result_retention: self.result_retention,
            },
            local: LocalWorkers {
                worker_bin: self.worker_bin,
                worker_log: None,
                // Workers log as their coordinator does; text is their own default.
                worker_log_format: (self.log_format != "text").then(|| self.log_format.clone()),
                worker_data_dir: self.worker_data_dir,
            },
            journal: Journal {
                state_dir: self.state_dir,
                state_url: self.state_url,
                state_ca: self.state_ca,
                lease: self.lease,
            },
            lambda: carpool_coordinator::config::LambdaTarget {
                function_name: self.lambda_function.unwrap_or_default(),
                qualifier: self.lambda_qualifier,
                invoke_attempts: self.lambda_invoke_attempts,
            },
        })
    }
}

/// Raises the soft limit on open files to the hard one: every connection is a descriptor,
/// and a soft limit of 1,024 (a common default) is used up long before `--max-connections`.
/// Says so when even the hard limit is below the connection budget.
fn raise_open_files(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let now = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(
                    from = soft,
                    to = hard,
                    "raised the open-file limit to its hard limit"
                );
                hard
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
                soft
            }
        }
    } else {
        soft
    };
    if now < max_connections as u64 + 64 {
        tracing::warn!(
            open_files = now,
            max_connections,
            "the open-file limit is below --max-connections: connections past it fail to be accepted; lower --max-connections or raise the hard limit"
        );
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    carpool_proto::init_logging(&cli.log_format, "info");
    if let Err(msg) = cli.validate() {
        eprintln!("carpool-coordinator: {msg}");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(cli.threads))
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => rt.block_on(serve(cli)),
        Err(e) => {
            eprintln!("carpool-coordinator: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> ExitCode {
    let listen = cli.listen;
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("carpool-coordinator: {msg}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("carpool-coordinator: {e}");
        return ExitCode::from(2);
    }
    raise_open_files(config.listen.max_connections);
    // The handlers are in place before the address is printed: a SIGTERM sent as soon as
    // the address is known drains, it does not kill.
    let shutdown = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("carpool-coordinator: cannot install the signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("carpool-coordinator: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        // The one line on stdout: scripts and tests read the bound address from it.
        Ok(addr) => println!("{}{addr}", carpool_proto::LISTENING_LINE),
        Err(e) => {
            eprintln!("carpool-coordinator: {e}");
            return ExitCode::FAILURE;
        }
    }
    match carpool_coordinator::run(listener, config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carpool-coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary with no flags runs what a library user gets from `Config::default()`: one
    /// set of defaults, not two that drift (docs/configuration.md is held to `--help` by the
    /// integration tests).
    #[test]
    fn the_binarys_defaults_are_config_default() {
        let cli = Cli::try_parse_from(["carpool-coordinator"]).expect("no flags parse");
        let config = cli.into_config().expect("the defaults make a config");
        assert_eq!(format!("{config:?}"), format!("{:?}", Config::default()));
    }
}
