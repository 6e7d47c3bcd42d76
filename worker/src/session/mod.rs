//! One worker session: dial the coordinator, say hello, then run what it assigns until it
//! says Shutdown (or the execution timeout passes, or the stream breaks).
//!
//! What the session knows and decides is its protocol state ([`protocol`], pure: events in,
//! actions out, unit-tested on scripted sequences). This file is the I/O around it: dialing
//! and reconnecting, and one `select!` loop that turns inbound messages, task completions,
//! the sample timer, the settle probe and the execution deadline into events, and carries
//! out the actions (start or abort a task, send, tell the handler its limit). Outgoing
//! messages go through one mpsc channel that is the request stream.
//!
//! Samples go on the Welcome's interval and when a figure moves materially: [`SETTLE`]
//! after the running tasks change (once the newest has run long enough for its memory to
//! show), or when memory or CPU move while tasks run ([`PROBE`]). Never one per task.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_proto::pb::workers_client::WorkersClient;
use carpool_proto::pb::{
    self, CoordinatorMessage, WorkerMessage, coordinator_message::Kind as Down, worker_message::Kind as Up,
};
use carpool_proto::{Bearer, TlsOptions};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::handler::{Handler, Task};
use crate::sampler::Sampler;

mod protocol;

use protocol::{Action, Finished, Joined, Protocol};
pub use protocol::{PROBE, RESEND_BYTES, RESEND_COUNT, RESEND_WINDOW, SETTLE};

/// How long a finished session waits for the coordinator to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Outgoing messages queued before the session waits for the transport.
const OUTBOX: usize = 256;

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The coordinator said Shutdown (with its reason).
    Shutdown(pb::ShutdownReason),
    /// The execution timeout passed before the coordinator said Shutdown.
    Timeout,
    /// The coordinator closed the stream without a Shutdown.
    StreamClosed,
    /// The process was told to stop (SIGTERM) before the coordinator said Shutdown; the
    /// coordinator gave its running tasks back to the pool.
    Terminated,
}

impl EndReason {
    /// A short name for logs and the Lambda invocation's summary, e.g. `shutdown: idle`.
    pub fn describe(&self) -> String {
        match self {
            EndReason::Shutdown(r) => {
                let name = r
                    .as_str_name()
                    .trim_start_matches("SHUTDOWN_REASON_")
                    .to_ascii_lowercase();
                format!("shutdown: {name}")
            }
            EndReason::Timeout => "execution timeout".to_owned(),
            EndReason::StreamClosed => "stream closed".to_owned(),
            EndReason::Terminated => "terminated".to_owned(),
        }
    }
}

/// What a session did, for logs and (on Lambda) the invocation's response.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The worker's id.
    pub worker_id: String,
    /// Tasks that finished (with an output or an error).
    pub tasks_run: u64,
    /// How long the session lasted.
    pub alive: Duration,
    /// Why it ended.
    pub reason: EndReason,
}

/// A worker's HTTP/2 keepalive: a coordinator that answers no ping for this long after this
/// long without a frame is taken for gone, and the worker dials the next coordinator (a
/// paused active one is noticed within 2 s, about when a standby's lease takeover comes).
/// Tighter than a client's: a worker's stream is its only link, and a false alarm costs a
/// reconnect with its tasks kept.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// See [`KEEPALIVE_INTERVAL`].
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens a channel to the coordinator (keepalive on, TLS for `https://`).
pub async fn dial(url: &str, tls: &TlsOptions) -> Result<Channel> {
    let tighter = |e: tonic::transport::Endpoint| {
        e.http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
    };
    Ok(carpool_proto::dial(url, tls, tighter).await?)
}

