//! The settings the core decides with, in parts: [`Limits`] (what the pool holds),
//! [`Fleet`] (the workers) and [`Functions`] (what is served). The coordinator's own
//! settings (listening, the journal, how workers are started) add to these; its binary's
//! flags fill them.

use std::time::Duration;

pub use carpool_messages::bounds::vcpus_for_memory;

/// How eligible workers are ranked when a task is placed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Placement {
    /// Fullest eligible worker first: fewest live workers, lowest cost.
    #[default]
    Pack,
    /// Emptiest eligible worker first: lowest latency.
    Spread,
}

/// When the coordinator starts another worker for tasks its workers have no slot for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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

/// How a worker's admissions end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Admission {
    /// A worker takes a task only while the task's expected duration (the longest of its
    /// function's recent attempts at the worker's size, or its own timeout) fits in what is left of the
    /// worker's life with a margin; `--deadline-fraction` for a function not measured yet.
    #[default]
    Duration,
    /// A worker takes nothing past `--deadline-fraction` of its life, whatever its tasks
    /// take (the paper's rule).
    Fraction,
}

/// How new workers are started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum SpawnerKind {
    /// Child processes of the `carpool-worker` binary on this machine.
    #[default]
    Local,
    /// Nothing is spawned: workers started elsewhere connect by themselves.
    External,
    /// Invocations of an AWS Lambda function (InvocationType=Event), whose worker dials back.
    Lambda,
}

/// What the pool holds at most, and how long: every limit on what a client can make the
/// coordinator keep.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Limits {
    /// Most functions known at once; an idle one (nothing pending, running or live, nothing
    /// learned) makes room for a new name, and with none idle a new name is refused.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MAX_FUNCTIONS", default_value_t = Limits::default().max_functions))]
    pub max_functions: usize,
    /// Largest task payload, and largest task output, in bytes [default: 4 MiB less 16 KiB,
    /// so that a full one with its envelope fits in a 4 MiB gRPC message; at most 64 MiB].
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MAX_PAYLOAD_BYTES", default_value_t = Limits::default().max_payload_bytes))]
    pub max_payload_bytes: usize,
    /// Pending tasks past which submissions get RESOURCE_EXHAUSTED.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MAX_PENDING", default_value_t = Limits::default().max_pending))]
    pub max_pending: u64,
    /// Bytes of payloads held in memory for unfinished tasks (pending, running), all
    /// functions: a submission past it gets RESOURCE_EXHAUSTED.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MAX_PENDING_BYTES", default_value_t = Limits::default().max_pending_bytes))]
    pub max_pending_bytes: u64,
    /// Bytes of finished tasks' results held in memory: past it the oldest results are
    /// evicted (Get and Watch read them back from --state-dir or --state-url; without a
    /// journal they answer FAILED_PRECONDITION).
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MAX_RESULT_BYTES", default_value_t = Limits::default().max_result_bytes))]
    pub max_result_bytes: u64,
    /// How long a finished task's result stays retrievable with Get, e.g. "1h".
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_RESULT_RETENTION", default_value = "1h", value_parser = humantime::parse_duration))]
    pub result_retention: Duration,
    /// Per-attempt task timeout when a submission gives none, e.g. "5m" [default: none].
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_TASK_TIMEOUT", value_parser = humantime::parse_duration))]
    pub task_timeout: Option<Duration>,
    /// Attempts per task before it fails because its workers were lost.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MAX_ATTEMPTS", default_value_t = Limits::default().max_attempts))]
    pub max_attempts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_functions: 1000,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_pending: 1_000_000,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            result_retention: Duration::from_secs(3600),
            task_timeout: None,
            max_attempts: 3,
        }
    }
}

