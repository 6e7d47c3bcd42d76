//! `carpool compare`: each kind of workload run four ways on local workers, with the real
//! `carpool-coordinator` and `carpool-worker` binaries: conventional FaaS (one invocation per
//! task), static slots (the worker's vCPUs, as before adaptive limits), the best fixed
//! `--slots` a sweep finds, and adaptive (default flags), for a first batch and for a batch
//! after it (starting from the learned level). Then the same comparison simulated, at the
//! paper's scale and, with `--scale`, at a million tasks.
//!
//! Every figure of one table comes from the same run of the command, so their ratios hold
//! on a noisy machine; the targets are checked against them in the output.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use carpool_coordinator::{config::ScaleOut, config::vcpus_for_memory};
use carpool_core::sim::{SimConfig, SimReport, TaskModel, simulate, simulate_batches};
use carpool_proto::Bytes;
use futures::StreamExt;

use crate::bench::proc;
use carpool_client::Client;

mod tables;

use tables::scale_table;
pub(crate) use tables::{json, simulated_table, sizes_table, table};

/// One kind of workload.
#[derive(Clone, Debug)]
pub(crate) struct Workload {
    /// Its short name, e.g. "io".
    pub name: &'static str,
    /// What it stands for.
    pub what: &'static str,
    /// The built-in that runs it.
    pub function: &'static str,
    /// Each task's payload.
    pub payload: String,
    /// How much its tasks vary: each one's CPU and wait within this fraction either way
    /// ([`carpool_core::sim::varied`], the same draw in the simulator); 0: all alike.
    pub spread: f64,
    /// Tasks per batch.
    pub tasks: usize,
    /// Memory size of the workers.
    pub memory_mb: u32,
    /// Fleet cap.
    pub max_workers: u32,
    /// What one task needs, for the simulator.
    pub model: TaskModel,
}

impl Workload {
    fn vcpus(&self) -> u32 {
        vcpus_for_memory(self.memory_mb)
    }
}

/// The workloads: waiting, CPU, memory, mixed, and mixed whose tasks vary. `tiny` makes each
/// a second or so.
pub(crate) fn workloads(tiny: bool) -> Vec<Workload> {
    let cores = crate::demo::cores();
    let n = |full: usize, small: usize| if tiny { small } else { full };
    let mixed = Workload {
        name: "mixed",
        what: "20 ms of CPU, then an 80 ms wait",
        function: "mixed",
        payload: r#"{"cpu_ms": 20, "wait_ms": 80}"#.into(),
        spread: 0.0,
        tasks: n(100, 8),
        memory_mb: 2048,
        max_workers: (cores / 2).max(1),
        model: TaskModel {
            cpu: Duration::from_millis(20),
            wait: Duration::from_millis(80),
            mem_mb: 1.0,
        },
    };
    vec![
        Workload {
            name: "io",
            what: "sleep 100 ms (an API call, an S3 read)",
            function: "sleep",
            payload: "100".into(),
            spread: 0.0,
            tasks: n(1000, 40),
            memory_mb: 1024,
            max_workers: 8,
            model: TaskModel::waiting(Duration::from_millis(100)),
        },
        Workload {
            name: "cpu",
            what: "spin 200 ms of CPU",
            function: "spin",
            payload: "200".into(),
            spread: 0.0,
            tasks: n(40, 4),
            memory_mb: 2048,
            max_workers: (cores / 2).max(1),
            model: TaskModel::cpu_bound(Duration::from_millis(200)),
        },
        Workload {
            name: "memory",
            what: "hold 40 MB for 1 s",
            function: "hold",
            payload: r#"{"mb": 40, "ms": 1000}"#.into(),
            spread: 0.0,
            tasks: n(60, 8),
            memory_mb: 1024,
            // One 1-vCPU worker per core: more would share cores, and their tasks' durations
            // would stretch with a contention that is this machine's, not the workload's.
            max_workers: cores.max(1),
            model: TaskModel {
                cpu: Duration::from_millis(10),
                wait: Duration::from_millis(1000),
                mem_mb: 40.0,
            },
        },
        mixed.clone(),
        // Identical tasks started together burst and wait in step; real ones vary.
        Workload {
            name: "varied",
            what: "the same, each task's CPU and wait varying 50 % either way",
            spread: 0.5,
            ..mixed
        },
    ]
}

