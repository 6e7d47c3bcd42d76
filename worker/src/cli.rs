//! The standard worker flags and process setup, shared by `carpool-worker` and by users'
//! own worker binaries (see [`crate::main`]).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tracing::{error, info, warn};

use crate::config::WorkerConfig;
use crate::handler::{BrokenFuture, Handler, PrepareFuture};
use crate::runtime::{RuntimeHost, RuntimeSettings};
use crate::served::Served;

/// The largest `--slots` or `--max-slots` a worker accepts.
pub const MAX_SLOTS: i64 = 65_536;

/// Flags every carpool worker understands (each also read from a `CARPOOL_…` variable).
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerArgs {
    /// The coordinator to dial; several, comma-separated (an active coordinator and its
    /// standbys), are dialled in turn until one takes the session.
    #[arg(long, env = "CARPOOL_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// Log format on stderr: `text`, or `json` (one object per line, task and worker ids as
    /// fields).
    #[arg(long, env = "CARPOOL_LOG_FORMAT", default_value = "text", value_parser = carpool_proto::LOG_FORMATS)]
    pub log_format: String,
    /// This worker's id [default: generated].
    #[arg(long, env = "CARPOOL_WORKER_ID")]
    pub id: Option<String>,
    /// The function this worker serves (required, except under Lambda, where each
    /// invocation's event names it).
    #[arg(long, env = "CARPOOL_FUNCTION")]
    pub function: Option<String>,
    /// Memory size in MB (billing size; the memory limit outside a cgroup).
    #[arg(long, env = "CARPOOL_MEMORY_MB", default_value_t = 2048)]
    pub memory_mb: u32,
    /// vCPUs [default: the CPUs this process may use].
    #[arg(long, env = "CARPOOL_VCPUS")]
    pub vcpus: Option<u32>,
    /// Pin the tasks it runs at once [default: the coordinator adapts its concurrency limit
    /// to what this worker measures of itself].
    #[arg(long, env = "CARPOOL_SLOTS", value_parser = clap::value_parser!(u32).range(1..=MAX_SLOTS))]
    pub slots: Option<u32>,
    /// Cap its adaptive concurrency limit below the coordinator's --max-slots.
    #[arg(long, env = "CARPOOL_MAX_SLOTS", value_parser = clap::value_parser!(u32).range(1..=MAX_SLOTS))]
    pub max_slots: Option<u32>,
    /// How it measures itself: its process tree (this process and the children it started),
    /// its cgroup (v2), or auto (the cgroup when it is a container's init process, else the
    /// process tree). Never the whole machine.
    #[arg(long, env = "CARPOOL_MEASURE", value_enum, default_value_t = crate::sampler::Measure::Auto)]
    pub measure: crate::sampler::Measure,
    /// Execution timeout: the session ends when it passes, e.g. "15m".
    #[arg(long, env = "CARPOOL_TIMEOUT", default_value = "15m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Pin this process to these CPUs, e.g. "0,1" (the local spawner sets it).
    #[arg(long, env = "CARPOOL_CPUS", value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// How long to keep reconnecting after the stream to the coordinator breaks.
    #[arg(long, env = "CARPOOL_RECONNECT_FOR", default_value = "60s", value_parser = humantime::parse_duration)]
    pub reconnect_for: Duration,
    /// PEM of the CA that signed the coordinator's certificate (for an https:// URL)
    /// [default: the system's roots].
    #[arg(long, env = "CARPOOL_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// The name to verify the coordinator's certificate against, if not the URL's host.
    #[arg(long, env = "CARPOOL_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// The coordinator's worker token (`authorization: Bearer …`).
    #[arg(
        long,
        env = "CARPOOL_WORKER_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the worker token.
    #[arg(long, env = "CARPOOL_WORKER_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Serve the function with this Lambda runtime command, e.g. `python3 -m awslambdaric
    /// app.handler`: the worker hosts the Lambda Runtime API on loopback and runs one copy
    /// of the command per task it runs at once, so existing `handler(event, context)`
    /// functions run unchanged (replaces the binary's own handler).
    #[arg(long, env = "CARPOOL_RUNTIME")]
    pub runtime: Option<String>,
    /// Exit when stdin closes: the local spawner holds the other end, so workers never
    /// outlive their coordinator.
    #[arg(long)]
    pub exit_with_stdin: bool,
}

