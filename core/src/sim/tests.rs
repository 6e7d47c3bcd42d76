//! Unit tests of `mod`.

use super::*;

fn config(conventional: bool, max_workers: u32, slots: Option<u32>) -> Config {
    Config {
        fleet: crate::config::Fleet {
            max_workers,
            memory_mb: 2048,
            slots: if conventional { Some(1) } else { slots },
            max_tasks_per_worker: conventional.then_some(1),
            ..Default::default()
        },
        ..Config::default()
    }
}

fn spin(conventional: bool, max_workers: u32, slots: Option<u32>) -> SimConfig {
    SimConfig::new(
        config(conventional, max_workers, slots),
        "spin",
        40,
        TaskModel::cpu_bound(Duration::from_millis(200)),
    )
}

#[test]
fn carpool_fills_both_vcpus_of_one_worker() {
    let r = simulate(&spin(false, 1, Some(2)));
    assert_eq!((r.succeeded, r.invocations, r.peak_concurrency), (40, 1, 2));
    // 50 ms cold start, then 20 rounds of two 200 ms tasks side by side.
    assert_eq!(r.completion, Duration::from_millis(50 + 20 * 200));
    // Billed from its spawn to its exit, as Lambda bills an invocation with its init: the
    // 50 ms cold start and 20 rounds of 200 ms, at 2 GB.
    assert!((r.billed_gb_s - 8.1).abs() < 1e-3, "{r:?}");
    // Per request (what Lambda's sandboxes would bill for the same durations): 40 of
    // 200 ms and one 50 ms init.
    assert_eq!(r.requests, 40);
    assert!((r.request_billed_gb_s - 16.1).abs() < 1e-3, "{r:?}");
}

#[test]
fn conventional_faas_is_one_invocation_per_task() {
    let r = simulate(&spin(true, 1, None));
    assert_eq!((r.succeeded, r.invocations), (40, 40));
    assert_eq!(r.completion, Duration::from_millis(40 * (50 + 200)));
    // Each invocation billed with its init: 40 x 250 ms at 2 GB.
    assert!((r.billed_gb_s - 20.0).abs() < 1e-3, "{r:?}");
}

#[test]
fn lambda_as_it_bills_is_warm_sandboxes_billed_per_request_and_init() {
    // One sandbox kept warm, one request at a time: one cold start, then 40 requests.
    let mut s = spin(false, 1, Some(1));
    s.config.fleet.keep_alive = Duration::from_secs(2);
    let r = simulate(&s).billed_per_request();
    assert_eq!(
        (r.succeeded, r.invocations),
        (40, 40),
        "one billed request per task"
    );
    assert_eq!(r.completion, Duration::from_millis(50 + 40 * 200));
    // 40 requests of 200 ms and one 50 ms init, at 2 GB; the sandbox's idle time is free.
    assert!((r.billed_gb_s - 16.1).abs() < 1e-3, "{r:?}");
    let usd = 16.1 * 0.0000166667 + 40.0 * 0.2 / 1e6;
    assert!((r.cost_usd - usd).abs() < 1e-12, "{r:?}");
}

#[test]
fn cpu_bound_tasks_share_the_vcpus_when_oversubscribed() {
    // Four at once on two vCPUs: each takes twice as long, the batch no less.
    let r = simulate(&spin(false, 1, Some(4)));
    assert_eq!((r.succeeded, r.peak_concurrency), (40, 4));
    assert_eq!(r.completion, Duration::from_millis(50 + 10 * 400));
}

#[test]
fn adaptive_cpu_bound_stays_near_the_vcpus_and_matches_static() {
    let fixed = simulate(&spin(false, 1, Some(2)));
    let adaptive = simulate(&spin(false, 1, None));
    assert_eq!(adaptive.succeeded, 40);
    let ratio = adaptive.completion.as_secs_f64() / fixed.completion.as_secs_f64();
    assert!(ratio < 1.05, "adaptive {adaptive:?} vs static {fixed:?}");
}

#[test]
fn waiting_tasks_climb_far_past_the_vcpus() {
    let mut s = SimConfig::new(
        config(false, 8, None),
        "sleep",
        4000,
        TaskModel::waiting(Duration::from_millis(100)),
    );
    s.config.fleet.memory_mb = 1024;
    let adaptive = simulate(&s);
    s.config.fleet.slots = Some(1);
    let fixed = simulate(&s);
    assert_eq!(adaptive.succeeded, 4000);
    assert!(adaptive.peak_concurrency >= 128, "{adaptive:?}");
    assert!(
        adaptive.billed_gb_s * 5.0 < fixed.billed_gb_s,
        "adaptive {adaptive:?} vs one slot {fixed:?}"
    );
}

/// Two batches of 2000 sleeps of 100 ms on 1024 MB workers, at most 8.
fn two_batches_of_sleeps() -> Vec<SimReport> {
    let mut s = SimConfig::new(
        config(false, 8, None),
        "sleep",
        2000,
        TaskModel::waiting(Duration::from_millis(100)),
    );
    s.config.fleet.memory_mb = 1024;
    let r = simulate_batches(&s, 2);
    assert_eq!((r[0].succeeded, r[1].succeeded), (2000, 2000));
    r
}

#[test]
fn a_second_batch_starts_at_the_learned_level_and_costs_less() {
    let r = two_batches_of_sleeps();
    assert!(r[1].billed_gb_s < r[0].billed_gb_s, "{r:?}");
    assert!(r[1].completion < r[0].completion, "{r:?}");
}

#[test]
fn a_first_batch_larger_than_a_worker_waits_for_its_first_worker_to_settle() {
    // Nothing known: the first batch started 8 workers at once (as many as 2000 tasks fill
    // at the cap), each climbing from its vCPU with its slots mostly empty: 3.6 GB-s in
    // 0.45 s against the learned batch's 1.0. Now the first worker finds the level (the
    // cap) and the others start from it only if the work pays for them.
    let r = two_batches_of_sleeps();
    assert!(r[0].invocations < 8, "{r:?}");
    assert!(r[0].billed_gb_s <= 1.5 * r[1].billed_gb_s, "{r:?}");
}

