//! The settings the core decides with, in parts: [`Limits`] (what the pool holds),
//! [`Fleet`] (the workers) and [`Functions`] (what is served). The coordinator's own
//! settings (listening, the journal, how workers are started) add to these; its binary's
//! flags fill them.

use std::time::Duration;

pub use carpool_messages::bounds::vcpus_for_memory;

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

/// What the pool holds at most, and how long: every limit on what a client can make the
/// coordinator keep.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Most function entries kept at once (an idle one makes room for a new name).
    pub max_functions: usize,
    /// Largest accepted task payload, in bytes.
    pub max_payload_bytes: usize,
    /// Pending tasks (all functions) past which submissions are refused with RESOURCE_EXHAUSTED.
    pub max_pending: u64,
    /// Bytes of payloads held in memory for unfinished tasks (pending, being written,
    /// running), all functions: a submission that would pass it is refused with
    /// RESOURCE_EXHAUSTED.
    pub max_pending_bytes: u64,
    /// Bytes of finished tasks' results held in memory: past it the oldest are evicted
    /// (still readable from the journal when there is one).
    pub max_result_bytes: u64,
    /// How long a finished task's result stays retrievable.
    pub result_retention: Duration,
    /// Per-attempt task timeout when a submission gives none; `None`: no limit.
    pub task_timeout: Option<Duration>,
    /// Attempts per task before it fails because its workers kept being lost.
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
pub struct Fleet {
    /// Which spawner starts workers when the pool outgrows the fleet.
    pub spawner: SpawnerKind,
    /// Fleet cap per function (live plus starting workers).
    pub max_workers: u32,
    /// Fleet cap over every function (live plus starting workers): with many functions,
    /// `max_workers` each could otherwise add up to any number of paid invocations.
    pub max_fleet: u32,
    /// Spawns of one function that may fail in a row before its pending tasks fail with
    /// the cause (a function no worker can run is not respawned for ever).
    pub max_spawn_failures: u32,
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
    /// Tasks a worker may run over its whole life; `Some(1)` is conventional FaaS
    /// (one invocation per task), `None` is carpool's sharing.
    pub max_tasks_per_worker: Option<u64>,
    /// How often workers sample and report CPU and memory when nothing else happens.
    pub sample_interval: Duration,
    /// How long a worker whose stream broke keeps its tasks, waiting for it to reconnect.
    pub reconnect_grace: Duration,
    /// A worker silent for this many sample intervals is treated as lost.
    pub liveness_intervals: u32,
    /// A spawned worker that has not said hello this long after its spawn is written off
    /// (its capacity released, the spawn counted as failed).
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
pub struct Functions {
    /// With the external and Lambda spawners, the only functions accepted (empty: any
    /// name, up to `max_functions` at once). The local spawner serves its built-ins and
    /// `exec_functions`.
    pub only: Vec<String>,
    /// Functions served by running a command (`--exec`) in local workers, as (name, command).
    /// The built-in functions `echo`, `sleep` and `spin` need no entry.
    pub exec: Vec<(String, String)>,
    /// Functions served by a Lambda runtime command (`--runtime`) hosted in each worker, as
    /// (name, command): the local spawner passes the command to its workers, the Lambda
    /// spawner puts it in the event.
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

impl Fleet {
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
