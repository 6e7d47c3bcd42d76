//! What the simulator is told: a task's shape, a runtime copy's, the batch and the fleet
//! ([`SimConfig`]); and what it reports ([`SimReport`]).

use std::time::Duration;

use crate::config::Config;

/// What one task needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskModel {
    /// CPU time on one vCPU, used first (a single-threaded task uses one vCPU at most).
    pub cpu: Duration,
    /// Then a wait that uses no CPU (a download, an API call).
    pub wait: Duration,
    /// Memory it holds while it runs, in MB.
    pub mem_mb: f64,
}

impl TaskModel {
    /// A CPU-bound task: `cpu` of CPU time, no wait, little memory.
    pub fn cpu_bound(cpu: Duration) -> Self {
        Self {
            cpu,
            wait: Duration::ZERO,
            mem_mb: 1.0,
        }
    }

    /// A task that only waits.
    pub fn waiting(wait: Duration) -> Self {
        Self {
            cpu: Duration::ZERO,
            wait,
            mem_mb: 0.1,
        }
    }
}

/// A second kind of task mixed into a batch: every `every`-th task submitted is `long`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskMix {
    /// One task in this many is the other kind.
    pub every: u64,
    /// What it needs.
    pub long: TaskModel,
    /// The others are submitted with this timeout of their own (`SubmitRequest.timeout_ms`:
    /// their user knows they are short); `None`: without one, as the long ones always are.
    pub bounded: Option<Duration>,
}

/// A Lambda runtime's copies (interpreters), when the worker hosts one: a task runs only on
/// a ready copy, a copy is costly to start, and a worker starts copies as the real worker
/// does (the same pacing rule, [`crate::pace`]): for work it holds, a few at a time,
/// while memory holds them, and keeps them warm up to its limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CopyModel {
    /// CPU time one copy's init takes on one vCPU (interpreter start and imports).
    pub init_cpu: Duration,
    /// Memory a ready copy holds with no task, in MB (a task's own comes on top).
    pub mem_mb: f64,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The coordinator's settings (memory size, vCPUs, slots, fleet cap, quota, ...).
    pub config: Config,
    /// The function the tasks are submitted to.
    pub function: String,
    /// Tasks, all submitted at time zero.
    pub tasks: usize,
    /// What each task needs.
    pub task: TaskModel,
    /// From spawn to hello: every spawn's in the local world, the median in Lambda's.
    pub cold_start: Duration,
    /// Which world the workers live in.
    pub world: World,
    /// From Shutdown to the end of the worker's stream (billed: the invocation is alive).
    pub exit_delay: Duration,
    /// A worker's own memory with nothing running, in MB.
    pub worker_base_mb: f64,
    /// How long after its running tasks change a worker reports (the real worker's).
    pub settle: Duration,
    /// The runtime copies tasks run in (`None`: tasks run in the worker, as built-ins do).
    pub copy: Option<CopyModel>,
    /// Another kind of task mixed in (`None`: every task is `task`).
    pub mix: Option<TaskMix>,
    /// Tally the hand-over waits (see [`SimReport::handover_wait`]); costs a scan of the
    /// fleet per event.
    pub watch_handover: bool,
    /// Every task of a batch submitted with this deadline (`SubmitRequest.deadline_ms`).
    pub deadline: Option<Duration>,
    /// Each task's CPU time and wait vary uniformly within this fraction either side of the
    /// model's (0: every task alike; at most [`MAX_SPREAD`]). The draw is the task id's, the
    /// same in every way and batch. Real tasks vary (inputs of different sizes, a network's
    /// latency); identical tasks started together share the CPU, end their bursts together
    /// and wait together, in step, which no real batch keeps up for long.
    pub spread: f64,
}

/// The largest [`SimConfig::spread`]: a task never takes nothing.
pub const MAX_SPREAD: f64 = 0.9;

