//! `carpool.v1.Tasks`: submit, run, get, watch, cancel and the streaming Map.
//!
//! Submissions go through the driver ([`Driver::submit`]): with a state directory it writes
//! each to the journal before it enters the pool and before it is acknowledged.
//!
//! Results reach their callers through channels that cannot fill: a Run waits for one, a
//! Watch for as many as its distinct ids (at most 10,000), a Map for at most
//! [`MAP_IN_FLIGHT`] submissions in flight (past it, the call reads no more submissions
//! until results are taken).
//!
//! A Map call may carry a budget in dollars ([`Budget`]): its results' estimated bill is
//! summed as they are sent; once it reaches the budget, the call's pending tasks are ended
//! and later submissions refused.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use carpool_proto::payload;
use carpool_proto::pb::{self, tasks_server::Tasks};
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use super::peer::from_peer;
use crate::driver::{Accepting, Completion, Driver};
use crate::error::Result;
use crate::state::{Event, Submission, TaskId, Waiter};

/// Results queued per Map call before the sender waits for the client.
const STREAM_BUFFER: usize = 1024;

/// Most submissions of one Map call in flight (accepted, result not yet sent).
pub(crate) const MAP_IN_FLIGHT: usize = 100_000;

/// Serves the client API.
pub(crate) struct TasksService {
    driver: Driver,
}

impl TasksService {
    /// A service over `driver`.
    pub(crate) fn new(driver: Driver) -> Self {
        Self { driver }
    }
}

fn submission(function: String, input: Option<pb::Payload>, timeout_ms: u64, key: String) -> Submission {
    Submission {
        function,
        payload: payload::into_bytes(input),
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
        key,
        ..Submission::default()
    }
}

