//! Spawners start workers when the pool outgrows the fleet.
//!
//! - [`LocalSpawner`]: child processes of `carpool-worker`, pinned to CPUs, ended with the
//!   coordinator (they also exit by themselves when their stdin, a pipe from the
//!   coordinator, closes, so a coordinator killed with SIGKILL leaves none behind).
//! - [`ExternalSpawner`]: starts nothing; workers started elsewhere connect.
//! - [`LambdaSpawner`] (in `lambda`): one asynchronous invocation per worker, of the
//!   function's version or alias for the worker's memory size (`versions`).
//!
//! A spawner knows nothing of the coordinator's state: it reports what became of each spawn
//! ([`SpawnOutcome`]) on a channel the driver consumes, so a spawn's life cycle (asked for,
//! started or failed, exited) reads in one place, and the driver depends on spawners, never
//! the other way round.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::{SpawnOutcome, SpawnRequest};

mod lambda;
mod local;
mod versions;

pub(crate) use lambda::LambdaSpawner;
pub(crate) use local::LocalSpawner;

/// Reports queued from spawners to the driver before a spawner waits: every spawn makes at
/// most two (started or failed, then exited), and spawns are bounded by the fleet caps.
pub(crate) const REPORTS: usize = 1024;

/// Starts workers. `spawn` must not block: it starts the work in a task of its own and
/// reports the outcome.
pub(crate) trait Spawner: Send + Sync + 'static {
    /// Starts one worker that will say hello with `request.id`.
    fn spawn(&self, request: SpawnRequest);
}

/// What every spawner needs from the coordinator: where to report, where to run its
/// tasks, and when to stop.
#[derive(Clone, Debug)]
pub(crate) struct SpawnContext {
    /// Where outcomes go (the driver applies them to the state).
    pub(crate) reports: mpsc::Sender<SpawnOutcome>,
    /// Spawn tasks run here, so that shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the coordinator stops: ends local workers and pending invokes.
    pub(crate) stop: CancellationToken,
}

impl SpawnContext {
    /// Reports `outcome`, waiting while the driver is behind (the driver only stops reading
    /// once the coordinator stops, and then the report does not matter).
    pub(crate) async fn report(&self, outcome: SpawnOutcome) {
        let _ = self.reports.send(outcome).await;
    }
}

/// Spawns nothing: the state never asks it to, since `SpawnerKind::External` disables scale-out.
#[derive(Debug)]
pub(crate) struct ExternalSpawner {
    /// Where the refusal of an unexpected spawn goes.
    context: SpawnContext,
}

impl ExternalSpawner {
    /// A spawner that refuses every spawn.
    pub(crate) fn new(context: SpawnContext) -> Self {
        Self { context }
    }
}

impl Spawner for ExternalSpawner {
    fn spawn(&self, request: SpawnRequest) {
        let context = self.context.clone();
        self.context.tracker.spawn(async move {
            let reason = "the external spawner starts no workers".to_owned();
            context
                .report(SpawnOutcome::Failed {
                    id: request.id,
                    reason,
                })
                .await;
        });
    }
}