/// Runs one session with `handler` until the coordinator sends Shutdown, reconnecting
/// (same id, same instance, its running tasks kept) when the stream breaks.
pub async fn run_session<H: Handler>(config: WorkerConfig, handler: H) -> Result<Summary> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + config.timeout;
    let sampler = Sampler::new(config.measure, config.allotment(), config.memory_mb);
    info!(worker = %config.id, measures = %sampler.describe(), allotment = config.allotment(), "sampling itself");
    // A handler that must start something (a Lambda runtime) does so before the dial.
    handler.prepare().await.map_err(Error::Handler)?;
    let config_id = config.id.clone();
    let mut s = Session {
        urls: carpool_proto::coordinator_urls(&config.coordinator_url)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        url_index: 0,
        deadline,
        sampler,
        config,
        handler: Arc::new(handler),
        running: JoinSet::new(),
        handles: HashMap::new(),
        welcomed: false,
        protocol: Protocol::new(&config_id, Instant::now()),
    };
    let mut broken_since: Option<Instant> = None;
    let mut waits = reconnect_waits();
    // Coordinator URLs tried since the last wait.
    let mut tried = 0;
    let reason = loop {
        let outcome = s.connection(deadline).await;
        if std::mem::take(&mut s.welcomed) {
            broken_since = None;
            waits = reconnect_waits();
            tried = 0;
        }
        match outcome {
            Ok(reason) => break reason,
            Err(e) if e.is_retryable() => {
                // What was sent long enough before the coordinator last spoke has been
                // recorded; what was sent after may not have been, however long the break
                // lasts (a standby taking over, a coordinator restarting).
                s.protocol.forget_recent();
                let since = *broken_since.get_or_insert_with(Instant::now);
                if since.elapsed() > s.config.reconnect_for {
                    warn!(worker = %s.config.id, error = %e, "coordinator unreachable for too long; giving up");
                    return Err(e);
                }
                // A standby about to take over from a coordinator that went silent: wait for
                // it, rather than dial the silent one again (which answers nothing for as
                // long as the keepalive takes to give up).
                if let Some(wait) = e.takeover_in() {
                    info!(worker = %s.config.id, url = %s.url(), wait_ms = wait.as_millis() as u64, "a standby is taking over; waiting for it");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = tokio::time::sleep_until(deadline) => break EndReason::Timeout,
                        () = s.config.stop.cancelled() => break EndReason::Terminated,
                    }
                    continue;
                }
                // With several coordinators (active and standbys), try the next one: at once,
                // until each has been tried since the last wait.
                s.url_index += 1;
                tried += 1;
                if tried < s.urls.len() {
                    debug!(worker = %s.config.id, error = %e, next = %s.url(), "trying the next coordinator");
                    continue;
                }
                tried = 0;
                let wait = waits.next().unwrap_or(Duration::from_secs(5));
                warn!(worker = %s.config.id, error = %e, running = s.protocol.spawned(), wait_ms = wait.as_millis() as u64, "stream to the coordinator lost; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = tokio::time::sleep_until(deadline) => break EndReason::Timeout,
                    () = s.config.stop.cancelled() => break EndReason::Terminated,
                }
            }
            Err(e) => return Err(e),
        }
    };
    let summary = Summary {
        worker_id: s.config.id,
        tasks_run: s.protocol.tasks_run(),
        alive: started.elapsed(),
        reason,
    };
    info!(worker = %summary.worker_id, tasks_run = summary.tasks_run, alive_ms = summary.alive.as_millis() as u64, reason = ?summary.reason, "session ended");
    Ok(summary)
}

/// The waits between reconnects: from 100 ms, doubled up to 500 ms, each with up to 100 %
/// random jitter so that a fleet cut off at once does not reconnect at once (a standby
/// takes over within seconds; a worker should find it as soon). Endless: how long to keep
/// trying is `--reconnect-for`'s to say.
fn reconnect_waits() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(500))
        .with_jitter()
        .without_max_times()
        .build()
}

/// What outlives one stream: the running tasks and the protocol state.
struct Session<H> {
    config: WorkerConfig,
    /// The coordinators it may dial (`config.coordinator_url`, split once).
    urls: Vec<String>,
    /// Which of them it dials now.
    url_index: usize,
    /// When the session's execution timeout passes.
    deadline: tokio::time::Instant,
    handler: Arc<H>,
    running: JoinSet<Finished>,
    /// How to abort each running task.
    handles: HashMap<u64, AbortHandle>,
    sampler: Sampler,
    /// Set once a connection got its Welcome (resets the reconnect backoff).
    welcomed: bool,
    /// What the session knows and decides (pure).
    protocol: Protocol,
}

impl<H: Handler> Session<H> {
    /// The coordinator URL to dial now: one of its URLs in turn.
    fn url(&self) -> &str {
        &self.urls[self.url_index % self.urls.len()]
    }

