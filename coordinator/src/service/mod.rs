//! The gRPC services: each turns requests into hub events and decisions into replies.

pub mod cluster;
pub(crate) mod peer;
pub mod tasks;
pub mod workers;
