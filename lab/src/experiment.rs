//! `carpool experiment`: the paper's experiment. Thumbnail tasks (decode a ~3 MB JPEG,
//! shrink it to 100x100, encode) at each of the paper's memory sizes, at most N concurrent
//! invocations, three ways: carpool; Lambda as it bills (warm sandboxes, one request at a
//! time each, billed per request and init: the fair rival); and one cold invocation per
//! task (the worst case, as the paper's baseline was run).
//!
//! What this machine can host is measured (local workers, the real binaries); the
//! simulator ([`carpool_coordinator::sim`]), which drives the real scheduling code with a
//! virtual clock, is first checked against that measured run, then gives every size at the
//! paper's scale. Output: a table and an SVG chart of cost, invocations and completion time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use carpool_coordinator::Config;
use carpool_coordinator::config::vcpus_for_memory;
use carpool_core::sim::{SimConfig, SimReport, TaskModel, simulate};
use carpool_proto::Bytes;
use futures::StreamExt;

use carpool_client::{Client, TaskState};

use crate::demo::{Mode, mode_config};
use crate::shared::{self, saving};

/// What to run.
#[derive(Clone, Debug)]
pub(crate) struct ExperimentOptions {
    /// Tasks per mode and size.
    pub tasks: usize,
    /// Cap on concurrent invocations (the paper's 8).
    pub max_workers: u32,
    /// Memory sizes, MB.
    pub sizes: Vec<u32>,
    /// Where images and thumbnails go.
    pub dir: PathBuf,
    /// The worker binary; `None` looks next to the running executable.
    pub worker_bin: Option<PathBuf>,
    /// Width of the generated input image (height is two thirds); 2400 gives ~3 MB.
    pub image_width: u32,
}

/// One mode at one size.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    /// Memory size, MB.
    pub memory_mb: u32,
    /// How it ran.
    pub mode: Mode,
    /// "measured" or "simulated".
    pub source: &'static str,
    /// Concurrent invocations allowed.
    pub max_workers: u32,
    /// Worker invocations.
    pub invocations: u64,
    /// First submission to last result.
    pub completion: Duration,
    /// Billed GB-seconds.
    pub billed_gb_s: f64,
    /// USD per million tasks.
    pub usd_per_million: f64,
}

/// The model the simulator takes from the measured run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Model {
    /// Mean task duration alone on its invocation (one task per worker).
    pub task: Duration,
    /// Mean task duration beside others on a shared invocation (carpool): tasks on sibling
    /// vCPUs slow each other a little (memory bandwidth, shared caches).
    pub task_shared: Duration,
    /// Mean task duration alone on a warm sandbox (Lambda as it bills): faster than on a
    /// fresh one, whose caches are cold.
    pub task_warm: Duration,
    /// Spawn to hello.
    pub cold_start: Duration,
    /// Billed time an invocation lives beyond its task (Shutdown to stream end).
    pub exit_delay: Duration,
}

/// This machine's cores.
pub(crate) fn cores() -> u32 {
    crate::demo::cores()
}

/// Writes the synthetic input image (see [`carpool_worker::thumbnail::synthetic_jpeg`]) into
/// `dir`; returns its path and size.
fn make_image(dir: &Path, width: u32) -> Result<(PathBuf, u64), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("input.jpg");
    let bytes = carpool_worker::thumbnail::synthetic_jpeg(width)?;
    std::fs::write(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path, bytes.len() as u64))
}

fn config(opts: &ExperimentOptions, memory_mb: u32, max_workers: u32, mode: Mode) -> Config {
    let mut config = mode_config(mode, opts.worker_bin.clone());
    config.fleet.max_workers = max_workers;
    config.fleet.memory_mb = memory_mb;
    config.local.worker_data_dir = Some(opts.dir.clone());
    config
}

