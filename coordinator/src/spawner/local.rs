//! [`LocalSpawner`]: workers as child processes of `carpool-worker`, pinned to CPUs, ended
//! with the coordinator.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::process::Command;
use tracing::{info, warn};

use super::{SpawnContext, Spawner};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::{SpawnOutcome, SpawnRequest};

/// Starts workers as child processes of this coordinator.
#[derive(Debug)]
pub(crate) struct LocalSpawner {
    /// The `carpool-worker` binary (or `--worker-bin`).
    worker_bin: PathBuf,
    /// The URL workers dial (loopback, https with TLS).
    coordinator_url: String,
    /// The fleet's settings: each worker's vCPUs follow the memory size its spawn asks for
    /// (its billing size), unless `--vcpus`.
    fleet: carpool_core::config::Fleet,
    /// `--slots`, passed on so that the worker says it is pinned.
    slots: Option<u32>,
    /// Each worker's session timeout.
    timeout: std::time::Duration,
    /// `--exec` functions: the one a worker serves is passed as its command.
    exec_functions: Vec<(String, String)>,
    /// `--runtime` functions: the one a worker serves is passed as its runtime command.
    runtime_functions: Vec<(String, String)>,
    /// `RUST_LOG` for workers (tests quiet them), if set.
    log: Option<String>,
    /// `--log-format` for workers (the coordinator's), if set.
    log_format: Option<String>,
    /// `--worker-data-dir`, the only directory `thumbnail` may use.
    data_dir: Option<PathBuf>,
    /// The worker token, handed over in the environment.
    token: Option<crate::auth::Secret>,
    /// With TLS: the CA file and the name workers verify.
    tls: Option<(PathBuf, String)>,
    /// CPUs on this machine, to pin workers round-robin.
    cpus: usize,
    /// Where the next worker's CPU list starts.
    next_cpu: AtomicUsize,
    /// Where outcomes are reported.
    context: SpawnContext,
}

impl LocalSpawner {
    /// A spawner whose workers dial `coordinator_url`. Fails if the worker binary is missing.
    pub(crate) fn new(config: &Config, coordinator_url: String, context: SpawnContext) -> Result<Self> {
        let worker_bin = match &config.local.worker_bin {
            Some(path) => path.clone(),
            None => default_worker_bin(),
        };
        if !worker_bin.is_file() {
            return Err(Error::WorkerBinaryMissing(worker_bin.display().to_string()));
        }
        Ok(Self {
            worker_bin,
            coordinator_url,
            fleet: config.fleet.clone(),
            slots: config.fleet.slots,
            timeout: config.fleet.execution_timeout,
            exec_functions: config.functions.exec.clone(),
            runtime_functions: config.functions.runtime.clone(),
            log: config.local.worker_log.clone(),
            log_format: config.local.worker_log_format.clone(),
            data_dir: config.local.worker_data_dir.clone(),
            token: config.listen.worker_token.clone(),
            tls: config
                .listen
                .tls
                .as_ref()
                .map(|t| (t.worker_ca.clone(), t.worker_domain.clone())),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            next_cpu: AtomicUsize::new(0),
            context,
        })
    }

