//! `carpool-worker`: a worker with the built-in functions `echo`, `sleep` and `spin`, or
//! any command through `--exec`.

use std::process::ExitCode;

use carpool_worker::builtin::Builtin;
use carpool_worker::cli::{WorkerArgs, run_main};
use clap::Parser;

/// Runs carpool tasks: dials the coordinator, holds one stream, runs what it assigns.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Serve the function with this shell command: payload on stdin, output on stdout,
    /// non-zero exit is a task error carrying stderr.
    #[arg(long, env = "CARPOOL_EXEC")]
    exec: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match Builtin::for_function(&cli.worker.function, cli.exec) {
        Ok(handler) => run_main(cli.worker, handler),
        Err(msg) => {
            eprintln!("carpool-worker: {msg}");
            ExitCode::from(2)
        }
    }
}
