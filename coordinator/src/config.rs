//! The coordinator's settings, built directly by tests and by the binary's clap `Cli`.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Secret;
use crate::error::Error;

/// How eligible workers are ranked when a task is placed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// Fullest eligible worker first: fewest live workers, lowest cost.
    #[default]
    Pack,
    /// Emptiest eligible worker first: lowest latency.
    Spread,
}

/// When the coordinator starts another worker for tasks its workers have no slot for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScaleOut {
    /// Only for the work the live and starting workers will not have finished by the time a
    /// new worker could run its first task (its measured cold start and init against the
    /// tasks' measured duration), and only as many as each get enough of it to pay for
    /// their start: fewer cold starts, fewer runtime inits billed.
    #[default]
    Paced,
    /// One more worker's slots for every task no slot covers, at once (what Lambda does:
    /// a sandbox per concurrent request); the baseline "Lambda as it bills" runs so.
    Eager,
}

/// How new workers are started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpawnerKind {
    /// Child processes of the `carpool-worker` binary on this machine.
    #[default]
    Local,
    /// Nothing is spawned: workers started elsewhere connect by themselves.
    External,
    /// Invocations of an AWS Lambda function (InvocationType=Event), whose worker dials back.
    Lambda,
}

/// Invoke attempts per spawn unless told otherwise (`--lambda-invoke-attempts`).
pub const DEFAULT_INVOKE_ATTEMPTS: u32 = 6;

/// Where the Lambda spawner sends its invocations.
#[derive(Clone, Debug)]
pub struct LambdaTarget {
    /// The function's name or ARN.
    pub function_name: String,
    /// An alias or version to invoke; `None`: `$LATEST`.
    pub qualifier: Option<String>,
    /// Invoke attempts per spawn (throttling and transient errors are retried, with
    /// exponential backoff and jitter; a function error or a client error is not).
    pub invoke_attempts: u32,
}

impl Default for LambdaTarget {
    fn default() -> Self {
        Self {
            function_name: String::new(),
            qualifier: None,
            invoke_attempts: DEFAULT_INVOKE_ATTEMPTS,
        }
    }
}

