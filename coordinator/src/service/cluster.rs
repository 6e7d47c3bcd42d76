//! `carpool.v1.Cluster`: the operator's view of the fleet and the bill.

use carpool_proto::pb::{self, cluster_server::Cluster};
use tonic::{Request, Response, Status};

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
}