#[test]
fn memory_bound_tasks_never_overfill_a_worker() {
    let task = TaskModel {
        cpu: Duration::from_millis(5),
        wait: Duration::from_millis(300),
        mem_mb: 40.0,
    };
    let mut s = SimConfig::new(config(false, 4, None), "hold", 400, task);
    s.config.fleet.memory_mb = 1024;
    let r = simulate(&s);
    assert_eq!(r.succeeded, 400);
    assert!(r.peak_memory_fraction < 1.0, "{r:?}");
    // (1024 - 8) / 40 = 25 fit; within 20 % of that.
    assert!(r.peak_concurrency >= 20, "{r:?}");
}

/// The figures of a fixed model, pinned: a change to how the simulator or the state
/// runs (data structures, event order, dropping dead timers) must not move them. At 5,000
/// invocations, conventional FaaS also has the queue purge its dead deadline timers
/// and the fleet reuse its slots.
#[test]
fn a_fixed_model_gives_the_same_figures() {
    for (conventional, completion_ms, invocations, gb_s) in
        [(false, 4_681, 50, 925.116), (true, 16_495, 5_000, 3_300.0)]
    {
        let mut s = spin(conventional, 50, Some(3));
        s.config.fleet.memory_mb = 4096;
        s.config.fleet.keep_alive = Duration::from_millis(30);
        s.tasks = 5_000;
        s.task = TaskModel::cpu_bound(Duration::from_millis(137));
        s.cold_start = Duration::from_millis(23);
        s.exit_delay = Duration::from_millis(5);
        let r = simulate(&s);
        assert_eq!(
            (r.succeeded, r.invocations, r.completion, r.peak_workers),
            (5_000, invocations, Duration::from_millis(completion_ms), 50),
            "conventional: {conventional}"
        );
        assert!((r.billed_gb_s - gb_s).abs() < 1e-6, "{r:?}");
    }
}

#[test]
fn a_large_batch_respects_the_fleet_cap_and_finishes_every_task() {
    let mut s = spin(false, 100, None);
    s.tasks = 20_000;
    let r = simulate(&s);
    assert_eq!(r.succeeded, 20_000);
    assert!(r.peak_workers <= 100 && r.invocations >= 100, "{r:?}");
}

/// A thumbnailer under a Lambda runtime client, in the shape measured of the real one
/// (`scripts/bench-handlers`): each copy imports for 700 ms of CPU and holds 60 MB; a task
/// takes 60 ms of CPU, 20 ms of S3, 40 MB more.
fn thumbnailer(memory_mb: u32, slots: Option<u32>, lambda: bool) -> SimConfig {
    let mut s = handler(memory_mb, slots, (700, 60.0), (60, 20, 40.0));
    if lambda {
        s.config.fleet.keep_alive = Duration::from_secs(2);
        s.config.fleet.scale_out = crate::config::ScaleOut::Eager;
    }
    s.cold_start = Duration::from_millis(100);
    s
}

/// 100 tasks of a handler under a runtime client at `memory_mb` (pinned at `slots`, if
/// given): a copy's init CPU (ms) and size (MB), a task's CPU and wait (ms) and memory (MB).
fn handler(memory_mb: u32, slots: Option<u32>, copy: (u64, f64), task: (u64, u64, f64)) -> SimConfig {
    let task = TaskModel {
        cpu: Duration::from_millis(task.0),
        wait: Duration::from_millis(task.1),
        mem_mb: task.2,
    };
    let mut s = SimConfig::new(config(false, 8, slots), "spin", 100, task);
    s.config.fleet.memory_mb = memory_mb;
    s.copy = Some(CopyModel {
        init_cpu: Duration::from_millis(copy.0),
        mem_mb: copy.1,
    });
    s
}

#[test]
fn tasks_wait_for_a_ready_copy_and_copies_are_reused() {
    // One worker, one copy: a cold start, one init, then 100 tasks one after another.
    let mut s = thumbnailer(2048, Some(1), false);
    s.config.fleet.max_workers = 1;
    let r = simulate(&s);
    assert_eq!((r.succeeded, r.invocations, r.peak_concurrency), (100, 1, 1));
    // 2048 MB has 1.16 vCPUs: a single-threaded init runs at one.
    assert_eq!(r.completion, Duration::from_millis(100 + 700 + 100 * 80), "{r:?}");
    assert!(r.peak_memory_fraction < 0.06, "{r:?}");
}

#[test]
fn a_runtime_with_a_costly_start_learns_a_level_whose_second_batch_costs_no_more() {
    for memory_mb in [2048, 4096] {
        let adaptive = simulate_batches(&thumbnailer(memory_mb, None, false), 2);
        let lambda = simulate_batches(&thumbnailer(memory_mb, Some(1), true), 2)
            .iter()
            .map(SimReport::billed_per_request)
            .collect::<Vec<_>>();
        let best_fixed = [1, 2, 4, 8]
            .iter()
            .flat_map(|&n| simulate_batches(&thumbnailer(memory_mb, Some(n), false), 2))
            .map(|r| r.billed_gb_s)
            .fold(f64::INFINITY, f64::min);
        let (first, second) = (&adaptive[0], &adaptive[1]);
        assert_eq!((first.succeeded, second.succeeded), (100, 100));
        // The learned level fills the CPU the copies' waits leave idle (3 at 2048 MB); a
        // worker started there costs at most 3 % more than the first batch that climbed to
        // it (2 % at 2048 MB: its third copy's init lands among the first tasks), and both
        // cost 6 to 8 % less than the level of 2 the limit kept before it filled the CPU.
        assert!(
            second.billed_gb_s <= 1.03 * first.billed_gb_s,
            "{memory_mb} MB: the learned batch {second:?} cost more than the first {first:?}"
        );
        // Paced scale-out may take fewer workers than the first batch ended with (cheaper),
        // at the price of a little time.
        assert!(
            second.completion.as_secs_f64() <= 1.25 * first.completion.as_secs_f64(),
            "{first:?} {second:?}"
        );
        for r in &adaptive {
            assert!(r.peak_memory_fraction < COPY_SHARE, "{memory_mb} MB: {r:?}");
            assert!(
                r.billed_gb_s <= 1.25 * best_fixed,
                "{memory_mb} MB: {r:?} against the best fixed {best_fixed}"
            );
            assert!(
                r.billed_gb_s < lambda[1].billed_gb_s,
                "{memory_mb} MB: {r:?} against Lambda as it bills {:?}",
                lambda[1]
            );
        }
    }
}

