//! One worker session: dial the coordinator, say hello, then run what it assigns until it
//! says Shutdown (or the execution timeout passes, or the stream breaks).
//!
//! One `select!` loop owns everything: inbound messages (assign, cancel, shutdown, limit),
//! task completions, the sample timer, the settle probe and the execution deadline.
//! Outgoing messages go through one mpsc channel that is the request stream.
//!
//! Samples go on the Welcome's interval and when a figure moves materially: [`SETTLE`]
//! after the running tasks change (once the newest has run long enough for its memory to
//! show), or when memory or CPU move while tasks run ([`PROBE`]). Never one per task.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_proto::pb::workers_client::WorkersClient;
use carpool_proto::pb::{
    self, CoordinatorMessage, WorkerMessage, coordinator_message::Kind as Down, worker_message::Kind as Up,
    worker_task_result::Outcome,
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
use crate::handler::{Handler, Outcome as HandlerOutcome, Task};
use crate::sampler::Sampler;

/// How long a finished session waits for the coordinator to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long after its running tasks change the worker reports (the coordinator raises a
/// limit only on a sample whose newest task has run this long, so its memory shows).
pub const SETTLE: Duration = Duration::from_millis(25);
/// How often a worker with tasks running looks at its memory and CPU for a material move.
pub const PROBE: Duration = Duration::from_millis(50);
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
    let endpoint = carpool_proto::endpoint(url, tls)
        .map_err(|e| Error::BadUrl(url.to_owned(), e))?
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    endpoint
        .connect()
        .await
        .map_err(|e| Error::Connect(url.to_owned(), e.to_string()))
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
        max_output: 0,
        recent: VecDeque::new(),
        tasks_run: 0,
        shutdown: None,
        welcomed: false,
        limit: 0,
        newest: None,
        changed: None,
        most_since_sample: 0,
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
                // What was sent long enough before the break has been recorded.
                s.forget_recent(Instant::now());
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
                warn!(worker = %s.config.id, error = %e, running = s.running.len(), wait_ms = wait.as_millis() as u64, "stream to the coordinator lost; reconnecting");
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
        tasks_run: s.tasks_run,
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

/// What outlives one stream: the running tasks and the counters.
struct Session<H> {
    config: WorkerConfig,
    /// The coordinators it may dial (`config.coordinator_url`, split once).
    urls: Vec<String>,
    /// Which of them it dials now.
    url_index: usize,
    /// When the session's execution timeout passes.
    deadline: tokio::time::Instant,
    handler: Arc<H>,
    running: JoinSet<(u64, u32, u64, Duration, HandlerOutcome)>,
    /// Running tasks: their attempt and how to abort them.
    handles: HashMap<u64, (u32, AbortHandle)>,
    /// The largest output the coordinator accepts (its Welcome); 0 before one.
    max_output: u64,
    /// Results sent in the last [`RESEND_WINDOW`], repeated in the next hello if the stream
    /// breaks (they may not have been recorded).
    recent: VecDeque<(Instant, pb::WorkerTaskResult)>,
    tasks_run: u64,
    shutdown: Option<pb::ShutdownReason>,
    sampler: Sampler,
    /// Set once a connection got its Welcome (resets the reconnect backoff).
    welcomed: bool,
    /// The concurrency limit the coordinator last announced (Welcome, then Limit messages).
    limit: u32,
    /// When the newest running task started.
    newest: Option<Instant>,
    /// When the running tasks first changed since the last sample (a sample is due
    /// [`SETTLE`] later).
    changed: Option<Instant>,
    /// The most tasks that ran at once since the last sample.
    most_since_sample: u32,
}

impl<H: Handler> Session<H> {
    /// The coordinator URL to dial now: one of its URLs in turn.
    fn url(&self) -> &str {
        &self.urls[self.url_index % self.urls.len()]
    }

    /// One connection: hello, welcome, then serve until Shutdown-and-idle, the deadline, or
    /// an error (a broken stream is retryable; a refusal is not).
    async fn connection(&mut self, deadline: tokio::time::Instant) -> Result<EndReason> {
        let url = self.url().to_owned();
        let channel = dial(&url, &self.config.tls).await?;
        let bearer = Bearer::new(self.config.token.as_ref()).map_err(Error::Config)?;
        let mut client = WorkersClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let (out, outbox) = mpsc::channel::<WorkerMessage>(OUTBOX);
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let running: Vec<(u64, u32)> = self.handles.iter().map(|(&t, &(a, _))| (t, a)).collect();
        let hello = pb::Hello {
            worker_id: self.config.id.clone(),
            function: self.config.function.clone(),
            vcpus: self.config.vcpus,
            memory_mb: self.config.memory_mb,
            slots: self.config.slots.unwrap_or(0),
            timeout_ms: remaining.as_millis().max(1) as u64,
            instance: self.config.instance.clone(),
            running_task_ids: running.iter().map(|&(t, _)| t).collect(),
            running_attempts: running.iter().map(|&(_, a)| a).collect(),
            recent_results: self.recent.iter().map(|(_, r)| r.clone()).collect(),
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
        self.welcomed = true;
        self.limit = welcome.slots;
        self.handler.limit(welcome.slots);
        let mut broken = self.handler.broken();
        self.max_output = welcome.max_output_bytes;
        // The coordinator has them now (it ignores what it already had).
        self.recent.clear();
        let interval = Duration::from_millis(welcome.sample_interval_ms.max(10));
        info!(worker = %self.config.id, function = %self.config.function, slots = welcome.slots, resumed = !self.handles.is_empty(), "connected");
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let id = self.config.id.clone();
        let mut last_probe = Instant::now();

        let reason = loop {
            if let Some(reason) = self.shutdown
                && self.running.is_empty()
            {
                break EndReason::Shutdown(reason);
            }
            // The next look at itself: SETTLE after a change, or PROBE while tasks run.
            let probe_at = match self.changed {
                Some(at) => Some(at + SETTLE),
                None if !self.running.is_empty() => Some(last_probe + PROBE),
                None => None,
            };
            tokio::select! {
                msg = inbound.message() => match msg? {
                    Some(CoordinatorMessage { kind: Some(Down::Assign(assign)) }) => {
                        for a in assign.tasks {
                            self.start(a);
                        }
                        // More tasks than at any time since the last sample (the coordinator
                        // raised the limit): the next CPU figure covers them alone. A refill
                        // to the same level keeps the span, so a task's start-up burst is
                        // averaged with the others' quiet.
                        let running = self.running.len() as u32;
                        if running > self.most_since_sample {
                            self.most_since_sample = running;
                            self.sampler.mark();
                        }
                        self.changed.get_or_insert_with(Instant::now);
                    }
                    Some(CoordinatorMessage { kind: Some(Down::Limit(l)) }) => {
                        debug!(worker = %id, slots = l.slots, "concurrency limit moved");
                        self.limit = l.slots;
                        self.handler.limit(l.slots);
                    }
                    Some(CoordinatorMessage { kind: Some(Down::Cancel(cancel)) }) => {
                        for task in cancel.task_ids {
                            if let Some((_, h)) = self.handles.remove(&task) {
                                info!(worker = %id, task, "task cancelled");
                                h.abort();
                            }
                        }
                    }
                    Some(CoordinatorMessage { kind: Some(Down::Shutdown(s)) }) => {
                        let reason = s.reason();
                        info!(worker = %id, reason = reason.as_str_name(), running = self.running.len(), "shutdown received");
                        self.shutdown = Some(reason);
                    }
                    Some(other) => warn!(worker = %id, ?other, "unexpected message ignored"),
                    // Closed without a Shutdown: the coordinator dropped this session.
                    None => return Err(Error::StreamBroken),
                },
                Some(joined) = self.running.join_next() => {
                    let mut results = Vec::new();
                    let mut next = Some(joined);
                    while let Some(joined) = next {
                        // An Err is a task aborted because the coordinator cancelled it.
                        if let Ok((task, attempt, started, took, outcome)) = joined {
                            self.handles.remove(&task);
                            self.tasks_run += 1;
                            let outcome = cap_output(outcome, self.max_output);
                            results.push(result(task, attempt, started, took, outcome));
                        }
                        next = self.running.try_join_next();
                    }
                    self.remember(&results);
                    for results in batches(results, self.max_output) {
                        send(&out, Up::Results(pb::TaskResults { results })).await?;
                    }
                    self.changed.get_or_insert_with(Instant::now);
                },
                _ = tick.tick() => {
                    send(&out, Up::Sample(self.sample())).await?;
                }
                () = sleep_until_opt(probe_at) => {
                    last_probe = Instant::now();
                    if self.changed.is_some() || self.sampler.moved() {
                        send(&out, Up::Sample(self.sample())).await?;
                    }
                }
                msg = &mut broken => {
                    warn!(worker = %id, error = %msg, running = self.running.len(), "the handler cannot run tasks; ending the session");
                    return Err(Error::Handler(msg));
                }
                () = tokio::time::sleep_until(deadline) => {
                    warn!(worker = %id, running = self.running.len(), "execution timeout reached");
                    break EndReason::Timeout;
                }
                () = self.config.stop.cancelled() => {
                    warn!(worker = %id, running = self.running.len(), "told to stop; ending the session, the coordinator gives back what runs here");
                    break EndReason::Terminated;
                }
            }
        };
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

    /// Keeps `results` for [`RESEND_WINDOW`], within [`RESEND_BYTES`] (the oldest go first).
    fn remember(&mut self, results: &[pb::WorkerTaskResult]) {
        let now = Instant::now();
        self.recent.extend(results.iter().map(|r| (now, r.clone())));
        self.forget_recent(now);
    }

    /// Drops remembered results sent more than [`RESEND_WINDOW`] before `now`, and the
    /// oldest past [`RESEND_BYTES`] or [`RESEND_COUNT`].
    fn forget_recent(&mut self, now: Instant) {
        let cap = if self.max_output > 0 {
            (self.max_output as usize).min(RESEND_BYTES)
        } else {
            RESEND_BYTES
        };
        let mut bytes: usize = self.recent.iter().map(|(_, r)| result_bytes(r)).sum();
        while let Some((at, r)) = self.recent.front() {
            let old = now.saturating_duration_since(*at) > RESEND_WINDOW;
            if !(old || bytes > cap || self.recent.len() > RESEND_COUNT) {
                break;
            }
            bytes -= result_bytes(r);
            self.recent.pop_front();
        }
    }

    /// A sample now (and the running tasks' change is reported).
    /// A handler that holds tasks before they run (a runtime copy still starting) says what
    /// runs: a task counts toward a level only once it really runs.
    fn sample(&mut self) -> pb::ResourceSample {
        self.changed = None;
        self.most_since_sample = self.running.len() as u32;
        if self.running.is_empty() {
            self.newest = None;
        }
        let (running, newest) = match self.handler.running() {
            Some(r) => (r.tasks, r.newest),
            None => (self.running.len() as u32, self.newest),
        };
        let youngest = newest.map_or(Duration::ZERO, |t| t.elapsed());
        self.sampler.sample(running, youngest)
    }

    fn start(&mut self, a: pb::TaskAssignment) {
        debug!(worker = %self.config.id, task = a.task_id, attempt = a.attempt, "task started");
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
        self.newest = Some(Instant::now());
        let handle = self.running.spawn(async move {
            let start = carpool_proto::unix_ms();
            let clock = Instant::now();
            // A panicking handler fails its task, never the worker.
            let outcome = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => Err(format!("task {id} panicked: {}", panic_message(panic))),
            };
            (id, attempt, start, clock.elapsed(), outcome)
        });
        self.handles.insert(id, (attempt, handle));
    }
}

/// How long a sent result is remembered, to repeat after a break: the coordinator records
/// a result within milliseconds of receiving it, so one sent longer before the break is on
/// record.
pub const RESEND_WINDOW: Duration = Duration::from_secs(5);
/// The most bytes of outputs remembered (and the coordinator's output limit, if lower), so
/// that a hello that repeats them stays within the message limit.
pub const RESEND_BYTES: usize = 4 << 20;
/// The most results remembered.
pub const RESEND_COUNT: usize = 4096;

/// The bytes of a result's output or error.
fn result_bytes(r: &pb::WorkerTaskResult) -> usize {
    match &r.outcome {
        Some(Outcome::Output(b)) => b.len(),
        Some(Outcome::Error(e)) => e.len(),
        None => 0,
    }
}

/// `outcome`, or an error in its place when its output is larger than `max` bytes (the
/// coordinator's limit, from its Welcome; 0: none known): the task fails with the sizes
/// instead of the whole batch being refused.
fn cap_output(outcome: HandlerOutcome, max: u64) -> HandlerOutcome {
    match outcome {
        Ok(out) if max > 0 && out.len() as u64 > max => Err(format!(
            "output too large: {} bytes, the coordinator accepts at most {max}",
            out.len()
        )),
        Err(e) if max > 0 && e.len() as u64 > max => {
            let mut cut = (max as usize).min(e.len());
            while !e.is_char_boundary(cut) {
                cut -= 1;
            }
            Err(e[..cut].to_owned())
        }
        other => other,
    }
}

/// `results` split into messages whose outputs and errors add up to at most `max` bytes
/// each (one result per message at least; 0: one message).
fn batches(results: Vec<pb::WorkerTaskResult>, max: u64) -> Vec<Vec<pb::WorkerTaskResult>> {
    let mut out: Vec<Vec<pb::WorkerTaskResult>> = Vec::new();
    let mut size = 0u64;
    for r in results {
        let len = result_bytes(&r) as u64;
        match out.last_mut() {
            Some(batch) if max == 0 || size + len <= max => {
                size += len;
                batch.push(r);
            }
            _ => {
                size = len;
                out.push(vec![r]);
            }
        }
    }
    out
}

async fn send(out: &mpsc::Sender<WorkerMessage>, kind: Up) -> Result<()> {
    out.send(WorkerMessage { kind: Some(kind) })
        .await
        .map_err(|_| Error::StreamBroken)
}

fn result(
    task_id: u64,
    attempt: u32,
    started: u64,
    took: Duration,
    outcome: HandlerOutcome,
) -> pb::WorkerTaskResult {
    pb::WorkerTaskResult {
        task_id,
        attempt,
        outcome: Some(match outcome {
            Ok(bytes) => Outcome::Output(bytes),
            Err(e) => Outcome::Error(e),
        }),
        started_unix_ms: started,
        finished_unix_ms: carpool_proto::unix_ms(),
        duration_us: took.as_micros().clamp(1, u128::from(u64::MAX)) as u64,
    }
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
