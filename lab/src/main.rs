//! `carpool-lab`: carpool's lab, apart from the product: the demo, the comparison with
//! Lambda as it bills, the benchmark, the paper's experiment and the simulator. `carpool`
//! hands these commands here (`carpool demo` runs `carpool-lab demo`), so that the user's
//! command depends on the client alone, while these pull in the coordinator, the worker and
//! a PostgreSQL client.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod bench;
mod compare;
mod demo;
mod experiment;
mod shared;
mod simulate;

use bench::BenchOptions;
use clap::{Parser, Subcommand};
use demo::DemoOptions;
use experiment::ExperimentOptions;

/// carpool's lab: the demo, the comparison, the benchmark, the paper's experiment, the
/// simulator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Log format on stderr: `text`, or `json` (one object per line, task and worker ids as
    /// fields).
    #[arg(long, global = true, env = "CARPOOL_LOG_FORMAT", default_value = "text", value_parser = carpool_proto::LOG_FORMATS)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure the control plane: dispatch latency, throughput, fleet scale, worker overhead,
    /// memory per pending task, against raw tonic and the paper's polling design.
    Bench(BenchArgs),
    /// Each kind of workload (waiting, CPU, memory, mixed) on local workers: Lambda as it
    /// bills (warm sandboxes, one request each, init billed), one cold invocation per task
    /// (the worst case), static slots = vCPUs, the best fixed --slots of a sweep, and
    /// adaptive (default flags); then the same simulated at the paper's scale.
    Compare(CompareArgs),
    /// The paper's experiment: thumbnail tasks per memory size, carpool against Lambda as
    /// it bills and one cold invocation per task; measured where this machine can host it,
    /// simulated for all.
    Experiment(ExperimentArgs),
    /// Simulate a handler of a measured shape (its runtime copy's init and size, its task's
    /// CPU, wait and memory) at sizes and fleets this machine cannot host: adaptive, each
    /// fixed --slots of a sweep and Lambda as it bills, two batches each.
    Simulate(SimulateArgs),
    /// Run a CPU-bound and an I/O-bound batch on local workers as carpool (default flags),
    /// as Lambda as it bills (warm sandboxes, one request each, init billed) and as one cold
    /// invocation per task, and compare.
    Demo(DemoArgs),
}

/// The flags of `bench`.
#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// A tiny run of every measurement (seconds; what the test suite runs).
    #[arg(long)]
    tiny: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Repetitions of each throughput figure [default: 3, or 1 with --tiny].
    #[arg(long)]
    reps: Option<usize>,
    /// Fleet sizes to measure, e.g. "100,1000,10000".
    #[arg(long, value_delimiter = ',')]
    fleet: Vec<usize>,
    /// Only these sections: raw, dispatch, real, durability, fleet, idle, pending, held,
    /// polling, handlers, postgres.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A Python with awslambdaric: adds section `handlers` (per-task overhead of a Python
    /// Lambda handler under the Runtime API, against --exec and the built-in).
    #[arg(long)]
    python: Option<String>,
    /// A PostgreSQL database of the bench's own (`postgres://…`; it leaves its tasks
    /// there): adds section `postgres` (Map and Submit in memory, with --state-dir and
    /// with --state-url through a real worker; kill -9 takeover time).
    #[arg(long)]
    state_url: Option<String>,
}

/// The flags of `compare`.
#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// A few tasks of each and a two-value sweep (what the test suite runs).
    #[arg(long)]
    tiny: bool,
    /// Only these workloads: io, cpu, memory, mixed, varied (mixed work whose tasks vary).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the measured runs: simulate only.
    #[arg(long)]
    simulate_only: bool,
    /// Also simulate TASKS:WORKERS, e.g. 1000000:1000.
    #[arg(long)]
    scale: Option<String>,
    /// Print the measured figures as one JSON object after the tables.
    #[arg(long)]
    json: bool,
}