/// The measured shape of `wait.py` (boto3, then 300 ms waiting on HTTP): a copy's init
/// 142 ms of CPU and 36 MB, a task 1 ms of CPU, 301 ms of waiting and 49 MB.
fn waiting_handler(memory_mb: u32) -> SimConfig {
    handler(memory_mb, None, (142, 36.0), (1, 301, 49.0))
}

#[test]
fn a_learned_level_is_started_on_no_more_workers_than_its_copies_pay_for() {
    // Before a new worker's reach counted the copies it starts for a learned level, the
    // second batch at 4096 MB started 4 workers at the level (29), each paying every copy's
    // init at once: 23.38 GB-s against the first batch's 15.21.
    let local = [2048, 4096].map(waiting_handler);
    let lambda = [1024, 2048].map(|mb| waiting_handler(mb).lambda_like(Duration::from_millis(500)));
    // Within 1 %: the first batch climbs to the same level (10 at 1024 MB) four times a
    // settled sample, and the two batches come within 0.02 GB-s of each other.
    learned_costs_no_more(local.iter().chain(&lambda), 1.01, COPY_SHARE);
}

/// Two batches of each of `sims`: the second (from the learned level) bills at most `tie`
/// times the first, and its memory peaks under `peak` of the size.
fn learned_costs_no_more<'a>(sims: impl Iterator<Item = &'a SimConfig>, tie: f64, peak: f64) {
    for s in sims {
        let r = simulate_batches(s, 2);
        let (first, second) = (&r[0], &r[1]);
        assert_eq!((first.succeeded, second.succeeded), (100, 100));
        assert!(
            second.billed_gb_s <= tie * first.billed_gb_s,
            "{} MB: the learned batch {second:?} cost more than the first {first:?}",
            s.config.fleet.memory_mb
        );
        assert!(second.peak_memory_fraction < peak, "{second:?}");
    }
}

const COPY_SHARE: f64 = crate::pace::COPY_MEMORY_SHARE;

/// The Node.js image handler (jimp, the AWS SDK) as measured on a busy machine: a copy's
/// init 204 ms of CPU and 61 MB, a task 649 ms of CPU and 214 MB. CPU-bound: every worker
/// runs as many tasks as its vCPUs.
fn cpu_bound_handler(memory_mb: u32) -> SimConfig {
    let mut s = handler(memory_mb, None, (204, 61.0), (649, 0, 214.0));
    // `carpool simulate`'s default, as `scripts/bench-handlers` runs it.
    s.cold_start = Duration::from_millis(100);
    s
}

#[test]
fn a_cpu_bound_learned_batch_costs_no_more_than_the_first_in_either_world() {
    // With a new worker started for twice its start in work, the learned batch at 4096 MB
    // started all 8 workers at once: 1.026 times the first batch here, and in the
    // Lambda-like world (each of 8 cold starts billed) 1.08 to 1.15 times, past the 2 % that
    // counts as a tie. A fifteenth of its bill for a worker's start (a tenth before it):
    // fewer workers, each busy longer.
    let local = [2048, 4096].map(cpu_bound_handler);
    let lambda = [2048, 4096].map(|mb| cpu_bound_handler(mb).lambda_like(Duration::from_millis(500)));
    learned_costs_no_more(local.iter().chain(&lambda), 1.02, 1.0);
}