impl Workload {
    /// The simulator's `tasks` of this workload under `config`.
    fn sim(&self, config: carpool_core::config::Config, tasks: usize) -> SimConfig {
        let mut s = SimConfig::new(config, self.function, tasks, self.model);
        s.spread = self.spread;
        s
    }

    /// Task `i`'s payload (of `0..tasks`): the workload's, or for mixed work whose tasks
    /// vary, its CPU and wait drawn as the simulator draws task `i + 1`'s.
    fn payload_of(&self, i: usize) -> Bytes {
        if self.spread <= 0.0 {
            return Bytes::from(self.payload.clone());
        }
        let id = i as u64 + 1;
        let ms = |d: Duration, part| {
            (d.as_secs_f64() * 1000.0 * carpool_core::sim::varied(self.spread, id, part)).round()
        };
        Bytes::from(format!(
            r#"{{"cpu_ms": {}, "wait_ms": {}}}"#,
            ms(self.model.cpu, 0),
            ms(self.model.wait, 1)
        ))
    }
}

/// How the workers' concurrency is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Way {
    /// One cold invocation per task (the worst case).
    Conventional,
    /// Lambda as it bills: warm sandboxes, one request at a time each (`--slots 1`, kept
    /// warm between requests), billed per request and init (the fair rival).
    LambdaBilled,
    /// `--slots N`.
    Fixed(u32),
    /// Default flags: adaptive limits.
    Adaptive,
}

impl Way {
    fn args(self) -> Vec<String> {
        match self {
            Way::Conventional => vec![
                "--slots".into(),
                "1".into(),
                "--max-tasks-per-worker".into(),
                "1".into(),
            ],
            Way::LambdaBilled => vec!["--slots".into(), "1".into(), "--keep-alive".into(), "2s".into()],
            Way::Fixed(n) => vec!["--slots".into(), n.to_string()],
            Way::Adaptive => Vec::new(),
        }
    }
}

/// What one batch did.
#[derive(Clone, Debug, Default)]
pub(crate) struct Run {
    /// How it was run, as printed.
    pub label: String,
    /// `--slots`, or "auto".
    pub slots: String,
    /// First submission to last result.
    pub completion: Duration,
    /// Billed GB-seconds.
    pub gb_s: f64,
    /// Worker invocations.
    pub invocations: u64,
    /// Tasks that did not succeed.
    pub failed: u64,
    /// Most tasks running on one worker at once (seen by polling ListWorkers).
    pub peak_running: u32,
    /// The highest memory any worker reported, as a fraction of its size.
    pub peak_memory: f64,
    /// The level learned for the function afterwards (0: none).
    pub learned: u32,
}

