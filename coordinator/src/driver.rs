//! The driver around the scheduling state: it takes the lock for one event, then carries
//! out what the event returned (messages to workers and clients, journal writes, spawns,
//! timers) after the lock is released. It is the only owner of the journal (a submission
//! goes through it one way: taken by the state, written, acknowledged) and the consumer of
//! what spawners report.
//!
//! Every channel it sends on is bounded, and a full one is a decision, not growth: a worker
//! whose stream queue is full has stopped reading and is written off; a client's result
//! channel is sized so that it cannot fill (see the services). A panic while the state's
//! lock is held ends the process (exit code 70): the state may be half-updated, and the
//! journal, not a guess, is what makes a restart safe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use carpool_proto::pb;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;
use tracing::{error, warn};

use crate::config::Config;
use crate::dashboard::Recorder;
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::spawner::Spawner;
use crate::state::{
    Conn, Effects, Event, Outbound, Reply, SpawnOutcome, State, Submission, Submitted, TaskId, Waiter,
    WaiterId,
};

/// Messages queued per worker stream before the worker counts as not reading.
pub(crate) const WORKER_QUEUE: usize = 1024;

/// What a waiting client receives: its tag and the result.
#[derive(Clone, Debug)]
pub(crate) struct Completion {
    /// The waiter's tag (a Map call's `seq`, a Watch's task id).
    pub(crate) tag: u64,
    /// The final result, or why it could not be read (one evicted from memory whose read
    /// from the journal failed).
    pub(crate) result: std::result::Result<Arc<pb::TaskResult>, Status>,
}

/// The sending side of one worker stream.
#[derive(Debug)]
pub(crate) struct Link {
    /// Messages, in order.
    pub(crate) messages: mpsc::Sender<pb::CoordinatorMessage>,
    /// The status the stream ends with, after its messages.
    pub(crate) end: oneshot::Sender<Status>,
}

/// Where the state's messages go: the link behind each connection, the channel behind each
/// waiter.
#[derive(Debug, Default)]
struct Routes {
    /// Each open worker stream, by the connection number the state gave it.
    links: HashMap<Conn, Link>,
    /// Each waiting client call, by its handle.
    waiters: HashMap<WaiterId, mpsc::Sender<Completion>>,
}

/// A registered waiter; dropping it unregisters the channel.
#[derive(Debug)]
pub(crate) struct WaiterGuard {
    /// Whose routes to leave.
    driver: Driver,
    /// The waiter's handle, to pass to the state.
    pub(crate) id: WaiterId,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.driver.routes().waiters.remove(&self.id);
    }
}

/// A submission taken by the state, on its way to being acknowledged.
pub(crate) enum Accepting {
    /// Acknowledged: in its pool (no journal), or its key names a task already taken.
    Done(TaskId),
    /// Its record is being written; resolves once it is acknowledged (or refused).
    Writing(std::pin::Pin<Box<dyn std::future::Future<Output = Result<TaskId>> + Send>>),
}

/// A cheap-to-clone handle that drives the coordinator's state.
#[derive(Clone)]
pub(crate) struct Driver(Arc<Inner>);

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Driver")
    }
}

struct Inner {
    /// The scheduling state, locked for one event at a time.
    state: Mutex<State>,
    /// Where the state's messages go; locked before the state's lock is let go, so that
    /// messages leave in the order of their events.
    routes: Mutex<Routes>,
    /// The next waiter handle.
    next_waiter: AtomicU64,
    /// Starts the workers the state asks for.
    spawner: Arc<dyn Spawner>,
    /// The settings.
    config: Arc<Config>,
    /// Timers and spawner tasks, waited for at shutdown.
    tracker: TaskTracker,
    /// Cancelled when the coordinator stops: ends timers and kills local workers.
    stop: CancellationToken,
    /// The journal, with `--state-dir`.
    journal: Option<Journal>,
    /// Woken whenever a worker stream ends (shutdown waits on it for the fleet to drain).
    disconnected: Notify,
    /// The outcome of each submission's record write while it is in flight, for repeats of
    /// its idempotency key to wait on: `None` until written, then `Ok` or the write's error.
    writes: Mutex<HashMap<TaskId, watch::Sender<WriteOutcome>>>,
    /// What `/metrics` exports; the state's observations are recorded here.
    metrics: Arc<Metrics>,
    /// What the dashboard shows of the observations (times per function, failures).
    recorder: Arc<Recorder>,
}