#[test]
fn a_batch_on_more_workers_costs_at_most_a_tenth_more_than_on_one_where_tasks_share_the_cpu() {
    // 20 ms of CPU then an 80 ms wait at 128 MB in the Lambda-like world (a fourteenth of a
    // vCPU, 500 ms cold starts): a worker's first task runs alone in 0.36 s, a task among
    // its level in 0.6 s. Read as its first result less a median task, a start looked like
    // 240 ms and the learned batch started 7 workers, their cold starts more than a tenth
    // of its bill (4.10 GB-s); read whole, 5. A worker costs more than its start (its first
    // task alone, its last tasks' waits, a cold start's mean above its median): with each
    // start held to a tenth of its worker's bill the batch cost 1.13 times the same batch on
    // one worker (4.02 GB-s to 3.54), and 1.09 with the tasks varying by half; held to a
    // fifteenth, 1.11 (3.92 GB-s, in 13.8 s where one worker takes 28.3 s) and 1.06.
    let sim = |spread: f64, slots: Option<u32>| {
        let mut c = config(false, 8, slots);
        c.fleet.memory_mb = 128;
        c.fleet.keep_alive = Duration::ZERO;
        let task = TaskModel {
            cpu: Duration::from_millis(20),
            wait: Duration::from_millis(80),
            mem_mb: 1.0,
        };
        let cold = Duration::from_millis(500);
        let mut s = SimConfig::new(c, "mixed", 100, task).lambda_like(cold);
        s.spread = spread;
        s
    };
    // Tasks in step (all alike, started together) also leave the CPU idle for each round's
    // common wait, at a level whose idle share the limit counts as a tie (a tenth): at 4,
    // 80 ms of every 1.18 s. Varying, they fill each other's waits.
    for (spread, bound) in [(0.0, 1.12), (0.5, 1.10)] {
        let learned = simulate_batches_over_draws(&sim(spread, None), 2, 8).remove(1);
        // Every task at once on one worker: the fewest starts and drains there can be.
        let one = simulate_batches_over_draws(&sim(spread, Some(128)), 2, 8).remove(1);
        println!(
            "spread {spread}: learned {} invocations, {:.3} GB-s in {:?}; on one worker {:.3} GB-s in {:?}",
            learned.invocations, learned.billed_gb_s, learned.completion, one.billed_gb_s, one.completion
        );
        assert_eq!((learned.succeeded, one.succeeded, one.invocations), (100, 100, 1));
        assert!(
            learned.billed_gb_s <= bound * one.billed_gb_s,
            "spread {spread}: {} invocations cost {:.3} GB-s, one {:.3}",
            learned.invocations,
            learned.billed_gb_s,
            one.billed_gb_s
        );
        // The draws' median cold start, billed at 128 MB, once per invocation.
        let starts = learned.invocations as f64 * 0.5 * 0.125;
        assert!(
            starts <= learned.billed_gb_s / 15.0,
            "spread {spread}: {} invocations' starts ({starts:.3} GB-s) against a bill of {:.3} GB-s",
            learned.invocations,
            learned.billed_gb_s
        );
    }
}

#[test]
fn a_size_first_measured_while_its_level_was_learned_is_measured_again_at_its_level() {
    // One invocation at a time, 20 ms of CPU then an 80 ms wait varying by half, Lambda-like:
    // each size's first worker climbs from its vCPU. 128 MB's first batch read what 512 MB's
    // did (36.7 GB-ms a task), and the tie went to 512 MB for good: its learned batch, 3.69
    // GB-s (the mean of 8 draws), where 128 MB alone learns a batch of 3.34. Measured again
    // at its level, 128 MB reads cheaper, and the learned batch runs there for 3.60.
    let sim = |sizes: &[u32]| {
        let mut c = config(false, 1, None);
        c.fleet.memory_mb = sizes[0];
        c.fleet.memory_sizes = sizes.to_vec();
        c.fleet.keep_alive = Duration::ZERO;
        let task = TaskModel {
            cpu: Duration::from_millis(20),
            wait: Duration::from_millis(80),
            mem_mb: 1.0,
        };
        let mut s = SimConfig::new(c, "mixed", 100, task).lambda_like(Duration::from_millis(500));
        s.spread = 0.5;
        s
    };
    let at_512 = simulate_batches_over_draws(&sim(&[512]), 2, 8).remove(1);
    // Each size tried (2 batches), 128 MB measured again at its level, then 512 MB (its
    // first measure replaced too), and the last batch learned.
    let offered = simulate_batches_over_draws(&sim(&[128, 512]), 6, 8);
    let learned = offered.last().expect("a batch");
    assert_eq!(learned.succeeded, 100, "{learned:?}");
    assert!(
        learned.billed_gb_s <= 0.99 * at_512.billed_gb_s,
        "offered 128 and 512 MB, the learned batch cost {:.3} GB-s, 512 MB's own learned batch {:.3} ({offered:?})",
        learned.billed_gb_s,
        at_512.billed_gb_s
    );
}

#[test]
fn the_tail_of_a_batch_started_on_all_its_workers_at_once_goes_to_the_fewest() {
    // With a 50 ms cold start 8 workers pay for their start and the learned batch starts
    // them all at once: they end their fourth round of 3 together, and the last 4 tasks
    // went one to each of 4 workers (4 fifth rounds, 104.85 GB-s, 1.027 times the first
    // batch's 102.10), where the first batch's staggered starts spread them. Held for the
    // slots about to free on the workers that took the first of them: 2 fifth rounds.
    let mut s = cpu_bound_handler(4096);
    s.cold_start = Duration::from_millis(50);
    let r = simulate_batches(&s, 2);
    assert_eq!((r[0].succeeded, r[1].succeeded), (100, 100));
    assert!(
        r[1].billed_gb_s <= r[0].billed_gb_s * 1.001,
        "the learned batch {:?} cost more than the first {:?}",
        r[1],
        r[0]
    );
}

#[test]
fn eager_scale_out_starts_a_worker_per_uncovered_slot_paced_only_what_pays() {
    // Lambda's way: 40 requests, at most 8 sandboxes: all 8 start.
    let few = |s: SimConfig| SimConfig { tasks: 40, ..s };
    let eager = simulate_batches(&few(thumbnailer(2048, Some(1), true)), 2);
    assert_eq!((eager[0].invocations, eager[1].invocations), (8, 8));
    // Paced, once a worker has shown what reaching its level costs (700 ms of init
    // against 80 ms tasks): fewer workers, each with enough turns to pay for its init.
    let paced = simulate_batches(&few(thumbnailer(2048, Some(1), false)), 2);
    assert!(paced[1].invocations < 8, "{paced:?}");
    assert!(paced[1].billed_gb_s < eager[1].billed_gb_s, "{paced:?} {eager:?}");
}

/// Billed GB-s of each of `batches` batches of `task` with the sizes offered (`sizes`; one
/// size: that size fixed).
fn batches_at(sizes: &[u32], task: TaskModel, batches: usize) -> Vec<f64> {
    let mut config = config(false, 8, None);
    config.fleet.memory_mb = sizes[0];
    config.fleet.memory_sizes = sizes.to_vec();
    let sim = SimConfig::new(config, "spin", 200, task);
    simulate_batches(&sim, batches)
        .iter()
        .map(|r| {
            assert_eq!(r.succeeded, 200, "{r:?}");
            r.billed_gb_s
        })
        .collect()
}

