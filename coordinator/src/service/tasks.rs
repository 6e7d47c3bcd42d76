//! `carpool.v1.Tasks`: submit, run, get, watch, cancel and the streaming Map.

use std::pin::Pin;
use std::time::Duration;

use carpool_proto::payload;
use carpool_proto::pb::{self, tasks_server::Tasks};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::error::Error;
use crate::hub::Hub;
use crate::state::{Completion, Submission, Waiter};

/// Results queued per Map or Watch call before the sender waits for the client.
const STREAM_BUFFER: usize = 1024;

/// Serves the client API.
pub struct TasksService {
    hub: Hub,
}

impl TasksService {
    /// A service over `hub`.
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }

    fn submit_one(&self, req: pb::SubmitRequest, waiter: Option<Waiter>) -> Result<u64, Error> {
        let sub = submission(req.function, req.input, req.timeout_ms, req.idempotency_key);
        self.hub.update(|s, now, fx| s.submit(sub, waiter, now, fx))
    }
}

fn submission(function: String, input: Option<pb::Payload>, timeout_ms: u64, key: String) -> Submission {
    Submission {
        function,
        payload: payload::into_bytes(input),
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
        key,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let task_id = self.submit_one(request.into_inner(), None)?;
        Ok(Response::new(pb::SubmitResponse { task_id }))
    }

    async fn run(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::TaskResult>, Status> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task_id = self.submit_one(request.into_inner(), Some(Waiter { tx, tag: 0 }))?;
        match rx.recv().await {
            Some(c) => Ok(Response::new(c.result.as_ref().clone())),
            None => Err(Status::unavailable(format!(
                "task {task_id}: the coordinator stopped before it finished"
            ))),
        }
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::TaskInfo>, Status> {
        let id = request.into_inner().task_id;
        Ok(Response::new(self.hub.read(|s, _| s.get(id))?))
    }

    type WatchStream = BoxStream<pb::TaskResult>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let ids = request.into_inner().task_ids;
        let (tx, rx) = mpsc::unbounded_channel();
        let expected = self.hub.update(|s, _, _| s.watch(&ids, &tx))?;
        drop(tx);
        let stream = futures::stream::unfold((rx, expected), |(mut rx, left)| async move {
            if left == 0 {
                return None;
            }
            let c: Completion = rx.recv().await?;
            Some((Ok(c.result.as_ref().clone()), (rx, left - 1)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let id = request.into_inner().task_id;
        let state = self.hub.update(|s, now, fx| s.cancel(id, now, fx))?;
        Ok(Response::new(pb::CancelResponse { state: state as i32 }))
    }

    type MapStream = ReceiverStream<Result<pb::MapResponse, Status>>;

    async fn map(
        &self,
        request: Request<Streaming<pb::MapRequest>>,
    ) -> Result<Response<Self::MapStream>, Status> {
        let mut inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel(STREAM_BUFFER);
        let hub = self.hub.clone();
        // The spawned task notices a client that goes away (see tonic's streaming example).
        tokio::spawn(async move {
            let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
            let mut default_function = String::new();
            let mut outstanding: u64 = 0;
            let mut inbound_open = true;
            loop {
                if !inbound_open && outstanding == 0 {
                    break;
                }
                let reply = tokio::select! {
                    msg = inbound.message(), if inbound_open => match msg {
                        Ok(Some(mut req)) => {
                            if req.function.is_empty() {
                                req.function.clone_from(&default_function);
                            } else if default_function.is_empty() {
                                default_function.clone_from(&req.function);
                            }
                            let waiter = Waiter { tx: done_tx.clone(), tag: req.seq };
                            let sub = submission(req.function, req.input, req.timeout_ms, req.idempotency_key);
                            match hub.update(|s, now, fx| s.submit(sub, Some(waiter), now, fx)) {
                                Ok(_) => { outstanding += 1; continue; }
                                Err(e) => pb::MapResponse { seq: req.seq, result: None, rejected: e.to_string() },
                            }
                        }
                        Ok(None) => { inbound_open = false; continue; }
                        Err(status) => {
                            // The client broke the call: its tasks still run, results stay retrievable.
                            debug!(%status, "map request stream ended abnormally");
                            break;
                        }
                    },
                    Some(c) = done_rx.recv() => {
                        outstanding -= 1;
                        pb::MapResponse { seq: c.tag, result: Some(c.result.as_ref().clone()), rejected: String::new() }
                    }
                };
                if out_tx.send(Ok(reply)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}
