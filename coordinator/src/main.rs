//! `carpool-coordinator`: serves the task pool and schedules it onto workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use carpool_coordinator::auth::Secret;
use carpool_coordinator::config::{Fleet, Functions, Journal, Limits, Listen, LocalWorkers, ServerTls};
use carpool_coordinator::{Config, SpawnerKind};
use clap::Parser;
use tokio::net::TcpListener;

/// The binary's flags: the settings' parts flattened in (their fields' docs are the help),
/// and what only the binary reads (listening, TLS and token files, logs, threads). The text
/// is `about`, not a doc comment: a flattened part would clear a doc comment's long form.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "carpool's coordinator: keeps a pool of tasks per function and packs them into workers that hold one gRPC stream each, starting new workers only when running ones are full."
)]
struct Cli {
    /// Address to listen on (port 0 picks a free one; the bound address is printed).
    #[arg(long, env = "CARPOOL_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Log format on stderr: `text`, or `json` (one object per line, task and worker ids as
    /// fields).
    #[arg(long, env = "CARPOOL_LOG_FORMAT", default_value = "text", value_parser = carpool_proto::LOG_FORMATS)]
    log_format: String,
    /// Serve Prometheus metrics on this address, at /metrics (its own port, never the gRPC
    /// one) [default: off]; e.g. 127.0.0.1:9464 (beyond loopback only with
    /// --allow-unauthenticated: /metrics has no token).
    #[arg(long, env = "CARPOOL_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Most connections served at once (workers and clients; one past it waits for one to
    /// close).
    #[arg(long, env = "CARPOOL_MAX_CONNECTIONS", default_value_t = 16_384)]
    max_connections: usize,
    /// How long a new connection may take to send its first bytes (HTTP/2 preface or TLS
    /// hello) before it is closed, e.g. "10s".
    #[arg(long, env = "CARPOOL_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// The worker binary the local spawner runs [default: carpool-worker next to this binary].
    #[arg(long, env = "CARPOOL_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
    /// The only local directory local workers' `thumbnail` built-in reads and writes
    /// [default: none: only s3:// objects].
    #[arg(long, env = "CARPOOL_WORKER_DATA_DIR")]
    worker_data_dir: Option<PathBuf>,
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
    /// The alias or version of --lambda-function that serves a memory size of
    /// --memory-sizes, as SIZE=QUALIFIER (repeat, or separate with commas), e.g.
    /// `1024=small,4096=large`. Several sizes need one each (or --lambda-publish-sizes).
    #[arg(long = "lambda-size", env = "CARPOOL_LAMBDA_SIZES", value_delimiter = ',', value_parser = parse_lambda_size)]
    lambda_sizes: Vec<(u32, String)>,
    /// Publish a version of --lambda-function per size of --memory-sizes at start
    /// (UpdateFunctionConfiguration, then PublishVersion; $LATEST's memory is put back), and
    /// reuse one published before for the same size, code, timeout and environment.
    #[arg(long, env = "CARPOOL_LAMBDA_PUBLISH_SIZES", conflicts_with_all = ["lambda_sizes", "lambda_qualifier"])]
    lambda_publish_sizes: bool,
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
    /// What the pool holds at most.
    #[command(flatten)]
    limits: Limits,
    /// The workers.
    #[command(flatten)]
    fleet: Fleet,
    /// Which functions are served.
    #[command(flatten)]
    functions: Functions,
    /// Where accepted work is kept.
    #[command(flatten)]
    journal: Journal,
}

impl Cli {
    /// Checks what only the flags can get wrong; [`Config::validate`] checks the ranges.
    fn validate(&self) -> Result<(), String> {
        if self.fleet.spawner == SpawnerKind::Lambda {
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
        } else if self.lambda_publish_sizes || !self.lambda_sizes.is_empty() {
            return Err("--lambda-size and --lambda-publish-sizes need --spawner lambda".into());
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
            fleet: self.fleet,
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
            functions: self.functions,
            limits: self.limits,
            local: LocalWorkers {
                worker_bin: self.worker_bin,
                worker_log: None,
                // Workers log as their coordinator does; text is their own default.
                worker_log_format: (self.log_format != "text").then(|| self.log_format.clone()),
                worker_data_dir: self.worker_data_dir,
            },
            journal: self.journal,
            lambda: carpool_coordinator::config::LambdaTarget {
                function_name: self.lambda_function.unwrap_or_default(),
                qualifier: self.lambda_qualifier,
                invoke_attempts: self.lambda_invoke_attempts,
                sizes: self.lambda_sizes,
                publish_sizes: self.lambda_publish_sizes,
            },
        })
    }
}

/// One `--lambda-size` pair: `SIZE=QUALIFIER`.
fn parse_lambda_size(s: &str) -> Result<(u32, String), String> {
    let (size, qualifier) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SIZE=QUALIFIER (e.g. 1024=small), got {s:?}"))?;
    let size = size
        .trim()
        .parse::<u32>()
        .map_err(|e| format!("the size in {s:?} is not a number of MB: {e}"))?;
    let qualifier = qualifier.trim();
    if qualifier.is_empty() || qualifier.len() > 128 {
        return Err(format!("the qualifier in {s:?} must be 1 to 128 characters"));
    }
    Ok((size, qualifier.to_owned()))
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
