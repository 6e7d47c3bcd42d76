//! Spawners start workers when the pool outgrows the fleet.
//!
//! - [`LocalSpawner`]: child processes of `carpool-worker`, pinned to CPUs, ended with the
//!   coordinator (they also exit by themselves when their stdin, a pipe from the
//!   coordinator, closes, so a coordinator killed with SIGKILL leaves none behind).
//! - [`ExternalSpawner`]: starts nothing; workers started elsewhere connect.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::process::Command;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::state::SpawnRequest;

/// Starts workers. `spawn` must not block: it starts the work and reports back through
/// the hub (`spawned`, `spawn_failed`).
pub trait Spawner: Send + Sync + 'static {
    /// Starts one worker that will say hello with `request.id`.
    fn spawn(&self, request: SpawnRequest, hub: Hub);
}

/// Spawns nothing: the state never asks it to, since `SpawnerKind::External` disables scale-out.
#[derive(Debug, Default)]
pub struct ExternalSpawner;

impl Spawner for ExternalSpawner {
    fn spawn(&self, request: SpawnRequest, hub: Hub) {
        hub.update(|s, now, fx| {
            s.spawn_failed(&request.id, "the external spawner starts no workers", now, fx)
        });
    }
}

/// Starts workers as child processes of this coordinator.
#[derive(Debug)]
pub struct LocalSpawner {
    worker_bin: PathBuf,
    coordinator_url: String,
    memory_mb: u32,
    vcpus: u32,
    slots: Option<u32>,
    timeout: std::time::Duration,
    exec_functions: Vec<(String, String)>,
    log: Option<String>,
    data_dir: Option<PathBuf>,
    token: Option<crate::auth::Secret>,
    tls: Option<(PathBuf, String)>,
    cpus: usize,
    next_cpu: AtomicUsize,
}

impl LocalSpawner {
    /// A spawner whose workers dial `coordinator_url`. Fails if the worker binary is missing.
    pub fn new(config: &Config, coordinator_url: String) -> Result<Self> {
        let worker_bin = match &config.worker_bin {
            Some(path) => path.clone(),
            None => default_worker_bin(),
        };
        if !worker_bin.is_file() {
            return Err(Error::WorkerBinaryMissing(worker_bin.display().to_string()));
        }
        Ok(Self {
            worker_bin,
            coordinator_url,
            memory_mb: config.memory_mb,
            vcpus: config.worker_vcpus(),
            slots: config.slots,
            timeout: config.execution_timeout,
            exec_functions: config.exec_functions.clone(),
            log: config.worker_log.clone(),
            data_dir: config.worker_data_dir.clone(),
            token: config.worker_token.clone(),
            tls: config
                .tls
                .as_ref()
                .map(|t| (t.worker_ca.clone(), t.worker_domain.clone())),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            next_cpu: AtomicUsize::new(0),
        })
    }

    /// The CPUs the next worker is pinned to: its vCPU count (capped at the machine's),
    /// taken round-robin so that workers spread over the cores.
    fn next_cpu_list(&self) -> String {
        let n = (self.vcpus as usize).min(self.cpus).max(1);
        let first = self.next_cpu.fetch_add(n, Ordering::Relaxed);
        (0..n)
            .map(|i| ((first + i) % self.cpus).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn command(&self, request: &SpawnRequest) -> Command {
        let mut cmd = Command::new(&self.worker_bin);
        cmd.arg("--coordinator")
            .arg(&self.coordinator_url)
            .arg("--id")
            .arg(request.id.as_str())
            .arg("--function")
            .arg(request.function.as_ref())
            .arg("--memory-mb")
            .arg(self.memory_mb.to_string())
            .arg("--vcpus")
            .arg(self.vcpus.to_string())
            .arg("--timeout")
            .arg(humantime::format_duration(self.timeout).to_string())
            .arg("--cpus")
            .arg(self.next_cpu_list())
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
        cmd.stdin(Stdio::piped()).kill_on_drop(true);
        cmd
    }
}

/// `carpool-worker` next to the running executable.
pub fn default_worker_bin() -> PathBuf {
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
    fn spawn(&self, request: SpawnRequest, hub: Hub) {
        let mut cmd = self.command(&request);
        let stop = hub.stop_token().clone();
        hub.tracker().clone().spawn(async move {
            let id = request.id;
            let mut child = match cmd.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let reason = format!("could not start the worker process: {e}");
                    hub.update(|s, now, fx| s.spawn_failed(&id, &reason, now, fx));
                    return;
                }
            };
            let pid = child.id().map(|p| format!("pid {p}")).unwrap_or_default();
            info!(worker = %id, %pid, "worker process started");
            hub.update(|s, _, _| s.spawned(&id, pid));
            // Holding the pipe keeps the worker alive; dropping it (or dying) ends it.
            let _stdin = child.stdin.take();
            let status = tokio::select! {
                status = child.wait() => status,
                () = stop.cancelled() => {
                    // The coordinator drained its workers before it cancelled: end what is left.
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let reason = match status {
                Ok(s) if s.success() => "the worker process exited before it connected".to_owned(),
                Ok(s) => format!("the worker process exited with {s} before it connected"),
                Err(ref e) => format!("waiting for the worker process failed: {e}"),
            };
            if !matches!(status, Ok(s) if s.success()) {
                warn!(worker = %id, ?status, "worker process ended abnormally");
            }
            // A no-op for a worker that connected: only a still-starting one is written off.
            hub.update(|s, now, fx| s.process_exited(&id, &reason, now, fx));
        });
    }
}