/// The workers: how many, of what shape, how they are started, given work and let go.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Fleet {
    /// How workers are started.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_SPAWNER", value_enum, default_value_t = Fleet::default().spawner))]
    pub spawner: SpawnerKind,
    /// Fleet cap per function: live plus starting workers (one whose admissions have ended
    /// gives its place to its successor; --max-fleet counts every one).
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MAX_WORKERS", default_value_t = Fleet::default().max_workers))]
    pub max_workers: u32,
    /// Fleet cap over all functions together: live plus starting workers.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MAX_FLEET", default_value_t = Fleet::default().max_fleet))]
    pub max_fleet: u32,
    /// Spawns of a function that may fail in a row before its pending tasks fail with the
    /// cause.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MAX_SPAWN_FAILURES", default_value_t = Fleet::default().max_spawn_failures))]
    pub max_spawn_failures: u32,
    /// Memory size of spawned workers in MB (billing size; vCPUs follow it unless --vcpus).
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MEMORY_MB", default_value_t = Fleet::default().memory_mb))]
    pub memory_mb: u32,
    /// Memory sizes (MB) carpool may choose from per function, e.g. "1024,2048,4096": each
    /// new worker gets the size whose measured cost per task is least (each size is tried
    /// once first) [default: --memory-mb alone]. On Lambda each size needs a qualifier
    /// (--lambda-size, or --lambda-publish-sizes).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "CARPOOL_MEMORY_SIZES", value_delimiter = ',')
    )]
    pub memory_sizes: Vec<u32>,
    /// vCPUs of spawned workers [default: derived from --memory-mb, 1769 MB per vCPU].
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_VCPUS"))]
    pub vcpus: Option<u32>,
    /// Pin every worker's concurrency limit at this many tasks [default: adaptive: each
    /// worker's limit follows what it measures of itself, from its vCPUs or the learned level].
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_SLOTS"))]
    pub slots: Option<u32>,
    /// The most tasks an adaptive concurrency limit may rise to.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MAX_SLOTS", default_value_t = Fleet::default().max_slots))]
    pub max_slots: u32,
    /// CPU as a fraction of a worker's vCPU allotment: above it a worker gets no new task, and
    /// an adaptive limit stops rising at it, its last rise rounding up to fill the CPU where
    /// one task more would cross it (may exceed 1, for workers that burst past it).
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_CPU_THRESHOLD", default_value_t = Fleet::default().cpu_threshold))]
    pub cpu_threshold: f64,
    /// Memory as a fraction of a worker's limit: at or above it a worker gets no new task, and
    /// an adaptive limit falls to what fits under it.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MEM_THRESHOLD", default_value_t = Fleet::default().mem_threshold))]
    pub mem_threshold: f64,
    /// A worker older than this fraction of its execution timeout drains: with `--admission
    /// duration`, only while its function has nothing measured yet.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_DEADLINE_FRACTION", default_value_t = Fleet::default().deadline_fraction))]
    pub deadline_fraction: f64,
    /// When a worker takes its last task: `duration` while a task's expected duration (its
    /// function's longest recent attempt, or its own timeout) fits in what is left of its life,
    /// `fraction` at `--deadline-fraction` of its life whatever its tasks take.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_ADMISSION", value_enum, default_value_t = Fleet::default().admission))]
    pub admission: Admission,
    /// Execution timeout of a worker (Lambda's function timeout), e.g. "15m".
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_EXECUTION_TIMEOUT", default_value = "15m", value_parser = humantime::parse_duration))]
    pub execution_timeout: Duration,
    /// How long an idle worker with nothing to do is kept before Shutdown, e.g. "0s", "30s".
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_KEEP_ALIVE", default_value = "0s", value_parser = humantime::parse_duration))]
    pub keep_alive: Duration,
    /// Which eligible worker gets a task.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_PLACEMENT", value_enum, default_value_t = Fleet::default().placement))]
    pub placement: Placement,
    /// When another worker is started for tasks no slot covers: `paced` only for work the
    /// live workers will not have finished before a new one could run its first task
    /// (measured), `eager` at once, as Lambda starts a sandbox per request.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_SCALE_OUT", value_enum, default_value_t = Fleet::default().scale_out))]
    pub scale_out: ScaleOut,
    /// Tasks one worker runs over its life (1 = conventional FaaS) [default: unlimited].
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_MAX_TASKS_PER_WORKER"))]
    pub max_tasks_per_worker: Option<u64>,
    /// How often workers report CPU and memory when nothing else happens.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_SAMPLE_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration))]
    pub sample_interval: Duration,
    /// How long a worker whose stream broke keeps its tasks, waiting for it to reconnect.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_RECONNECT_GRACE", default_value = "5s", value_parser = humantime::parse_duration))]
    pub reconnect_grace: Duration,
    /// A worker silent for this many sample intervals is treated as lost.
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_LIVENESS_INTERVALS", default_value_t = Fleet::default().liveness_intervals))]
    pub liveness_intervals: u32,
    /// A spawned worker that has not connected this long after its spawn is written off
    /// (its capacity is released and the spawn counts as failed), e.g. "60s".
    #[cfg_attr(feature = "cli", arg(long, env = "CARPOOL_START_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration))]
    pub start_timeout: Duration,
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            spawner: SpawnerKind::Local,
            max_workers: 8,
            max_fleet: 64,
            max_spawn_failures: 10,
            memory_mb: 2048,
            memory_sizes: Vec::new(),
            vcpus: None,
            slots: None,
            max_slots: 256,
            cpu_threshold: 0.9,
            mem_threshold: 0.9,
            deadline_fraction: 0.8,
            admission: Admission::Duration,
            execution_timeout: Duration::from_secs(900),
            keep_alive: Duration::ZERO,
            placement: Placement::Pack,
            scale_out: ScaleOut::Paced,
            max_tasks_per_worker: None,
            sample_interval: Duration::from_millis(500),
            reconnect_grace: Duration::from_secs(5),
            liveness_intervals: 10,
            start_timeout: Duration::from_secs(60),
        }
    }
}

