//! Lightweight simulated workers: one Workers stream each, answering every assignment at
//! once with an empty output and sampling on the coordinator's interval. They cost the
//! coordinator exactly what real workers cost it, and almost nothing here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use carpool_proto::pb::workers_client::WorkersClient;
use carpool_proto::pb::{self, coordinator_message::Kind as Down, worker_message::Kind as Up};
use carpool_proto::{Bytes, TlsOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// When each task reached a worker (for submit-to-start latency).
pub(crate) type StartTimes = Arc<Mutex<HashMap<u64, Instant>>>;

/// Opens a channel (one HTTP/2 connection) to `url`.
pub(crate) async fn channel(url: &str) -> Result<Channel, String> {
    carpool_proto::endpoint(url, &TlsOptions::default())?
        .connect()
        .await
        .map_err(|e| format!("connect {url}: {e}"))
}

/// Connects one simulated worker of `function` with `slots`; it runs until the stream ends.
/// Returns once the coordinator has welcomed it.
pub(crate) async fn spawn_worker(
    channel: Channel,
    id: String,
    function: &str,
    slots: u32,
    starts: Option<StartTimes>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let (out, rx) = mpsc::channel::<pb::WorkerMessage>(1024);
    let hello = pb::Hello {
        worker_id: id,
        function: function.to_owned(),
        vcpus: 2,
        memory_mb: 2048,
        slots,
        timeout_ms: 3_600_000,
        ..Default::default()
    };
    out.send(pb::WorkerMessage {
        kind: Some(Up::Hello(hello)),
    })
    .await
    .map_err(|_| "send hello".to_owned())?;
    let mut inbound = WorkersClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("connect: {e}"))?
        .into_inner();
    let interval = match inbound.message().await {
        Ok(Some(pb::CoordinatorMessage {
            kind: Some(Down::Welcome(w)),
        })) => Duration::from_millis(w.sample_interval_ms.max(10)),
        other => return Err(format!("expected a welcome, got {other:?}")),
    };
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(pb::CoordinatorMessage { kind: Some(Down::Assign(a)) })) => {
                        if let Some(starts) = &starts {
                            let now = Instant::now();
                            let mut s = starts.lock().unwrap_or_else(PoisonError::into_inner);
                            for t in &a.tasks {
                                s.insert(t.task_id, now);
                            }
                        }
                        let results = a.tasks.into_iter().map(|t| pb::WorkerTaskResult {
                            task_id: t.task_id,
                            attempt: t.attempt,
                            outcome: Some(pb::worker_task_result::Outcome::Output(Bytes::new())),
                            started_unix_ms: 0,
                            finished_unix_ms: 0,
                            duration_us: 1,
                        }).collect();
                        if out.send(pb::WorkerMessage { kind: Some(Up::Results(pb::TaskResults { results })) }).await.is_err() {
                            break;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
                _ = tick.tick() => {
                    let sample = pb::ResourceSample { cpu: 0.05, memory_used_bytes: 64 << 20, memory_limit_bytes: 2048 << 20, running_tasks: 0, ..Default::default() };
                    if out.send(pb::WorkerMessage { kind: Some(Up::Sample(sample)) }).await.is_err() {
                        break;
                    }
                }
            }
        }
    }))
}