/// The factor task `id`'s `part` (0: CPU, 1: wait) is multiplied by under `spread`: uniform
/// in `[1 - spread, 1 + spread]`, the same for the same task every time (the lab draws
/// real tasks' payloads with it too).
pub fn varied(spread: f64, id: u64, part: u64) -> f64 {
    if spread <= 0.0 {
        return 1.0;
    }
    let mut d = Draws::new(
        id.wrapping_mul(2)
            .wrapping_add(part)
            .wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    1.0 + spread.min(MAX_SPREAD) * (2.0 * d.uniform() - 1.0)
}

impl SimConfig {
    /// A simulation of `tasks` tasks of `task` under `config`, with a 50 ms cold start, no
    /// exit delay, an 8 MB worker base and the real worker's 25 ms settle.
    pub fn new(config: Config, function: &str, tasks: usize, task: TaskModel) -> Self {
        Self {
            config,
            function: function.to_owned(),
            tasks,
            task,
            cold_start: Duration::from_millis(50),
            world: World::Local,
            exit_delay: Duration::ZERO,
            worker_base_mb: 8.0,
            settle: Duration::from_millis(25),
            copy: None,
            mix: None,
            watch_handover: false,
            deadline: None,
            spread: 0.0,
        }
    }

    /// The same in a Lambda-like world (see [`World::Lambda`]) whose cold starts have
    /// `median` (a container image's: hundreds of milliseconds).
    pub fn lambda_like(mut self, median: Duration) -> Self {
        self.cold_start = median;
        self.world = World::Lambda {
            sigma: LAMBDA_COLD_START_SIGMA,
            seed: 1,
        };
        self
    }
}

/// The spread of a Lambda-like world's cold starts (log-normal: a median of 500 ms puts
/// the 99th percentile near 2 s). An assumption of the model, not a measurement.
pub const LAMBDA_COLD_START_SIGMA: f64 = 0.6;

/// Where simulated workers run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum World {
    /// This machine, as measured: every cold start the same, whole vCPUs
    /// (`Fleet::vcpus_at`), each task's CPU shared out over them. The check of the
    /// simulator against local runs.
    Local,
    /// Lambda's: cold starts drawn from a log-normal around `SimConfig::cold_start` with
    /// this spread (the same draws for a given `seed`), and CPU in proportion to memory
    /// (one vCPU's worth at 1769 MB, a fraction below it). Billing is the same in both
    /// worlds (1 ms rounding, init billed, the per-request price).
    Lambda {
        /// The log-normal's sigma (see [`LAMBDA_COLD_START_SIGMA`]).
        sigma: f64,
        /// The draws' seed.
        seed: u64,
    },
}

impl World {
    /// The CPU a worker of `memory_mb` runs on here, whose hello says `vcpus`.
    pub fn cpu_share(&self, memory_mb: u32, vcpus: u32) -> f64 {
        match self {
            World::Local => f64::from(vcpus),
            World::Lambda { .. } => (f64::from(memory_mb) / 1769.0).min(6.0),
        }
    }
}

/// A small deterministic generator (SplitMix64) for the Lambda-like world's draws: the
/// core keeps no random-number dependency, and a seed gives the same run every time.
#[derive(Clone, Debug)]
pub(super) struct Draws(u64);