impl WorkerArgs {
    /// The session config these flags describe; fails if the token file is unreadable.
    pub fn to_config(&self) -> Result<WorkerConfig, String> {
        let function = self
            .function
            .clone()
            .ok_or("--function (or CARPOOL_FUNCTION) is required: the function this worker serves")?;
        let mut c = WorkerConfig::new(self.coordinator.clone(), function);
        if let Some(id) = &self.id {
            c.id.clone_from(id);
        }
        c.memory_mb = self.memory_mb;
        c.vcpus = self.vcpus.unwrap_or(c.vcpus).max(1);
        c.slots = self.slots;
        c.max_slots = self.max_slots;
        c.measure = self.measure;
        c.timeout = self.timeout;
        c.reconnect_for = self.reconnect_for;
        c.tls.domain.clone_from(&self.tls_domain);
        c.tls.ca_pem = self.tls_ca_pem()?;
        c.token = self.worker_token()?;
        // The coordinator would refuse the hello past these bounds: refuse at start.
        let flag = |name: &str| format!("--{}", name.replace('_', "-"));
        carpool_proto::bounds::check_shape(
            c.memory_mb,
            self.vcpus,
            c.slots.max(c.max_slots),
            c.timeout,
            &flag,
        )?;
        check_urls(&c.coordinator_url, &c.tls)?;
        Ok(c)
    }

    /// The PEM of `--tls-ca`, if given; fails if the file is unreadable.
    pub fn tls_ca_pem(&self) -> Result<Option<Vec<u8>>, String> {
        self.tls_ca
            .as_ref()
            .map(|path| std::fs::read(path).map_err(|e| format!("--tls-ca {}: {e}", path.display())))
            .transpose()
    }

    /// The worker token from `--token` or `--token-file`, if given.
    pub fn worker_token(&self) -> Result<Option<carpool_proto::Secret>, String> {
        carpool_proto::Secret::from_value_or_file(
            self.token.as_deref(),
            self.token_file.as_deref(),
            "--token",
        )
    }
}

/// Checks every entry of a coordinator URL list now (trimmed; empty entries are skipped), so
/// that a bad one is named at start rather than found at the first failover.
pub fn check_urls(list: &str, tls: &carpool_proto::TlsOptions) -> Result<(), String> {
    let mut seen = 0;
    for (i, url) in list.split(',').map(str::trim).enumerate() {
        if url.is_empty() {
            continue;
        }
        seen += 1;
        if !carpool_proto::is_http_url(url) {
            return Err(format!(
                "--coordinator entry {} ({url:?}) is not an http:// or https:// URL",
                i + 1
            ));
        }
        carpool_proto::endpoint(url, tls).map_err(|e| format!("--coordinator entry {}: {e}", i + 1))?;
    }
    if seen == 0 {
        return Err(format!("--coordinator {list:?} names no coordinator"));
    }
    Ok(())
}

/// Sets up logging, pins the CPUs, runs one session with `handler` and maps the outcome
/// to an exit code (0 after a Shutdown). Under Lambda (`AWS_LAMBDA_RUNTIME_API` set) it
/// serves invocations instead, each one a session with the same handler.
pub fn run_main<H: Handler>(args: WorkerArgs, handler: H) -> ExitCode {
    let handler = SharedHandler(Arc::new(handler));
    run_main_with(args, move |_| Ok(handler.clone()))
}

