//! The gRPC services: each turns requests into driver events and decisions into replies.

pub(crate) mod cluster;
pub(crate) mod peer;
pub(crate) mod tasks;
pub(crate) mod workers;