/// Runs one mode for real on local workers; returns the outcome and the mean task time.
pub(crate) async fn measure(
    opts: &ExperimentOptions,
    image: &Path,
    memory_mb: u32,
    max_workers: u32,
    mode: Mode,
) -> Result<(Outcome, Duration), String> {
    let cfg = config(opts, memory_mb, max_workers, mode);
    shared::with_coordinator(cfg, |url| async move {
        drive(opts, &url, image, memory_mb, max_workers, mode).await
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn drive(
    opts: &ExperimentOptions,
    url: &str,
    image: &Path,
    memory_mb: u32,
    max_workers: u32,
    mode: Mode,
) -> Result<(Outcome, Duration), String> {
    let client = Client::connect(url).await.map_err(|e| e.to_string())?;
    let dir = opts.dir.clone();
    let input = image.display().to_string();
    let inputs = futures::stream::iter((0..opts.tasks).map(move |i| {
        let output = dir.join(format!("thumb-{i}.jpg"));
        Bytes::from(serde_json::json!({"input": input, "output": output, "size": 100}).to_string())
    }));
    let start = std::time::Instant::now();
    let mut results = client.map("thumbnail", inputs).await.map_err(|e| e.to_string())?;
    let mut task_ms = Vec::new();
    while let Some(r) = results.next().await {
        let r = r.map_err(|e| e.to_string())?;
        let res = r
            .result
            .ok_or_else(|| format!("submission {} rejected: {}", r.seq, r.rejected))?;
        if res.state() != TaskState::Succeeded {
            return Err(format!("task {} failed: {}", res.task_id, res.error));
        }
        task_ms.push(res.finished_unix_ms.saturating_sub(res.started_unix_ms));
    }
    let completion = start.elapsed();
    let totals = shared::settled(&client, Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?
        .total
        .unwrap_or_default();
    let mean = task_ms.iter().sum::<u64>() as f64 / task_ms.len().max(1) as f64;
    let (billed_gb_s, invocations, usd) = crate::demo::bill(mode, &totals);
    Ok((
        Outcome {
            memory_mb,
            mode,
            source: "measured",
            max_workers,
            invocations,
            completion,
            billed_gb_s,
            usd_per_million: usd / opts.tasks.max(1) as f64 * 1e6,
        },
        Duration::from_secs_f64(mean / 1000.0),
    ))
}

/// The simulated outcome of one mode at one size.
pub(crate) fn simulated(
    opts: &ExperimentOptions,
    model: Model,
    memory_mb: u32,
    max_workers: u32,
    mode: Mode,
) -> Outcome {
    let task = TaskModel::cpu_bound(match mode {
        Mode::Carpool => model.task_shared,
        Mode::LambdaBilled => model.task_warm,
        Mode::ColdPerTask => model.task,
    });
    let mut sim = SimConfig::new(
        config(opts, memory_mb, max_workers, mode).core(),
        "thumbnail",
        opts.tasks,
        task,
    );
    sim.cold_start = model.cold_start;
    sim.exit_delay = model.exit_delay;
    let mut r: SimReport = simulate(&sim);
    if mode == Mode::LambdaBilled {
        r = r.billed_per_request();
    }
    Outcome {
        memory_mb,
        mode,
        source: "simulated",
        max_workers,
        invocations: r.invocations,
        completion: r.completion,
        billed_gb_s: r.billed_gb_s,
        usd_per_million: r.cost_usd / opts.tasks.max(1) as f64 * 1e6,
    }
}

/// The model from a measured conventional run: each invocation takes a cold start, its task,
/// and a billed exit; `max_workers` run side by side.
pub(crate) fn model_from(
    conventional: &Outcome,
    task: Duration,
    task_shared: Duration,
    task_warm: Duration,
    tasks: usize,
) -> Model {
    let rounds = tasks.div_ceil(conventional.max_workers.max(1) as usize).max(1) as f64;
    let per_invocation = conventional.completion.as_secs_f64() / rounds;
    let gb = f64::from(conventional.memory_mb) / 1024.0;
    let billed_each = conventional.billed_gb_s / gb / conventional.invocations.max(1) as f64;
    let exit = (billed_each - task.as_secs_f64()).max(0.0);
    Model {
        task,
        task_shared,
        task_warm,
        cold_start: Duration::from_secs_f64((per_invocation - task.as_secs_f64() - exit).max(0.0)),
        exit_delay: Duration::from_secs_f64(exit),
    }
}

/// The experiment's sizes offered together (carpool choosing), in the Lambda-like world
/// (cold starts around 500 ms, CPU in proportion to memory) with the thumbnail task as this
/// machine measured it: the learned batch against every fixed (size, `--slots`) pair and
/// against Lambda as it bills at its best size.
pub(crate) fn sizes_offered(opts: &ExperimentOptions, model: Model) -> String {
    let shape = crate::simulate::HandlerModel {
        init_cpu: Duration::ZERO,
        copy_mb: 0.0,
        task_cpu: model.task_shared,
        task_wait: Duration::ZERO,
        task_mb: 0.0,
        task_spread: 0.0,
        cold_start: Duration::from_millis(500),
        lambda_world: true,
    };
    let sweep = [1, 2, 4, 8];
    let ways = crate::simulate::run(&shape, &opts.sizes, opts.tasks, opts.max_workers, &sweep);
    let sizes = opts
        .sizes
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = format!(
        "\nthe sizes offered together ({sizes} MB, carpool choosing), simulated in the Lambda-like world, at most {} concurrent invocations (each figure the mean of {} cold-start draws that every way and batch shares):\n",
        opts.max_workers,
        crate::simulate::DRAWS
    );
    match crate::simulate::judge(&ways) {
        Some(j) => out.push_str(&format!(
            "  first batch {:.2} GB-s ({:.3}x), learned batch {:.2} GB-s ({:.3}x) of the best fixed pair ({} at {} MB, {:.2} GB-s); Lambda as it bills at its best size ({} MB) {:.2} GB-s ({:.3}x)\n",
            j.first,
            j.first / j.fixed.2,
            j.learned,
            j.learned / j.fixed.2,
            j.fixed.0,
            j.fixed.1,
            j.fixed.2,
            j.lambda.1,
            j.lambda.2,
            j.learned / j.lambda.2,
        )),
        None => out.push_str("  no way ran every task\n"),
    }
    out
}

/// How far the simulator may be from a measured run and still be trusted (relative).
pub(crate) const MARGIN: f64 = 0.10;

/// A table row.
pub(crate) fn row(o: &Outcome) -> String {
    format!(
        "{:>7} {:>5} {:<28} {:<9} {:>4} {:>11} {:>10.2} s {:>10.3} {:>14.2}",
        o.memory_mb,
        vcpus_for_memory(o.memory_mb),
        o.mode.label(),
        o.source,
        o.max_workers,
        o.invocations,
        o.completion.as_secs_f64(),
        o.billed_gb_s,
        o.usd_per_million
    )
}

/// The table header.
pub(crate) fn header() -> String {
    format!(
        "{:>7} {:>5} {:<28} {:<9} {:>4} {:>11} {:>12} {:>10} {:>14}",
        "MB", "vCPUs", "mode", "source", "max", "requests", "completion", "GB-s", "USD / 1M tasks"
    )
}

/// A chart panel: its title and the figure it plots.
type Panel = (&'static str, fn(&Outcome) -> f64);

/// The paper's three figures (cost, invocations, completion time per memory size, carpool
/// against conventional) as one SVG.
pub(crate) fn chart(outcomes: &[Outcome]) -> String {
    let sizes: Vec<u32> = {
        let mut s: Vec<u32> = outcomes.iter().map(|o| o.memory_mb).collect();
        s.dedup();
        s
    };
    let panels: [Panel; 3] = [
        ("USD per million tasks", |o| o.usd_per_million),
        ("invocations", |o| o.invocations as f64),
        ("completion time (s)", |o| o.completion.as_secs_f64()),
    ];
    let (pw, ph, top) = (300.0, 220.0, 52.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        pw * 3.0 + 40.0,
        ph + top + 60.0
    );
    svg.push_str("<text x=\"10\" y=\"18\" font-size=\"14\">carpool (blue) vs Lambda as it bills (grey), simulated, per memory size</text>\n");
    for (p, (title, value)) in panels.iter().enumerate() {
        let x0 = 20.0 + p as f64 * pw;
        let max = outcomes.iter().map(value).fold(0.0_f64, f64::max).max(1e-12);
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\">{title}</text>\n",
            x0 + 10.0,
            top - 16.0
        ));
        let group = (pw - 40.0) / sizes.len().max(1) as f64;
        for (i, size) in sizes.iter().enumerate() {
            for (j, mode) in [Mode::Carpool, Mode::LambdaBilled].iter().enumerate() {
                let Some(o) = outcomes.iter().find(|o| o.memory_mb == *size && o.mode == *mode) else {
                    continue;
                };
                let h = value(o) / max * ph;
                let x = x0 + 10.0 + i as f64 * group + j as f64 * group * 0.4;
                let color = if j == 0 { "#1f77b4" } else { "#999999" };
                svg.push_str(&format!(
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{color}\"><title>{} {size} MB: {:.3}</title></rect>\n",
                    top + ph - h,
                    group * 0.38,
                    mode.label(),
                    value(o)
                ));
                let v = value(o);
                let label = if v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                };
                svg.push_str(&format!(
                    "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"8\">{label}</text>\n",
                    top + ph - h - 2.0
                ));
            }
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\">{size}</text>\n",
                x0 + 10.0 + i as f64 * group,
                top + ph + 14.0
            ));
        }
        svg.push_str(&format!(
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
            x0 + 8.0,
            top + ph,
            x0 + pw - 20.0,
            top + ph
        ));
    }
    svg.push_str(&format!(
        "<text x=\"20\" y=\"{}\">memory size (MB)</text>\n</svg>\n",
        top + ph + 34.0
    ));
    svg
}