/// Which functions this coordinator serves.
#[derive(Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Functions {
    /// Accept only these functions (comma-separated or repeated) with the external and
    /// Lambda spawners [default: any valid name, up to --max-functions at once].
    #[cfg_attr(
        feature = "cli",
        arg(long = "functions", env = "CARPOOL_FUNCTIONS", value_delimiter = ',')
    )]
    pub only: Vec<String>,
    /// A function served by a command in local workers, as NAME=COMMAND (repeatable); the
    /// command reads the payload on stdin and writes the output on stdout.
    #[cfg_attr(feature = "cli", arg(long = "exec", env = "CARPOOL_EXEC", value_parser = parse_exec))]
    pub exec: Vec<(String, String)>,
    /// A function served by a Lambda runtime in its workers, as NAME=COMMAND (repeatable),
    /// e.g. `--runtime 'resize=python3 -m awslambdaric app.handler'`: each worker hosts the
    /// Lambda Runtime API and runs copies of the command, one per task it runs at once.
    /// Local workers get it as `--runtime`; Lambda workers in the event.
    #[cfg_attr(feature = "cli", arg(long = "runtime", env = "CARPOOL_RUNTIME", value_parser = parse_exec))]
    pub runtime: Vec<(String, String)>,
}

/// What the core decides with: the three parts, and whether a journal keeps what is
/// accepted (events then ask for journal writes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// What the pool holds at most.
    pub limits: Limits,
    /// The workers.
    pub fleet: Fleet,
    /// Which functions are served.
    pub functions: Functions,
    /// Whether accepted work is journaled (`--state-dir` or `--state-url`).
    pub journaled: bool,
}

/// Built-in functions of the `carpool-worker` binary.
pub const BUILTIN_FUNCTIONS: [&str; 6] = carpool_messages::bounds::BUILTINS;

/// The most memory sizes one coordinator chooses between.
pub const MAX_MEMORY_SIZES: usize = 16;

impl Fleet {
    /// How long a connected worker may stay silent before it is treated as lost.
    pub fn liveness_lease(&self) -> Duration {
        self.sample_interval
            .saturating_mul(self.liveness_intervals.max(1))
    }

    /// vCPUs of a spawned worker: the configured count, or Lambda's rule (one vCPU per
    /// 1769 MB, rounded up, 1 to 6).
    pub fn worker_vcpus(&self) -> u32 {
        self.vcpus_at(self.memory_mb)
    }

    /// vCPUs of a spawned worker of `memory_mb`: `--vcpus`, or Lambda's rule.
    pub fn vcpus_at(&self, memory_mb: u32) -> u32 {
        self.vcpus.unwrap_or_else(|| vcpus_for_memory(memory_mb))
    }