#[test]
fn the_chosen_size_costs_within_a_tenth_of_the_best_fixed_size_once_learned() {
    let sizes = [1024, 2048, 4096];
    for (what, task) in [
        ("waiting", TaskModel::waiting(Duration::from_millis(300))),
        ("cpu-bound", TaskModel::cpu_bound(Duration::from_millis(200))),
    ] {
        // Each fixed size, its learned (last) batch.
        let fixed: Vec<f64> = sizes
            .iter()
            .map(|&s| *batches_at(&[s], task, 3).last().expect("a batch"))
            .collect();
        let best = fixed.iter().copied().fold(f64::INFINITY, f64::min);
        let chosen = batches_at(&sizes, task, 5);
        let learned = *chosen.last().expect("a batch");
        println!("{what}: fixed 1024/2048/4096 MB {fixed:.3?} GB-s; chosen, batch by batch {chosen:.3?}");
        assert!(
            learned <= 1.10 * best,
            "{what}: the chosen size's learned batch cost {learned:.3} GB-s, the best fixed size {best:.3} ({fixed:?}; batches {chosen:?})"
        );
    }
}

#[test]
fn a_lambda_like_world_draws_cold_starts_with_a_tail_and_shares_cpu_by_memory() {
    // Cold starts: the same draws for the same seed, around the median, with a tail.
    let mut draws = model::Draws::new(7);
    let median = Duration::from_millis(500);
    let mut d: Vec<Duration> = (0..2000)
        .map(|_| draws.log_normal(median, LAMBDA_COLD_START_SIGMA))
        .collect();
    d.sort();
    let (p50, p99) = (d[1000].as_secs_f64(), d[1980].as_secs_f64());
    assert!((0.45..0.55).contains(&p50), "p50 {p50}");
    assert!((1.5..2.6).contains(&p99), "p99 {p99}");
    let mut again = model::Draws::new(7);
    assert_eq!(again.log_normal(median, LAMBDA_COLD_START_SIGMA), {
        let mut first = model::Draws::new(7);
        first.log_normal(median, LAMBDA_COLD_START_SIGMA)
    });
    // CPU: a fraction of a vCPU below 1769 MB (the local world rounds up to whole vCPUs).
    let lambda = World::Lambda { sigma: 0.6, seed: 1 };
    assert!((lambda.cpu_share(1024, 1) - 1024.0 / 1769.0).abs() < 1e-9);
    assert_eq!(World::Local.cpu_share(1024, 1), 1.0);
    // A batch there waits for its workers' longer cold starts, and pays for them.
    let local = spin(false, 4, Some(1));
    let (l, w) = (simulate(&local), simulate(&local.clone().lambda_like(median)));
    assert_eq!((l.succeeded, w.succeeded), (40, 40));
    assert!(
        w.completion > l.completion && w.billed_gb_s > l.billed_gb_s,
        "{l:?} {w:?}"
    );
}

#[test]
fn tasks_that_vary_do_not_stay_in_step() {
    // Each task's factor: within the spread, the same for the same task, about 1 on average.
    let f: Vec<f64> = (0..4000).map(|id| model::varied(0.5, id, 0)).collect();
    assert!(f.iter().all(|x| (0.5..=1.5).contains(x)), "{f:?}");
    assert_eq!(model::varied(0.5, 17, 1), model::varied(0.5, 17, 1));
    assert_ne!(model::varied(0.5, 17, 0), model::varied(0.5, 17, 1));
    let mean = f.iter().sum::<f64>() / f.len() as f64;
    assert!((0.97..1.03).contains(&mean), "mean {mean}");
    assert_eq!(model::varied(0.0, 17, 0), 1.0);
    // Mixed work on one worker of 1024 MB in the Lambda-like world (0.58 vCPU). Identical
    // tasks filled together share the CPU, end their bursts together and wait together: the
    // CPU idles through each wait. Tasks that vary fall out of step and keep it busy, so
    // the same work, learned, costs less.
    let mixed = |spread: f64| {
        let mut c = config(false, 1, None);
        c.fleet.memory_mb = 1024;
        let task = TaskModel {
            cpu: Duration::from_millis(20),
            wait: Duration::from_millis(80),
            mem_mb: 1.0,
        };
        let mut s = SimConfig::new(c, "mixed", 100, task).lambda_like(Duration::from_millis(500));
        s.spread = spread;
        simulate_batches(&s, 2)
    };
    let (alike, varied) = (mixed(0.0), mixed(0.5));
    println!("learned batch: alike {:?}; varied {:?}", alike[1], varied[1]);
    assert_eq!((alike[1].succeeded, varied[1].succeeded), (100, 100));
    assert!(
        varied[1].billed_gb_s < 0.9 * alike[1].billed_gb_s,
        "alike {:?}, varied {:?}",
        alike[1],
        varied[1]
    );
}

