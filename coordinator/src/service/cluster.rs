//! `carpool.v1.Cluster`: the operator's view of the fleet and the bill.

use carpool_proto::pb::{self, cluster_server::Cluster};
use tonic::{Request, Response, Status};

use crate::hub::Hub;

/// Serves ListWorkers and Stats.
pub struct ClusterService {
    hub: Hub,
}

impl ClusterService {
    /// A service over `hub`.
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let function = request.into_inner().function;
        let workers = self.hub.read(|s, now| s.list_workers(&function, now));
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn stats(&self, _: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(self.hub.read(|s, now| s.stats(now))))
    }
}
