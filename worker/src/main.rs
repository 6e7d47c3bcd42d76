//! `carpool-worker`: a worker with the built-in functions `echo`, `sleep` and `spin`, or
//! any command through `--exec`.

use std::process::ExitCode;

use carpool_worker::builtin::Builtin;
use carpool_worker::cli::{WorkerArgs, run_main_with};
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
    let exec = cli.exec;
    // Checked up front (outside Lambda), so a bad --function fails before any connection.
    if let Some(function) = &cli.worker.function
        && let Err(msg) = Builtin::for_function(function, exec.clone())
    {
        eprintln!("carpool-worker: {msg}");
        return ExitCode::from(2);
    }
    run_main_with(cli.worker, move |function| {
        Builtin::for_function(function, exec.clone())
    })
}
