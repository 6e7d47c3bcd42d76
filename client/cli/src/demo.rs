//! `carpool demo`: two batches run twice each on local workers with default flags, first as
//! carpool (several tasks share each worker, as many as its measured resources allow) and
//! then as conventional FaaS (one worker invocation per task), with the same cap on
//! concurrent workers; prints what each cost under the Lambda price model.
//!
//! - CPU-bound: `spin` tasks (a vCPU each), where sharing fills the vCPUs a single-threaded
//!   function leaves idle.
//! - I/O-bound: `sleep` tasks (an API call, an S3 read), where one worker runs many more
//!   tasks than it has vCPUs: the adaptive limit finds how many.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use carpool_coordinator::{Config, SpawnerKind, config::vcpus_for_memory};
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

/// The outcome of one mode.
#[derive(Clone, Debug)]
pub(crate) struct ModeReport {
    /// "carpool" or "conventional FaaS".
    pub mode: &'static str,
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Worker invocations (each one billed).
    pub invocations: u64,
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

    fn config(&self, batch: &Batch, conventional: bool, handlers: Option<&std::path::Path>) -> Config {
        let runtime_functions = match (&self.python, handlers) {
            (Some(python), Some(dir)) => ["spin", "sleep"]
                .iter()
                .map(|f| {
                    let cmd = format!(
                        "cd '{}' && exec '{python}' -m awslambdaric carpool_demo.{f}",
                        dir.display()
                    );
                    (format!("py-{f}"), cmd)
                })
                .collect(),
            _ => Vec::new(),
        };
        Config {
            runtime_functions,
            spawner: SpawnerKind::Local,
            max_workers: batch.max_workers,
            memory_mb: batch.memory_mb,
            slots: conventional.then_some(1),
            max_tasks_per_worker: conventional.then_some(1),
            worker_bin: self.worker_bin.clone(),
            worker_log: Some("warn".into()),
            ..Config::default()
        }
    }
}

/// This machine's cores.
pub(crate) fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Runs every batch in both modes, carpool first; one pair of reports per batch.
pub(crate) async fn run(opts: &DemoOptions) -> Result<Vec<(Batch, [ModeReport; 2])>, DemoError> {
    let handlers = match &opts.python {
        Some(python) => Some(python_handlers(python)?),
        None => None,
    };
    let dir = handlers.as_ref().map(|d| d.path());
    let mut out = Vec::new();
    for batch in opts.batches() {
        let carpool = run_mode("carpool", opts.config(&batch, false, dir), &batch, opts).await?;
        let conventional =
            run_mode("conventional FaaS", opts.config(&batch, true, dir), &batch, opts).await?;
        out.push((batch, [carpool, conventional]));
    }
    Ok(out)
}

async fn run_mode(
    mode: &'static str,
    config: Config,
    batch: &Batch,
    opts: &DemoOptions,
) -> Result<ModeReport, DemoError> {
    shared::with_coordinator(config, |url| async move { drive(mode, &url, batch, opts).await }).await?
}

async fn drive(
    mode: &'static str,
    url: &str,
    batch: &Batch,
    opts: &DemoOptions,
) -> Result<ModeReport, DemoError> {
    let client = Client::connect(url).await?;
    let bar = if opts.progress {
        let bar = ProgressBar::new(batch.tasks as u64);
        if let Ok(style) = ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {elapsed}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("{} {mode}", batch.kind));
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
            "{mode}: {} tasks failed: {}",
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
    Ok(ModeReport {
        mode,
        succeeded,
        invocations: total.workers_started,
        completion,
        billed_gb_s: total.billed_gb_ms / 1000.0,
        cost_usd: total.cost_usd,
        learned: if mode == "carpool" { learned } else { 0 },
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
pub(crate) fn table(reports: &[(Batch, [ModeReport; 2])]) -> String {
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
            "{:<18} {:>6} {:>12} {:>12} {:>12} {:>16} {:>14}\n",
            "mode", "tasks", "invocations", "completion", "billed GB-s", "USD / 1M tasks", "tasks at once"
        ));
        let per_million = |r: &ModeReport| r.cost_usd / batch.tasks.max(1) as f64 * 1e6;
        for r in modes {
            out.push_str(&format!(
                "{:<18} {:>6} {:>12} {:>10.2} s {:>12.3} {:>16.2} {:>14}\n",
                r.mode,
                r.succeeded,
                r.invocations,
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
        let [c, f] = modes;
        out.push_str(&format!(
            "{:<18} {:>6} {:>11.1}% {:>11.1}% {:>11.1}% {:>15.1}%\n",
            "carpool saving",
            "",
            saving(c.invocations as f64, f.invocations as f64),
            saving(c.completion.as_secs_f64(), f.completion.as_secs_f64()),
            saving(c.billed_gb_s, f.billed_gb_s),
            saving(per_million(c), per_million(f)),
        ));
    }
    out
}