/// Parses `--scale TASKS:WORKERS`.
pub(crate) fn parse_scale(s: &str) -> Result<(usize, u32), String> {
    let (t, w) = s
        .split_once(':')
        .ok_or_else(|| format!("--scale wants TASKS:WORKERS, got {s:?}"))?;
    let tasks = t.parse().map_err(|_| format!("--scale: bad task count {t:?}"))?;
    let workers = w
        .parse()
        .map_err(|_| format!("--scale: bad worker count {w:?}"))?;
    Ok((tasks, workers))
}

fn relative(a: f64, b: f64) -> f64 {
    if b > 0.0 { (a - b) / b } else { 0.0 }
}

/// Runs the whole experiment and prints its report (and writes `chart.svg` in `opts.dir`):
/// 1. the smallest size measured at the concurrency this machine hosts without sharing
///    cores, next to the simulator on the same configuration, with their agreement;
/// 2. every other size measured one worker at a time next to the simulator, flagged where
///    its vCPUs exceed this machine's cores;
/// 3. every size simulated at `opts.max_workers` concurrent invocations, with the savings;
/// 4. with `scale`, one simulated run of TASKS tasks on up to WORKERS workers.
pub(crate) async fn report(opts: &ExperimentOptions, scale: Option<(usize, u32)>) -> Result<(), String> {
    let (image, bytes) = make_image(&opts.dir, opts.image_width)?;
    let cores = cores();
    println!(
        "input: {} ({:.1} MB); {} tasks per mode; this machine has {cores} cores",
        image.display(),
        bytes as f64 / 1e6,
        opts.tasks
    );
    let size = opts.sizes.iter().copied().min().unwrap_or(2048);
    let fit = (cores / vcpus_for_memory(size)).max(1);
    let (conv, task) = measure(opts, &image, size, fit, Mode::ColdPerTask).await?;
    let (lambda, task_warm) = measure(opts, &image, size, fit, Mode::LambdaBilled).await?;
    let (pool, task_shared) = measure(opts, &image, size, fit, Mode::Carpool).await?;
    let model = model_from(&conv, task, task_shared, task_warm, opts.tasks);
    println!(
        "model from the measured runs: task {:.1} ms alone on a fresh worker, {:.1} ms alone on a warm one, {:.1} ms beside others, cold start {:.1} ms, billed exit {:.1} ms\n",
        model.task.as_secs_f64() * 1e3,
        model.task_warm.as_secs_f64() * 1e3,
        model.task_shared.as_secs_f64() * 1e3,
        model.cold_start.as_secs_f64() * 1e3,
        model.exit_delay.as_secs_f64() * 1e3
    );
    println!("check of the simulator against this machine ({size} MB, at most {fit} concurrent):");
    println!("{}", header());
    for measured in [&pool, &lambda, &conv] {
        let sim = simulated(opts, model, size, fit, measured.mode);
        let (dt, dc) = (
            relative(sim.completion.as_secs_f64(), measured.completion.as_secs_f64()),
            relative(sim.billed_gb_s, measured.billed_gb_s),
        );
        let within = dt.abs() <= MARGIN && dc.abs() <= MARGIN && sim.invocations == measured.invocations;
        println!("{}\n{}", row(measured), row(&sim));
        println!(
            "{:>33} simulated vs measured: completion {:+.1}%, GB-s {:+.1}%, invocations {} vs {}: {} the {:.0}% margin",
            "",
            100.0 * dt,
            100.0 * dc,
            sim.invocations,
            measured.invocations,
            if within { "within" } else { "OUTSIDE" },
            100.0 * MARGIN
        );
    }
    let larger: Vec<u32> = opts.sizes.iter().copied().filter(|s| *s != size).collect();
    if !larger.is_empty() {
        println!("\nthe other sizes, measured one worker at a time, next to the simulator:");
        println!("{}", header());
    }
    for mb in larger {
        for mode in [Mode::Carpool, Mode::LambdaBilled, Mode::ColdPerTask] {
            let (measured, _) = measure(opts, &image, mb, 1, mode).await?;
            println!(
                "{}\n{}",
                row(&measured),
                row(&simulated(opts, model, mb, 1, mode))
            );
        }
        let need = vcpus_for_memory(mb);
        if need > cores {
            println!(
                "{:>33} {mb} MB has {need} vCPUs; this machine has {cores} cores, so the measured rows share them",
                ""
            );
        }
    }
    println!(
        "\nthe paper's experiment, simulated at most {} concurrent invocations (hosting that for real would need {}+ cores):",
        opts.max_workers,
        opts.max_workers * vcpus_for_memory(size)
    );
    println!("{}  carpool's saving", header());
    let mut all = Vec::new();
    for &mb in &opts.sizes {
        let c = simulated(opts, model, mb, opts.max_workers, Mode::Carpool);
        let l = simulated(opts, model, mb, opts.max_workers, Mode::LambdaBilled);
        let f = simulated(opts, model, mb, opts.max_workers, Mode::ColdPerTask);
        println!(
            "{}\n{}  cost {:.1}%, time {:.1}%\n{}  cost {:.1}%, time {:.1}% (worst case)",
            row(&c),
            row(&l),
            saving(c.usd_per_million, l.usd_per_million),
            saving(c.completion.as_secs_f64(), l.completion.as_secs_f64()),
            row(&f),
            saving(c.usd_per_million, f.usd_per_million),
            saving(c.completion.as_secs_f64(), f.completion.as_secs_f64())
        );
        all.push(c);
        all.push(l);
    }
    if opts.sizes.len() > 1 {
        print!("{}", sizes_offered(opts, model));
    }
    if let Some((tasks, workers)) = scale {
        let big = ExperimentOptions {
            tasks,
            ..opts.clone()
        };
        let wall = std::time::Instant::now();
        // The two modes are independent simulations: one thread each.
        let (c, f) = std::thread::scope(|s| {
            let lambda = s.spawn(|| simulated(&big, model, size, workers, Mode::LambdaBilled));
            let c = simulated(&big, model, size, workers, Mode::Carpool);
            (c, lambda.join())
        });
        let f = f.map_err(|_| "the simulation of Lambda as it bills panicked".to_owned())?;
        println!(
            "\nat scale: {tasks} tasks, at most {workers} concurrent invocations, {size} MB (simulated side by side in {:.1} s):",
            wall.elapsed().as_secs_f64()
        );
        println!("{}\n{}\n{}", header(), row(&c), row(&f));
    }
    let chart_path = opts.dir.join("chart.svg");
    std::fs::write(&chart_path, chart(&all)).map_err(|e| format!("{}: {e}", chart_path.display()))?;
    println!("\nchart: {}", chart_path.display());
    Ok(())
}
