//! `carpool simulate`: a handler's measured shape (its runtime copy's init and size, its
//! task's CPU, wait and memory) run through the simulator at sizes and fleets this machine
//! cannot host: adaptive (default flags), each fixed `--slots` of a sweep and Lambda as it
//! bills, a first batch and a second from what the first taught the coordinator.

use std::time::Duration;

use carpool_core::Config;
use carpool_core::config::{Fleet, Functions, ScaleOut};
use carpool_core::sim::{CopyModel, SimConfig, SimReport, TaskModel, simulate_batches_over_draws};

/// A handler's shape, as measured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HandlerModel {
    /// One runtime copy's init (interpreter and imports), CPU time (with `copy_mb` 0: none,
    /// the tasks run in the worker itself, as the built-ins do).
    pub init_cpu: Duration,
    /// What a ready copy holds, MB.
    pub copy_mb: f64,
    /// A task's CPU time.
    pub task_cpu: Duration,
    /// A task's wait (network), after its CPU.
    pub task_wait: Duration,
    /// A task's own memory on top of its copy's, MB.
    pub task_mb: f64,
    /// How much tasks vary ([`SimConfig::spread`]).
    pub task_spread: f64,
    /// A worker's spawn to its hello (the median, in the Lambda-like world).
    pub cold_start: Duration,
    /// Workers live in the Lambda-like world (cold starts with a tail, CPU in proportion
    /// to memory), not this machine's.
    pub lambda_world: bool,
}

/// One way at one size: its first and second batch.
#[derive(Clone, Debug)]
pub(crate) struct Way {
    /// "adaptive", "--slots N" or "Lambda as it bills".
    pub label: String,
    /// Memory size, MB.
    pub memory_mb: u32,
    /// The two batches.
    pub batches: Vec<SimReport>,
}

/// The function name the simulated tasks go to.
const FUNCTION: &str = "handler";

fn sim(
    model: &HandlerModel,
    memory_mb: u32,
    tasks: usize,
    max_workers: u32,
    slots: Option<u32>,
    lambda: bool,
) -> SimConfig {
    let config = Config {
        fleet: Fleet {
            memory_mb,
            max_workers,
            slots,
            keep_alive: if lambda {
                Duration::from_secs(2)
            } else {
                Duration::ZERO
            },
            scale_out: if lambda { ScaleOut::Eager } else { ScaleOut::Paced },
            ..Default::default()
        },
        functions: Functions {
            exec: vec![(FUNCTION.to_owned(), "handler".to_owned())],
            ..Default::default()
        },
        ..Config::default()
    };
    let task = TaskModel {
        cpu: model.task_cpu,
        wait: model.task_wait,
        mem_mb: model.task_mb,
    };
    let mut s = SimConfig::new(config, FUNCTION, tasks, task);
    s.cold_start = model.cold_start;
    s.spread = model.task_spread;
    if model.lambda_world {
        s = s.lambda_like(model.cold_start);
    }
    // No init and no size: tasks run in the worker itself (the built-ins), no copies.
    if !model.init_cpu.is_zero() || model.copy_mb > 0.0 {
        s.copy = Some(CopyModel {
            init_cpu: model.init_cpu,
            mem_mb: model.copy_mb,
        });
    }
    s
}

/// How many cold-start draws each way's batches are averaged over in the Lambda-like world
/// (the local world has none: one run). Every way gets the same draws, and the best fixed
/// pair is then the best on average, not the luckiest of a dozen single draws.
pub(crate) const DRAWS: u32 = 8;

/// The label of the way that offers every size and lets carpool choose.
pub(crate) const OFFERED: &str = "adaptive, sizes offered";

/// Every way at every size, two batches each; with more than one size, also adaptive with
/// every size offered (`--memory-sizes`, carpool choosing), as many batches as there are
/// sizes and two more (the first try each size; the last is learned).
pub(crate) fn run(
    model: &HandlerModel,
    sizes: &[u32],
    tasks: usize,
    max_workers: u32,
    sweep: &[u32],
) -> Vec<Way> {
    let mut ways = Vec::new();
    if sizes.len() > 1 {
        let smallest = sizes.iter().copied().min().unwrap_or(2048);
        let mut s = sim(model, smallest, tasks, max_workers, None, false);
        s.config.fleet.memory_sizes = sizes.to_vec();
        ways.push(Way {
            label: OFFERED.into(),
            memory_mb: 0,
            batches: simulate_batches_over_draws(&s, sizes.len() + 2, DRAWS),
        });
    }
    for &memory_mb in sizes {
        let mut plan: Vec<(String, Option<u32>, bool)> = vec![("adaptive".into(), None, false)];
        plan.extend(sweep.iter().map(|&n| (format!("--slots {n}"), Some(n), false)));
        plan.push(("Lambda as it bills".into(), Some(1), true));
        for (label, slots, lambda) in plan {
            let mut batches = simulate_batches_over_draws(
                &sim(model, memory_mb, tasks, max_workers, slots, lambda),
                2,
                DRAWS,
            );
            if lambda {
                batches = batches.iter().map(SimReport::billed_per_request).collect();
            }
            ways.push(Way {
                label,
                memory_mb,
                batches,
            });
        }
    }
    ways
}

