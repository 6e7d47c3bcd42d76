//! carpool's coordinator.
//!
//! - [`config`]: the settings ([`Config`]), built by the binary's flags or by tests.
//! - [`scheduler`]: the scheduling rule as pure functions (no I/O, time is an argument).
//! - [`state`]: the one owner of pools, tasks and workers; applies the rule on each event.
//! - [`driver`]: the lock around the state, and the effects each event returns carried out.
//! - [`service`]: the gRPC services (Tasks, Cluster, Workers).
//! - [`spawner`]: how workers are started (local processes, or nothing for external ones).
//! - [`billing`]: the Lambda cost model.
//! - [`auth`]: bearer tokens for workers and clients.
//! - [`journal`]: the embedded store behind `--state-dir` (accepted means durable).
//! - [`server`]: [`run`] serves everything on a bound listener until shutdown.
//! - `metrics`: `/metrics` for Prometheus, on `--metrics-listen`.
//! - [`sim`]: the same scheduling state driven by a virtual clock, for experiments at any scale.

pub mod auth;
pub mod billing;
pub mod config;
mod driver;
mod error;
mod journal;
mod listener;
mod metrics;
mod scheduler;
mod server;
mod service;
pub mod sim;
mod spawner;
mod standby;
mod state;

pub use config::{Config, Placement, SpawnerKind};
pub use error::{Error, Result};
pub use server::run;