impl Draws {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Uniform in (0, 1].
    pub(super) fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Log-normal with `median` and `sigma` (Box-Muller).
    pub(super) fn log_normal(&mut self, median: Duration, sigma: f64) -> Duration {
        let (u1, u2) = (self.uniform(), self.uniform());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        Duration::from_secs_f64(median.as_secs_f64() * (sigma * z).exp())
    }
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Worker invocations (each one billed).
    pub invocations: u64,
    /// From the submission to the last result.
    pub completion: Duration,
    /// Billed GB-seconds.
    pub billed_gb_s: f64,
    /// The bill in USD.
    pub cost_usd: f64,
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Most workers live at once.
    pub peak_workers: usize,
    /// Most tasks one worker ran at once.
    pub peak_concurrency: u32,
    /// The highest memory any worker held, as a fraction of its memory size (above 1.0: it
    /// would have run out of memory).
    pub peak_memory_fraction: f64,
    /// What Lambda would bill per request for the same attempts (each one's duration and
    /// each cold start's init), in GB-seconds: the bill of a run at `--slots 1` on warm
    /// sandboxes (Stats' `request_billed_gb_ms`).
    pub request_billed_gb_s: f64,
    /// Attempts that finished on a worker (each one request).
    pub requests: u64,
    /// Attempts killed because their worker reached the end of its life (each one runs
    /// again). A simulated worker dies at its execution timeout, as a Lambda instance does.
    pub killed_at_deadline: u64,
    /// Workers started ahead of time to take over from workers whose admissions ended.
    pub successors: u64,
    /// With [`SimConfig::watch_handover`]: the time, after the batch's first worker said
    /// hello, that tasks waited with no worker admitting any (every live worker's
    /// admissions ended, its successor not there yet).
    pub handover_wait: Duration,
    /// The coordinator's own count of the longest hand-over wait (Stats'
    /// `handover_wait_longest_ms`, over the whole run so far; the worst draw in a mean).
    pub handover_longest: Duration,
}

impl SimReport {
    /// The mean of `reports` (runs of the same batch under different cold-start draws):
    /// the mean of every figure that adds up (rounded for counts), and the worst of those
    /// that judge a run (its failures, its memory peak, its most workers and tasks at once),
    /// so a draw that failed a task or ran out of memory is not averaged away. The default
    /// report for none.
    pub fn mean(reports: &[SimReport]) -> SimReport {
        let n = reports.len();
        if n == 0 {
            return SimReport::default();
        }
        let avg = |f: &dyn Fn(&SimReport) -> f64| reports.iter().map(f).sum::<f64>() / n as f64;
        let count = |f: &dyn Fn(&SimReport) -> u64| avg(&|r| f(r) as f64).round() as u64;
        SimReport {
            invocations: count(&|r| r.invocations),
            completion: Duration::from_secs_f64(avg(&|r| r.completion.as_secs_f64())),
            billed_gb_s: avg(&|r| r.billed_gb_s),
            cost_usd: avg(&|r| r.cost_usd),
            succeeded: count(&|r| r.succeeded),
            failed: reports.iter().map(|r| r.failed).max().unwrap_or(0),
            peak_workers: reports.iter().map(|r| r.peak_workers).max().unwrap_or(0),
            peak_concurrency: reports.iter().map(|r| r.peak_concurrency).max().unwrap_or(0),
            peak_memory_fraction: reports.iter().map(|r| r.peak_memory_fraction).fold(0.0, f64::max),
            request_billed_gb_s: avg(&|r| r.request_billed_gb_s),
            requests: count(&|r| r.requests),
            killed_at_deadline: reports.iter().map(|r| r.killed_at_deadline).max().unwrap_or(0),
            successors: count(&|r| r.successors),
            handover_wait: Duration::from_secs_f64(avg(&|r| r.handover_wait.as_secs_f64())),
            handover_longest: reports
                .iter()
                .map(|r| r.handover_longest)
                .max()
                .unwrap_or_default(),
        }
    }

    /// This run billed as Lambda bills a sandbox per request (for a run at `--slots 1`
    /// whose workers stay warm): its GB-s are the requests' and inits', its invocations the
    /// requests, its USD those plus the per-request price.
    pub fn billed_per_request(&self) -> SimReport {
        let gb_ms = self.request_billed_gb_s * 1000.0;
        SimReport {
            invocations: self.requests,
            billed_gb_s: self.request_billed_gb_s,
            cost_usd: crate::billing::cost_usd(gb_ms, self.requests),
            ..self.clone()
        }
    }
}
