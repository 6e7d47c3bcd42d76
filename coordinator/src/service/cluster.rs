//! `carpool.v1.Cluster`: the operator's view of the fleet and the bill.

use carpool_proto::pb::{self, cluster_server::Cluster};
use tonic::{Request, Response, Status};

use carpool_core::state::{Event, Reply};

use crate::driver::Driver;

/// Serves ListWorkers and Stats.
pub(crate) struct ClusterService {
    driver: Driver,
}

impl ClusterService {
    /// A service over `driver`.
    pub(crate) fn new(driver: Driver) -> Self {
        Self { driver }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let function = request.into_inner().function;
        let workers = self.driver.read(|s, now| s.list_workers(&function, now));
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn stats(&self, _: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(self.driver.read(|s, now| s.stats(now))))
    }

    async fn relearn(
        &self,
        request: Request<pb::RelearnRequest>,
    ) -> Result<Response<pb::RelearnResponse>, Status> {
        let function = request.into_inner().function;
        let reply = self.driver.handle(Event::Relearn(function.clone()))?;
        let Reply::Relearned { levels, costs } = reply else {
            return Err(Status::internal(format!(
                "the state answered a relearn with {reply:?}"
            )));
        };
        // Acknowledged once durable: a restart or a takeover must not bring it back.
        self.driver.durable().await.map_err(|e| {
            Status::unavailable(format!(
                "forgot what was learned of {function:?}, but the journal cannot write it now ({e}): a restart could bring it back; retry"
            ))
        })?;
        Ok(Response::new(pb::RelearnResponse {
            levels: u32::try_from(levels).unwrap_or(u32::MAX),
            costs: u32::try_from(costs).unwrap_or(u32::MAX),
        }))
    }
}
