//! `carpool.v1.Workers/Connect`: one stream per worker for its whole life.
//!
//! The handler waits for the hello, registers the worker with a clone of the stream's
//! sender (how assignments and shutdowns are pushed later), then a spawned task reads the
//! worker's messages until the stream ends. All cleanup happens in one place after that
//! loop, whatever ended it.

use std::time::Duration;

use carpool_proto::pb::{self, worker_message::Kind, workers_server::Workers};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::error::Error;
use crate::hub::Hub;
use crate::state::{StreamEnd, WorkerId};

/// How long a new stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the worker stream.
pub struct WorkersService {
    hub: Hub,
}

impl WorkersService {
    /// A service over `hub`.
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl Workers for WorkersService {
    type ConnectStream = UnboundedReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Error::NoHello)??
            .ok_or(Error::NoHello)?;
        let hello = match first.kind {
            Some(Kind::Hello(hello)) => hello,
            _ => return Err(Error::HelloExpected.into()),
        };
        let id = WorkerId::new(&hello.worker_id);
        let (tx, rx) = mpsc::unbounded_channel();
        let errors = tx.clone();
        let conn = self.hub.update(|s, now, fx| s.connect(hello, tx, now, fx))?;
        let hub = self.hub.clone();
        tokio::spawn(async move {
            let end = match read_worker(&hub, &id, &mut inbound).await {
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
                    // Tell the worker why, if it still listens.
                    let _ = errors.send(Err(e.into()));
                    StreamEnd::Violation
                }
            };
            drop(errors);
            hub.update(|s, now, fx| s.disconnect(&id, conn, end, now, fx));
            hub.notify_disconnect();
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// Why a worker stream's read loop stopped early.
enum Ended {
    /// The transport failed.
    Broken(Status),
    /// The worker sent something it must not.
    Violation(Error),
}

/// Feeds a worker's messages to the hub until its stream ends.
async fn read_worker(
    hub: &Hub,
    id: &WorkerId,
    inbound: &mut Streaming<pb::WorkerMessage>,
) -> Result<(), Ended> {
    while let Some(msg) = inbound.message().await.map_err(Ended::Broken)? {
        let applied = match msg.kind {
            Some(Kind::Sample(sample)) => hub.update(|s, now, fx| s.sample(id, sample, now, fx)),
            Some(Kind::Results(r)) => hub.update(|s, now, fx| s.results(id, r.results, now, fx)),
            Some(Kind::Hello(_)) => Err(Error::DuplicateHello(id.to_string())),
            None => Err(Error::EmptyMessage(id.to_string())),
        };
        applied.map_err(Ended::Violation)?;
    }
    Ok(())
}