/// Everything the coordinator needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Which spawner starts workers when the pool outgrows the fleet.
    pub spawner: SpawnerKind,
    /// Fleet cap per function (live plus starting workers).
    pub max_workers: u32,
    /// Where `/metrics` is served (its own address, never the gRPC port); `None`: not
    /// served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Fleet cap over every function (live plus starting workers): with many functions,
    /// `max_workers` each could otherwise add up to any number of paid invocations.
    pub max_fleet: u32,
    /// With the external and Lambda spawners, the only functions accepted (empty: any
    /// name, up to `max_functions` at once). The local spawner serves its built-ins and
    /// `exec_functions`.
    pub functions: Vec<String>,
    /// Most function entries kept at once (an idle one makes room for a new name).
    pub max_functions: usize,
    /// Spawns of one function that may fail in a row before its pending tasks fail with
    /// the cause (a function no worker can run is not respawned for ever).
    pub max_spawn_failures: u32,
    /// Most connections served at once (every worker holds one; a new one past it waits).
    pub max_connections: usize,
    /// How long a new connection may take to send its first bytes (an HTTP/2 preface, a
    /// TLS hello) before it is closed.
    pub handshake_timeout: Duration,
    /// Memory size of spawned workers, in MB: the billing size and, unless `vcpus` is set,
    /// what their vCPU count is derived from.
    pub memory_mb: u32,
    /// vCPUs of spawned workers; `None` derives them from `memory_mb` as Lambda does.
    pub vcpus: Option<u32>,
    /// Pins every worker's concurrency limit at this many tasks; `None` lets each worker's
    /// limit adapt to what it measures of itself (starting at its vCPUs, or at the level
    /// learned for its function and memory size).
    pub slots: Option<u32>,
    /// The most tasks an adaptive limit may rise to.
    pub max_slots: u32,
    /// CPU, as a fraction of a worker's vCPU allotment: a worker above it gets no new task,
    /// and an adaptive limit stops rising at it. May exceed 1 (a worker that bursts past its
    /// allotment, as on Lambda below 1769 MB per vCPU).
    pub cpu_threshold: f64,
    /// Memory, as a fraction of a worker's limit: a worker at or above it gets no new task,
    /// and an adaptive limit falls to what fits under it.
    pub mem_threshold: f64,
    /// A worker older than this fraction of its execution timeout drains.
    pub deadline_fraction: f64,
    /// Execution timeout of spawned workers, and of connecting workers that state none.
    pub execution_timeout: Duration,
    /// How long an idle worker with an empty pool is kept before it gets Shutdown.
    pub keep_alive: Duration,
    /// Ranking of eligible workers.
    pub placement: Placement,
    /// When another worker is started for tasks with no slot.
    pub scale_out: ScaleOut,
    /// Largest accepted task payload, in bytes.
    pub max_payload_bytes: usize,
    /// Attempts per task before it fails because its workers kept being lost.
    pub max_attempts: u32,
    /// Tasks a worker may run over its whole life; `Some(1)` is conventional FaaS
    /// (one invocation per task), `None` is carpool's sharing.
    pub max_tasks_per_worker: Option<u64>,
    /// How often workers sample and report CPU and memory when nothing else happens.
    pub sample_interval: Duration,
    /// The `carpool-worker` binary the local spawner starts; `None` looks next to the
    /// running executable.
    pub worker_bin: Option<PathBuf>,
    /// Functions served by running a command (`--exec`) in local workers, as (name, command).
    /// The built-in functions `echo`, `sleep` and `spin` need no entry.
    pub exec_functions: Vec<(String, String)>,
    /// Functions served by a Lambda runtime command (`--runtime`) hosted in each worker, as
    /// (name, command): the local spawner passes the command to its workers, the Lambda
    /// spawner puts it in the event.
    pub runtime_functions: Vec<(String, String)>,
    /// `RUST_LOG` for local workers; `None` passes the coordinator's environment through.
    pub worker_log: Option<String>,
    /// `--log-format` for local workers (`text` or `json`), so that their lines, which share
    /// the coordinator's stderr, have its format; `None`: their own default.
    pub worker_log_format: Option<String>,
    /// The only local directory local workers' `thumbnail` reads and writes (`--data-dir`
    /// of each worker); `None`: only `s3://` objects.
    pub worker_data_dir: Option<PathBuf>,
    /// How long a worker whose stream broke keeps its tasks, waiting for it to reconnect.
    pub reconnect_grace: Duration,
    /// A worker silent for this many sample intervals is treated as lost.
    pub liveness_intervals: u32,
    /// Per-attempt task timeout when a submission gives none; `None`: no limit.
    pub task_timeout: Option<Duration>,
    /// Pending tasks (all functions) past which submissions are refused with RESOURCE_EXHAUSTED.
    pub max_pending: u64,
    /// Bytes of payloads held in memory for unfinished tasks (pending, being written,
    /// running), all functions: a submission that would pass it is refused with
    /// RESOURCE_EXHAUSTED.
    pub max_pending_bytes: u64,
    /// Bytes of finished tasks' results held in memory: past it the oldest are evicted
    /// (still readable from the journal when there is one).
    pub max_result_bytes: u64,
    /// Where accepted tasks and results are kept across restarts; `None`: in memory only.
    pub state_dir: Option<PathBuf>,
    /// Keep them in PostgreSQL instead (`postgres://…`): several coordinators may share the
    /// database, and the one holding its lease is active.
    pub state_url: Option<String>,
    /// PEM of the CA that signed the database's certificate, for a `state_url` with
    /// `sslmode=require`; `None`: the system's roots.
    pub state_ca: Option<PathBuf>,
    /// How long the lease of a coordinator with `state_url` lasts without a renewal (it
    /// renews every third of it): how soon a standby takes over from one that died.
    pub lease: Duration,
    /// How long a finished task's result stays retrievable.
    pub result_retention: Duration,
    /// Serve TLS with this identity; `None`: plaintext.
    pub tls: Option<ServerTls>,
    /// Token workers must present on the Workers service; `None` admits any worker.
    pub worker_token: Option<Secret>,
    /// Token clients must present on Tasks and Cluster; `None` admits any client.
    pub client_token: Option<Secret>,
    /// Token a scraper must send on `/metrics` (`authorization: Bearer …`); `None`: none.
    pub metrics_token: Option<Secret>,
    /// A spawned worker that has not said hello this long after its spawn is written off
    /// (its capacity released, the spawn counted as failed).
    pub start_timeout: Duration,
    /// The URL workers dial when it is not the listen address (a Lambda worker reaches the
    /// coordinator through a public name); `None`: derived from the listen address.
    pub advertise_url: Option<String>,
    /// The Lambda spawner's target (with `SpawnerKind::Lambda`).
    pub lambda: LambdaTarget,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            spawner: SpawnerKind::Local,
            max_workers: 8,
            max_fleet: 64,
            functions: Vec::new(),
            max_functions: 1000,
            max_spawn_failures: 10,
            metrics_listen: None,
            max_connections: 16_384,
            handshake_timeout: Duration::from_secs(10),
            memory_mb: 2048,
            vcpus: None,
            slots: None,
            max_slots: 256,
            cpu_threshold: 0.9,
            mem_threshold: 0.9,
            deadline_fraction: 0.8,
            execution_timeout: Duration::from_secs(900),
            keep_alive: Duration::ZERO,
            placement: Placement::Pack,
            scale_out: ScaleOut::Paced,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_attempts: 3,
            max_tasks_per_worker: None,
            sample_interval: Duration::from_millis(500),
            worker_bin: None,
            exec_functions: Vec::new(),
            runtime_functions: Vec::new(),
            worker_log: None,
            worker_log_format: None,
            worker_data_dir: None,
            reconnect_grace: Duration::from_secs(5),
            liveness_intervals: 10,
            task_timeout: None,
            max_pending: 1_000_000,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            state_dir: None,
            state_url: None,
            state_ca: None,
            lease: Duration::from_secs(2),
            result_retention: Duration::from_secs(3600),
            tls: None,
            worker_token: None,
            client_token: None,
            metrics_token: None,
            start_timeout: Duration::from_secs(60),
            advertise_url: None,
            lambda: LambdaTarget::default(),
        }
    }
}

