//! `carpool demo`: two batches run three times each on local workers, with the same cap on
//! concurrent workers, and what each cost under the Lambda price model:
//! - **carpool** with default flags (several tasks share each worker, as many as its
//!   measured resources allow), billed for each worker's whole life from its spawn;
//! - **Lambda as it bills** (the fair rival): at most N sandboxes, each running one request
//!   at a time and kept warm between requests (`--slots 1`), billed as Lambda bills them:
//!   each request's own duration rounded up to the millisecond, each cold sandbox's init,
//!   and the per-request price;
//! - **one cold invocation per task**, the worst case (a fresh worker per task, billed for
//!   its whole life).
//!
//! - CPU-bound: `spin` tasks (a vCPU each), where sharing fills the vCPUs a single-threaded
//!   function leaves idle.
//! - I/O-bound: `sleep` tasks (an API call, an S3 read), where one worker runs many more
//!   tasks than it has vCPUs: the adaptive limit finds how many.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use carpool_coordinator::{Config, SpawnerKind, config::ScaleOut, config::vcpus_for_memory};
use carpool_proto::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use carpool_client::{Client, TaskState};

use crate::shared::{self, saving};

/// What to run.
#[derive(Clone, Debug)]
pub(crate) struct DemoOptions {
    /// Number of CPU-bound tasks per mode.
    pub tasks: usize,
    /// CPU time each `spin` task burns, in ms.
    pub spin_ms: u64,
    /// Memory size of the CPU batch's workers (vCPUs follow it).
    pub memory_mb: u32,
    /// Cap on concurrent workers of the CPU batch; `None` fits the workers' vCPUs to this
    /// machine's cores.
    pub max_workers: Option<u32>,
    /// Number of I/O-bound tasks per mode (0: no I/O batch).
    pub io_tasks: usize,
    /// How long each `sleep` task waits, in ms.
    pub sleep_ms: u64,
    /// Memory size of the I/O batch's workers.
    pub io_memory_mb: u32,
    /// Cap on concurrent workers of the I/O batch.
    pub io_max_workers: u32,
    /// The worker binary; `None` looks next to the running executable.
    pub worker_bin: Option<PathBuf>,
    /// Run the batches as Python Lambda handlers under awslambdaric with this Python;
    /// `None`: the Rust built-ins.
    pub python: Option<String>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            tasks: 40,
            spin_ms: 200,
            memory_mb: 2048,
            max_workers: None,
            io_tasks: 400,
            sleep_ms: 100,
            io_memory_mb: 1024,
            io_max_workers: 8,
            worker_bin: None,
            python: None,
            progress: false,
        }
    }
}

/// One batch of the demo.
#[derive(Clone, Debug)]
pub(crate) struct Batch {
    /// What it stands for, e.g. "CPU-bound".
    pub kind: &'static str,
    /// The function that runs it: a built-in, or a Python handler (`py-spin`, `py-sleep`).
    pub function: &'static str,
    /// Each task's payload.
    pub payload: String,
    /// Tasks per mode.
    pub tasks: usize,
    /// Workers' memory size.
    pub memory_mb: u32,
    /// Cap on concurrent workers.
    pub max_workers: u32,
}

impl Batch {
    /// The workers' vCPUs.
    pub(crate) fn vcpus(&self) -> u32 {
        vcpus_for_memory(self.memory_mb)
    }
}

/// How a batch is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// carpool with default flags.
    Carpool,
    /// Lambda's warm sandboxes, one request at a time, billed per request (the fair rival).
    LambdaBilled,
    /// One fresh worker per task (the worst case).
    ColdPerTask,
}

impl Mode {
    /// Its name in the tables.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Mode::Carpool => "carpool",
            Mode::LambdaBilled => "Lambda as it bills",
            Mode::ColdPerTask => "one cold invocation per task",
        }
    }
}