/// A record write's outcome as its key's repeats see it: `None` while in flight.
type WriteOutcome = Option<std::result::Result<(), String>>;

/// Takes a lock; a poisoned one ends the process (see the module's notes).
fn lock_or_die<'a, T>(m: &'a Mutex<T>, what: &str) -> MutexGuard<'a, T> {
    m.lock().unwrap_or_else(|_: PoisonError<_>| {
        error!(what, "a panic left the coordinator's {what} half-updated; exiting so that a restart recovers from the journal");
        std::process::exit(70)
    })
}

impl Driver {
    /// A driver over fresh state. With a journal, the state's writes go to it. What the
    /// spawner reports arrives on `reports`, which the driver consumes until `stop`.
    pub(crate) fn new(
        config: Arc<Config>,
        spawner: Arc<dyn Spawner>,
        reports: mpsc::Receiver<SpawnOutcome>,
        tracker: TaskTracker,
        stop: CancellationToken,
        journal: Option<Journal>,
    ) -> Self {
        let state = State::new(Arc::new(config.core()), Instant::now());
        let metrics = Arc::new(Metrics::new(config.fleet.spawner));
        let driver = Self(Arc::new(Inner {
            state: Mutex::new(state),
            routes: Mutex::new(Routes::default()),
            next_waiter: AtomicU64::new(1),
            journal,
            spawner,
            config,
            tracker,
            stop,
            disconnected: Notify::new(),
            writes: Mutex::new(HashMap::new()),
            metrics,
            recorder: Arc::new(Recorder::default()),
        }));
        driver.consume(reports);
        driver
    }

    /// Applies what spawners report, in order, until the coordinator stops.
    fn consume(&self, mut reports: mpsc::Receiver<SpawnOutcome>) {
        let driver = self.clone();
        self.0.tracker.spawn(async move {
            loop {
                tokio::select! {
                    report = reports.recv() => match report {
                        Some(outcome) => driver.apply(Event::Spawn(outcome)),
                        None => break,
                    },
                    () = driver.0.stop.cancelled() => break,
                }
            }
        });
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        lock_or_die(&self.0.routes, "routes")
    }

    /// Takes a submission (stamped with the time now). With a journal its record is written
    /// before it is acknowledged: the returned write resolves once it is, and many of them
    /// share one commit.
    pub(crate) fn submit(&self, mut sub: Submission, waiter: Option<Waiter>) -> Result<Accepting> {
        sub.submitted_unix_ms = carpool_proto::unix_ms();
        // The write's outcome is registered (or looked up) under the state's lock, so a
        // repeat of the key always finds the first write it must wait for.
        let (submitted, first_write) = self.update(|s, now, effects| {
            let submitted = s
                .handle(
                    now,
                    Event::Submit {
                        submission: sub,
                        waiter,
                    },
                    effects,
                )
                .and_then(Reply::submitted)?;
            let mut writes = lock_or_die(&self.0.writes, "record writes");
            let first_write = match &submitted {
                Submitted::Write(id, _) => {
                    writes.insert(*id, watch::channel(None).0);
                    None
                }
                Submitted::Pending(id) => writes.get(id).map(watch::Sender::subscribe),
                Submitted::Done(_) => None,
            };
            Ok::<_, Error>((submitted, first_write))
        })?;
        let (id, record) = match submitted {
            Submitted::Done(id) => return Ok(Accepting::Done(id)),
            Submitted::Pending(id) => {
                let Some(mut outcome) = first_write else {
                    // Its write ended between the two looks: it is in the state now.
                    return Ok(Accepting::Done(id));
                };
                return Ok(Accepting::Writing(Box::pin(async move {
                    let done = outcome.wait_for(Option::is_some).await;
                    match done.as_deref() {
                        Ok(Some(Ok(()))) => Ok(id),
                        Ok(Some(Err(why))) => Err(Error::Journal(why.clone())),
                        _ => Err(carpool_core::Error::ShuttingDown.into()),
                    }
                })));
            }
            Submitted::Write(id, record) => (id, record),
        };
        let Some(journal) = self.0.journal.clone() else {
            // The state asks for a write only when it was built with a journal.
            self.apply(Event::Accepted(id));
            self.written(id, Ok(()));
            return Ok(Accepting::Done(id));
        };
        let driver = self.clone();
        Ok(Accepting::Writing(Box::pin(async move {
            match journal.accept(id, *record).await {
                Ok(()) => {
                    driver.apply(Event::Accepted(id));
                    driver.written(id, Ok(()));
                    Ok(id)
                }
                Err(e) => {
                    let why = e.to_string();
                    driver.apply(Event::NotAccepted { id, why: why.clone() });
                    driver.written(id, Err(why));
                    Err(e)
                }
            }
        })))
    }