/// The coordinator's TLS identity, and what local workers need to verify it.
#[derive(Clone)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
    /// The CA file local workers verify the certificate with (the certificate itself when
    /// it is self-signed).
    pub worker_ca: PathBuf,
    /// The name in the certificate that local workers verify (they dial 127.0.0.1).
    pub worker_domain: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("worker_ca", &self.worker_ca)
            .field("worker_domain", &self.worker_domain)
            .finish_non_exhaustive()
    }
}

/// Built-in functions of the `carpool-worker` binary.
pub const BUILTIN_FUNCTIONS: [&str; 6] = carpool_proto::bounds::BUILTINS;

impl Config {
    /// How long a connected worker may stay silent before it is treated as lost.
    pub fn liveness_lease(&self) -> Duration {
        self.sample_interval
            .saturating_mul(self.liveness_intervals.max(1))
    }

    /// vCPUs of a spawned worker: the configured count, or Lambda's rule (one vCPU per
    /// 1769 MB, rounded up, 1 to 6).
    pub fn worker_vcpus(&self) -> u32 {
        self.vcpus.unwrap_or_else(|| vcpus_for_memory(self.memory_mb))
    }

    /// The concurrency limit a spawned worker starts with when nothing is learned: pinned
    /// `--slots`, else its vCPUs.
    pub fn worker_slots(&self) -> u32 {
        self.slots.unwrap_or_else(|| self.worker_vcpus()).max(1)
    }

    /// Whether tasks of `function` can be run by the workers this coordinator spawns.
    /// With the external and Lambda spawners, the names of `functions`, or any name when
    /// the list is empty (the workers decide what they serve).
    pub fn serves(&self, function: &str) -> bool {
        match self.spawner {
            SpawnerKind::External | SpawnerKind::Lambda => {
                self.functions.is_empty() || self.functions.iter().any(|f| f == function)
            }
            SpawnerKind::Local => {
                BUILTIN_FUNCTIONS.contains(&function)
                    || self.exec_functions.iter().any(|(name, _)| name == function)
                    || self.runtime_functions.iter().any(|(name, _)| name == function)
            }
        }
    }

