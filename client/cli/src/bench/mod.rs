//! `carpool bench`: what the control plane itself costs, measured against the transport's
//! own limits and the paper's polling design in the same run.
//!
//! The coordinator under test is the real `carpool-coordinator` binary in its own process
//! (so its CPU and memory can be read from /proc). What a user gets is measured through the
//! real `carpool-worker`, spawned by the coordinator with default flags (section `real`,
//! and the idle worker); lightweight in-process streams ([`fake`]) that answer at once show
//! the coordinator's own ceiling, and are labelled so.
//!
//! - [`proc`]: reading CPU and RSS, starting the coordinator.
//! - [`fake`]: simulated workers.
//! - [`baselines`]: raw tonic unary/bidi and the HTTP polling design.
//! - [`stats`] holds the percentiles.

pub(crate) mod baselines;
pub(crate) mod fake;
pub(crate) mod proc;
pub(crate) mod stats;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use carpool_proto::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};

use carpool_client::Client;
use stats::{Samples, median};

/// How much to measure.
#[derive(Clone, Debug)]
pub(crate) struct BenchOptions {
    /// Repetitions of each throughput measurement (the median is reported).
    pub reps: usize,
    /// Tasks for each latency measurement (one at a time).
    pub latency_tasks: usize,
    /// Tasks per throughput run.
    pub throughput_tasks: usize,
    /// Fleet sizes of simulated workers.
    pub fleet: Vec<usize>,
    /// Pending tasks for the memory measurement.
    pub pending: usize,
    /// Seconds an idle worker is watched.
    pub idle_secs: u64,
    /// Poll interval of the paper's design.
    pub poll_interval: Duration,
    /// Tasks through the polling design.
    pub poll_tasks: usize,
    /// Only these sections (raw, dispatch, real, durability, fleet, idle, pending, polling);
    /// empty: all.
    pub only: Vec<String>,
}

impl BenchOptions {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

impl BenchOptions {
    /// The full benchmark (a few minutes).
    pub(crate) fn full() -> Self {
        Self {
            reps: 3,
            latency_tasks: 2000,
            throughput_tasks: 200_000,
            fleet: vec![100, 1000, 10_000],
            pending: 1_000_000,
            idle_secs: 10,
            poll_interval: Duration::from_millis(100),
            poll_tasks: 50,
            only: Vec::new(),
        }
    }

