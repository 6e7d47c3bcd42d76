//! Section `handlers`: what task code costs per task, through the real `carpool-worker`
//! with default flags (one worker, 2 vCPUs), three ways:
//!
//! - the Rust built-in `echo`;
//! - `--exec`: a Python command per task (payload on stdin, output on stdout);
//! - `--runtime`: an unchanged Python Lambda handler under AWS's awslambdaric, the worker
//!   hosting the Lambda Runtime API (as many runtime processes as its limit).
//!
//! Each is a no-op returning its input. Latency is submit to result one at a time (what a
//! task pays on top of its own work); throughput is Map with the adaptive limit.

use super::*;

/// The Python handler and the `--exec` command, written to a temporary directory.
const HANDLER: &str = "def handler(event, context):\n    return event\n";
const EXEC: &str = "import sys\nsys.stdout.write(sys.stdin.read())\n";

pub(super) async fn handlers(opts: &BenchOptions, python: &str) -> Result<Vec<Row>, String> {
    crate::shared::check_awslambdaric(python)
        .map_err(|e| format!("section handlers: {e}, or pass --python PATH"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("bench_handler.py"), HANDLER).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("bench_exec.py"), EXEC).map_err(|e| e.to_string())?;
    let at = dir.path().display().to_string();
    let runtime = format!("py=cd '{at}' && exec '{python}' -m awslambdaric bench_handler.handler");
    let exec = format!("py=exec '{python}' '{at}/bench_exec.py'");
    // A process per task is slow: fewer tasks for --exec.
    let latency = opts.latency_tasks.min(300);
    let kinds: [(&str, &str, &[&str], usize); 3] = [
        (
            "builtin",
            "Rust built-in (echo)",
            &[],
            opts.throughput_tasks.min(20_000),
        ),
        (
            "exec",
            "--exec (a python3 process per task)",
            &["--exec", &exec],
            latency.min(500),
        ),
        (
            "runtime",
            "--runtime (Python handler under awslambdaric)",
            &["--runtime", &runtime],
            opts.throughput_tasks.min(20_000),
        ),
    ];
    let mut rows = Vec::new();
    let mut p50 = Vec::new();
    for (key, label, flags, tasks) in kinds {
        let function = if key == "builtin" { "echo" } else { "py" };
        let mut args = vec!["--memory-mb", "3538", "--max-workers", "1", "--keep-alive", "1h"];
        args.extend_from_slice(flags);
        let (coord, url) = proc::coordinator(&args)?;
        let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
        // The worker's cold start (and the runtime's init) is not a task's cost.
        let warm = client.run(function, "{}").await.map_err(|e| e.to_string())?;
        if warm.state() != carpool_client::TaskState::Succeeded {
            return Err(format!("section handlers: {label}: {}", warm.error));
        }
        let starts: fake::StartTimes = Arc::default();
        let event = Bytes::from_static(b"{}");
        let (total, _) = dispatch_latency_of(&client, function, event.clone(), &starts, latency).await?;
        let rate = repeat(opts.reps, || {
            map_throughput_of(&client, function, event.clone(), tasks)
        })
        .await?;
        let limit = client
            .workers(function)
            .await
            .map_err(|e| e.to_string())?
            .first()
            .map_or(0, |w| w.slots);
        let median = us(total.percentile(50.0));
        p50.push(median);
        rows.push(row(
            &format!("handler_{key}_p50_us"),
            &format!("{label}: submit to result p50, one at a time"),
            median,
            "us",
        ));
        rows.push(row(
            &format!("handler_{key}_tasks_per_s"),
            &format!("{label}: no-op tasks/s through Map (limit {limit})"),
            rate,
            "tasks/s",
        ));
        drop(coord);
    }
    rows.push(row(
        "handler_exec_overhead_us",
        "per-task overhead of --exec over the built-in (p50)",
        p50[1] - p50[0],
        "us",
    ));
    rows.push(row(
        "handler_runtime_overhead_us",
        "per-task overhead of a handler under the Runtime API over the built-in (p50)",
        p50[2] - p50[0],
        "us",
    ));
    Ok(rows)
}
