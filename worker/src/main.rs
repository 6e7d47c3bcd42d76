//! `carpool-worker`: a worker with the built-in functions (`echo`, `sleep`, `spin`, `hold`,
//! `mixed`, `thumbnail`), any command through `--exec`, or existing Lambda handlers through
//! `--runtime`.

use std::process::ExitCode;

use carpool_worker::builtin::{Builtin, BuiltinOptions};
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
    #[arg(long, env = "CARPOOL_EXEC", conflicts_with = "runtime")]
    exec: Option<String>,
    /// The only local directory the `thumbnail` built-in reads and writes [default: none:
    /// only s3:// objects].
    #[arg(long, env = "CARPOOL_DATA_DIR")]
    data_dir: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = BuiltinOptions {
        exec: cli.exec,
        data_dir: cli.data_dir,
        memory_mb: cli.worker.memory_mb,
    };
    // Checked up front (outside Lambda), so a bad --function fails before any connection.
    if let Some(function) = &cli.worker.function
        && cli.worker.runtime.is_none()
        && let Err(msg) = Builtin::for_function(function, &options)
    {
        eprintln!("carpool-worker: {msg}");
        return ExitCode::from(2);
    }
    run_main_with(cli.worker, move |function| {
        Builtin::for_function(function, &options)
    })
}