    /// A tiny run that exercises every measurement in seconds (the test suite's).
    pub(crate) fn tiny() -> Self {
        Self {
            reps: 1,
            latency_tasks: 50,
            throughput_tasks: 2000,
            fleet: vec![20],
            pending: 2000,
            idle_secs: 1,
            poll_interval: Duration::from_millis(20),
            poll_tasks: 5,
            only: Vec::new(),
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    /// Machine-readable key.
    pub key: String,
    /// What was measured.
    pub what: String,
    /// The figure.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// The target, as text; empty for baselines.
    pub target: String,
    /// Whether the target is met (`None` without a target).
    pub met: Option<bool>,
}

fn row(key: &str, what: &str, value: f64, unit: &'static str) -> Row {
    Row {
        key: key.into(),
        what: what.into(),
        value,
        unit,
        target: String::new(),
        met: None,
    }
}

fn at_most(mut r: Row, limit: f64) -> Row {
    r.target = format!("<= {limit} {}", r.unit);
    r.met = Some(r.value <= limit);
    r
}

fn at_least(mut r: Row, limit: f64) -> Row {
    r.target = format!(">= {limit} {}", r.unit);
    r.met = Some(r.value >= limit);
    r
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs every measurement, handing each row to `report` as soon as it is known.
pub(crate) async fn run(opts: &BenchOptions, mut report: impl FnMut(&Row)) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let mut emit = |r: Row, rows: &mut Vec<Row>| {
        report(&r);
        rows.push(r);
    };
    proc::raise_nofile();

    // The transport's own limits.
    if opts.wants("raw") {
        let raw = baselines::raw_server().await?;
        let rtt = baselines::unary_rtt(&raw, opts.latency_tasks).await?;
        emit(
            row(
                "raw_unary_p50_us",
                "raw tonic unary round trip p50",
                us(rtt.percentile(50.0)),
                "us",
            ),
            &mut rows,
        );
        let ping = baselines::bidi_rtt(&raw, opts.latency_tasks).await?;
        emit(
            row(
                "raw_bidi_rtt_p50_us",
                "raw tonic bidi round trip on an open stream p50",
                us(ping.percentile(50.0)),
                "us",
            ),
            &mut rows,
        );
        let mut echo = Vec::new();
        for _ in 0..opts.reps {
            echo.push(baselines::bidi_echo(&raw, opts.throughput_tasks).await?);
        }
        emit(
            row(
                "raw_bidi_msgs_per_s",
                "raw tonic bidi echo, one stream",
                median(echo),
                "msg/s",
            ),
            &mut rows,
        );
    }

    // Dispatch latency and throughput on a coordinator with two simulated workers.
    if opts.wants("dispatch") {
        let (coord, url) = proc::coordinator(&[
            "--spawner",
            "external",
            "--keep-alive",
            "1h",
            "--max-pending",
            "10000000",
        ])?;
        let starts = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let mut workers = Vec::new();
        for i in 0..2 {
            let ch = fake::channel(&url).await?;
            workers
                .push(fake::spawn_worker(ch, format!("bench-{i}"), "noop", 512, Some(starts.clone())).await?);
        }
        let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
        let (total, to_start) = dispatch_latency(&client, "noop", &starts, opts.latency_tasks).await?;
        emit(
            at_most(
                row(
                    "dispatch_p50_us",
                    "fake workers (coordinator's ceiling): submit to result p50, one at a time",
                    us(total.percentile(50.0)),
                    "us",
                ),
                100.0,
            ),
            &mut rows,
        );
        emit(
            row(
                "dispatch_p99_us",
                "fake workers: submit to result p99",
                us(total.percentile(99.0)),
                "us",
            ),
            &mut rows,
        );
        emit(
            row(
                "start_p50_us",
                "fake workers: submit to task start on the worker p50",
                us(to_start.percentile(50.0)),
                "us",
            ),
            &mut rows,
        );
        emit(
            row(
                "start_p99_us",
                "fake workers: submit to task start on the worker p99",
                us(to_start.percentile(99.0)),
                "us",
            ),
            &mut rows,
        );
        let streamed = streamed_latency(&client, "noop", opts.latency_tasks).await?;
        emit(
            at_most(
                row(
                    "streamed_dispatch_p50_us",
                    "fake workers: submit to result p50 over one Map stream",
                    us(streamed.percentile(50.0)),
                    "us",
                ),
                100.0,
            ),
            &mut rows,
        );
        emit(
            row(
                "streamed_dispatch_p99_us",
                "fake workers: submit to result p99 over one Map stream",
                us(streamed.percentile(99.0)),
                "us",
            ),
            &mut rows,
        );
        let map = repeat(opts.reps, || {
            map_throughput(&client, "noop", opts.throughput_tasks)
        })
        .await?;
        emit(
            at_least(
                row(
                    "map_tasks_per_s",
                    "fake workers (coordinator's ceiling): no-op tasks/s through Map, 2 of them",
                    map,
                    "tasks/s",
                ),
                100_000.0,
            ),
            &mut rows,
        );
        let unary = repeat(opts.reps, || {
            submit_throughput(&client, opts.throughput_tasks / 4, 64)
        })
        .await?;
        emit(
            row(
                "submit_tasks_per_s",
                "fake workers: no-op tasks/s through unary Submit, 64 in flight",
                unary,
                "tasks/s",
            ),
            &mut rows,
        );
        let usage = proc::usage(coord.0.id()).ok_or("coordinator usage")?;
        emit(
            row(
                "coordinator_rss_mb",
                "coordinator RSS after the above",
                usage.rss as f64 / 1e6,
                "MB",
            ),
            &mut rows,
        );
        drop((workers, coord));
    }

    // What a user gets: one real carpool-worker, spawned by the coordinator, default flags.
    if opts.wants("real") {
        let fake = rows.iter().find(|r| r.key == "dispatch_p50_us").map(|r| r.value);
        let fake_streamed = rows
            .iter()
            .find(|r| r.key == "streamed_dispatch_p50_us")
            .map(|r| r.value);
        for r in real_worker(opts, fake, fake_streamed).await? {
            emit(r, &mut rows);
        }
    }

    // The same with --state-dir: what durability costs.
    if opts.wants("durability") {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let state_dir = dir.path().to_string_lossy().into_owned();
        let (coord, url) = proc::coordinator(&[
            "--spawner",
            "external",
            "--keep-alive",
            "1h",
            "--state-dir",
            &state_dir,
            "--max-pending",
            "10000000",
        ])?;
        let mut workers = Vec::new();
        for i in 0..2 {
            let ch = fake::channel(&url).await?;
            workers.push(fake::spawn_worker(ch, format!("durable-{i}"), "noop", 512, None).await?);
        }
        let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
        let durable_map = repeat(opts.reps, || {
            map_throughput(&client, "noop", opts.throughput_tasks)
        })
        .await?;
        emit(
            row(
                "map_tasks_per_s_state_dir",
                "no-op tasks/s through Map with --state-dir",
                durable_map,
                "tasks/s",
            ),
            &mut rows,
        );
        let durable_unary = repeat(opts.reps, || {
            submit_throughput(&client, opts.throughput_tasks / 4, 64)
        })
        .await?;
        emit(
            row(
                "submit_tasks_per_s_state_dir",
                "unary Submit tasks/s with --state-dir (group commit)",
                durable_unary,
                "tasks/s",
            ),
            &mut rows,
        );
        drop((workers, coord));
    }

    if opts.wants("fleet") {
        for &n in &opts.fleet {
            // Half as many dispatches as the one-at-a-time latency (1,000 in a full run:
            // enough for a steady p99).
            for r in fleet(n, (opts.latency_tasks / 2).max(1)).await? {
                emit(r, &mut rows);
            }
        }
    }
    if opts.wants("idle") {
        emit(at_most(idle_worker(opts.idle_secs).await?, 1.0), &mut rows);
    }
    if opts.wants("pending") {
        for r in pending_memory(opts.pending).await? {
            emit(r, &mut rows);
        }
    }
    if opts.wants("polling") {
        let poll = baselines::polling(opts.poll_interval, 2, opts.poll_tasks).await?;
        let label = format!(
            "paper's design: HTTP polling every {} ms, submit to result",
            opts.poll_interval.as_millis()
        );
        emit(
            row(
                "polling_p50_us",
                &format!("{label} p50"),
                us(poll.percentile(50.0)),
                "us",
            ),
            &mut rows,
        );
        emit(
            row(
                "polling_p99_us",
                &format!("{label} p99"),
                us(poll.percentile(99.0)),
                "us",
            ),
            &mut rows,
        );
    }
    Ok(rows)
}

/// Dispatch latency and no-op throughput through one real `carpool-worker` that the
/// coordinator spawns with default flags (2 vCPUs: 3538 MB). The coordinator keeps it alive
/// between measurements (`--keep-alive 1h`, as for the fake workers). Latency targets are
/// 1.5 times the fake workers' figures of the same run, when those were measured.
async fn real_worker(
    opts: &BenchOptions,
    fake: Option<f64>,
    fake_streamed: Option<f64>,
) -> Result<Vec<Row>, String> {
    let (coord, url) = proc::coordinator(&[
        "--memory-mb",
        "3538",
        "--max-workers",
        "1",
        "--keep-alive",
        "1h",
        "--max-pending",
        "10000000",
    ])?;
    let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
    // Spawns the worker; its cold start is not a dispatch.
    client
        .run("echo", Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    let starts: fake::StartTimes = Arc::default();
    let (total, _) = dispatch_latency(&client, "echo", &starts, opts.latency_tasks).await?;
    let streamed = streamed_latency(&client, "echo", opts.latency_tasks).await?;
    let map = repeat(opts.reps, || {
        map_throughput(&client, "echo", opts.throughput_tasks)
    })
    .await?;
    let target = |r: Row, fake: Option<f64>| match fake {
        Some(f) => at_most(r, (1.5 * f).round()),
        None => r,
    };
    let rows = vec![
        target(
            row(
                "real_dispatch_p50_us",
                "one real carpool-worker (2 vCPUs, default flags): submit to result p50, one at a time",
                us(total.percentile(50.0)),
                "us",
            ),
            fake,
        ),
        row(
            "real_dispatch_p99_us",
            "one real carpool-worker: submit to result p99",
            us(total.percentile(99.0)),
            "us",
        ),
        target(
            row(
                "real_streamed_dispatch_p50_us",
                "one real carpool-worker: submit to result p50 over one Map stream",
                us(streamed.percentile(50.0)),
                "us",
            ),
            fake_streamed,
        ),
        at_least(
            row(
                "real_map_tasks_per_s",
                "one real carpool-worker: no-op tasks/s through Map",
                map,
                "tasks/s",
            ),
            20_000.0,
        ),
    ];
    let limit = client
        .workers("echo")
        .await
        .map_err(|e| e.to_string())?
        .first()
        .map_or(0, |w| w.slots);
    let mut rows = rows;
    rows.push(row(
        "real_worker_limit",
        "one real carpool-worker: its concurrency limit after the above",
        f64::from(limit),
        "tasks",
    ));
    drop(coord);
    Ok(rows)
}

async fn repeat<F, Fut>(reps: usize, mut f: F) -> Result<f64, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<f64, String>>,
{
    let mut xs = Vec::new();
    for _ in 0..reps.max(1) {
        xs.push(f().await?);
    }
    Ok(median(xs))
}

async fn dispatch_latency(
    client: &Client,
    function: &str,
    starts: &fake::StartTimes,
    n: usize,
) -> Result<(Samples, Samples), String> {
    let mut total = Samples::default();
    let mut to_start = Samples::default();
    for _ in 0..n {
        let t = Instant::now();
        let r = client
            .run(function, Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        total.push(t.elapsed());
        if let Some(at) = starts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&r.task_id)
        {
            to_start.push(at.saturating_duration_since(t));
        }
    }
    Ok((total, to_start))
}

/// Submit to result one at a time through one open `Map` stream: the next input is sent
/// when the previous result is back, so each task pays its dispatch alone, without a new
/// HTTP/2 stream per task as a unary `Run` does.
async fn streamed_latency(client: &Client, function: &str, n: usize) -> Result<Samples, String> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let mut results = client
        .map(function, tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?;
    let mut s = Samples::default();
    for _ in 0..n {
        let t = Instant::now();
        tx.send(Bytes::new()).await.map_err(|_| "Map stream closed")?;
        match results.next().await {
            Some(Ok(_)) => s.push(t.elapsed()),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("Map ended early".into()),
        }
    }
    Ok(s)
}

async fn map_throughput(client: &Client, function: &str, n: usize) -> Result<f64, String> {
    let inputs = futures::stream::iter((0..n).map(|_| Bytes::new()));
    let start = Instant::now();
    let mut results = client.map(function, inputs).await.map_err(|e| e.to_string())?;
    let mut done = 0usize;
    while let Some(r) = results.next().await {
        r.map_err(|e| e.to_string())?;
        done += 1;
    }
    if done != n {
        return Err(format!("Map returned {done} of {n} results"));
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn submit_throughput(client: &Client, n: usize, in_flight: usize) -> Result<f64, String> {
    let start = Instant::now();
    let per = n.div_ceil(in_flight);
    let mut loops = Vec::new();
    for _ in 0..in_flight {
        let c = client.clone();
        loops.push(tokio::spawn(async move {
            for _ in 0..per {
                c.submit("noop", Bytes::new()).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        }));
    }
    for l in loops {
        l.await.map_err(|e| e.to_string())??;
    }
    Ok((per * in_flight) as f64 / start.elapsed().as_secs_f64())
}

/// `n` simulated workers on one coordinator: its CPU and memory while they sample at the
/// normal interval, and dispatch latency among them.
async fn fleet(n: usize, dispatches: usize) -> Result<Vec<Row>, String> {
    let (coord, url) = proc::coordinator(&["--spawner", "external", "--keep-alive", "1h"])?;
    let mut workers = Vec::with_capacity(n);
    let mut pending = futures::stream::iter((0..n).map(|i| {
        let url = url.clone();
        async move {
            let ch = fake::channel(&url).await?;
            fake::spawn_worker(ch, format!("fleet-{i}"), "fleet", 1, None).await
        }
    }))
    .buffer_unordered(256);
    while let Some(w) = pending.next().await {
        workers.push(w?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = coord.0.id();
    let a = proc::usage(pid).ok_or("coordinator usage")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = proc::usage(pid).ok_or("coordinator usage")?;
    let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
    let mut lat = Samples::default();
    for _ in 0..dispatches {
        let t = Instant::now();
        client
            .run("fleet", Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        lat.push(t.elapsed());
    }
    let rows = vec![
        row(
            &format!("fleet_{n}_coordinator_cpu_pct"),
            &format!("{n} workers: coordinator CPU (% of a core)"),
            100.0 * proc::cpu_share(&a, &b),
            "%",
        ),
        row(
            &format!("fleet_{n}_coordinator_rss_mb"),
            &format!("{n} workers: coordinator RSS"),
            b.rss as f64 / 1e6,
            "MB",
        ),
        at_most(
            row(
                &format!("fleet_{n}_dispatch_p99_us"),
                &format!("{n} workers: submit to result p99"),
                us(lat.percentile(99.0)),
                "us",
            ),
            5000.0,
        ),
    ];
    for w in workers {
        w.abort();
    }
    drop(coord);
    Ok(rows)
}

/// CPU used by a real, idle `carpool-worker` (sampler and stream) over `secs` seconds.
async fn idle_worker(secs: u64) -> Result<Row, String> {
    let (coord, url) = proc::coordinator(&["--spawner", "external", "--keep-alive", "1h"])?;
    let child = std::process::Command::new(proc::sibling("carpool-worker")?)
        .args(["--coordinator", &url, "--function", "echo"])
        .env("RUST_LOG", "error")
        .spawn()
        .map_err(|e| format!("starting carpool-worker: {e}"))?;
    let worker = proc::Guard(child);
    let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .stats()
        .await
        .map_err(|e| e.to_string())?
        .total
        .unwrap_or_default()
        .workers_live
        == 0
    {
        if Instant::now() > deadline {
            return Err("the idle worker never connected".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = proc::usage(worker.0.id()).ok_or("worker usage")?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let b = proc::usage(worker.0.id()).ok_or("worker usage")?;
    drop((worker, coord));
    Ok(row(
        "idle_worker_cpu_pct",
        "idle worker's control overhead (% of a core)",
        100.0 * proc::cpu_share(&a, &b),
        "%",
    ))
}

/// Coordinator memory with `n` pending tasks of 100 bytes.
async fn pending_memory(n: usize) -> Result<Vec<Row>, String> {
    let max = (n * 2).to_string();
    let (coord, url) = proc::coordinator(&["--spawner", "external", "--max-pending", &max])?;
    let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
    let before = proc::usage(coord.0.id()).ok_or("coordinator usage")?;
    let payload = Bytes::from(vec![b'x'; 100]);
    let inputs = futures::stream::iter((0..n).map(move |_| payload.clone()));
    let call = client.map("resize", inputs).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let pending = client
            .stats()
            .await
            .map_err(|e| e.to_string())?
            .total
            .unwrap_or_default()
            .pending;
        if pending as usize >= n {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {pending} of {n} tasks became pending"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = proc::usage(coord.0.id()).ok_or("coordinator usage")?;
    drop(call);
    drop(coord);
    let total_mb = after.rss as f64 / 1e6;
    let per_task = after.rss.saturating_sub(before.rss) as f64 / n as f64;
    // The target, 1,000,000 pending tasks in under 1 GB, is 1,000 bytes per task.
    Ok(vec![
        row(
            "pending_rss_mb",
            &format!("coordinator RSS with {n} pending 100-byte tasks"),
            total_mb,
            "MB",
        ),
        at_most(
            row(
                "pending_bytes_per_task",
                "memory per pending task",
                per_task,
                "bytes",
            ),
            1000.0,
        ),
    ])
}

/// The report as a text table.
pub(crate) fn table_row(r: &Row) -> String {
    let verdict = match r.met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "",
    };
    format!(
        "{:<86} {:>14.1} {:<8} {:<20} {}",
        r.what, r.value, r.unit, r.target, verdict
    )
}

/// The table's header.
pub(crate) fn table_header(opts: &BenchOptions) -> String {
    format!(
        "carpool bench: {} cores, {} repetitions per throughput figure (median)\n{:<86} {:>14} {:<8} {:<20} {}",
        crate::demo::cores(),
        opts.reps,
        "measurement",
        "value",
        "unit",
        "target",
        ""
    )
}

/// The report as one JSON object: key -> value.
pub(crate) fn json(rows: &[Row]) -> Value {
    let mut obj = serde_json::Map::new();
    for r in rows {
        obj.insert(r.key.clone(), json!(r.value));
    }
    Value::Object(obj)
}