    /// Checks every setting against its range, for the binary's flags and for library
    /// users who build a `Config` themselves alike (messages name each setting by its flag).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        for (name, v) in [
            ("mem_threshold", self.mem_threshold),
            ("deadline_fraction", self.deadline_fraction),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return bad(format!("--{} must be in (0, 1], got {v}", name.replace('_', "-")));
            }
        }
        if !(self.cpu_threshold > 0.0 && self.cpu_threshold <= 64.0) {
            return bad(format!(
                "--cpu-threshold must be in (0, 64] (a fraction of the vCPU allotment), got {}",
                self.cpu_threshold
            ));
        }
        if self.sample_interval < MIN_SAMPLE_INTERVAL {
            return bad(format!(
                "--sample-interval must be at least {} (it sets the liveness lease), got {}",
                humantime::format_duration(MIN_SAMPLE_INTERVAL),
                humantime::format_duration(self.sample_interval)
            ));
        }
        let counts = [
            ("max_workers", u64::from(self.max_workers)),
            ("max_fleet", u64::from(self.max_fleet)),
            ("max_slots", u64::from(self.max_slots)),
            ("max_attempts", u64::from(self.max_attempts)),
            ("liveness_intervals", u64::from(self.liveness_intervals)),
            ("max_spawn_failures", u64::from(self.max_spawn_failures)),
            ("max_functions", self.max_functions as u64),
            ("max_connections", self.max_connections as u64),
            ("max_pending", self.max_pending),
            ("max_payload_bytes", self.max_payload_bytes as u64),
            ("max_result_bytes", self.max_result_bytes),
        ];
        for (name, v) in counts {
            if v == 0 {
                return bad(format!("--{} must be at least 1", name.replace('_', "-")));
            }
        }
        if self.slots == Some(0) || self.vcpus == Some(0) || self.max_tasks_per_worker == Some(0) {
            return bad("--slots, --vcpus and --max-tasks-per-worker must be at least 1".into());
        }
        // The workers it spawns would be refused at their hello past these: refuse now.
        let flag = |name: &str| match name {
            "timeout" => "--execution-timeout".to_owned(),
            other => format!("--{}", other.replace('_', "-")),
        };
        carpool_proto::bounds::check_shape(
            self.memory_mb,
            self.vcpus,
            self.slots,
            self.execution_timeout,
            &flag,
        )
        .map_err(Error::Config)?;
        if self.max_slots > carpool_proto::bounds::MAX_SLOTS {
            return bad(format!(
                "--max-slots {} is over {}",
                self.max_slots,
                carpool_proto::bounds::MAX_SLOTS
            ));
        }
        if self.max_payload_bytes > MAX_PAYLOAD_BYTES {
            return bad(format!(
                "--max-payload-bytes must be at most {MAX_PAYLOAD_BYTES}, got {}",
                self.max_payload_bytes
            ));
        }
        if self.max_pending_bytes < self.max_payload_bytes as u64 {
            return bad(format!(
                "--max-pending-bytes ({}) must be at least --max-payload-bytes ({}): a task of the largest payload must fit",
                self.max_pending_bytes, self.max_payload_bytes
            ));
        }
        if self.handshake_timeout.is_zero() {
            return bad("--handshake-timeout must be more than 0".into());
        }
        if self.state_dir.is_some() && self.state_url.is_some() {
            return bad("--state-dir and --state-url are alternatives: give one".into());
        }
        if let Some(url) = &self.state_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return bad("--state-url must be a postgres:// (or postgresql://) URL".into());
        }
        if self.lease < Duration::from_millis(300) || self.lease > Duration::from_secs(600) {
            return bad("--lease must be from 300ms to 10m".into());
        }
        if self.execution_timeout.is_zero() {
            return bad("--execution-timeout must be more than 0".into());
        }
        for f in &self.functions {
            check_function_name(f).map_err(|e| Error::Config(format!("--functions: {e}")))?;
        }
        for (f, _) in &self.exec_functions {
            check_function_name(f).map_err(|e| Error::Config(format!("--exec: {e}")))?;
            check_not_builtin(f, "--exec")?;
        }
        for (f, _) in &self.runtime_functions {
            check_function_name(f).map_err(|e| Error::Config(format!("--runtime: {e}")))?;
            check_not_builtin(f, "--runtime")?;
            if self.exec_functions.iter().any(|(e, _)| e == f) {
                return bad(format!("function {f:?} is given both --exec and --runtime"));
            }
        }
        Ok(())
    }
}

