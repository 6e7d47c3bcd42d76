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
        let req = request.into_inner();
        let id = match (req.task_id, req.idempotency_key.is_empty()) {
            (0, false) => self
                .driver
                .read(|s, _| s.task_by_key(&req.idempotency_key))
                .map_err(crate::error::status)?,
            (id, true) if id != 0 => id,
            _ => {
                return Err(Status::invalid_argument(
                    "Cancel names a task by task_id or by idempotency_key: exactly one of them",
                ));
            }
        };
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

/// Most items one batched `MapRequest` may carry; the rest are rejected one by one.
pub(crate) const MAX_MAP_BATCH: usize = 10_000;

/// A batched `MapResponse` carries the results ready at once, up to this many...
const MAX_RESULTS_PER_RESPONSE: usize = 4096;

/// ...and this many encoded bytes (one result always goes, whatever its size).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// How long a batched call's first unsent result waits for others while more are coming.
const LINGER: Duration = Duration::from_millis(2);

/// Most bytes of answers a Map call holds for a client slow to take them; past it the call
/// takes no more results nor submissions until the client reads.
const MAX_UNSENT_BYTES: usize = 16 << 20;

/// What one Map call holds between its messages.
struct MapCall {
    driver: Driver,
    guard: crate::driver::WaiterGuard,
    default_function: String,
    budget: Option<Budget>,
    /// The call's start, from which `deadline_ms` counts.
    started: std::time::Instant,
    call_deadline: Option<std::time::Instant>,
    /// Submissions accepted whose result is not sent yet.
    outstanding: usize,
    /// The client has sent a batch: results go back in batches.
    batched: bool,
}

impl MapCall {
    /// Takes one request: its call-wide settings, then each of its submissions. Accepted
    /// ones count as outstanding (their journal writes join `writes`); rejected ones are
    /// answered in `ready`.
    fn take(
        &mut self,
        mut req: pb::MapRequest,
        writes: &mut FuturesUnordered<TaggedWriting>,
        ready: &mut Vec<pb::MapResult>,
    ) {
        if req.function.is_empty() {
            req.function.clone_from(&self.default_function);
        } else if self.default_function.is_empty() {
            self.default_function.clone_from(&req.function);
        }
        let items: Vec<pb::MapTask> = if req.tasks.is_empty() {
            vec![pb::MapTask {
                input: req.input.take(),
                seq: req.seq,
                timeout_ms: req.timeout_ms,
                idempotency_key: std::mem::take(&mut req.idempotency_key),
            }]
        } else {
            self.batched = true;
            let mixed =
                req.input.is_some() || req.seq != 0 || req.timeout_ms != 0 || !req.idempotency_key.is_empty();
            if mixed {
                let why =
                    "a MapRequest carries one submission in its own fields or a batch in `tasks`, not both";
                ready.extend(
                    req.tasks
                        .iter()
                        .map(|t| rejected(t.seq, Status::invalid_argument(why))),
                );
                return;
            }
            let mut tasks = std::mem::take(&mut req.tasks);
            if tasks.len() > MAX_MAP_BATCH {
                let why = format!(
                    "a MapRequest carries at most {MAX_MAP_BATCH} tasks; this one had {}",
                    tasks.len()
                );
                ready.extend(
                    tasks
                        .drain(MAX_MAP_BATCH..)
                        .map(|t| rejected(t.seq, Status::invalid_argument(why.clone()))),
                );
            }
            tasks
        };
        if req.budget_usd != 0.0 && self.budget.is_none() {
            match Budget::new(req.budget_usd) {
                Ok(b) => self.budget = Some(b),
                Err(status) => {
                    ready.extend(items.iter().map(|t| rejected(t.seq, status.clone())));
                    return;
                }
            }
        }
        if self.call_deadline.is_none() && req.deadline_ms > 0 {
            self.call_deadline = Some(self.started + Duration::from_millis(req.deadline_ms));
        }
        for item in items {
            if let Some(b) = self.budget.as_ref().filter(|b| b.is_spent()) {
                ready.push(rejected(item.seq, Status::resource_exhausted(b.reason())));
                continue;
            }
            let seq = item.seq;
            let waiter = Waiter {
                id: self.guard.id,
                tag: seq,
            };
            let sub = Submission {
                deadline: self
                    .call_deadline
                    .map(|d| d.saturating_duration_since(std::time::Instant::now())),
                ..submission(
                    req.function.clone(),
                    item.input,
                    item.timeout_ms,
                    item.idempotency_key,
                )
            };
            match self.driver.submit(sub, Some(waiter)) {
                Ok(Accepting::Done(_)) => self.outstanding += 1,
                Ok(Accepting::Writing(write)) => {
                    self.outstanding += 1;
                    writes.push(Box::pin(async move { (seq, write.await) }));
                }
                Err(e) => ready.push(rejected(seq, e)),
            }
        }
    }