    /// The sizes a function's workers may have, smallest first: `--memory-sizes`, or
    /// `--memory-mb` alone.
    pub fn sizes(&self) -> Vec<u32> {
        let mut sizes = if self.memory_sizes.is_empty() {
            vec![self.memory_mb]
        } else {
            self.memory_sizes.clone()
        };
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// The concurrency limit a spawned worker starts with when nothing is learned: pinned
    /// `--slots`, else its vCPUs.
    pub fn worker_slots(&self) -> u32 {
        self.slots.unwrap_or_else(|| self.worker_vcpus()).max(1)
    }

    /// Checks every setting of the part against its range (messages name the flag).
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("mem_threshold", self.mem_threshold),
            ("deadline_fraction", self.deadline_fraction),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(format!("--{} must be in (0, 1], got {v}", name.replace('_', "-")));
            }
        }
        if !(self.cpu_threshold > 0.0 && self.cpu_threshold <= 64.0) {
            return Err(format!(
                "--cpu-threshold must be in (0, 64] (a fraction of the vCPU allotment), got {}",
                self.cpu_threshold
            ));
        }
        if self.sample_interval < MIN_SAMPLE_INTERVAL {
            return Err(format!(
                "--sample-interval must be at least {} (it sets the liveness lease), got {}",
                humantime::format_duration(MIN_SAMPLE_INTERVAL),
                humantime::format_duration(self.sample_interval)
            ));
        }
        at_least_one(&[
            ("max_workers", u64::from(self.max_workers)),
            ("max_fleet", u64::from(self.max_fleet)),
            ("max_slots", u64::from(self.max_slots)),
            ("liveness_intervals", u64::from(self.liveness_intervals)),
            ("max_spawn_failures", u64::from(self.max_spawn_failures)),
        ])?;
        if self.slots == Some(0) || self.vcpus == Some(0) || self.max_tasks_per_worker == Some(0) {
            return Err("--slots, --vcpus and --max-tasks-per-worker must be at least 1".into());
        }
        // The workers it spawns would be refused at their hello past these: refuse now.
        let flag = |name: &str| match name {
            "timeout" => "--execution-timeout".to_owned(),
            other => format!("--{}", other.replace('_', "-")),
        };
        carpool_messages::bounds::check_shape(
            self.memory_mb,
            self.vcpus,
            self.slots,
            self.execution_timeout,
            &flag,
        )?;
        if self.memory_sizes.len() > MAX_MEMORY_SIZES {
            return Err(format!(
                "--memory-sizes names {} sizes; at most {MAX_MEMORY_SIZES}",
                self.memory_sizes.len()
            ));
        }
        for &size in &self.memory_sizes {
            let flag = |name: &str| match name {
                "memory_mb" => "--memory-sizes".to_owned(),
                other => flag(other),
            };
            carpool_messages::bounds::check_shape(
                size,
                self.vcpus,
                self.slots,
                self.execution_timeout,
                &flag,
            )?;
        }
        if self.sizes().len() > 1 && self.spawner == SpawnerKind::External {
            return Err(
                "--memory-sizes with more than one size needs a spawner that starts workers (--spawner local or lambda)"
                    .into(),
            );
        }
        if self.max_slots > carpool_messages::bounds::MAX_SLOTS {
            return Err(format!(
                "--max-slots {} is over {}",
                self.max_slots,
                carpool_messages::bounds::MAX_SLOTS
            ));
        }
        if self.execution_timeout.is_zero() {
            return Err("--execution-timeout must be more than 0".into());
        }
        Ok(())
    }
}

impl Limits {
    /// Checks every setting of the part against its range (messages name the flag).
    pub fn validate(&self) -> Result<(), String> {
        at_least_one(&[
            ("max_attempts", u64::from(self.max_attempts)),
            ("max_functions", self.max_functions as u64),
            ("max_pending", self.max_pending),
            ("max_payload_bytes", self.max_payload_bytes as u64),
            ("max_result_bytes", self.max_result_bytes),
        ])?;
        if self.max_payload_bytes > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "--max-payload-bytes must be at most {MAX_PAYLOAD_BYTES}, got {}",
                self.max_payload_bytes
            ));
        }
        if self.max_pending_bytes < self.max_payload_bytes as u64 {
            return Err(format!(
                "--max-pending-bytes ({}) must be at least --max-payload-bytes ({}): a task of the largest payload must fit",
                self.max_pending_bytes, self.max_payload_bytes
            ));
        }
        Ok(())
    }
}

