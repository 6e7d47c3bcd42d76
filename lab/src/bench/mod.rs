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
mod fleet;
mod handlers;
mod held;
mod measure;
mod postgres;
pub(crate) mod proc;
pub(crate) mod stats;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use carpool_proto::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};

use carpool_client::Client;
use fleet::{fleet, idle_worker, pending_memory};
use measure::{
    dispatch_latency, dispatch_latency_of, map_throughput, map_throughput_of, repeat, streamed_latency,
    submit_throughput, submit_throughput_of,
};
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
    /// Only these sections (raw, dispatch, real, durability, fleet, idle, pending, polling,
    /// handlers); empty: all but handlers, which runs when `python` is given or it is named.
    pub only: Vec<String>,
    /// A Python with awslambdaric, for section `handlers`.
    pub python: Option<String>,
    /// A PostgreSQL database of the bench's own, for section `postgres`.
    pub state_url: Option<String>,
}

impl BenchOptions {
    fn wants(&self, section: &str) -> bool {
        let named = self.only.iter().any(|s| s == section);
        if section == "handlers" {
            return named || (self.only.is_empty() && self.python.is_some());
        }
        if section == "postgres" {
            return named || (self.only.is_empty() && self.state_url.is_some());
        }
        self.only.is_empty() || named
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
            python: None,
            state_url: None,
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
            python: None,
            state_url: None,
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

/// The targets for the figures of the fake workers (the coordinator's ceiling).
const DISPATCH_P50_TARGET_US: f64 = 100.0;
/// No-op tasks per second through Map, fake workers.
const MAP_TARGET_TASKS_PER_S: f64 = 100_000.0;
/// The most CPU an idle worker may use, in percent of a core.
const IDLE_WORKER_TARGET: f64 = 1.0;

/// A coordinator with one real worker of 2 vCPUs (3538 MB), kept alive between
/// measurements, and room for a whole throughput run pending.
const REAL_WORKER: [&str; 8] = [
    "--memory-mb",
    "3538",
    "--max-workers",
    "1",
    "--keep-alive",
    "1h",
    "--max-pending",
    "10000000",
];

/// The sections, in the order they run.
const SECTIONS: [&str; 11] = [
    "raw",
    "dispatch",
    "real",
    "durability",
    "fleet",
    "idle",
    "pending",
    "held",
    "polling",
    "handlers",
    "postgres",
];

/// Runs every measurement, handing each row to `report` as soon as its section is done.
pub(crate) async fn run(opts: &BenchOptions, mut report: impl FnMut(&Row)) -> Result<Vec<Row>, String> {
    proc::raise_nofile();
    let mut rows: Vec<Row> = Vec::new();
    for section in SECTIONS.into_iter().filter(|s| opts.wants(s)) {
        let found = |key: &str| rows.iter().find(|r| r.key == key).map(|r| r.value);
        let measured = match section {
            "raw" => raw(opts).await?,
            "dispatch" => dispatch(opts).await?,
            "real" => {
                let (fake, streamed) = (found("dispatch_p50_us"), found("streamed_dispatch_p50_us"));
                real_worker(opts, fake, streamed).await?
            }
            "durability" => durability(opts).await?,
            "fleet" => {
                let mut measured = Vec::new();
                for &n in &opts.fleet {
                    // Half as many dispatches as the one-at-a-time latency (1,000 in a full
                    // run: enough for a steady p99).
                    measured.extend(fleet(n, (opts.latency_tasks / 2).max(1)).await?);
                }
                measured
            }
            "idle" => vec![at_most(idle_worker(opts.idle_secs).await?, IDLE_WORKER_TARGET)],
            "pending" => pending_memory(opts.pending).await?,
            "held" => held::held_memory().await?,
            "handlers" => handlers::handlers(opts, opts.python.as_deref().unwrap_or("python3")).await?,
            "postgres" => match &opts.state_url {
                Some(url) => postgres::postgres(opts, url).await?,
                None => {
                    return Err(
                        "section postgres needs --state-url: a PostgreSQL database of its own".into(),
                    );
                }
            },
            _ => polling(opts).await?,
        };
        for r in measured {
            report(&r);
            rows.push(r);
        }
    }
    Ok(rows)
}

/// The transport's own limits: raw tonic round trips and a bidi echo.
async fn raw(opts: &BenchOptions) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let raw = baselines::raw_server().await?;
    let rtt = baselines::unary_rtt(&raw, opts.latency_tasks).await?;
    rows.push(row(
        "raw_unary_p50_us",
        "raw tonic unary round trip p50",
        us(rtt.percentile(50.0)),
        "us",
    ));
    let ping = baselines::bidi_rtt(&raw, opts.latency_tasks).await?;
    rows.push(row(
        "raw_bidi_rtt_p50_us",
        "raw tonic bidi round trip on an open stream p50",
        us(ping.percentile(50.0)),
        "us",
    ));
    let mut echo = Vec::new();
    for _ in 0..opts.reps {
        echo.push(baselines::bidi_echo(&raw, opts.throughput_tasks).await?);
    }
    rows.push(row(
        "raw_bidi_msgs_per_s",
        "raw tonic bidi echo, one stream",
        median(echo),
        "msg/s",
    ));

    Ok(rows)
}

/// Dispatch latency and throughput on a coordinator with two fake in-process workers.
async fn dispatch(opts: &BenchOptions) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
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
        workers.push(fake::spawn_worker(ch, format!("bench-{i}"), "noop", 512, Some(starts.clone())).await?);
    }
    let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
    let (total, to_start) = dispatch_latency(&client, "noop", &starts, opts.latency_tasks).await?;
    rows.push(at_most(
        row(
            "dispatch_p50_us",
            "fake workers (coordinator's ceiling): submit to result p50, one at a time",
            us(total.percentile(50.0)),
            "us",
        ),
        DISPATCH_P50_TARGET_US,
    ));
    rows.push(row(
        "dispatch_p99_us",
        "fake workers: submit to result p99",
        us(total.percentile(99.0)),
        "us",
    ));
    rows.push(row(
        "start_p50_us",
        "fake workers: submit to task start on the worker p50",
        us(to_start.percentile(50.0)),
        "us",
    ));
    rows.push(row(
        "start_p99_us",
        "fake workers: submit to task start on the worker p99",
        us(to_start.percentile(99.0)),
        "us",
    ));
    let streamed = streamed_latency(&client, "noop", opts.latency_tasks).await?;
    rows.push(at_most(
        row(
            "streamed_dispatch_p50_us",
            "fake workers: submit to result p50 over one Map stream",
            us(streamed.percentile(50.0)),
            "us",
        ),
        DISPATCH_P50_TARGET_US,
    ));
    rows.push(row(
        "streamed_dispatch_p99_us",
        "fake workers: submit to result p99 over one Map stream",
        us(streamed.percentile(99.0)),
        "us",
    ));
    let map = repeat(opts.reps, || {
        map_throughput(&client, "noop", opts.throughput_tasks)
    })
    .await?;
    rows.push(at_least(
        row(
            "map_tasks_per_s",
            "fake workers (coordinator's ceiling): no-op tasks/s through Map, 2 of them",
            map,
            "tasks/s",
        ),
        MAP_TARGET_TASKS_PER_S,
    ));
    let unary = repeat(opts.reps, || {
        submit_throughput(&client, opts.throughput_tasks / 4, 64)
    })
    .await?;
    rows.push(row(
        "submit_tasks_per_s",
        "fake workers: no-op tasks/s through unary Submit, 64 in flight",
        unary,
        "tasks/s",
    ));
    let usage = proc::usage(coord.0.id()).ok_or("coordinator usage")?;
    rows.push(row(
        "coordinator_rss_mb",
        "coordinator RSS after the above",
        usage.rss as f64 / 1e6,
        "MB",
    ));
    drop((workers, coord));

    Ok(rows)
}