/// One JSON object per way, size and batch (for scripts).
pub(crate) fn json_lines(ways: &[Way], tasks: usize) -> String {
    let mut out = String::new();
    for w in ways {
        for (i, r) in w.batches.iter().enumerate() {
            let line = serde_json::json!({
                "way": w.label,
                "memory_mb": w.memory_mb,
                "batch": i + 1,
                "gb_s": r.billed_gb_s,
                "completion_s": r.completion.as_secs_f64(),
                "usd_per_million": r.cost_usd / tasks.max(1) as f64 * 1e6,
                "invocations": r.invocations,
                "peak_memory_fraction": r.peak_memory_fraction,
                "peak_concurrency": r.peak_concurrency,
                "succeeded": r.succeeded,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    out
}

/// Where the sizes-offered way's learned (last) batch stands: against the best fixed
/// (size, way) pair's second batch among carpool's ways, and against Lambda as it bills at
/// its own best size (the rival who tuned one task per invocation with Power Tuning).
pub(crate) fn verdict(ways: &[Way]) -> Option<String> {
    let judged = judge(ways)?;
    Some(format!(
        "sizes offered, learned batch: {:.2} GB-s, {:.3} times the best fixed pair ({} at {} MB, {:.2} GB-s) and {:.3} times Lambda as it bills at its best size ({} MB, {:.2} GB-s); first batch {:.2} GB-s, {:.3} times that pair\n",
        judged.learned,
        judged.learned / judged.fixed.2,
        judged.fixed.0,
        judged.fixed.1,
        judged.fixed.2,
        judged.learned / judged.lambda.2,
        judged.lambda.1,
        judged.lambda.2,
        judged.first,
        judged.first / judged.fixed.2,
    ))
}

/// The sizes-offered way against the others, in GB-s.
pub(crate) struct Judged {
    /// Its first and its learned (last) batch.
    pub first: f64,
    pub learned: f64,
    /// The cheapest of carpool's fixed (size, way) pairs on their second batch: (way, MB,
    /// GB-s); a pair with a failed task or a memory peak above its size does not count.
    pub fixed: (String, u32, f64),
    /// Lambda as it bills at its cheapest size, second batch.
    pub lambda: (String, u32, f64),
}

/// Where the sizes-offered way stands; `None` without one.
pub(crate) fn judge(ways: &[Way]) -> Option<Judged> {
    let offered = &ways.iter().find(|w| w.label == OFFERED)?.batches;
    let (first, learned) = (offered.first()?.billed_gb_s, offered.last()?.billed_gb_s);
    let second = |w: &&Way| {
        w.batches
            .get(1)
            .filter(|b| b.failed == 0 && b.peak_memory_fraction <= 1.0)
            .map(|b| (w.label.clone(), w.memory_mb, b.billed_gb_s))
    };
    let least = |it: Vec<(String, u32, f64)>| it.into_iter().min_by(|a, b| a.2.total_cmp(&b.2));
    let fixed = least(
        ways.iter()
            .filter(|w| w.label != OFFERED && !w.label.starts_with("Lambda"))
            .filter_map(|w| second(&w))
            .collect(),
    )?;
    let lambda = least(
        ways.iter()
            .filter(|w| w.label.starts_with("Lambda"))
            .filter_map(|w| second(&w))
            .collect(),
    )?;
    Some(Judged {
        first,
        learned,
        fixed,
        lambda,
    })
}

/// A table for people.
pub(crate) fn table(ways: &[Way], tasks: usize) -> String {
    let mut out = format!(
        "{:<20} {:>6} {:>6} {:>10} {:>12} {:>9} {:>8} {:>9}\n",
        "way", "MB", "batch", "GB-s", "completion s", "USD/1M", "workers", "peak mem"
    );
    for w in ways {
        for (i, r) in w.batches.iter().enumerate() {
            out.push_str(&format!(
                "{:<20} {:>6} {:>6} {:>10.2} {:>12.2} {:>9.2} {:>8} {:>9.2}\n",
                w.label,
                w.memory_mb,
                i + 1,
                r.billed_gb_s,
                r.completion.as_secs_f64(),
                r.cost_usd / tasks.max(1) as f64 * 1e6,
                r.invocations,
                r.peak_memory_fraction
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_way_runs_two_batches_and_lambda_is_billed_per_request() {
        let model = HandlerModel {
            init_cpu: Duration::from_millis(500),
            copy_mb: 50.0,
            task_cpu: Duration::from_millis(50),
            task_wait: Duration::from_millis(100),
            task_mb: 20.0,
            task_spread: 0.0,
            cold_start: Duration::from_millis(100),
            lambda_world: false,
        };
        let ways = run(&model, &[2048], 40, 4, &[1, 2]);
        assert_eq!(ways.len(), 4);
        assert!(verdict(&ways).is_none(), "one size: nothing offered");
        for w in &ways {
            assert_eq!(w.batches.len(), 2);
            assert!(w.batches.iter().all(|b| b.succeeded == 40), "{w:?}");
        }
        let lambda = &ways[3];
        assert_eq!(lambda.batches[0].invocations, 40, "one billed request per task");
        assert_eq!(json_lines(&ways, 40).lines().count(), 8);
    }

    #[test]
    fn with_several_sizes_carpool_chooses_among_them_and_is_judged_against_every_fixed_pair() {
        let model = HandlerModel {
            init_cpu: Duration::from_millis(300),
            copy_mb: 50.0,
            task_cpu: Duration::from_millis(20),
            task_wait: Duration::from_millis(300),
            task_mb: 10.0,
            task_spread: 0.3,
            cold_start: Duration::from_millis(300),
            lambda_world: true,
        };
        let ways = run(&model, &[1024, 4096], 40, 4, &[1, 4]);
        let offered = ways.iter().find(|w| w.label == OFFERED).expect("the offered way");
        assert_eq!(offered.batches.len(), 4);
        assert!(offered.batches.iter().all(|b| b.succeeded == 40), "{offered:?}");
        let verdict = verdict(&ways).expect("a verdict");
        assert!(verdict.contains("times the best fixed pair"), "{verdict}");
        println!("{verdict}");
    }
}
