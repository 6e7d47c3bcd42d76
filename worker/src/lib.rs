//! carpool's worker: holds one stream to the coordinator, runs the tasks it assigns
//! concurrently, and reports CPU and memory samples.
//!
//! - [`handler`]: the [`Handler`] trait (any async closure) and [`Task`].
//! - [`session`]: one session: hello, then assignments, cancellations, results, samples.
//! - [`sampler`]: the worker's own CPU and memory (its process tree or its cgroup).
//! - [`children`]: the processes it started, counted as its own.
//! - [`builtin`]: the binary's built-in functions (`echo`, `sleep`, `spin`, `hold`, `mixed`,
//!   `thumbnail`, `--exec`); [`thumbnail`]: the paper's task, on S3 or a data directory.
//! - [`cli`]: the standard flags and process setup, for `carpool-worker` and your own.
//! - [`runtime`]: existing Lambda handlers as task code: the worker hosts the Lambda Runtime
//!   API and runs copies of a runtime process (`--runtime`), as many as its limit.
//! - [`lambda`]: Lambda mode (detected from `AWS_LAMBDA_RUNTIME_API`): one session per
//!   invocation, the invocation's deadline as the execution timeout.
//!
//! A worker of your own in a few lines:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     carpool_worker::main(|task: carpool_worker::Task| async move {
//!         Ok::<_, String>(task.payload) // echo
//!     })
//! }
//! ```

pub mod builtin;
pub mod children;
pub mod cli;
pub mod config;
pub mod error;
pub mod handler;
pub mod lambda;
pub mod runtime;
pub mod sampler;
mod served;
pub mod session;
#[cfg(feature = "thumbnail")]
pub mod thumbnail;

use std::process::ExitCode;

use clap::Parser;

pub use config::WorkerConfig;
pub use error::{Error, Result};
pub use handler::{Handler, Task};
pub use session::{EndReason, Summary};

/// Runs one session with `handler` until the coordinator says Shutdown.
pub async fn run<H: Handler>(config: WorkerConfig, handler: H) -> Result<Summary> {
    session::run_session(config, handler).await
}

/// The whole program of a custom worker: parses the standard flags ([`cli::WorkerArgs`]),
/// sets up logging and CPU pinning, and runs one session with `handler`. Deployed as a
/// Lambda function, it serves one session per invocation instead (see [`lambda`]).
pub fn main<H: Handler>(handler: H) -> ExitCode {
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        worker: cli::WorkerArgs,
    }
    cli::run_main(Flags::parse().worker, handler)
}

/// A short random-enough suffix for generated worker ids.
fn session_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{nanos:08x}")
}