/// Refuses a `--exec` or `--runtime` function named like a built-in (it would silently
/// replace it in every worker).
fn check_not_builtin(name: &str, flag: &str) -> Result<(), Error> {
    if carpool_proto::bounds::BUILTINS.contains(&name) {
        return Err(Error::Config(format!(
            "{flag} {name}=…: {name:?} is a built-in function of every worker ({}); give yours another name",
            carpool_proto::bounds::BUILTINS.join(", ")
        )));
    }
    Ok(())
}

/// The default `--max-payload-bytes`: 4 MiB less 16 KiB, so that a result carrying an
/// output that large still fits the 4 MiB every default gRPC client receives.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024 - 16 * 1024;

/// The largest `--max-payload-bytes` (messages are held whole in memory).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

/// Default `--max-pending-bytes`: 1 GiB of payloads held for unfinished tasks.
pub const DEFAULT_MAX_PENDING_BYTES: u64 = 1 << 30;

/// Default `--max-result-bytes`: 512 MiB of results held in memory.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 512 << 20;

/// The shortest sample interval: the liveness lease is a multiple of it.
pub const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// The longest function name.
pub const MAX_FUNCTION_NAME: usize = 128;

/// Checks a function name: 1 to 128 bytes of letters, digits and `-_.:`.
pub fn check_function_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_FUNCTION_NAME {
        return Err(format!(
            "function name {:?} must be 1 to {MAX_FUNCTION_NAME} bytes",
            name.chars().take(40).collect::<String>()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c)))
    {
        return Err(format!(
            "function name {name:?} has {c:?}; names are letters, digits and -_.:"
        ));
    }
    Ok(())
}

pub use carpool_proto::lambda::vcpus_for_memory;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_out_of_range_is_refused_with_the_setting_named() {
        assert!(Config::default().validate().is_ok());
        let cases: [(Config, &str); 5] = [
            (
                Config {
                    sample_interval: Duration::ZERO,
                    ..Config::default()
                },
                "sample_interval",
            ),
            (
                Config {
                    deadline_fraction: -0.5,
                    ..Config::default()
                },
                "deadline_fraction",
            ),
            (
                Config {
                    max_workers: 0,
                    ..Config::default()
                },
                "max_workers",
            ),
            (
                Config {
                    functions: vec!["a b".into()],
                    ..Config::default()
                },
                "--functions",
            ),
            (
                Config {
                    cpu_threshold: f64::NAN,
                    ..Config::default()
                },
                "cpu_threshold",
            ),
        ];
        for (c, name) in cases {
            let err = c.validate().err().map(|e| e.to_string()).unwrap_or_default();
            let flag = if name.starts_with("--") {
                name.to_owned()
            } else {
                format!("--{}", name.replace('_', "-"))
            };
            assert!(err.contains(&flag), "{err:?} should name {flag}");
        }
    }

    #[test]
    fn function_names_are_short_plain_words() {
        assert!(check_function_name("resize-v2.jpeg:small_1").is_ok());
        for bad in ["", "a b", "x/../y", "\u{1F600}", &"x".repeat(129)] {
            assert!(check_function_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vcpus_follow_lambda_memory_sizes() {
        let got: Vec<u32> = [128, 1769, 2048, 4096, 6144, 8192, 10240]
            .iter()
            .map(|m| vcpus_for_memory(*m))
            .collect();
        assert_eq!(got, vec![1, 1, 2, 3, 4, 5, 6]);
    }
}