/// The outcome of one mode.
#[derive(Clone, Debug)]
pub(crate) struct ModeReport {
    /// How it ran.
    pub mode: Mode,
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Billed requests: worker invocations for carpool and the worst case, one per task
    /// for Lambda as it bills.
    pub invocations: u64,
    /// Workers (sandboxes) started: each one a cold start.
    pub cold_starts: u64,
    /// From the first submission to the last result.
    pub completion: Duration,
    /// Billed GB-seconds.
    pub billed_gb_s: f64,
    /// The bill in USD.
    pub cost_usd: f64,
    /// The concurrency limit carpool learned for the function (0 in conventional mode).
    pub learned: u32,
}

/// What can stop the demo.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    /// Talking to the in-process coordinator failed.
    #[error(transparent)]
    Client(#[from] carpool_client::Error),
    /// The in-process coordinator could not start, or failed.
    #[error(transparent)]
    Coordinator(#[from] shared::InProcError),
    /// Tasks did not all succeed.
    #[error("{0}")]
    Incomplete(String),
}

impl DemoOptions {
    /// The CPU batch's vCPUs per worker.
    pub(crate) fn vcpus(&self) -> u32 {
        vcpus_for_memory(self.memory_mb)
    }

    /// The CPU batch's concurrent-worker cap actually used.
    pub(crate) fn max_workers(&self) -> u32 {
        self.max_workers
            .unwrap_or_else(|| (cores() / self.vcpus()).max(1))
    }

    /// The batches to run: CPU-bound, then I/O-bound (unless it has no tasks).
    pub(crate) fn batches(&self) -> Vec<Batch> {
        let python = self.python.is_some();
        let mut out = vec![Batch {
            kind: if python {
                "CPU-bound, Python handler"
            } else {
                "CPU-bound"
            },
            function: if python { "py-spin" } else { "spin" },
            payload: self.spin_ms.to_string(),
            tasks: self.tasks,
            memory_mb: self.memory_mb,
            max_workers: self.max_workers(),
        }];
        if self.io_tasks > 0 {
            out.push(Batch {
                kind: if python {
                    "I/O-bound, Python handler"
                } else {
                    "I/O-bound"
                },
                function: if python { "py-sleep" } else { "sleep" },
                payload: self.sleep_ms.to_string(),
                tasks: self.io_tasks,
                memory_mb: self.io_memory_mb,
                max_workers: self.io_max_workers,
            });
        }
        out
    }

    fn config(&self, batch: &Batch, mode: Mode, handlers: Option<&std::path::Path>) -> Config {
        let runtime_functions = match (&self.python, handlers) {
            (Some(python), Some(dir)) => ["spin", "sleep"]
                .iter()
                .map(|f| {
                    // The handlers run in their own directory: a relative path to the Python
                    // would no longer name it there.
                    // Made absolute, not resolved: a venv's python is a link that must stay
                    // one (resolved, it is the base interpreter without the venv's packages).
                    let python = match std::path::absolute(python) {
                        Ok(p) if python.contains('/') => p.display().to_string(),
                        _ => python.clone(),
                    };
                    let cmd = format!(
                        "cd '{}' && exec '{python}' -m awslambdaric carpool_demo.{f}",
                        dir.display()
                    );
                    (format!("py-{f}"), cmd)
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut config = mode_config(mode, self.worker_bin.clone());
        config.functions.runtime = runtime_functions;
        config.fleet.max_workers = batch.max_workers;
        config.fleet.memory_mb = batch.memory_mb;
        config
    }
}

/// The settings that make a local coordinator run as `mode`.
pub(crate) fn mode_config(mode: Mode, worker_bin: Option<PathBuf>) -> Config {
    let mut config = Config::default();
    config.fleet.spawner = SpawnerKind::Local;
    config.local.worker_bin = worker_bin;
    config.local.worker_log = Some("warn".into());
    let fleet = &mut config.fleet;
    match mode {
        Mode::Carpool => {}
        // A sandbox stays warm between requests (its idle time is not billed), so a
        // short gap in the stream of tasks does not cost a cold start.
        Mode::LambdaBilled => {
            fleet.slots = Some(1);
            fleet.keep_alive = Duration::from_secs(2);
            // A sandbox per concurrent request, at once, as Lambda starts them.
            fleet.scale_out = ScaleOut::Eager;
        }
        Mode::ColdPerTask => {
            fleet.slots = Some(1);
            fleet.max_tasks_per_worker = Some(1);
        }
    }
    config
}

/// The bill of a run as `mode`, from its Stats once its workers left: billed GB-s, the
/// requests billed and the USD.
pub(crate) fn bill(mode: Mode, total: &carpool_proto::pb::FunctionStats) -> (f64, u64, f64) {
    use carpool_coordinator::billing::{PRICE_PER_GB_SECOND, PRICE_PER_REQUEST};
    let (gb_ms, requests) = match mode {
        Mode::LambdaBilled => (total.request_billed_gb_ms, total.requests),
        Mode::Carpool | Mode::ColdPerTask => (total.billed_gb_ms, total.workers_started),
    };
    let gb_s = gb_ms / 1000.0;
    (
        gb_s,
        requests,
        gb_s * PRICE_PER_GB_SECOND + requests as f64 * PRICE_PER_REQUEST,
    )
}

/// This machine's cores.
pub(crate) fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Runs every batch in the three modes, carpool first; one triple of reports per batch.
pub(crate) async fn run(opts: &DemoOptions) -> Result<Vec<(Batch, [ModeReport; 3])>, DemoError> {
    let handlers = match &opts.python {
        Some(python) => Some(python_handlers(python)?),
        None => None,
    };
    let dir = handlers.as_ref().map(|d| d.path());
    let mut out = Vec::new();
    for batch in opts.batches() {
        let mut reports = Vec::with_capacity(3);
        for mode in [Mode::Carpool, Mode::LambdaBilled, Mode::ColdPerTask] {
            reports.push(run_mode(mode, opts.config(&batch, mode, dir), &batch, opts).await?);
        }
        if let Ok(three) = <[ModeReport; 3]>::try_from(reports) {
            out.push((batch, three));
        }
    }
    Ok(out)
}

async fn run_mode(
    mode: Mode,
    config: Config,
    batch: &Batch,
    opts: &DemoOptions,
) -> Result<ModeReport, DemoError> {
    shared::with_coordinator(config, |url| async move { drive(mode, &url, batch, opts).await }).await?
}

async fn drive(mode: Mode, url: &str, batch: &Batch, opts: &DemoOptions) -> Result<ModeReport, DemoError> {
    let client = Client::connect(url).await?;
    let bar = if opts.progress {
        let bar = ProgressBar::new(batch.tasks as u64);
        if let Ok(style) = ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {elapsed}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("{} {}", batch.kind, mode.label()));
        bar
    } else {
        ProgressBar::hidden()
    };
    let payload = Bytes::from(batch.payload.clone());
    let inputs = futures::stream::iter((0..batch.tasks).map(move |_| payload.clone()));
    let start = Instant::now();
    let mut results = client.map(batch.function, inputs).await?;
    let mut succeeded = 0;
    let mut failures = Vec::new();
    while let Some(r) = results.next().await {
        let r = r?;
        bar.inc(1);
        match r.result {
            Some(res) if res.state() == TaskState::Succeeded => succeeded += 1,
            Some(res) => failures.push(format!("task {}: {}", res.task_id, res.error)),
            None => failures.push(format!("submission {} rejected: {}", r.seq, r.rejected)),
        }
    }
    let completion = start.elapsed();
    bar.finish_and_clear();
    if !failures.is_empty() {
        return Err(DemoError::Incomplete(format!(
            "{}: {} tasks failed: {}",
            mode.label(),
            failures.len(),
            failures.join("; ")
        )));
    }
    // The bill closes when the last worker has left.
    let stats = shared::settled(&client, Duration::from_secs(15)).await?;
    let total = stats.total.clone().unwrap_or_default();
    let learned = stats
        .functions
        .iter()
        .find(|f| f.function == batch.function)
        .map_or(0, |f| f.slots_learned);
    let (billed_gb_s, invocations, cost_usd) = bill(mode, &total);
    Ok(ModeReport {
        mode,
        succeeded,
        invocations,
        cold_starts: total.workers_started,
        completion,
        billed_gb_s,
        cost_usd,
        learned: if mode == Mode::Carpool { learned } else { 0 },
    })
}

/// The demo's task code as Python Lambda handlers: the event is the payload (milliseconds).
const PYTHON_HANDLERS: &str = r#"import time


def spin(event, context):
    # Burns `event` ms of this thread's CPU time, as the built-in spin does.
    end = time.thread_time() + event / 1000
    while time.thread_time() < end:
        pass
    return {"spun_ms": event}


def sleep(event, context):
    time.sleep(event / 1000)
    return {"slept_ms": event}
"#;

/// A directory with `carpool_demo.py`; checks that `python` has awslambdaric.
fn python_handlers(python: &str) -> Result<tempfile::TempDir, DemoError> {
    let fail = |msg: String| DemoError::Incomplete(format!("--python: {msg}"));
    shared::check_awslambdaric(python).map_err(fail)?;
    let dir = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    std::fs::write(dir.path().join("carpool_demo.py"), PYTHON_HANDLERS).map_err(|e| fail(e.to_string()))?;
    Ok(dir)
}

/// The demo's tables, one per batch.
pub(crate) fn table(reports: &[(Batch, [ModeReport; 3])]) -> String {
    let mut out = format!(
        "carpool demo, default flags; this machine has {} cores\n",
        cores()
    );
    for (batch, modes) in reports {
        out.push_str(&format!(
            "\n{}: {} {} tasks of {} ms each, {} MB workers ({} vCPU{}), at most {} concurrent worker(s)\n",
            batch.kind,
            batch.tasks,
            batch.function,
            batch.payload,
            batch.memory_mb,
            batch.vcpus(),
            if batch.vcpus() == 1 { "" } else { "s" },
            batch.max_workers
        ));
        out.push_str(&format!(
            "{:<30} {:>6} {:>9} {:>6} {:>11} {:>12} {:>15} {:>14}\n",
            "mode",
            "tasks",
            "requests",
            "cold",
            "completion",
            "billed GB-s",
            "USD / 1M tasks",
            "tasks at once"
        ));
        let per_million = |r: &ModeReport| r.cost_usd / batch.tasks.max(1) as f64 * 1e6;
        for r in modes {
            out.push_str(&format!(
                "{:<30} {:>6} {:>9} {:>6} {:>9.2} s {:>12.3} {:>15.2} {:>14}\n",
                r.mode.label(),
                r.succeeded,
                r.invocations,
                r.cold_starts,
                r.completion.as_secs_f64(),
                r.billed_gb_s,
                per_million(r),
                if r.learned > 0 {
                    format!("{} (learned)", r.learned)
                } else {
                    "1".to_owned()
                }
            ));
        }
        let [c, lambda, worst] = modes;
        for (name, theirs) in [
            ("carpool saving vs Lambda", lambda),
            ("... vs the worst case", worst),
        ] {
            out.push_str(&format!(
                "{:<30} {:>6} {:>9} {:>6} {:>10.1}% {:>11.1}% {:>14.1}%\n",
                name,
                "",
                "",
                "",
                saving(c.completion.as_secs_f64(), theirs.completion.as_secs_f64()),
                saving(c.billed_gb_s, theirs.billed_gb_s),
                saving(per_million(c), per_million(theirs)),
            ));
        }
    }
    out
}