    /// The answer for a finished submission (spending the budget, if any).
    fn finished(&mut self, c: Completion) -> pb::MapResult {
        self.outstanding -= 1;
        match c.result {
            Ok(result) => {
                if let Some(b) = self.budget.as_mut()
                    && b.add(&result)
                {
                    let reason = b.reason();
                    info!(waiter = self.guard.id.0, reason, "a Map call's budget is spent");
                    // The stopped tasks' results come back on this call as CANCELLED.
                    let _ = self.driver.handle(Event::StopPending {
                        waiter: self.guard.id,
                        reason,
                    });
                }
                pb::MapResult {
                    seq: c.tag,
                    result: Some(result.as_ref().clone()),
                    ..Default::default()
                }
            }
            Err(status) => rejected(c.tag, status),
        }
    }
}

/// One Map call: submissions in, results out as they finish. Journal writes of different
/// submissions are in flight together, so they share commits. A submission that does not
/// decode (or is too large) ends the call with its status once the results of the
/// submissions accepted before it have been sent. A call that sends batches gets the
/// results ready at once in one message.
async fn serve_map(
    driver: Driver,
    mut inbound: Streaming<pb::MapRequest>,
    out: mpsc::Sender<Result<pb::MapResponse, Status>>,
) {
    // Room for a whole batch past the limit, which is checked before a message is read.
    let (guard, mut done_rx) = driver.waiter(MAP_IN_FLIGHT + MAX_MAP_BATCH);
    let mut call = MapCall {
        driver,
        guard,
        default_function: String::new(),
        budget: None,
        started: std::time::Instant::now(),
        call_deadline: None,
        outstanding: 0,
        batched: false,
    };
    let mut writes: FuturesUnordered<TaggedWriting> = FuturesUnordered::new();
    let mut inbound_open = true;
    let mut ending: Option<Status> = None;
    // Answers not sent yet: the call keeps reading submissions while the client is slow to
    // take results (a client's stream stalled on its own unread small messages is one a
    // peer's HTTP/2 guard cuts off), within MAP_IN_FLIGHT answers and MAX_UNSENT_BYTES.
    // Each with its encoded size, counted once.
    let mut unsent: std::collections::VecDeque<(pb::MapResult, usize)> = std::collections::VecDeque::new();
    let mut unsent_bytes: usize = 0;
    let mut first_unsent_at: Option<tokio::time::Instant> = None;
    let mut ready: Vec<pb::MapResult> = Vec::new();
    loop {
        if !inbound_open && call.outstanding == 0 && unsent.is_empty() {
            break;
        }
        let held = unsent_bytes < MAX_UNSENT_BYTES;
        // A batched call's results wait up to LINGER for company while more are coming, so
        // a client that pays per message gets them by the hundred; the last one goes at once.
        let linger_until = first_unsent_at.map(|t| t + LINGER);
        let flush = !call.batched
            || call.outstanding == 0
            || unsent.len() >= MAX_RESULTS_PER_RESPONSE
            || unsent_bytes >= MAX_RESPONSE_BYTES
            || linger_until.is_some_and(|t| t <= tokio::time::Instant::now());
        let room = call.outstanding + unsent.len() < MAP_IN_FLIGHT && held;
        tokio::select! {
            msg = inbound.message(), if inbound_open && room => match msg {
                Ok(Some(req)) => call.take(req, &mut writes, &mut ready),
                Ok(None) => inbound_open = false,
                Err(status) => {
                    inbound_open = false;
                    match from_peer(&status) {
                        // A malformed submission: the rest is not read, the accepted ones'
                        // results are still sent, then the call ends with its status.
                        Some(bad) => {
                            debug!(%bad, "a Map submission did not decode; ending the call after its results");
                            ending = Some(bad);
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
                if let Err(e) = written {
                    call.outstanding -= 1;
                    ready.push(rejected(seq, e));
                }
            }
            Some(c) = done_rx.recv(), if held => ready.push(call.finished(c)),
            () = tokio::time::sleep_until(linger_until.unwrap_or_else(tokio::time::Instant::now)), if !flush && linger_until.is_some() => {}
            permit = out.reserve(), if !unsent.is_empty() && flush => {
                let Ok(permit) = permit else { return };
                let message = if call.batched {
                    let mut results = Vec::new();
                    let mut bytes = 0;
                    while let Some(&(_, n)) = unsent.front() {
                        if !results.is_empty() && (results.len() >= MAX_RESULTS_PER_RESPONSE || bytes + n > MAX_RESPONSE_BYTES) {
                            break;
                        }
                        bytes += n;
                        unsent_bytes -= n;
                        results.extend(unsent.pop_front().map(|(r, _)| r));
                    }
                    pb::MapResponse { results, ..Default::default() }
                } else {
                    let Some((r, n)) = unsent.pop_front() else { continue };
                    unsent_bytes -= n;
                    r.into()
                };
                permit.send(Ok(message));
                first_unsent_at = (!unsent.is_empty()).then(tokio::time::Instant::now);
            }
        }
        if first_unsent_at.is_none() && !ready.is_empty() {
            first_unsent_at = Some(tokio::time::Instant::now());
        }
        for r in ready.drain(..) {
            let n = prost::Message::encoded_len(&r);
            unsent_bytes += n;
            unsent.push_back((r, n));
        }
    }
    if let Some(status) = ending {
        let _ = out.send(Err(status)).await;
    }
}

fn rejected(seq: u64, status: impl Into<Status>) -> pb::MapResult {
    let status = status.into();
    pb::MapResult {
        seq,
        result: None,
        rejected: status.message().to_owned(),
        rejected_code: status.code() as i32,
    }
}