/// [`run_main`] for a worker whose handler depends on the function it serves: `make` is
/// called once with `--function`, or under Lambda once per invocation with the event's.
pub fn run_main_with<F, H>(args: WorkerArgs, make: F) -> ExitCode
where
    F: Fn(&str) -> Result<H, String> + Send + Sync + 'static,
    H: Handler,
{
    carpool_proto::init_logging(&args.log_format, "info");
    if !args.cpus.is_empty()
        && let Err(e) = pin(&args.cpus)
    {
        // Before the runtime starts, so every thread inherits the affinity.
        warn!(cpus = ?args.cpus, error = %e, "could not pin to the requested CPUs");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("carpool-worker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = if crate::lambda::detected() {
        runtime.block_on(run_lambda(args, make))
    } else {
        runtime.block_on(run_once(args, make))
    };
    // The stdin watcher blocks a pool thread on a read that may never end: don't wait for it.
    runtime.shutdown_background();
    code
}

async fn run_once<F, H>(args: WorkerArgs, make: F) -> ExitCode
where
    F: Fn(&str) -> Result<H, String>,
    H: Handler,
{
    let config = match args.to_config() {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("carpool-worker: {msg}");
            return ExitCode::from(2);
        }
    };
    let handler = match &args.runtime {
        Some(command) => Served::Runtime(Arc::new(RuntimeHost::new(RuntimeSettings {
            command: command.clone(),
            function: config.function.clone(),
            memory_mb: config.memory_mb,
            function_arn: None,
        }))),
        None => match make(&config.function) {
            Ok(h) => Served::Own(h),
            Err(msg) => {
                eprintln!("carpool-worker: {msg}");
                return ExitCode::from(2);
            }
        },
    };
    if args.exit_with_stdin {
        tokio::spawn(exit_when_stdin_closes());
    }
    // SIGTERM ends the session cleanly: the coordinator gives the running tasks back at once.
    let stop = config.stop.clone();
    tokio::spawn(async move {
        if let Ok(mut sigterm) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            sigterm.recv().await;
            stop.cancel();
        }
    });
    match crate::run(config, handler).await {
        Ok(summary) => {
            info!(worker = %summary.worker_id, tasks_run = summary.tasks_run, ended = %summary.reason.describe(), "worker done");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "worker failed");
            eprintln!("carpool-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_lambda<F, H>(args: WorkerArgs, make: F) -> ExitCode
where
    F: Fn(&str) -> Result<H, String> + Send + Sync + 'static,
    H: Handler,
{
    let (tls_ca_pem, token) = match (args.tls_ca_pem(), args.worker_token()) {
        (Ok(pem), Ok(token)) => (pem, token),
        (Err(msg), _) | (_, Err(msg)) => {
            eprintln!("carpool-worker: {msg}");
            return ExitCode::from(2);
        }
    };
    let defaults = crate::lambda::LambdaDefaults {
        timeout: args.timeout,
        reconnect_for: args.reconnect_for,
        tls_ca_pem,
        token,
        runtime: args.runtime.clone(),
    };
    match crate::lambda::serve(defaults, make).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            error!(error = %msg, "lambda mode failed");
            eprintln!("carpool-worker: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// One handler shared by every session of a process (Lambda invocations).
struct SharedHandler<H>(Arc<H>);

impl<H> Clone for SharedHandler<H> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<H: Handler> Handler for SharedHandler<H> {
    fn call(&self, task: crate::Task) -> crate::handler::HandlerFuture {
        self.0.call(task)
    }

    fn prepare(&self) -> PrepareFuture {
        self.0.prepare()
    }

    fn limit(&self, slots: u32) {
        self.0.limit(slots);
    }

    fn broken(&self) -> BrokenFuture {
        self.0.broken()
    }
}

fn pin(cpus: &[usize]) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for cpu in cpus {
        set.set(*cpu)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

async fn exit_when_stdin_closes() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    warn!("stdin closed: the coordinator that started this worker is gone; exiting");
    crate::children::kill_all();
    std::process::exit(3);
}
