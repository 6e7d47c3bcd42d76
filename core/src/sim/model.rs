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
    /// From spawn to hello.
    pub cold_start: Duration,
    /// From Shutdown to the end of the worker's stream (billed: the invocation is alive).
    pub exit_delay: Duration,
    /// A worker's own memory with nothing running, in MB.
    pub worker_base_mb: f64,
    /// How long after its running tasks change a worker reports (the real worker's).
    pub settle: Duration,
    /// The runtime copies tasks run in (`None`: tasks run in the worker, as built-ins do).
    pub copy: Option<CopyModel>,
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
            exit_delay: Duration::ZERO,
            worker_base_mb: 8.0,
            settle: Duration::from_millis(25),
            copy: None,
        }
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
}

impl SimReport {
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
