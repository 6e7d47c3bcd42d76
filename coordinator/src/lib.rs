//! carpool's coordinator.
//!
//! - [`config`]: the settings ([`Config`]), built by the binary's flags or by tests.
//! - `carpool-core` (its own crate, no I/O): the state, the scheduling rule, the simulator
//!   and the cost model; this crate carries out what it decides.
//! - [`driver`]: the lock around the state, and the effects each event returns carried out.
//! - [`service`]: the gRPC services (Tasks, Cluster, Workers).
//! - [`spawner`]: how workers are started (local processes, or nothing for external ones).
//! - [`auth`]: bearer tokens for workers and clients.
//! - [`journal`]: the embedded store behind `--state-dir` (accepted means durable).
//! - [`server`]: [`run`] serves everything on a bound listener until shutdown.
//! - `metrics`: what `/metrics` exports (the registry, observations, the Stats snapshot).
//! - `dashboard`: the figures of the page at `/` (times per function, failures, history).
//! - `web`: the listener on `--metrics-listen` that serves `/metrics` and the dashboard
//!   (connection budget, token, live updates).

pub mod auth;
pub mod config;
mod dashboard;
mod driver;
mod error;
mod journal;
mod listener;
mod metrics;
mod server;
mod service;
mod spawner;
mod standby;
mod web;

// The core's modules, under the names the coordinator's files use.
pub use carpool_core::billing;
use carpool_core::{scheduler, state};

pub use config::{Config, Placement, SpawnerKind};
pub use error::{Error, Result};
pub use server::run;