/// The flags of `experiment`.
#[derive(clap::Args, Debug)]
struct ExperimentArgs {
    /// Tasks per mode and size.
    #[arg(long, default_value_t = 100)]
    tasks: usize,
    /// Cap on concurrent invocations (the paper's 8).
    #[arg(long, default_value_t = 8)]
    max_workers: u32,
    /// Memory sizes in MB.
    #[arg(long, value_delimiter = ',', default_value = "2048,4096,6144,8192,10240")]
    sizes: Vec<u32>,
    /// Where the input image, thumbnails and chart.svg go [default: a new temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Width of the generated input image (2400 makes a ~3 MB JPEG).
    #[arg(long, default_value_t = 2400)]
    image_width: u32,
    /// The carpool-worker binary [default: next to this one].
    #[arg(long, env = "CARPOOL_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
    /// Also simulate TASKS:WORKERS at the smallest size, e.g. 1000000:1000.
    #[arg(long)]
    scale: Option<String>,
}

/// The flags of `simulate`.
#[derive(clap::Args, Debug)]
struct SimulateArgs {
    /// Tasks per batch.
    #[arg(long, default_value_t = 100)]
    tasks: usize,
    /// Cap on concurrent invocations.
    #[arg(long, default_value_t = 8)]
    max_workers: u32,
    /// Memory sizes in MB.
    #[arg(long, value_delimiter = ',', default_value = "2048,4096")]
    sizes: Vec<u32>,
    /// Fixed --slots to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    sweep: Vec<u32>,
    /// CPU time of one runtime copy's init (interpreter and imports), e.g. "700ms".
    #[arg(long, value_parser = humantime::parse_duration)]
    init_cpu: Duration,
    /// Memory a ready copy holds, MB.
    #[arg(long)]
    copy_mb: f64,
    /// CPU time of one task.
    #[arg(long, value_parser = humantime::parse_duration)]
    task_cpu: Duration,
    /// Wait of one task (network), after its CPU.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    task_wait: Duration,
    /// A task's own memory on top of its copy's, MB.
    #[arg(long, default_value_t = 0.0)]
    task_mb: f64,
    /// How much tasks vary: each task's CPU and wait drawn uniformly within this fraction
    /// either side of --task-cpu and --task-wait (0 to 0.9; 0: every task alike, and tasks
    /// started together stay in step).
    #[arg(long, default_value_t = 0.0, value_parser = spread)]
    task_spread: f64,
    /// A worker's spawn to its hello (with `--world lambda`: the median).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    cold_start: Duration,
    /// Where workers live: `local` (this machine's model: fixed cold starts, whole vCPUs)
    /// or `lambda` (cold starts log-normal around --cold-start with a tail, CPU in
    /// proportion to memory: one vCPU's worth at 1769 MB).
    #[arg(long, default_value = "local", value_parser = ["local", "lambda"])]
    world: String,
    /// Print one JSON object per way, size and batch instead of a table.
    #[arg(long)]
    json: bool,
}

