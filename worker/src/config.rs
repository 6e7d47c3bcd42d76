//! A worker's settings, built from the binary's flags or directly.

use std::time::Duration;

use carpool_proto::{Secret, TlsOptions};
use tokio_util::sync::CancellationToken;

use crate::sampler::Measure;

/// Everything a session needs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The coordinator's URL, e.g. `http://127.0.0.1:50051`; or several, comma-separated
    /// (an active coordinator and its standbys), dialled in turn until one takes the session.
    pub coordinator_url: String,
    /// This worker's id (the spawner's, or any unique name).
    pub id: String,
    /// The function this worker serves.
    pub function: String,
    /// vCPUs of the instance (what it tells the coordinator; its limit starts there).
    pub vcpus: u32,
    /// The share of CPU time its CPU figure is a fraction of; `None`: `vcpus`. On Lambda,
    /// what the memory size buys (1769 MB per vCPU), whatever cores the micro-VM shows.
    pub vcpu_allotment: Option<f64>,
    /// Memory size in MB (billing size, and the memory limit outside a cgroup).
    pub memory_mb: u32,
    /// Pins its concurrency limit; `None` lets the coordinator adapt it.
    pub slots: Option<u32>,
    /// Caps its adaptive limit below the coordinator's `--max-slots`.
    pub max_slots: Option<u32>,
    /// How long this instance may live; the session ends when it passes.
    pub timeout: Duration,
    /// Where it runs (shown in ListWorkers).
    pub instance: String,
    /// How it measures itself (its process tree or its cgroup; never the whole machine).
    pub measure: Measure,
    /// How long to keep trying to reconnect after the stream breaks before giving up.
    pub reconnect_for: Duration,
    /// TLS settings for an `https://` coordinator URL.
    pub tls: TlsOptions,
    /// The token the coordinator's Workers service requires, if any.
    pub token: Option<Secret>,
    /// Cancel to end the session early (SIGTERM): the stream is closed cleanly, so the
    /// coordinator gives this worker's running tasks back to the pool at once.
    pub stop: CancellationToken,
}

impl WorkerConfig {
    /// A config for `function` at `coordinator_url` with defaults for the rest: a generated
    /// id, this machine's CPUs, 2048 MB, 15 minutes.
    pub fn new(coordinator_url: impl Into<String>, function: impl Into<String>) -> Self {
        let pid = std::process::id();
        Self {
            coordinator_url: coordinator_url.into(),
            id: format!("worker-{pid}-{}", crate::session_suffix()),
            function: function.into(),
            vcpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_mb: 2048,
            vcpu_allotment: None,
            slots: None,
            max_slots: None,
            timeout: Duration::from_secs(900),
            instance: format!("pid {pid}"),
            measure: Measure::Auto,
            reconnect_for: Duration::from_secs(60),
            tls: TlsOptions::default(),
            token: None,
            stop: CancellationToken::new(),
        }
    }

    /// vCPUs its CPU figure is a fraction of: what it is allotted (`vcpu_allotment`, else
    /// `vcpus`), but never more than the CPUs it can actually run on (its affinity mask and
    /// its cgroup's quota, as `available_parallelism` reads them). A worker of 6 vCPUs
    /// pinned to 2 cores can never show more than a third of 6 busy, so judging it against 6
    /// would never see CPU pressure.
    pub fn allotment(&self) -> f64 {
        let allotted = self.vcpu_allotment.unwrap_or(f64::from(self.vcpus.max(1)));
        let runnable = std::thread::available_parallelism().map_or(allotted, |n| n.get() as f64);
        allotted.min(runnable)
    }
}