/// A deadline in milliseconds (0: none).
fn deadline(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// A Map call's budget (`MapRequest.budget_usd`): what its results have cost so far,
/// against what they may.
#[derive(Debug)]
struct Budget {
    /// The most the call may cost, US dollars.
    limit_usd: f64,
    /// What its results sent so far are estimated to have cost.
    spent_usd: f64,
}

impl Budget {
    /// The budget a submission sets, or why it is refused (`INVALID_ARGUMENT`).
    fn new(usd: f64) -> std::result::Result<Self, Status> {
        if usd.is_finite() && usd > 0.0 {
            Ok(Self {
                limit_usd: usd,
                spent_usd: 0.0,
            })
        } else {
            Err(Status::invalid_argument(format!(
                "budget_usd must be a positive, finite number of US dollars, got {usd}"
            )))
        }
    }

    fn is_spent(&self) -> bool {
        self.spent_usd >= self.limit_usd
    }

    /// Adds a result's estimated bill; true if that spent the budget.
    fn add(&mut self, result: &pb::TaskResult) -> bool {
        let before = self.is_spent();
        self.spent_usd += result.billed_gb_s * crate::billing::PRICE_PER_GB_SECOND;
        !before && self.is_spent()
    }

    /// Why the call dispatches nothing more (a pending task's error, a submission's
    /// `RESOURCE_EXHAUSTED`).
    fn reason(&self) -> String {
        format!(
            "the Map call's budget of ${:.6} is spent (its results so far are estimated at ${:.6})",
            self.limit_usd, self.spent_usd
        )
    }
}

/// A Map submission's journal write, tagged with its `seq`.
type TaggedWriting = Pin<Box<dyn Future<Output = (u64, Result<TaskId>)> + Send>>;

async fn accept(driver: &Driver, req: pb::SubmitRequest, waiter: Option<Waiter>) -> Result<u64> {
    let sub = Submission {
        deadline: deadline(req.deadline_ms),
        ..submission(req.function, req.input, req.timeout_ms, req.idempotency_key)
    };
    driver.submit_and_wait(sub, waiter).await
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let task_id = accept(&self.driver, request.into_inner(), None).await?;
        Ok(Response::new(pb::SubmitResponse { task_id }))
    }

    async fn run(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::TaskResult>, Status> {
        let (guard, mut rx) = self.driver.waiter(1);
        let waiter = Waiter { id: guard.id, tag: 0 };
        let task_id = accept(&self.driver, request.into_inner(), Some(waiter)).await?;
        match rx.recv().await {
            Some(c) => Ok(Response::new(c.result?.as_ref().clone())),
            None => Err(Status::unavailable(format!(
                "task {task_id}: the coordinator stopped before it finished"
            ))),
        }
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::TaskInfo>, Status> {
        let id = request.into_inner().task_id;
        let mut info = self.driver.read(|s, _| s.get(id)).map_err(crate::error::status)?;
        if info.result.is_none() && !matches!(info.state(), pb::TaskState::Pending | pb::TaskState::Running) {
            // Evicted from memory (past --max-result-bytes): the journal keeps it.
            info.result = Some(self.driver.evicted_result(id).await?);
        }
        Ok(Response::new(info))
    }

    type WatchStream = BoxStream<pb::TaskResult>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let ids = request.into_inner().task_ids;
        let distinct = {
            let mut d = ids.clone();
            d.sort_unstable();
            d.dedup();
            d.len()
        };
        let (guard, rx) = self.driver.waiter(distinct);
        let expected = self
            .driver
            .handle(Event::Watch {
                ids: ids.clone(),
                waiter: guard.id,
            })
            .and_then(|r| r.watching().map_err(crate::Error::from))?;
        let stream = futures::stream::unfold((rx, expected, guard), |(mut rx, left, guard)| async move {
            if left == 0 {
                return None;
            }
            let c: Completion = rx.recv().await?;
            Some((c.result.map(|r| r.as_ref().clone()), (rx, left - 1, guard)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let id = request.into_inner().task_id;
        let state = self
            .driver
            .handle(Event::Cancel(id))
            .and_then(|r| r.cancelled().map_err(crate::Error::from))?;
        Ok(Response::new(pb::CancelResponse { state: state as i32 }))
    }

    type MapStream = ReceiverStream<Result<pb::MapResponse, Status>>;

    async fn map(
        &self,
        request: Request<Streaming<pb::MapRequest>>,
    ) -> Result<Response<Self::MapStream>, Status> {
        let inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel(STREAM_BUFFER);
        // The spawned task notices a client that goes away (see tonic's streaming example).
        tokio::spawn(serve_map(self.driver.clone(), inbound, out_tx));
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// One Map call: submissions in, results out as they finish. Journal writes of different
/// submissions are in flight together, so they share commits. A submission that does not
/// decode (or is too large) ends the call with its status once the results of the
/// submissions accepted before it have been sent.
async fn serve_map(
    driver: Driver,
    mut inbound: Streaming<pb::MapRequest>,
    out: mpsc::Sender<Result<pb::MapResponse, Status>>,
) {
    let (guard, mut done_rx) = driver.waiter(MAP_IN_FLIGHT);
    let mut writes: FuturesUnordered<TaggedWriting> = FuturesUnordered::new();
    let mut default_function = String::new();
    let mut budget: Option<Budget> = None;
    // The call's deadline, from its start (`MapRequest.deadline_ms`).
    let started = std::time::Instant::now();
    let mut call_deadline: Option<std::time::Instant> = None;
    let mut outstanding: usize = 0;
    let mut inbound_open = true;
    let mut ending: Option<Status> = None;
    loop {
        if !inbound_open && outstanding == 0 {
            break;
        }
        let room = outstanding < MAP_IN_FLIGHT;
        let reply = tokio::select! {
            msg = inbound.message(), if inbound_open && room => match msg {
                Ok(Some(mut req)) => {
                    if req.function.is_empty() {
                        req.function.clone_from(&default_function);
                    } else if default_function.is_empty() {
                        default_function.clone_from(&req.function);
                    }
                    let seq = req.seq;
                    if req.budget_usd != 0.0 && budget.is_none() {
                        match Budget::new(req.budget_usd) {
                            Ok(b) => budget = Some(b),
                            Err(status) => {
                                if out.send(Ok(rejected(seq, status))).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                        }
                    }
                    if let Some(b) = budget.as_ref().filter(|b| b.is_spent()) {
                        if out.send(Ok(rejected(seq, Status::resource_exhausted(b.reason())))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    if call_deadline.is_none() && req.deadline_ms > 0 {
                        call_deadline = Some(started + Duration::from_millis(req.deadline_ms));
                    }
                    let waiter = Waiter { id: guard.id, tag: seq };
                    let sub = Submission {
                        deadline: call_deadline.map(|d| d.saturating_duration_since(std::time::Instant::now())),
                        ..submission(req.function, req.input, req.timeout_ms, req.idempotency_key)
                    };
                    match driver.submit(sub, Some(waiter)) {
                        Ok(Accepting::Done(_)) => {
                            outstanding += 1;
                            continue;
                        }
                        Ok(Accepting::Writing(write)) => {
                            outstanding += 1;
                            writes.push(Box::pin(async move { (seq, write.await) }));
                            continue;
                        }
                        Err(e) => rejected(seq, e),
                    }
                }
                Ok(None) => {
                    inbound_open = false;
                    continue;
                }
                Err(status) => {
                    inbound_open = false;
                    match from_peer(&status) {
                        // A malformed submission: the rest is not read, the accepted ones'
                        // results are still sent, then the call ends with its status.
                        Some(bad) => {
                            debug!(%bad, "a Map submission did not decode; ending the call after its results");
                            ending = Some(bad);
                            continue;
                        }
                        // The client broke the call: its tasks still run, results stay
                        // retrievable with Get.
                        None => {
                            debug!(%status, "map request stream ended abnormally");
                            break;
                        }
                    }
                }
            },
            Some((seq, written)) = writes.next() => {
                match written {
                    Ok(_) => continue,
                    Err(e) => {
                        outstanding -= 1;
                        rejected(seq, e)
                    }
                }
            }
            Some(c) = done_rx.recv() => {
                outstanding -= 1;
                match c.result {
                    Ok(result) => {
                        if let Some(b) = budget.as_mut()
                            && b.add(&result)
                        {
                            let reason = b.reason();
                            info!(waiter = guard.id.0, reason, "a Map call's budget is spent");
                            // The stopped tasks' results come back on this call as CANCELLED.
                            let _ = driver.handle(Event::StopPending { waiter: guard.id, reason });
                        }
                        pb::MapResponse { seq: c.tag, result: Some(result.as_ref().clone()), ..Default::default() }
                    }
                    Err(status) => rejected(c.tag, status),
                }
            }
        };
        if out.send(Ok(reply)).await.is_err() {
            return;
        }
    }
    if let Some(status) = ending {
        let _ = out.send(Err(status)).await;
    }
}

fn rejected(seq: u64, status: impl Into<Status>) -> pb::MapResponse {
    let status = status.into();
    pb::MapResponse {
        seq,
        result: None,
        rejected: status.message().to_owned(),
        rejected_code: status.code() as i32,
    }
}