/// The same with `--state-dir`: what durability costs.
async fn durability(opts: &BenchOptions) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
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
    rows.push(row(
        "map_tasks_per_s_state_dir",
        "no-op tasks/s through Map with --state-dir",
        durable_map,
        "tasks/s",
    ));
    let durable_unary = repeat(opts.reps, || {
        submit_throughput(&client, opts.throughput_tasks / 4, 64)
    })
    .await?;
    rows.push(row(
        "submit_tasks_per_s_state_dir",
        "unary Submit tasks/s with --state-dir (group commit)",
        durable_unary,
        "tasks/s",
    ));
    drop((workers, coord));

    Ok(rows)
}

/// The paper's design for comparison: workers polling over HTTP.
async fn polling(opts: &BenchOptions) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let poll = baselines::polling(opts.poll_interval, 2, opts.poll_tasks).await?;
    let label = format!(
        "paper's design: HTTP polling every {} ms, submit to result",
        opts.poll_interval.as_millis()
    );
    rows.push(row(
        "polling_p50_us",
        &format!("{label} p50"),
        us(poll.percentile(50.0)),
        "us",
    ));
    rows.push(row(
        "polling_p99_us",
        &format!("{label} p99"),
        us(poll.percentile(99.0)),
        "us",
    ));

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
    let (coord, url) = proc::coordinator(&REAL_WORKER)?;
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