    /// Task `id`'s record write ended: repeats of its key that wait on it learn the outcome.
    fn written(&self, id: TaskId, outcome: std::result::Result<(), String>) {
        if let Some(tx) = lock_or_die(&self.0.writes, "record writes").remove(&id) {
            tx.send_replace(Some(outcome));
        }
    }

    /// [`Driver::submit`], waited for.
    pub(crate) async fn submit_and_wait(&self, sub: Submission, waiter: Option<Waiter>) -> Result<TaskId> {
        match self.submit(sub, waiter)? {
            Accepting::Done(id) => Ok(id),
            Accepting::Writing(write) => write.await,
        }
    }

    /// The result of finished task `id`, evicted from memory, read back from the journal.
    pub(crate) async fn evicted_result(&self, id: TaskId) -> Result<pb::TaskResult> {
        match &self.0.journal {
            Some(j) => j.result(id).await,
            None => Err(carpool_core::Error::UnknownTask(id).into()),
        }
    }

    /// Writes what the journal has queued and closes it (at shutdown, after the drain).
    pub(crate) async fn close_journal(&self) {
        if let Some(j) = &self.0.journal {
            j.close().await;
        }
    }

    /// Tracks background tasks (spawns, timers) so shutdown can wait for them.
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.0.tracker
    }

    /// A channel for a client that waits for up to `capacity` results (sized so it cannot
    /// fill: a Run waits for one, a Watch for its ids, a Map for its results in flight).
    pub(crate) fn waiter(&self, capacity: usize) -> (WaiterGuard, mpsc::Receiver<Completion>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = WaiterId(self.0.next_waiter.fetch_add(1, Ordering::Relaxed));
        self.routes().waiters.insert(id, tx);
        (
            WaiterGuard {
                driver: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Applies one event to the state under the lock (no `.await` inside), then carries out
    /// its effects; returns the state's reply, or its refusal (nothing changed then).
    pub(crate) fn handle(&self, event: Event) -> Result<Reply> {
        self.update(|s, now, effects| s.handle(now, event, effects))
            .map_err(Error::from)
    }

    /// Resolves once every journal write queued so far is durable (at once without a
    /// journal); an error if it never will be (the writes fail or the lease is lost).
    pub(crate) async fn durable(&self) -> std::result::Result<(), String> {
        match &self.0.journal {
            None => Ok(()),
            Some(j) => j
                .barrier()
                .await
                .map_err(|_| "its writes are failing or its lease was lost".to_owned()),
        }
    }

    /// [`Driver::handle`] for an event whose reply is only ever `Done`: one the state
    /// cannot refuse (a refusal would be a defect, logged).
    pub(crate) fn apply(&self, event: Event) {
        if let Err(e) = self.handle(event) {
            warn!(error = %e, "an event the state should have taken was refused");
        }
    }

    /// Runs `event` against the state under the lock (no `.await` inside), then carries
    /// out its effects.
    fn update<R>(&self, event: impl FnOnce(&mut State, Instant, &mut Effects) -> R) -> R {
        self.update_linked(None, |s, now, effects| (event(s, now, effects), None))
            .0
    }

    /// [`Driver::update`] for an event that opens connection `conn` (the Option the event
    /// returns): its link is registered before the event's messages (its Welcome) go out.
    pub(crate) fn update_linked<R>(
        &self,
        link: Option<Link>,
        event: impl FnOnce(&mut State, Instant, &mut Effects) -> (R, Option<Conn>),
    ) -> (R, Option<Conn>) {
        let mut effects = Effects::default();
        let mut state = lock_or_die(&self.0.state, "scheduling state");
        let (out, conn) = event(&mut state, Instant::now(), &mut effects);
        // Taking the routes before letting go of the state keeps messages in event order.
        let mut routes = self.routes();
        drop(state);
        if let (Some(conn), Some(link)) = (conn, link) {
            routes.links.insert(conn, link);
        }
        let durable_first = self.hold_back_final_states(&mut effects);
        self.load_evicted(&mut effects);
        let full = send(&mut routes, std::mem::take(&mut effects.out));
        drop(routes);
        self.carry_out(effects);
        if let Some((journal, held)) = durable_first {
            // Final states reach their waiters once the journal holds them (never, if the
            // lease is lost first: the client then retries on the active coordinator).
            let driver = self.clone();
            let written = journal.barrier();
            self.0.tracker.spawn(async move {
                if written.await.is_ok() {
                    let full = send(&mut driver.routes(), held);
                    driver.write_off_full(full);
                }
            });
        }
        self.write_off_full(full);
        (out, conn)
    }

    /// With a journal, the results for waiters of an event that also writes final states:
    /// taken out of `effects`, to be sent once those writes are durable.
    fn hold_back_final_states(&self, effects: &mut Effects) -> Option<(Journal, Vec<Outbound>)> {
        let journal = self.0.journal.as_ref()?;
        if !effects
            .journal
            .iter()
            .any(|op| matches!(op, crate::state::JournalOp::Finish(..)))
        {
            return None;
        }
        let (held, now): (Vec<Outbound>, Vec<Outbound>) = std::mem::take(&mut effects.out)
            .into_iter()
            .partition(|o| matches!(o, Outbound::Complete { .. }));
        effects.out = now;
        (!held.is_empty()).then(|| (journal.clone(), held))
    }

    /// Results evicted from memory that waiters asked for: taken out of `effects` and read
    /// back from the journal (the state asks only with one), each in a task of its own.
    fn load_evicted(&self, effects: &mut Effects) {
        if !effects.out.iter().any(|o| matches!(o, Outbound::Load { .. })) {
            return;
        }
        let (loads, rest): (Vec<Outbound>, Vec<Outbound>) = std::mem::take(&mut effects.out)
            .into_iter()
            .partition(|o| matches!(o, Outbound::Load { .. }));
        effects.out = rest;
        let Some(journal) = self.0.journal.clone() else {
            return;
        };
        for load in loads {
            let Outbound::Load { waiter, tag, task } = load else {
                continue;
            };
            let (driver, journal) = (self.clone(), journal.clone());
            self.0.tracker.spawn(async move {
                let result = journal.result(task).await.map(Arc::new).map_err(Status::from);
                if let Err(e) = &result {
                    warn!(task, error = %e.message(), "an evicted result could not be read back from the journal");
                }
                if let Some(tx) = driver.routes().waiters.get(&waiter) {
                    let _ = tx.try_send(Completion { tag, result });
                }
            });
        }
    }

    /// Writes off the workers whose stream queue was full (which may free or fill others).
    fn write_off_full(&self, mut full: Vec<Conn>) {
        while let Some(conn) = full.pop() {
            let mut effects = Effects::default();
            let mut state = lock_or_die(&self.0.state, "scheduling state");
            if let Err(e) = state.handle(Instant::now(), Event::StreamFull(conn), &mut effects) {
                warn!(error = %e, "a full stream could not be written off");
            }
            let mut routes = self.routes();
            drop(state);
            full.extend(send(&mut routes, std::mem::take(&mut effects.out)));
            drop(routes);
            self.carry_out(effects);
        }
    }

    /// Reads the state under the lock.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&State, Instant) -> R) -> R {
        let state = lock_or_die(&self.0.state, "scheduling state");
        f(&state, Instant::now())
    }

    /// Starts the liveness sweep: every sample interval, workers silent past their lease or
    /// detached past the reconnect grace are written off.
    pub(crate) fn start_sweeper(&self) {
        let driver = self.clone();
        let every = self
            .0
            .config
            .fleet
            .sample_interval
            .max(std::time::Duration::from_millis(10));
        self.0.tracker.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => driver.apply(Event::Sweep),
                    () = driver.0.stop.cancelled() => break,
                }
            }
        });
    }

    /// Called after a worker stream has been cleaned up.
    pub(crate) fn notify_disconnect(&self) {
        self.0.disconnected.notify_waiters();
    }

    /// Tells every worker to finish and leave, and waits until all have (or `limit` passes).
    /// Returns how many were still connected at the end.
    pub(crate) async fn drain(&self, limit: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        if let Ok(Reply::Drained(told)) = self.handle(Event::Drain) {
            tracing::info!(workers = told, "told every worker to finish and leave");
        }
        loop {
            let woken = self.0.disconnected.notified();
            let live = self.read(|s, _| s.live_workers());
            if live == 0 || tokio::time::timeout_at(deadline, woken).await.is_err() {
                return self.read(|s, _| s.live_workers());
            }
        }
    }

    /// The metrics this driver records.
    pub(crate) fn metrics(&self) -> Arc<Metrics> {
        self.0.metrics.clone()
    }

    /// What the dashboard records of the observations.
    pub(crate) fn recorder(&self) -> Arc<Recorder> {
        self.0.recorder.clone()
    }

    /// Journal writes, spawns, timers and observations.
    fn carry_out(&self, effects: Effects) {
        if !effects.observed.is_empty() {
            self.0.metrics.observe(&effects.observed);
            self.0.recorder.observe(&effects.observed);
        }
        if let Some(j) = &self.0.journal
            && !effects.journal.is_empty()
        {
            let reserved = effects.journal.iter().find_map(|op| match op {
                crate::state::JournalOp::Reserve(until) => Some(*until),
                _ => None,
            });
            j.apply(effects.journal);
            if let Some(until) = reserved {
                // The new ids may be handed out once the reservation is durable (never, if
                // the lease is lost first).
                let written = j.barrier();
                let driver = self.clone();
                self.0.tracker.spawn(async move {
                    if written.await.is_ok() {
                        driver.apply(Event::IdsReserved(until));
                    }
                });
            }
        }
        for request in effects.spawns {
            self.0.spawner.spawn(request);
        }
        for (delay, timer) in effects.timers {
            let driver = self.clone();
            self.0.tracker.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(delay) => driver.apply(Event::Timer(timer)),
                    () = driver.0.stop.cancelled() => {}
                }
            });
        }
    }
}