    /// One connection: hello, welcome, then serve until Shutdown-and-idle, the deadline, or
    /// an error (a broken stream is retryable; a refusal is not).
    async fn connection(&mut self, deadline: tokio::time::Instant) -> Result<EndReason> {
        let (out, mut inbound, welcome) = self.open(deadline).await?;
        self.welcomed = true;
        let actions = self.protocol.welcomed(&welcome, Instant::now());
        self.carry_out(actions, &out).await?;
        let interval = Duration::from_millis(welcome.sample_interval_ms.max(10));
        info!(worker = %self.config.id, function = %self.config.function, slots = welcome.slots, resumed = self.protocol.resuming(), "connected");
        let reason = self.serve(&out, &mut inbound, interval, deadline).await?;
        // Closing the request stream tells the coordinator this session is over; it answers
        // by closing ours once it has cleaned up. Wait for that (briefly), so the end of the
        // stream is on the wire before this process exits.
        drop(out);
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
        Ok(reason)
    }

    /// Dials the coordinator, says hello (with what this session still runs and the results
    /// it may have to repeat) and waits for the welcome: the way up, the way down, and the
    /// welcome.
    async fn open(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<(
        mpsc::Sender<WorkerMessage>,
        tonic::Streaming<CoordinatorMessage>,
        pb::Welcome,
    )> {
        let url = self.url().to_owned();
        let channel = dial(&url, &self.config.tls).await?;
        let bearer = Bearer::new(self.config.token.as_ref()).map_err(Error::Config)?;
        let mut client = WorkersClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let (out, outbox) = mpsc::channel::<WorkerMessage>(OUTBOX);
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (running_task_ids, running_attempts, recent_results) = self.protocol.resume();
        let hello = pb::Hello {
            worker_id: self.config.id.clone(),
            function: self.config.function.clone(),
            vcpus: self.config.vcpus,
            memory_mb: self.config.memory_mb,
            slots: self.config.slots.unwrap_or(0),
            timeout_ms: remaining.as_millis().max(1) as u64,
            instance: self.config.instance.clone(),
            running_task_ids,
            running_attempts,
            recent_results,
            max_slots: self.config.max_slots.unwrap_or(0),
        };
        send(&out, Up::Hello(hello)).await?;
        let mut inbound = client.connect(ReceiverStream::new(outbox)).await?.into_inner();
        let welcome = match inbound.message().await? {
            Some(CoordinatorMessage {
                kind: Some(Down::Welcome(w)),
            }) => w,
            other => return Err(Error::Protocol(format!("expected a welcome, got {other:?}"))),
        };
        Ok((out, inbound, welcome))
    }

    /// The session's loop: what comes down, tasks that end, the sampling cadence, the
    /// handler breaking, the deadline and the stop signal, each turned into the protocol's
    /// events and its actions carried out, until the session ends (how, returned).
    async fn serve(
        &mut self,
        out: &mpsc::Sender<WorkerMessage>,
        inbound: &mut tonic::Streaming<CoordinatorMessage>,
        interval: Duration,
        deadline: tokio::time::Instant,
    ) -> Result<EndReason> {
        let mut broken = self.handler.broken();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let id = self.config.id.clone();

        let reason = loop {
            if let Some(reason) = self.protocol.done() {
                break EndReason::Shutdown(reason);
            }
            tokio::select! {
                msg = inbound.message() => match msg? {
                    Some(CoordinatorMessage { kind: Some(kind) }) => {
                        let actions = self.protocol.message(kind, Instant::now());
                        self.carry_out(actions, out).await?;
                    }
                    Some(other) => warn!(worker = %id, ?other, "empty message ignored"),
                    // Closed without a Shutdown: the coordinator dropped this session.
                    None => return Err(Error::StreamBroken),
                },
                Some(first) = self.running.join_next() => {
                    let joined = self.joined_with(first);
                    let actions = self.protocol.joined(joined, Instant::now());
                    self.carry_out(actions, out).await?;
                },
                _ = tick.tick() => {
                    send(out, Up::Sample(self.sample())).await?;
                }
                () = sleep_until_opt(self.protocol.probe_at()) => {
                    if self.protocol.probed(Instant::now(), self.sampler.moved()) {
                        send(out, Up::Sample(self.sample())).await?;
                    }
                }
                msg = &mut broken => {
                    warn!(worker = %id, error = %msg, running = self.protocol.spawned(), "the handler cannot run tasks; ending the session");
                    return Err(Error::Handler(msg));
                }
                () = tokio::time::sleep_until(deadline) => {
                    warn!(worker = %id, running = self.protocol.spawned(), "execution timeout reached");
                    break EndReason::Timeout;
                }
                () = self.config.stop.cancelled() => {
                    warn!(worker = %id, running = self.protocol.spawned(), "told to stop; ending the session, the coordinator gives back what runs here");
                    break EndReason::Terminated;
                }
            }
        };
        Ok(reason)
    }

    /// `first` and every other task that has ended by now, as the protocol hears of them.
    fn joined_with(&mut self, first: std::result::Result<Finished, tokio::task::JoinError>) -> Vec<Joined> {
        let mut joined = Vec::new();
        let mut next = Some(first);
        while let Some(j) = next {
            // An Err is a task aborted because the coordinator cancelled it.
            joined.push(match j {
                Ok(finished) => {
                    self.handles.remove(&finished.task);
                    Joined::Finished(finished)
                }
                Err(_) => Joined::Aborted,
            });
            next = self.running.try_join_next();
        }
        joined
    }

    /// Carries out what the protocol state decided, in order.
    async fn carry_out(&mut self, actions: Vec<Action>, out: &mpsc::Sender<WorkerMessage>) -> Result<()> {
        for action in actions {
            match action {
                Action::Start(a) => self.start(a),
                Action::Abort(task) => {
                    if let Some(h) = self.handles.remove(&task) {
                        h.abort();
                    }
                }
                Action::Limit(slots) => self.handler.limit(slots),
                Action::MarkSampler => self.sampler.mark(),
                Action::Send(kind) => send(out, kind).await?,
            }
        }
        Ok(())
    }

    /// A sample now (and the running tasks' change is reported).
    /// A handler that holds tasks before they run (a runtime copy still starting) says what
    /// runs: a task counts toward a level only once it really runs.
    fn sample(&mut self) -> pb::ResourceSample {
        let (spawned, newest) = self.protocol.sampling(Instant::now());
        let (running, newest, copy_init) = match self.handler.running() {
            Some(r) => (r.tasks, r.newest, r.copy_init),
            None => (spawned, newest, None),
        };
        let youngest = newest.map_or(Duration::ZERO, |t| t.elapsed());
        let mut sample = self.sampler.sample(running, youngest);
        // At least 1 ms: 0 says there are no copies.
        sample.copy_init_ms = copy_init.map_or(0, |d| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        sample
    }

    fn start(&mut self, a: pb::TaskAssignment) {
        let (id, attempt) = (a.task_id, a.attempt);
        let task = Task {
            id,
            attempt,
            function: a.function,
            payload: a.payload,
            // The attempt's own limit, else what is left of the session.
            timeout: Some(if a.timeout_ms > 0 {
                Duration::from_millis(a.timeout_ms)
            } else {
                self.deadline
                    .saturating_duration_since(tokio::time::Instant::now())
            }),
        };
        let fut = self.handler.call(task);
        let handle = self.running.spawn(async move {
            let started_unix_ms = carpool_proto::unix_ms();
            let clock = Instant::now();
            // A panicking handler fails its task, never the worker.
            let outcome = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => Err(format!("task {id} panicked: {}", panic_message(panic))),
            };
            Finished {
                task: id,
                attempt,
                started_unix_ms,
                finished_unix_ms: carpool_proto::unix_ms(),
                took: clock.elapsed(),
                outcome,
            }
        });
        self.handles.insert(id, handle);
    }
}

async fn send(out: &mpsc::Sender<WorkerMessage>, kind: Up) -> Result<()> {
    out.send(WorkerMessage { kind: Some(kind) })
        .await
        .map_err(|_| Error::StreamBroken)
}

/// Sleeps until `at`, or for ever without one.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_grow_from_100_ms_are_capped_and_never_run_out() {
        let waits: Vec<Duration> = reconnect_waits().take(100).collect();
        assert_eq!(waits.len(), 100);
        assert!(waits[0] >= Duration::from_millis(100) && waits[0] < Duration::from_millis(200));
        assert!(waits[3] >= Duration::from_millis(500) && waits[20] >= Duration::from_millis(500));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(1)));
    }
}