#[test]
fn every_batch_and_way_meets_the_same_cold_starts_and_draws_are_averaged() {
    // 40 waits of 100 ms on one worker of 64 slots: each batch is one cold start and one
    // round. The second batch meets the first one's draw (it drew the next one before: a
    // batch's bill was whichever draw its turn came to).
    let median = Duration::from_millis(500);
    let one_worker = |seed: u64| {
        let mut s = SimConfig::new(
            config(false, 1, Some(64)),
            "sleep",
            40,
            TaskModel::waiting(Duration::from_millis(100)),
        )
        .lambda_like(median);
        s.world = World::Lambda {
            sigma: LAMBDA_COLD_START_SIGMA,
            seed,
        };
        s
    };
    let r = simulate_batches(&one_worker(3), 3);
    assert!(r.iter().all(|b| b.succeeded == 40 && b.invocations == 1), "{r:?}");
    assert_eq!(r[0].billed_gb_s, r[1].billed_gb_s, "{r:?}");
    assert_eq!(r[1].billed_gb_s, r[2].billed_gb_s, "{r:?}");
    // Another way (two workers of 32) meets the same first draw for its first worker.
    let mut two = one_worker(3);
    two.config.fleet.slots = Some(32);
    two.config.fleet.max_workers = 2;
    let t = simulate_batches(&two, 1);
    assert!(t[0].completion >= r[0].completion, "{t:?} {r:?}");
    // Over draws: each batch the mean of the seeds counted up from the world's.
    let seeds: Vec<f64> = (3..7)
        .map(|seed| simulate_batches(&one_worker(seed), 1)[0].billed_gb_s)
        .collect();
    let mean = simulate_batches_over_draws(&one_worker(3), 2, 4);
    let expected = seeds.iter().sum::<f64>() / 4.0;
    assert!(
        (mean[0].billed_gb_s - expected).abs() < 1e-9,
        "{mean:?} {seeds:?}"
    );
    assert!(
        seeds.iter().any(|&b| (b - seeds[0]).abs() > 1e-9),
        "4 seeds drew alike: {seeds:?}"
    );
    // One draw, or the local world (no draws): one run.
    let once = simulate_batches_over_draws(&one_worker(3), 2, 1);
    assert_eq!(once[1].billed_gb_s, r[1].billed_gb_s);
    let local = spin(false, 2, None);
    assert_eq!(
        simulate_batches_over_draws(&local, 1, 8)[0].billed_gb_s,
        simulate(&local).billed_gb_s
    );
}

#[test]
fn a_mean_of_draws_keeps_the_worst_failure_and_memory_peak() {
    let a = SimReport {
        invocations: 2,
        billed_gb_s: 1.0,
        completion: Duration::from_secs(1),
        succeeded: 10,
        failed: 0,
        peak_memory_fraction: 0.5,
        ..SimReport::default()
    };
    let b = SimReport {
        invocations: 3,
        billed_gb_s: 3.0,
        completion: Duration::from_secs(3),
        succeeded: 9,
        failed: 1,
        peak_memory_fraction: 1.2,
        killed_at_deadline: 2,
        ..SimReport::default()
    };
    let m = SimReport::mean(&[a, b]);
    assert_eq!(m.billed_gb_s, 2.0);
    assert_eq!(m.completion, Duration::from_secs(2));
    assert_eq!((m.failed, m.killed_at_deadline), (1, 2));
    assert_eq!(m.peak_memory_fraction, 1.2);
    assert_eq!(m.invocations, 3); // 2.5, rounded
    assert_eq!(SimReport::mean(&[]).billed_gb_s, 0.0);
}

/// A batch of 1000 short tasks (50 ms of CPU) with `long` ones mixed in (one in `every`)
/// on at most two workers that live 5 s, in a Lambda-like world (500 ms cold starts),
/// under `admission`, the short ones submitted with `bounded` as their own timeout (or
/// none): the mean of 8 cold-start draws (on one draw, a successor that drew a cold start
/// from the tail decides the hand-over figure).
fn mixed_batch(
    admission: crate::scheduler::Admission,
    long: TaskModel,
    every: u64,
    bounded: Option<Duration>,
) -> SimReport {
    mixed_batch_living(admission, long, every, bounded, Duration::from_secs(5))
}

/// [`mixed_batch`] on workers that live `life`.
fn mixed_batch_living(
    admission: crate::scheduler::Admission,
    long: TaskModel,
    every: u64,
    bounded: Option<Duration>,
    life: Duration,
) -> SimReport {
    let mut s = mixed_sim(admission, long, every, bounded, life);
    s.watch_handover = true;
    simulate_batches_over_draws(&s, 1, 8).remove(0)
}

/// The simulation [`mixed_batch_living`] runs.
fn mixed_sim(
    admission: crate::scheduler::Admission,
    long: TaskModel,
    every: u64,
    bounded: Option<Duration>,
    life: Duration,
) -> SimConfig {
    let mut c = config(false, 2, None);
    c.fleet.execution_timeout = life;
    c.fleet.admission = admission;
    let mut s = SimConfig::new(c, "mixed", 1000, TaskModel::cpu_bound(Duration::from_millis(50)))
        .lambda_like(Duration::from_millis(500));
    s.mix = Some(TaskMix { every, long, bounded });
    s
}

/// Long waits that vary (1 to 3 s in a 5 s life; the short tasks' CPU varies as much):
/// the figure is where the long ones' tail is expected to end, and the first long ones
/// still running count as if they ended now. Prints the figures the README quotes
/// (`-- --nocapture`).
#[test]
fn long_waits_that_vary_are_killed_at_a_deadline_hardly_ever() {
    use crate::scheduler::Admission;
    let waits = TaskModel::waiting(Duration::from_secs(2));
    for every in [2, 5, 25, 100] {
        let batch = |admission| {
            let mut s = mixed_sim(admission, waits, every, None, Duration::from_secs(5));
            s.spread = 0.5;
            simulate_batches_over_draws(&s, 1, 8).remove(0)
        };
        let (d, f) = (batch(Admission::Duration), batch(Admission::Fraction));
        println!(
            "1 in {every} waits of 1 to 3 s: by duration {} killed (the worst of 8 draws), {:.1} GB-s in {:.2} s; the 0.8 rule {} killed, {:.1} GB-s in {:.2} s ({:.2} times its bill)",
            d.killed_at_deadline,
            d.billed_gb_s,
            d.completion.as_secs_f64(),
            f.killed_at_deadline,
            f.billed_gb_s,
            f.completion.as_secs_f64(),
            d.billed_gb_s / f.billed_gb_s
        );
        assert_eq!(d.succeeded, 1000, "{d:?}");
        // What is left at-least-once: a long task longer than any seen yet, taken late
        // while none like it had ended or run as long (the batch's first long ones).
        assert!(d.killed_at_deadline <= 1, "1 in {every}: {d:?}");
        assert!(f.killed_at_deadline >= 5, "1 in {every}: {f:?}");
        assert!(d.completion <= f.completion, "1 in {every}: {d:?} {f:?}");
    }
}

