//! `carpool.v1.Workers/Connect`: one stream per worker for its whole life.
//!
//! The handler waits for the hello, registers the worker together with its stream's
//! [`Link`] (a bounded queue of messages, then the status the stream ends with), then a
//! spawned task reads the worker's messages until the stream ends. All cleanup happens in
//! one place after that loop, whatever ended it; the state decides how the stream ends (a
//! violator hears why).

use std::pin::Pin;
use std::time::Duration;

use carpool_proto::pb::{self, worker_message::Kind, workers_server::Workers};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::peer::from_peer;
use crate::driver::{Driver, Link, WORKER_QUEUE};
use crate::error::Error;
use crate::state::{Event, Reply, StreamEnd, WorkerId};

/// How long a new stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the worker stream.
pub(crate) struct WorkersService {
    driver: Driver,
}

impl WorkersService {
    /// A service over `driver`.
    pub(crate) fn new(driver: Driver) -> Self {
        Self { driver }
    }
}

type Down = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Workers for WorkersService {
    type ConnectStream = Down;

    async fn connect(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) | Ok(Ok(None)) => return Err(Error::NoHello.into()),
            Ok(Err(status)) => return Err(from_peer(&status).unwrap_or(status)),
            Ok(Ok(Some(m))) => m,
        };
        let hello = match first.kind {
            Some(Kind::Hello(hello)) => hello,
            _ => return Err(Error::HelloExpected.into()),
        };
        let id = WorkerId::new(&hello.worker_id);
        let (messages, rx) = mpsc::channel(WORKER_QUEUE);
        let (end, ended) = oneshot::channel::<Status>();
        let (outcome, conn) = self
            .driver
            .update_linked(Some(Link { messages, end }), |s, now, effects| {
                match s
                    .handle(now, Event::Hello(hello), effects)
                    .and_then(Reply::connected)
                {
                    Ok(conn) => (Ok(()), Some(conn)),
                    Err(e) => (Err(e), None),
                }
            });
        outcome.map_err(crate::error::status)?;
        let conn = conn.ok_or_else(|| Status::internal("a connected worker has no connection number"))?;
        let driver = self.driver.clone();
        tokio::spawn(async move {
            let end = match read_worker(&driver, &id, &mut inbound).await {
                Ok(()) => {
                    debug!(worker = %id, "worker closed its stream");
                    StreamEnd::Closed
                }
                Err(Ended::Broken(status)) => {
                    warn!(worker = %id, %status, "worker stream broke");
                    StreamEnd::Broken
                }
                Err(Ended::Violation(e)) => {
                    warn!(worker = %id, error = %e, "worker broke the protocol; ending its stream");
                    StreamEnd::Violation(e.into_core())
                }
            };
            driver.apply(Event::Disconnect {
                worker: id,
                conn,
                end,
            });
            driver.notify_disconnect();
        });
        // Its messages, then the status the state ends it with (none: a clean end).
        let last = futures::stream::once(ended).filter_map(|r| async move { r.ok().map(Err) });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(Ok).chain(last),
        )))
    }
}

/// Why a worker stream's read loop stopped early.
enum Ended {
    /// The transport failed.
    Broken(Status),
    /// The worker sent something it must not (including bytes that do not decode, or a
    /// message over the size limit).
    Violation(Error),
}

/// Feeds a worker's messages to the driver until its stream ends.
async fn read_worker(
    driver: &Driver,
    id: &WorkerId,
    inbound: &mut Streaming<pb::WorkerMessage>,
) -> Result<(), Ended> {
    loop {
        let msg = match inbound.message().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(()),
            Err(status) => {
                return Err(match from_peer(&status) {
                    Some(bad) => Ended::Violation(Error::PeerMessage(bad)),
                    None => Ended::Broken(status),
                });
            }
        };
        let applied = match msg.kind {
            Some(Kind::Sample(sample)) => driver
                .handle(Event::Sample {
                    worker: id.clone(),
                    sample,
                })
                .map(drop),
            Some(Kind::Results(r)) => driver
                .handle(Event::Results {
                    worker: id.clone(),
                    results: r.results,
                })
                .map(drop),
            Some(Kind::Hello(_)) => Err(Error::DuplicateHello(id.to_string())),
            None => Err(Error::EmptyMessage(id.to_string())),
        };
        applied.map_err(Ended::Violation)?;
    }
}
