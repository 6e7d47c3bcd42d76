//! The shared handle around the scheduling state: takes the lock for one event, then
//! carries out the spawns and timers the event asked for, outside the lock.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::journal::Journal;
use crate::spawner::Spawner;
use crate::state::{Effects, State};

/// A cheap-to-clone handle on the coordinator's state.
#[derive(Clone)]
pub struct Hub(Arc<Inner>);

struct Inner {
    state: Mutex<State>,
    spawner: Arc<dyn Spawner>,
    config: Arc<Config>,
    /// Timers and spawner tasks, waited for at shutdown.
    tracker: TaskTracker,
    /// Cancelled when the coordinator stops: ends timers and kills local workers.
    stop: CancellationToken,
    /// The journal, with `--state-dir`.
    journal: Option<Journal>,
    /// Woken whenever a worker stream ends (shutdown waits on it for the fleet to drain).
    disconnected: Notify,
}

impl Hub {
    /// A hub over fresh state; with a journal, results are written to it.
    pub fn new(
        config: Arc<Config>,
        spawner: Arc<dyn Spawner>,
        stop: CancellationToken,
        journal: Option<Journal>,
    ) -> Self {
        let mut state = State::new(config.clone(), Instant::now());
        if let Some(j) = &journal {
            state.set_journal(j.clone());
        }
        Self(Arc::new(Inner {
            state: Mutex::new(state),
            journal,
            spawner,
            config,
            tracker: TaskTracker::new(),
            stop,
            disconnected: Notify::new(),
        }))
    }

    /// The journal, when the coordinator has a state directory.
    pub fn journal(&self) -> Option<&Journal> {
        self.0.journal.as_ref()
    }

    /// The configuration the coordinator runs with.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// Cancelled when the coordinator stops.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.0.stop
    }

    /// Tracks background tasks (spawned workers, timers) so shutdown can wait for them.
    pub fn tracker(&self) -> &TaskTracker {
        &self.0.tracker
    }

    /// Runs one event against the state under the lock (no `.await` inside), then
    /// carries out its effects.
    pub fn update<R>(&self, event: impl FnOnce(&mut State, Instant, &mut Effects) -> R) -> R {
        let mut fx = Effects::default();
        let out = {
            let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
            event(&mut state, Instant::now(), &mut fx)
        };
        self.apply(fx);
        out
    }

    /// Reads the state under the lock.
    pub fn read<R>(&self, f: impl FnOnce(&State, Instant) -> R) -> R {
        let state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&state, Instant::now())
    }

    /// Starts the liveness sweep: every sample interval, workers silent past their lease or
    /// detached past the reconnect grace are written off.
    pub fn start_sweeper(&self) {
        let hub = self.clone();
        let every = self
            .0
            .config
            .sample_interval
            .max(std::time::Duration::from_millis(10));
        self.0.tracker.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => hub.update(|s, now, fx| s.sweep(now, fx)),
                    () = hub.0.stop.cancelled() => break,
                }
            }
        });
    }

    /// Called after a worker stream has been cleaned up.
    pub fn notify_disconnect(&self) {
        self.0.disconnected.notify_waiters();
    }

    /// Tells every worker to finish and leave, and waits until all have (or `limit` passes).
    /// Returns how many were still connected at the end.
    pub async fn drain(&self, limit: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        self.update(|s, _, _| s.drain());
        loop {
            let woken = self.0.disconnected.notified();
            let live = self.read(|s, _| s.live_workers());
            if live == 0 || tokio::time::timeout_at(deadline, woken).await.is_err() {
                return self.read(|s, _| s.live_workers());
            }
        }
    }

    fn apply(&self, fx: Effects) {
        for request in fx.spawns {
            self.0.spawner.spawn(request, self.clone());
        }
        for (delay, timer) in fx.timers {
            let hub = self.clone();
            self.0.tracker.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(delay) => hub.update(|s, now, fx| s.on_timer(timer, now, fx)),
                    () = hub.0.stop.cancelled() => {}
                }
            });
        }
    }
}