/// A worker's admissions end before its life does (by a long task's time here): what it
/// completes as it drains falls off, and is not what its level does. Judged on that, the
/// last rise of every worker was undone and the next batch started from the level before
/// it. Prints the bills (`-- --nocapture`).
#[test]
fn a_level_found_before_admissions_end_is_kept_for_the_next_batch() {
    use crate::scheduler::Admission;
    let waits = TaskModel::waiting(Duration::from_secs(2));
    let s = mixed_sim(Admission::Duration, waits, 5, None, Duration::from_secs(5));
    let r = simulate_batches_over_draws(&s, 3, 8);
    let bills: Vec<String> = r.iter().map(|b| format!("{:.1}", b.billed_gb_s)).collect();
    println!(
        "1 in 5 waits of 2 s, 3 batches by duration: {} GB-s",
        bills.join(", ")
    );
    assert!(
        r.iter().all(|b| b.succeeded == 1000 && b.killed_at_deadline == 0),
        "{r:?}"
    );
    // 0.57 of the first batch's bill; judged on drains, 0.68.
    assert!(r[2].billed_gb_s <= 0.62 * r[0].billed_gb_s, "{r:?}");
}

/// Prints the figures the README quotes (`-- --nocapture`).
#[test]
fn admission_by_duration_kills_nothing_at_a_deadline_and_hands_over_without_a_gap() {
    use crate::scheduler::Admission;
    eprintln!(
        "long tasks | admission | completion s | billed GB-s | invocations | killed at a deadline | successors | hand-over wait ms"
    );
    // Long tasks that wait 2 s (40 % of the life), and long tasks that compute 1 s (two
    // or more while they share the vCPUs). Bounds on the default way's bill against the
    // 0.8 rule's, and on the short ones bounded by a timeout of their own (see below).
    let waits = TaskModel::waiting(Duration::from_secs(2));
    let computes = TaskModel::cpu_bound(Duration::from_secs(1));
    let mixes = [
        ("wait", waits, 2, 1.3, 1.2),
        ("wait", waits, 5, 1.25, 1.2),
        ("wait", waits, 25, 1.3, 1.1),
        ("wait", waits, 100, 1.15, 1.05),
        ("wait", waits, u64::MAX, 1.0, 1.0),
        ("compute", computes, 2, 0.8, 0.8),
        ("compute", computes, 5, 1.05, 1.0),
        ("compute", computes, 25, 1.1, 1.0),
        ("compute", computes, 100, 1.1, 1.05),
    ];
    for (kind, long, every, bill_bound, bounded_bound) in mixes {
        let d = mixed_batch(Admission::Duration, long, every, None);
        let f = mixed_batch(Admission::Fraction, long, every, None);
        // The short tasks bounded by a timeout of their own (twenty times what they take alone).
        let b = mixed_batch(Admission::Duration, long, every, Some(Duration::from_secs(1)));
        let mix = if every == u64::MAX {
            "none".to_owned()
        } else {
            format!("1 in {every} {kind}s")
        };
        for (name, r) in [
            ("duration", &d),
            ("fraction", &f),
            ("duration, short ones bounded", &b),
        ] {
            eprintln!(
                "{mix} | {name} | {:.2} | {:.1} | {} | {} | {} | {:.0}",
                r.completion.as_secs_f64(),
                r.billed_gb_s,
                r.invocations,
                r.killed_at_deadline,
                r.successors,
                r.handover_wait.as_secs_f64() * 1000.0
            );
        }
        assert_eq!((d.succeeded, f.succeeded, b.succeeded), (1000, 1000, 1000));
        assert_eq!(d.killed_at_deadline, 0, "{mix}: {d:?}");
        // Bounded, they fill what is left of a worker's life once the long ones no longer
        // fit, and finish sooner. Until a first long task has ended, nothing that long is
        // known but what the long ones have run so far: that ends the old workers' last
        // admissions of unbounded tasks while the first long ones run (without it, the
        // short tasks' 1 s timeouts asked for more life than the 50 ms figure did, the short
        // ones went to fresh workers and the long ones took the old workers' last slots:
        // 3 killed at one in 100). A bounded task needs what its kind takes, never more
        // than its timeout: planned on the 1 s timeout alone, the batch with no long tasks
        // cost 1.19 times the 0.8 rule's.
        assert!(b.completion <= f.completion, "{mix}: {b:?} {f:?}");
        // What is left at-least-once: the batch's first long task, reaching a worker with
        // less life left than it takes while only 50 ms tasks had been seen or were running
        // (one attempt, in one of the 8 draws at one in 100, since successors are started
        // by the cold starts' fitted tail: the first long task's worker changed). The
        // default way, whose unbounded short tasks end admissions earlier, kills none.
        assert!(b.killed_at_deadline <= 1, "{mix}: {b:?}");
        assert!(
            b.billed_gb_s <= bounded_bound * f.billed_gb_s,
            "{mix}: {b:?} {f:?}"
        );
        assert!(d.completion <= f.completion, "{mix}: {d:?} {f:?}");
        // Where the long tasks only wait, the cautious end of admissions costs more than
        // the fixed fraction's kills (a killed wait only held a slot, and the fraction's
        // workers take unbounded tasks for 0.8 of their lives where these stop 2.45 s before
        // the end: 25 workers here to its 18 at one in 2, in 0.35 of its time): bounded here,
        // and said so in the README. With the longest attempt stretched by a quarter (2.75 s
        // before the end) it was 1.46 times at one in 2 and 1.31 at one in 5, 32 and 35
        // workers; by a tenth, 1.22 and 1.17, and still nothing killed. Where they compute, a kill throws away CPU the batch
        // paid for, and the 0.8 rule costs as much or more.
        assert!(d.billed_gb_s <= bill_bound * f.billed_gb_s, "{mix}: {d:?} {f:?}");
        // A hand-over leaves tasks waiting at most a tenth of the 500 ms cold start: on
        // average by the simulator's tally, and the longest one by the coordinator's own
        // count (Stats' handover_wait_longest_ms), in the worst of the draws.
        if d.successors > 0 {
            let per_handover = d.handover_wait.as_secs_f64() / d.successors as f64;
            assert!(per_handover <= 0.05, "{mix}: {per_handover} s a hand-over: {d:?}");
        }
        assert!(
            d.handover_longest <= Duration::from_millis(50),
            "{mix}: the longest hand-over by the coordinator's count: {d:?}"
        );
    }
}