    /// The CPUs the next worker is pinned to: its vCPU count (capped at the machine's),
    /// taken round-robin so that workers spread over the cores.
    fn next_cpu_list(&self, vcpus: u32) -> String {
        let n = (vcpus as usize).min(self.cpus).max(1);
        let first = self.next_cpu.fetch_add(n, Ordering::Relaxed);
        (0..n)
            .map(|i| ((first + i) % self.cpus).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn command(&self, request: &SpawnRequest) -> Command {
        let vcpus = self.fleet.vcpus_at(request.memory_mb);
        let mut cmd = Command::new(&self.worker_bin);
        cmd.arg("--coordinator")
            .arg(&self.coordinator_url)
            .arg("--id")
            .arg(request.id.as_str())
            .arg("--function")
            .arg(request.function.as_ref())
            .arg("--memory-mb")
            .arg(request.memory_mb.to_string())
            .arg("--vcpus")
            .arg(vcpus.to_string())
            .arg("--timeout")
            .arg(humantime::format_duration(self.timeout).to_string())
            .arg("--cpus")
            .arg(self.next_cpu_list(vcpus))
            .arg("--exit-with-stdin");
        if let Some(slots) = self.slots {
            cmd.arg("--slots").arg(slots.to_string());
        }
        if let Some((_, exec)) = self
            .exec_functions
            .iter()
            .find(|(n, _)| n == request.function.as_ref())
        {
            cmd.arg("--exec").arg(exec);
        }
        if let Some((_, runtime)) = self
            .runtime_functions
            .iter()
            .find(|(n, _)| n == request.function.as_ref())
        {
            cmd.arg("--runtime").arg(runtime);
        }
        if let Some(dir) = &self.data_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        if let Some((ca, domain)) = &self.tls {
            cmd.arg("--tls-ca").arg(ca).arg("--tls-domain").arg(domain);
        }
        if let Some(token) = &self.token {
            // Through the environment, not argv, which any local user can read.
            cmd.env("CARPOOL_WORKER_TOKEN", token.expose());
        }
        if let Some(filter) = &self.log {
            cmd.env("RUST_LOG", filter);
        }
        if let Some(format) = &self.log_format {
            cmd.env("CARPOOL_LOG_FORMAT", format);
        }
        // The coordinator's own `CARPOOL_EXEC` and `CARPOOL_RUNTIME` are NAME=COMMAND lists,
        // not a worker's command: a worker gets its function's command as a flag, or none.
        cmd.env_remove("CARPOOL_EXEC").env_remove("CARPOOL_RUNTIME");
        cmd.stdin(Stdio::piped()).kill_on_drop(true);
        cmd
    }
}

/// `carpool-worker` next to the running executable.
fn default_worker_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    // Test executables live one level down, in `deps/`.
    let candidates = [dir.join("carpool-worker"), dir.join("../carpool-worker")];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone())
}

impl Spawner for LocalSpawner {
    fn spawn(&self, request: SpawnRequest) {
        let mut cmd = self.command(&request);
        let context = self.context.clone();
        let stop = context.stop.clone();
        self.context.tracker.spawn(async move {
            let id = request.id;
            let mut child = match cmd.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let reason = format!("could not start the worker process: {e}");
                    context.report(SpawnOutcome::Failed { id, reason }).await;
                    return;
                }
            };
            let pid = child.id().map(|p| format!("pid {p}")).unwrap_or_default();
            info!(worker = %id, %pid, "worker process started");
            let started = SpawnOutcome::Started {
                id: id.clone(),
                instance: pid,
            };
            context.report(started).await;
            // Holding the pipe keeps the worker alive; dropping it (or dying) ends it.
            let _stdin = child.stdin.take();
            let mut ended_by_stop = false;
            let status = tokio::select! {
                status = child.wait() => status,
                () = stop.cancelled() => {
                    // The coordinator drained its workers before it cancelled: end what is left.
                    ended_by_stop = true;
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let reason = match status {
                Ok(s) if s.success() => "the worker process exited before it connected".to_owned(),
                Ok(s) => format!("the worker process exited with {s} before it connected"),
                Err(ref e) => format!("waiting for the worker process failed: {e}"),
            };
            if ended_by_stop {
                // Killed here, at the coordinator's own stop: expected, not a fault.
                info!(worker = %id, ?status, "worker process ended at the coordinator's stop");
            } else if !matches!(status, Ok(s) if s.success()) {
                warn!(worker = %id, ?status, "worker process ended abnormally");
            }
            // For a worker that connected, the end of its session; for one still starting, a
            // failed spawn.
            context.report(SpawnOutcome::Exited { id, reason }).await;
        });
    }
}