/// The flags of `demo`.
#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// CPU-bound (spin) tasks per mode.
    #[arg(long, default_value_t = 40)]
    tasks: usize,
    /// CPU milliseconds per spin task.
    #[arg(long, default_value_t = 200)]
    spin_ms: u64,
    /// Memory size of the CPU batch's workers (vCPUs follow it: 2048 MB is 2 vCPUs).
    #[arg(long, default_value_t = 2048)]
    memory_mb: u32,
    /// Cap on concurrent workers of the CPU batch [default: this machine's cores / the
    /// workers' vCPUs].
    #[arg(long)]
    max_workers: Option<u32>,
    /// I/O-bound (sleep) tasks per mode; 0 skips that batch.
    #[arg(long, default_value_t = 400)]
    io_tasks: usize,
    /// Milliseconds each sleep task waits.
    #[arg(long, default_value_t = 100)]
    sleep_ms: u64,
    /// Memory size of the I/O batch's workers.
    #[arg(long, default_value_t = 1024)]
    io_memory_mb: u32,
    /// Cap on concurrent workers of the I/O batch.
    #[arg(long, default_value_t = 8)]
    io_max_workers: u32,
    /// The carpool-worker binary [default: next to this one].
    #[arg(long, env = "CARPOOL_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
    /// Run both batches as Python Lambda handlers (`handler(event, context)`) under
    /// awslambdaric, hosted by the workers (`--runtime`), with this Python (it needs
    /// `pip install awslambdaric`) [default: the Rust built-ins].
    #[arg(long)]
    python: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    carpool_proto::init_logging(&cli.log_format, "warn");
    match execute(cli).await {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("carpool: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command `cli` names.
async fn execute(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Bench(args) => bench_command(args).await?,
        Command::Compare(args) => compare_command(args).await?,
        Command::Experiment(args) => experiment_command(args).await?,
        Command::Simulate(args) => simulate_command(&args),
        Command::Demo(args) => demo_command(args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `demo`: the demo's table.
async fn demo_command(args: DemoArgs) -> Result<(), String> {
    let opts = DemoOptions {
        tasks: args.tasks,
        spin_ms: args.spin_ms,
        memory_mb: args.memory_mb,
        max_workers: args.max_workers,
        io_tasks: args.io_tasks,
        sleep_ms: args.sleep_ms,
        io_memory_mb: args.io_memory_mb,
        io_max_workers: args.io_max_workers,
        worker_bin: args.worker_bin,
        python: args.python,
        progress: true,
    };
    let reports = demo::run(&opts).await.map_err(|e| e.to_string())?;
    print!("{}", demo::table(&reports));
    Ok(())
}

/// `--task-spread`: a fraction from 0 to [`carpool_core::sim::MAX_SPREAD`].
fn spread(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    let max = carpool_core::sim::MAX_SPREAD;
    if (0.0..=max).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a fraction from 0 to {max}"))
    }
}

/// `simulate`: the handler model's ways, as a table or JSON lines.
fn simulate_command(args: &SimulateArgs) {
    let model = simulate::HandlerModel {
        init_cpu: args.init_cpu,
        copy_mb: args.copy_mb,
        task_cpu: args.task_cpu,
        task_wait: args.task_wait,
        task_mb: args.task_mb,
        task_spread: args.task_spread,
        cold_start: args.cold_start,
        lambda_world: args.world == "lambda",
    };
    let ways = simulate::run(&model, &args.sizes, args.tasks, args.max_workers, &args.sweep);
    if args.json {
        print!("{}", simulate::json_lines(&ways, args.tasks));
    } else {
        print!("{}", simulate::table(&ways, args.tasks));
        if model.lambda_world {
            println!(
                "(Lambda-like world: each figure is the mean of {} cold-start draws that every way and batch shares)",
                simulate::DRAWS
            );
        }
        if let Some(verdict) = simulate::verdict(&ways) {
            print!("{verdict}");
        }
    }
}

/// `experiment`: the paper's experiment, on local workers and simulated at `--scale`.
async fn experiment_command(args: ExperimentArgs) -> Result<(), String> {
    let scale = args.scale.as_deref().map(experiment::parse_scale).transpose()?;
    let opts = ExperimentOptions {
        tasks: args.tasks,
        max_workers: args.max_workers,
        sizes: args.sizes,
        dir: args.dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("carpool-experiment-{}", std::process::id()))
        }),
        worker_bin: args.worker_bin,
        image_width: args.image_width,
    };
    experiment::report(&opts, scale).await
}

/// `compare`: each workload against Lambda as it bills, section by section as they end.
async fn compare_command(args: CompareArgs) -> Result<(), String> {
    let opts = crate::compare::CompareOptions {
        tiny: args.tiny,
        only: args.only,
        simulate_only: args.simulate_only,
        scale: args.scale.as_deref().map(experiment::parse_scale).transpose()?,
    };
    let done = crate::compare::report(&opts, |section| print!("{section}")).await?;
    if args.json {
        println!("{}", crate::compare::json(&done));
    }
    Ok(())
}

/// `bench`: the measurements, row by row as they end, or one JSON object.
async fn bench_command(args: BenchArgs) -> Result<(), String> {
    let mut opts = if args.tiny {
        BenchOptions::tiny()
    } else {
        BenchOptions::full()
    };
    if let Some(r) = args.reps {
        opts.reps = r;
    }
    if !args.fleet.is_empty() {
        opts.fleet = args.fleet;
    }
    opts.only = args.only;
    opts.python = args.python;
    opts.state_url = args.state_url;
    let json = args.json;
    if !json {
        println!("{}", bench::table_header(&opts));
    }
    let rows = bench::run(&opts, |r| {
        if !json {
            println!("{}", bench::table_row(r));
        }
    })
    .await?;
    if json {
        println!("{}", bench::json(&rows));
    }
    Ok(())
}
