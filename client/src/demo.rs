//! `carpool demo`: the same batch of CPU-bound `spin` tasks run twice on local workers,
//! first as carpool (several tasks share each worker) and then as conventional FaaS (one
//! worker invocation per task), with the same cap on concurrent workers; prints what each
//! cost under the Lambda price model.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use carpool_coordinator::{Config, SpawnerKind, config::vcpus_for_memory};
use carpool_proto::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::{Client, TaskState};

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Number of tasks per mode.
    pub tasks: usize,
    /// CPU time each `spin` task burns, in ms.
    pub spin_ms: u64,
    /// Memory size of the workers (vCPUs follow it).
    pub memory_mb: u32,
    /// Cap on concurrent workers; `None` fits the workers' vCPUs to this machine's cores.
    pub max_workers: Option<u32>,
    /// The worker binary; `None` looks next to the running executable.
    pub worker_bin: Option<PathBuf>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// The outcome of one mode.
#[derive(Clone, Debug)]
pub struct ModeReport {
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
}

/// What can stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Talking to the in-process coordinator failed.
    #[error(transparent)]
    Client(#[from] crate::Error),
    /// The coordinator could not start.
    #[error("coordinator: {0}")]
    Coordinator(#[from] carpool_coordinator::Error),
    /// Binding a port failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Tasks did not all succeed.
    #[error("{0}")]
    Incomplete(String),
}

impl DemoOptions {
    /// The worker vCPUs for this memory size.
    pub fn vcpus(&self) -> u32 {
        vcpus_for_memory(self.memory_mb)
    }

    /// The concurrent-worker cap actually used.
    pub fn max_workers(&self) -> u32 {
        self.max_workers
            .unwrap_or_else(|| (cores() / self.vcpus()).max(1))
    }

    fn config(&self, conventional: bool) -> Config {
        Config {
            spawner: SpawnerKind::Local,
            max_workers: self.max_workers(),
            memory_mb: self.memory_mb,
            slots: conventional.then_some(1),
            max_tasks_per_worker: conventional.then_some(1),
            worker_bin: self.worker_bin.clone(),
            worker_log: Some("warn".into()),
            ..Config::default()
        }
    }
}

/// This machine's cores.
pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Runs both modes, carpool first.
pub async fn run(opts: &DemoOptions) -> Result<[ModeReport; 2], DemoError> {
    let carpool = run_mode("carpool", opts.config(false), opts).await?;
    let conventional = run_mode("conventional FaaS", opts.config(true), opts).await?;
    Ok([carpool, conventional])
}

async fn run_mode(mode: &'static str, config: Config, opts: &DemoOptions) -> Result<ModeReport, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(carpool_coordinator::run(listener, config, async {
        let _ = stopped.await;
    }));
    let outcome = drive(mode, &url, opts).await;
    let _ = stop.send(());
    match server.await {
        Ok(result) => result?,
        Err(join) => return Err(DemoError::Incomplete(format!("coordinator task failed: {join}"))),
    }
    outcome
}

async fn drive(mode: &'static str, url: &str, opts: &DemoOptions) -> Result<ModeReport, DemoError> {
    let client = Client::connect(url).await?;
    let bar = if opts.progress {
        let bar = ProgressBar::new(opts.tasks as u64);
        if let Ok(style) = ProgressStyle::with_template("{prefix:>18} [{bar:30}] {pos}/{len} {elapsed}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(mode);
        bar
    } else {
        ProgressBar::hidden()
    };
    let payload = Bytes::from(opts.spin_ms.to_string());
    let inputs = futures::stream::iter((0..opts.tasks).map(move |_| payload.clone()));
    let start = Instant::now();
    let mut results = client.map("spin", inputs).await?;
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
    let deadline = Instant::now() + Duration::from_secs(15);
    let stats = loop {
        let stats = client.stats().await?;
        let total = stats.total.unwrap_or_default();
        if (total.workers_live == 0 && total.workers_starting == 0) || Instant::now() > deadline {
            break total;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(ModeReport {
        mode,
        succeeded,
        invocations: stats.workers_started,
        completion,
        billed_gb_s: stats.billed_gb_ms / 1000.0,
        cost_usd: stats.cost_usd,
    })
}

/// The demo's table.
pub fn table(opts: &DemoOptions, reports: &[ModeReport; 2]) -> String {
    let mut out = format!(
        "carpool demo: {} spin tasks of {} ms CPU each, {} MB workers ({} vCPUs), at most {} concurrent worker(s); this machine has {} cores\n\n",
        opts.tasks,
        opts.spin_ms,
        opts.memory_mb,
        opts.vcpus(),
        opts.max_workers(),
        cores()
    );
    out.push_str(&format!(
        "{:<18} {:>6} {:>12} {:>12} {:>12} {:>16}\n",
        "mode", "tasks", "invocations", "completion", "billed GB-s", "USD / 1M tasks"
    ));
    let per_million = |r: &ModeReport| r.cost_usd / opts.tasks.max(1) as f64 * 1e6;
    for r in reports {
        out.push_str(&format!(
            "{:<18} {:>6} {:>12} {:>10.2} s {:>12.3} {:>16.2}\n",
            r.mode,
            r.succeeded,
            r.invocations,
            r.completion.as_secs_f64(),
            r.billed_gb_s,
            per_million(r)
        ));
    }
    let [c, f] = reports;
    let saving = |ours: f64, theirs: f64| {
        if theirs > 0.0 {
            100.0 * (1.0 - ours / theirs)
        } else {
            0.0
        }
    };
    out.push_str(&format!(
        "{:<18} {:>6} {:>11.1}% {:>11.1}% {:>11.1}% {:>15.1}%\n",
        "carpool saving",
        "",
        saving(c.invocations as f64, f.invocations as f64),
        saving(c.completion.as_secs_f64(), f.completion.as_secs_f64()),
        saving(c.billed_gb_s, f.billed_gb_s),
        saving(per_million(c), per_million(f)),
    ));
    out
}