/// Sends the state's messages; returns the connections whose queue was full.
fn send(routes: &mut Routes, out: Vec<Outbound>) -> Vec<Conn> {
    let mut full = Vec::new();
    for o in out {
        match o {
            Outbound::Message { conn, message } => {
                if let Some(link) = routes.links.get(&conn) {
                    match link.messages.try_send(message) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            if !full.contains(&conn) {
                                full.push(conn);
                            }
                        }
                        // The stream is gone; its reader reports the end.
                        Err(TrySendError::Closed(_)) => {}
                    }
                }
            }
            Outbound::End { conn, error } => {
                if let Some(link) = routes.links.remove(&conn)
                    && let Some(e) = error
                {
                    let _ = link.end.send(Error::from(e).into());
                }
            }
            // Taken out before (see `Driver::load_evicted`).
            Outbound::Load { .. } => {}
            Outbound::Complete { waiter, tag, result } => {
                if let Some(tx) = routes.waiters.get(&waiter)
                    && let Err(TrySendError::Full(_)) = tx.try_send(Completion {
                        tag,
                        result: Ok(result),
                    })
                {
                    // Sized so it cannot happen; a lost result is still retrievable with Get.
                    warn!(
                        waiter = waiter.0,
                        tag, "a waiter's channel was full; the result stays retrievable"
                    );
                }
            }
        }
    }
    full
}

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;
    use std::process::Command;

    use super::*;
    use crate::spawner::ExternalSpawner;

    /// Set in the child process the test below starts.
    const CHILD: &str = "CARPOOL_TEST_POISON_CHILD";

    #[test]
    fn a_panic_under_the_state_lock_ends_the_process_with_70() {
        if std::env::var_os(CHILD).is_some() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let _inside = runtime.enter();
            let stop = CancellationToken::new();
            let tracker = TaskTracker::new();
            let (reports, outcomes) = mpsc::channel(1);
            let context = crate::spawner::SpawnContext {
                reports,
                tracker: tracker.clone(),
                stop: stop.clone(),
            };
            let driver = Driver::new(
                Arc::new(Config::default()),
                Arc::new(ExternalSpawner::new(context)),
                outcomes,
                tracker,
                stop,
                None,
            );
            let poisoner = driver.clone();
            let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| {
                poisoner.update(|_, _, _| panic!("half-way through an event"))
            }));
            assert!(panicked.is_err());
            // The next event finds the lock poisoned: the process ends here.
            driver.read(|s, _| s.live_workers());
            std::process::exit(0);
        }
        let exe = std::env::current_exe().expect("test binary");
        let out = Command::new(exe)
            .args([
                "--exact",
                "driver::tests::a_panic_under_the_state_lock_ends_the_process_with_70",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        assert_eq!(
            out.status.code(),
            Some(70),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
