//! One worker session: dial the coordinator, say hello, then run what it assigns until it
//! says Shutdown (or the execution timeout passes, or the stream breaks).
//!
//! One `select!` loop owns everything: inbound messages (assign, cancel, shutdown), task
//! completions, the sample timer and the execution deadline. Outgoing messages go through
//! one mpsc channel that is the request stream.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_proto::Bearer;
use carpool_proto::pb::workers_client::WorkersClient;
use carpool_proto::pb::{
    self, CoordinatorMessage, WorkerMessage, coordinator_message::Kind as Down, worker_message::Kind as Up,
    worker_task_result::Outcome,
};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::handler::{Handler, Outcome as HandlerOutcome, Task};
use crate::sampler::Sampler;

/// HTTP/2 keepalive from the worker side (tonic leaves it off).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a keepalive ping may go unanswered before the stream is declared dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
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

/// Opens a channel to the coordinator with keepalive on.
pub async fn dial(url: &str) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Error::BadUrl(url.to_owned(), e.to_string()))?
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    endpoint
        .connect()
        .await
        .map_err(|e| Error::Connect(url.to_owned(), e.to_string()))
}

/// Runs one session with `handler` until the coordinator sends Shutdown.
pub async fn run_session<H: Handler>(config: WorkerConfig, handler: H) -> Result<Summary> {
    let started = Instant::now();
    let handler = Arc::new(handler);
    let channel = dial(&config.coordinator_url).await?;
    let bearer = Bearer::new(config.token.as_ref()).map_err(Error::Config)?;
    let mut client = WorkersClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let (out, outbox) = mpsc::channel::<WorkerMessage>(OUTBOX);
    let hello = pb::Hello {
        worker_id: config.id.clone(),
        function: config.function.clone(),
        vcpus: config.vcpus,
        memory_mb: config.memory_mb,
        slots: config.slots.unwrap_or(0),
        timeout_ms: config.timeout.as_millis() as u64,
        instance: config.instance.clone(),
    };
    send(&out, Up::Hello(hello)).await?;
    let mut inbound = client.connect(ReceiverStream::new(outbox)).await?.into_inner();
    let welcome = match inbound.message().await? {
        Some(CoordinatorMessage {
            kind: Some(Down::Welcome(w)),
        }) => w,
        other => return Err(Error::Protocol(format!("expected a welcome, got {other:?}"))),
    };
    let interval = Duration::from_millis(welcome.sample_interval_ms.max(10));
    info!(worker = %config.id, function = %config.function, slots = welcome.slots, "connected");

    let mut sampler = Sampler::new(config.cpus.clone(), config.memory_mb, config.memory_source);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(config.timeout);
    tokio::pin!(deadline);

    let mut running: JoinSet<(u64, u32, u64, HandlerOutcome)> = JoinSet::new();
    let mut handles: HashMap<u64, AbortHandle> = HashMap::new();
    let mut tasks_run: u64 = 0;
    let mut shutdown: Option<pb::ShutdownReason> = None;

    let reason = loop {
        if let Some(reason) = shutdown
            && running.is_empty()
        {
            break EndReason::Shutdown(reason);
        }
        tokio::select! {
            msg = inbound.message() => match msg? {
                Some(CoordinatorMessage { kind: Some(Down::Assign(assign)) }) => {
                    for a in assign.tasks {
                        debug!(worker = %config.id, task = a.task_id, attempt = a.attempt, "task started");
                        let task = Task { id: a.task_id, attempt: a.attempt, function: a.function, payload: a.payload };
                        let fut = handler.call(task);
                        let (id, attempt) = (a.task_id, a.attempt);
                        let handle = running.spawn(async move {
                            let start = unix_ms();
                            // A panicking handler fails its task, never the worker.
                            let outcome = match AssertUnwindSafe(fut).catch_unwind().await {
                                Ok(outcome) => outcome,
                                Err(panic) => Err(format!("task {id} panicked: {}", panic_message(panic))),
                            };
                            (id, attempt, start, outcome)
                        });
                        handles.insert(id, handle);
                    }
                    send(&out, Up::Sample(sampler.sample(running.len() as u32))).await?;
                }
                Some(CoordinatorMessage { kind: Some(Down::Cancel(cancel)) }) => {
                    for id in cancel.task_ids {
                        if let Some(h) = handles.remove(&id) {
                            info!(worker = %config.id, task = id, "task cancelled");
                            h.abort();
                        }
                    }
                }
                Some(CoordinatorMessage { kind: Some(Down::Shutdown(s)) }) => {
                    let reason = s.reason();
                    info!(worker = %config.id, reason = reason.as_str_name(), running = running.len(), "shutdown received");
                    shutdown = Some(reason);
                }
                Some(other) => warn!(worker = %config.id, ?other, "unexpected message ignored"),
                None => break EndReason::StreamClosed,
            },
            Some(joined) = running.join_next() => {
                let mut results = Vec::new();
                let mut next = Some(joined);
                while let Some(joined) = next {
                    // An Err is a task aborted because the coordinator cancelled it.
                    if let Ok((id, attempt, started, outcome)) = joined {
                        handles.remove(&id);
                        tasks_run += 1;
                        results.push(result(id, attempt, started, outcome));
                    }
                    next = running.try_join_next();
                }
                if !results.is_empty() {
                    send(&out, Up::Results(pb::TaskResults { results })).await?;
                }
                send(&out, Up::Sample(sampler.sample(running.len() as u32))).await?;
            },
            _ = tick.tick() => {
                send(&out, Up::Sample(sampler.sample(running.len() as u32))).await?;
            }
            () = &mut deadline => {
                warn!(worker = %config.id, running = running.len(), "execution timeout reached");
                break EndReason::Timeout;
            }
        }
    };
    // Closing the request stream tells the coordinator this session is over; it answers by
    // closing ours once it has cleaned up. Wait for that (briefly), so the end of the
    // stream is on the wire before this process exits.
    drop(out);
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
    let summary = Summary {
        worker_id: config.id,
        tasks_run,
        alive: started.elapsed(),
        reason,
    };
    info!(worker = %summary.worker_id, tasks_run, alive_ms = summary.alive.as_millis() as u64, reason = ?summary.reason, "session ended");
    Ok(summary)
}

async fn send(out: &mpsc::Sender<WorkerMessage>, kind: Up) -> Result<()> {
    out.send(WorkerMessage { kind: Some(kind) })
        .await
        .map_err(|_| Error::StreamBroken)
}

fn result(task_id: u64, attempt: u32, started: u64, outcome: HandlerOutcome) -> pb::WorkerTaskResult {
    pb::WorkerTaskResult {
        task_id,
        attempt,
        outcome: Some(match outcome {
            Ok(bytes) => Outcome::Output(bytes),
            Err(e) => Outcome::Error(e),
        }),
        started_unix_ms: started,
        finished_unix_ms: unix_ms(),
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
