//! carpool's pure core: what the coordinator decides, and the rules a worker carries out.
//! Nothing here does I/O or depends on an async runtime or on gRPC (Cargo enforces it:
//! this crate depends on neither): every decision takes the time and what it decides on as
//! arguments and returns what to do, so it is unit-tested on scripted sequences and runs
//! the same in the simulator as in the coordinator.
//!
//! - [`config`]: the settings the core decides with, in parts ([`config::Limits`],
//!   [`config::Fleet`], [`config::Functions`]).
//! - [`state`]: the owner of pools, tasks and workers; [`state::State::handle`] takes one
//!   [`state::Event`] and returns its effects.
//! - [`scheduler`]: the scheduling rule as pure functions, and the adaptive limit.
//! - [`sim`]: the same state driven by a virtual clock, for experiments at any scale.
//! - [`billing`]: the Lambda cost model.
//! - [`pace`]: how a worker paces the starts of its tasks.
//! - [`error`]: what the core refuses, with the [`Kind`] of each refusal.

pub mod billing;
pub mod config;
pub mod error;
pub mod pace;
pub mod scheduler;
pub mod sim;
pub mod state;

pub use config::Config;
pub use error::{Error, Kind, Result};