/// Batches of `tasks` CPU-bound tasks (200 ms of CPU) on at most 2 workers in a Lambda-like
/// world (500 ms cold starts, drawn with `seed`), with `sizes` offered and every task
/// submitted with `deadline`: the reports of `batches` batches.
fn deadline_batches(sizes: &[u32], deadline: Duration, seed: u64, batches: usize) -> Vec<SimReport> {
    let mut c = config(false, 2, None);
    c.fleet.memory_mb = sizes[0];
    c.fleet.memory_sizes = sizes.to_vec();
    let mut sim = SimConfig::new(c, "spin", 40, TaskModel::cpu_bound(Duration::from_millis(200)))
        .lambda_like(Duration::from_millis(500));
    sim.world = World::Lambda {
        sigma: LAMBDA_COLD_START_SIGMA,
        seed,
    };
    sim.deadline = Some(deadline);
    simulate_batches(&sim, batches)
}

#[test]
fn a_deadline_is_met_at_the_cost_of_the_cheapest_size_that_meets_it() {
    // 40 tasks of 200 ms of CPU, at most 2 workers, a 4 s deadline: at 1024 MB (0.58 of a
    // vCPU) a batch costs least but takes about 8 s, and once that is measured even the
    // soonest finish misses, so about half the tasks are refused at submission; at 4096 MB
    // it takes about 2.5 s. With both offered, once both are measured (the first batch
    // tries each), the deadline moves the workers to 4096 MB.
    // A 20 s deadline both sizes meet: the cheaper, 1024 MB, stays.
    for deadline in [Duration::from_secs(4), Duration::from_secs(20)] {
        let (mut met, mut learned, mut chosen_cost, mut best_cost) = (0, 0, 0.0, 0.0);
        let mut first = (0.0, 0.0);
        for seed in 0..20 {
            let chosen = deadline_batches(&[1024, 4096], deadline, seed, 4);
            let small = deadline_batches(&[1024], deadline, seed, 4);
            let large = deadline_batches(&[4096], deadline, seed, 4);
            let meets = |r: &SimReport| r.succeeded == 40 && r.completion <= deadline;
            // The cheapest fixed size that meets the deadline, on the same draws.
            let best = |i: usize| {
                [&small[i], &large[i]]
                    .into_iter()
                    .filter(|r| meets(r))
                    .map(|r| r.billed_gb_s)
                    .fold(f64::INFINITY, f64::min)
            };
            first.0 += chosen[0].billed_gb_s;
            first.1 += best(0);
            for (i, batch) in chosen.iter().enumerate().skip(1) {
                let best = best(i);
                assert!(
                    best.is_finite(),
                    "seed {seed}: no fixed size met it: {small:?} {large:?}"
                );
                learned += 1;
                if meets(batch) {
                    met += 1;
                }
                chosen_cost += batch.billed_gb_s;
                best_cost += best;
            }
        }
        println!(
            "deadline {deadline:?}, 20 seeds x 3 learned batches: met {met} of {learned}; billed {chosen_cost:.1} GB-s against {best_cost:.1} for the cheapest fixed size that met it ({:.3} times); first batches {:.3} times",
            chosen_cost / best_cost,
            first.0 / first.1
        );
        assert!(met * 100 >= learned * 95, "{deadline:?}: met {met} of {learned}");
        assert!(
            chosen_cost <= 1.15 * best_cost,
            "{deadline:?}: {chosen_cost} against {best_cost}"
        );
    }
}

#[test]
fn with_a_life_ten_times_its_longest_task_admission_by_duration_bills_as_the_fixed_rule() {
    use crate::scheduler::Admission;
    // The 2 s waits of the test above in a 20 s life: the part of a life that admits
    // nothing is the longest task, a tenth of it here, where in a 5 s life it is half.
    // Prints the figures the README quotes (`-- --nocapture`).
    let waits = TaskModel::waiting(Duration::from_secs(2));
    let life = Duration::from_secs(20);
    for every in [2, 5, 25, 100] {
        let d = mixed_batch_living(Admission::Duration, waits, every, None, life);
        let f = mixed_batch_living(Admission::Fraction, waits, every, None, life);
        println!(
            "1 in {every} waits, 20 s life: by duration {:.1} GB-s in {:.2} s, the 0.8 rule {:.1} GB-s in {:.2} s ({:.2} times)",
            d.billed_gb_s,
            d.completion.as_secs_f64(),
            f.billed_gb_s,
            f.completion.as_secs_f64(),
            d.billed_gb_s / f.billed_gb_s
        );
        assert_eq!((d.succeeded, d.killed_at_deadline), (1000, 0), "{d:?}");
        assert!(d.billed_gb_s <= 1.1 * f.billed_gb_s, "1 in {every}: {d:?} {f:?}");
        assert!(d.completion <= f.completion, "1 in {every}: {d:?} {f:?}");
    }
}