/// Runs `batches` batches of `w` on a fresh coordinator set up for `way`.
pub(crate) async fn measure(w: &Workload, way: Way, batches: usize) -> Result<Vec<Run>, String> {
    let mut args: Vec<String> = vec![
        "--memory-mb".into(),
        w.memory_mb.to_string(),
        "--max-workers".into(),
        w.max_workers.to_string(),
    ];
    args.extend(way.args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (coord, url) = proc::coordinator(&refs)?;
    let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
    let mut runs = Vec::new();
    let (mut gb_before, mut inv_before, mut failed_before) = (0.0, 0, 0);
    // Lambda as it bills is billed per request; every other way for its workers' lives.
    let mode = if way == Way::LambdaBilled {
        crate::demo::Mode::LambdaBilled
    } else {
        crate::demo::Mode::Carpool
    };
    for _ in 0..batches {
        let mut run = batch(&client, w).await?;
        let stats = crate::shared::settled(&client, Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        let f = stats
            .functions
            .iter()
            .find(|f| f.function == w.function)
            .cloned()
            .unwrap_or_default();
        let (gb_s, invocations, _) = crate::demo::bill(mode, &f);
        run.gb_s = gb_s - gb_before;
        run.invocations = invocations - inv_before;
        run.failed = run.failed.max(f.failed - failed_before);
        run.peak_memory = f.memory_peak_fraction;
        run.learned = f.slots_learned;
        run.slots = match way {
            Way::Fixed(n) => n.to_string(),
            Way::Conventional | Way::LambdaBilled => "1".into(),
            Way::Adaptive => "auto".into(),
        };
        (gb_before, inv_before, failed_before) = (gb_s, invocations, f.failed);
        runs.push(run);
    }
    drop(coord);
    Ok(runs)
}

/// One batch through Map, watching the fleet for the most tasks a worker ran at once.
async fn batch(client: &Client, w: &Workload) -> Result<Run, String> {
    let inputs = futures::stream::iter((0..w.tasks).map(|i| w.payload_of(i)).collect::<Vec<_>>());
    let peak = Arc::new(AtomicU32::new(0));
    let watch = {
        let (client, peak, function) = (client.clone(), peak.clone(), w.function.to_owned());
        tokio::spawn(async move {
            loop {
                if let Ok(ws) = client.workers(&function).await {
                    let most = ws.iter().map(|w| w.running_tasks).max().unwrap_or(0);
                    peak.fetch_max(most, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let start = Instant::now();
    let mut results = client.map(w.function, inputs).await.map_err(|e| e.to_string())?;
    let mut run = Run::default();
    let mut done = 0;
    while let Some(r) = results.next().await {
        let r = r.map_err(|e| e.to_string())?;
        done += 1;
        if r.result
            .as_ref()
            .is_none_or(|res| res.state() != carpool_client::TaskState::Succeeded)
        {
            run.failed += 1;
        }
    }
    run.completion = start.elapsed();
    watch.abort();
    run.peak_running = peak.load(Ordering::Relaxed);
    if done != w.tasks {
        return Err(format!("{}: {done} of {} results came back", w.name, w.tasks));
    }
    Ok(run)
}

/// The four ways of one workload, measured.
#[derive(Clone, Debug)]
pub(crate) struct Comparison {
    /// What was run.
    pub workload: Workload,
    /// One cold invocation per task (the worst case).
    pub conventional: Run,
    /// Lambda as it bills (the fair rival).
    pub lambda: Run,
    /// `--slots` = the workers' vCPUs.
    pub fixed_vcpus: Run,
    /// Every `--slots` the sweep tried, highest first.
    pub sweep: Vec<Run>,
    /// Adaptive, first batch on a fresh coordinator.
    pub adaptive: Run,
    /// Adaptive, the next batch (from the learned level).
    pub learned: Run,
}

impl Comparison {
    /// Runs that fit in memory and lost nothing: the ones a sweep may pick.
    fn sound(&self) -> impl Iterator<Item = &Run> {
        self.sweep
            .iter()
            .filter(|r| r.failed == 0 && r.peak_memory <= 1.0)
    }

    /// The sweep's run with the lowest bill.
    pub(crate) fn best_cost(&self) -> Option<&Run> {
        self.sound().min_by(|a, b| a.gb_s.total_cmp(&b.gb_s))
    }

    /// The sweep's run with the shortest completion.
    pub(crate) fn best_time(&self) -> Option<&Run> {
        self.sound().min_by_key(|r| r.completion)
    }
}

/// `--slots` values the sweep tries, highest first: powers of two from the cap down.
fn sweep_values(tiny: bool, vcpus: u32) -> Vec<u32> {
    if tiny {
        return vec![8, vcpus];
    }
    (0..=8).rev().map(|p| 1u32 << p).collect()
}

/// Measures every way for `w`. The sweep goes from the cap down and stops once a value is
/// twice as slow and twice as costly as the best so far (lower values only get worse).
pub(crate) async fn compare(w: &Workload, tiny: bool) -> Result<Comparison, String> {
    let label = |mut r: Run, l: &str| {
        r.label = l.to_owned();
        r
    };
    let conventional = label(
        one(measure(w, Way::Conventional, 1).await?)?,
        "one cold invocation per task",
    );
    let lambda = label(
        one(measure(w, Way::LambdaBilled, 1).await?)?,
        "Lambda as it bills",
    );
    let mut sweep: Vec<Run> = Vec::new();
    for slots in sweep_values(tiny, w.vcpus()) {
        let r = label(one(measure(w, Way::Fixed(slots), 1).await?)?, "fixed --slots");
        let worse = sweep.iter().any(|b| {
            b.failed == 0 && b.peak_memory <= 1.0 && r.completion > b.completion * 2 && r.gb_s > 2.0 * b.gb_s
        });
        sweep.push(r);
        if worse {
            break;
        }
    }
    let vcpus = w.vcpus().to_string();
    let fixed_vcpus = match sweep.iter().find(|r| r.slots == vcpus) {
        Some(r) => r.clone(),
        None => one(measure(w, Way::Fixed(w.vcpus()), 1).await?)?,
    };
    let fixed_vcpus = label(fixed_vcpus, "static slots = vCPUs");
    let mut adaptive = measure(w, Way::Adaptive, 2).await?.into_iter();
    let (first, next) = (adaptive.next(), adaptive.next());
    Ok(Comparison {
        workload: w.clone(),
        conventional,
        lambda,
        fixed_vcpus,
        sweep,
        adaptive: label(first.ok_or("no adaptive run")?, "adaptive, first batch"),
        learned: label(next.ok_or("no second adaptive run")?, "adaptive, learned level"),
    })
}

fn one(runs: Vec<Run>) -> Result<Run, String> {
    runs.into_iter().next().ok_or_else(|| "no run".to_owned())
}

/// A target checked in the output.
#[derive(Clone, Debug)]
pub(crate) struct Verdict {
    /// What is compared.
    pub what: String,
    /// Whether it holds.
    pub met: bool,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::INFINITY }
}

/// The issue's targets for this workload, from the figures of this run.
pub(crate) fn verdicts(c: &Comparison) -> Vec<Verdict> {
    let mut out = Vec::new();
    let mut check = |what: String, met: bool| out.push(Verdict { what, met });
    match c.workload.name {
        "io" => {
            if let (Some(cost), Some(time)) = (c.best_cost(), c.best_time()) {
                for r in [&c.learned, &c.adaptive] {
                    let g = ratio(r.gb_s, cost.gb_s);
                    let t = ratio(r.completion.as_secs_f64(), time.completion.as_secs_f64());
                    check(
                        format!(
                            "{}: within 15% of the best fixed --slots on billed GB-s ({:.2}x of --slots {}) and completion ({:.2}x of --slots {})",
                            r.label, g, cost.slots, t, time.slots
                        ),
                        g <= 1.15 && t <= 1.15,
                    );
                }
            }
        }
        "cpu" => {
            let s = &c.fixed_vcpus;
            for r in [&c.adaptive, &c.learned] {
                let g = ratio(r.gb_s, s.gb_s);
                let t = ratio(r.completion.as_secs_f64(), s.completion.as_secs_f64());
                check(
                    format!(
                        "{}: within 5% of static slots = vCPUs on completion ({t:.3}x) and billed GB-s ({g:.3}x)",
                        r.label
                    ),
                    g <= 1.05 && t <= 1.05,
                );
            }
        }
        "memory" => {
            let fits = c.workload.memory_mb / 40;
            for r in [&c.adaptive, &c.learned] {
                check(
                    format!(
                        "{}: no task failed ({}), no worker out of memory (peak {:.2} of its size), {} running at once against {fits} that fit (within 20%)",
                        r.label, r.failed, r.peak_memory, r.peak_running
                    ),
                    r.failed == 0
                        && r.peak_memory < 1.0
                        && f64::from(r.peak_running) >= 0.8 * f64::from(fits),
                );
            }
        }
        _ => {}
    }
    // Against the fair rival, for every workload: Lambda's warm sandboxes billed per request.
    for r in [&c.adaptive, &c.learned] {
        let g = ratio(r.gb_s, c.lambda.gb_s);
        let t = ratio(r.completion.as_secs_f64(), c.lambda.completion.as_secs_f64());
        check(
            format!(
                "{}: no costlier than Lambda as it bills ({g:.2}x its GB-s, {t:.2}x its completion)",
                r.label
            ),
            g <= 1.0,
        );
    }
    out
}

/// What `carpool compare` runs.
#[derive(Clone, Debug, Default)]
pub(crate) struct CompareOptions {
    /// A few tasks of each workload and a two-value sweep (seconds; the test suite's).
    pub tiny: bool,
    /// Only these workloads (io, cpu, memory, mixed, varied); empty: all.
    pub only: Vec<String>,
    /// Skip the measured runs.
    pub simulate_only: bool,
    /// Also simulate TASKS tasks on up to WORKERS workers.
    pub scale: Option<(usize, u32)>,
}

/// Runs the comparison, handing each finished section of the report to `emit`. Returns the
/// measured comparisons (for a machine-readable summary).
pub(crate) async fn report(
    opts: &CompareOptions,
    mut emit: impl FnMut(&str),
) -> Result<Vec<Comparison>, String> {
    let chosen: Vec<Workload> = workloads(opts.tiny)
        .into_iter()
        .filter(|w| opts.only.is_empty() || opts.only.iter().any(|o| o == w.name))
        .collect();
    if chosen.is_empty() {
        return Err(format!(
            "--only {:?}: the workloads are io, cpu, memory, mixed, varied",
            opts.only
        ));
    }
    let mut measured = Vec::new();
    if !opts.simulate_only {
        emit(&format!(
            "measured on local workers (the real binaries, this machine: {} cores):\n",
            crate::demo::cores()
        ));
        for w in &chosen {
            let c = compare(w, opts.tiny).await?;
            emit(&table(&c));
            measured.push(c);
        }
    }
    let paper_sizes: &[u32] = if opts.tiny {
        &[2048]
    } else {
        &[2048, 4096, 6144, 8192, 10240]
    };
    let tasks = if opts.tiny { 20 } else { 100 };
    emit(&format!(
        "\nsimulated at the paper's scale ({tasks} tasks, at most 8 concurrent invocations):\n"
    ));
    for w in &chosen {
        for &mb in paper_sizes {
            emit(&simulated_table(w, mb, 8, tasks));
        }
    }
    let (sizes, sweep): (&[u32], Vec<u32>) = if opts.tiny {
        (&[1024, 2048], vec![1, 4])
    } else {
        (
            &[128, 512, 1024, 2048, 4096, 10240],
            (0..=8).map(|p| 1u32 << p).collect(),
        )
    };
    emit(&format!(
        "\nsimulated across sizes in the Lambda-like world (cold starts around 500 ms, CPU in proportion to memory; {} MB offered, carpool choosing; second batches, GB-s, each the mean of {} cold-start draws that every way and batch shares):\n",
        sizes.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
        crate::simulate::DRAWS
    ));
    for w in &chosen {
        emit(&sizes_table(w, sizes, &sweep, tasks).0);
    }
    if let Some((tasks, workers)) = opts.scale {
        emit(&format!(
            "\nsimulated at scale ({tasks} tasks, at most {workers} workers):\n"
        ));
        for w in &chosen {
            let wall = Instant::now();
            let t = scale_table(w, tasks, workers);
            emit(&format!(
                "{t}    (simulated in {:.1} s)\n",
                wall.elapsed().as_secs_f64()
            ));
        }
    }
    Ok(measured)
}