impl Functions {
    /// Checks every name (messages name the flag).
    pub fn validate(&self) -> Result<(), String> {
        for f in &self.only {
            check_function_name(f).map_err(|e| format!("--functions: {e}"))?;
        }
        for (f, _) in &self.exec {
            check_function_name(f).map_err(|e| format!("--exec: {e}"))?;
            check_not_builtin(f, "--exec")?;
        }
        for (f, _) in &self.runtime {
            check_function_name(f).map_err(|e| format!("--runtime: {e}"))?;
            check_not_builtin(f, "--runtime")?;
            if self.exec.iter().any(|(e, _)| e == f) {
                return Err(format!("function {f:?} is given both --exec and --runtime"));
            }
        }
        Ok(())
    }

    /// Whether tasks of `function` can be run by the workers `spawner` starts. With the
    /// external and Lambda spawners, the names of `only`, or any name when the list is empty
    /// (the workers decide what they serve).
    pub fn serves(&self, spawner: SpawnerKind, function: &str) -> bool {
        match spawner {
            SpawnerKind::External | SpawnerKind::Lambda => {
                self.only.is_empty() || self.only.iter().any(|f| f == function)
            }
            SpawnerKind::Local => {
                BUILTIN_FUNCTIONS.contains(&function)
                    || self.exec.iter().any(|(name, _)| name == function)
                    || self.runtime.iter().any(|(name, _)| name == function)
            }
        }
    }
}

impl Config {
    /// Whether tasks of `function` can be run by the workers this coordinator spawns.
    pub fn serves(&self, function: &str) -> bool {
        self.functions.serves(self.fleet.spawner, function)
    }

    /// Checks every part.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate()?;
        self.fleet.validate()?;
        self.functions.validate()
    }
}

/// Parses a `--exec` or `--runtime` value, `NAME=COMMAND`.
pub fn parse_exec(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, cmd)) if !name.is_empty() && !cmd.is_empty() => Ok((name.to_owned(), cmd.to_owned())),
        _ => Err(format!("expected NAME=COMMAND, got {s:?}")),
    }
}

/// Refuses a count of 0 (messages name the flag).
fn at_least_one(counts: &[(&str, u64)]) -> Result<(), String> {
    match counts.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(format!("--{} must be at least 1", name.replace('_', "-"))),
        None => Ok(()),
    }
}

/// Refuses a `--exec` or `--runtime` function named like a built-in (it would silently
/// replace it in every worker).
fn check_not_builtin(name: &str, flag: &str) -> Result<(), String> {
    if BUILTIN_FUNCTIONS.contains(&name) {
        return Err(format!(
            "{flag} {name}=…: {name:?} is a built-in function of every worker ({}); give yours another name",
            BUILTIN_FUNCTIONS.join(", ")
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_out_of_range_is_refused_with_the_setting_named() {
        assert!(Config::default().validate().is_ok());
        let mut cases: Vec<(Config, &str)> = Vec::new();
        let mut c = Config::default();
        c.fleet.sample_interval = Duration::ZERO;
        cases.push((c, "--sample-interval"));
        let mut c = Config::default();
        c.fleet.deadline_fraction = -0.5;
        cases.push((c, "--deadline-fraction"));
        let mut c = Config::default();
        c.fleet.max_workers = 0;
        cases.push((c, "--max-workers"));
        let mut c = Config::default();
        c.functions.only = vec!["a b".into()];
        cases.push((c, "--functions"));
        let mut c = Config::default();
        c.fleet.cpu_threshold = f64::NAN;
        cases.push((c, "--cpu-threshold"));
        let mut c = Config::default();
        c.limits.max_pending_bytes = 10;
        cases.push((c, "--max-pending-bytes"));
        for (c, flag) in cases {
            let err = c.validate().err().unwrap_or_default();
            assert!(err.contains(flag), "{err:?} should name {flag}");
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
