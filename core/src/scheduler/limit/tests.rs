//! Unit tests of `limit`.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn params() -> LimitParams {
    LimitParams::default()
}

fn settled(level: u32) -> Learned {
    Learned { level, settled: true }
}

/// A settled sample at `running` tasks.
fn obs(cpu: f64, mem: f64, running: u32) -> Observation {
    Observation {
        cpu,
        mem,
        running,
        youngest: 30 * MS,
        peak: mem,
        wait: 0.0,
    }
}

/// Runs the worker at its limit: filled, then a settled sample with `per_task` CPU and
/// memory per task on top of `base` memory. Returns what moved.
fn step(l: &mut Limit, p: &LimitParams, now: Instant, cpu_per_task: f64, mem_per_task: f64) -> Option<Move> {
    l.filled(now);
    let n = l.value();
    l.observe(
        p,
        obs(cpu_per_task * f64::from(n), 0.01 + mem_per_task * f64::from(n), n),
        now,
    )
}

/// Runs the worker at its limit for `n` samples of `sample`, 50 ms apart from `t0`, each
/// after a fill. Returns what each moved.
fn hold(l: &mut Limit, p: &LimitParams, t0: Instant, sample: Observation, n: u32) -> Vec<Option<Move>> {
    (0..n)
        .map(|i| {
            let at = t0 + i * 50 * MS;
            l.filled(at);
            l.observe(p, sample, at)
        })
        .collect()
}

/// Fills `l` at `at`; `n` tasks of `took` complete; `sample` arrives `after` that. Returns
/// what moved.
fn filled_window(
    l: &mut Limit,
    p: &LimitParams,
    (at, after): (Instant, Duration),
    (n, took): (u32, Duration),
    sample: Observation,
) -> Option<Move> {
    l.filled(at);
    for _ in 0..n {
        l.completed(took);
    }
    l.observe(p, sample, at + after)
}

/// Small waiting tasks leave room for many times their level: each settled sample
/// quadruples it, up to the cap.
#[test]
fn waiting_tasks_quadruple_the_limit_up_to_the_cap() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, 2);
    l.observe(&p, obs(0.0, 0.01, 0), t0); // idle base
    let mut seen = vec![l.value()];
    for i in 1..20 {
        step(&mut l, &p, t0 + i * 30 * MS, 0.001, 0.0001);
        seen.push(l.value());
    }
    assert_eq!(&seen[..6], &[2, 8, 32, 128, 256, 256]);
    assert_eq!(l.phase(), Phase::Steady, "at the cap it stops probing");
}

/// Where the headroom does not hold twice what quadrupling adds, the limit doubles, and
/// memory still caps the last rise.
#[test]
fn tasks_that_leave_less_room_double_the_limit() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, 1);
    l.observe(&p, obs(0.0, 0.01, 0), t0); // idle base
    let mut seen = vec![l.value()];
    // 4 % of the memory each: 22 fit under the target with the base.
    for i in 1..10 {
        step(&mut l, &p, t0 + i * 30 * MS, 0.001, 0.04);
        seen.push(l.value());
    }
    // From 1: room for 21 more, 6 asked for quadrupling: 4. From 4: room for 18, 24 asked
    // for: it doubles to 8, then 16, then what fits.
    assert_eq!(&seen[..6], &[1, 4, 8, 16, 22, 22]);
    assert_eq!(l.phase(), Phase::Steady, "memory binds");
}

/// A whole generation of waiting tasks finished at the level: their whole lives are known,
/// so the limit jumps toward what their CPU and memory imply, 16 times at most, instead of
/// doubling one settle window at a time; memory still bounds the jump.
#[test]
fn a_finished_generation_lets_the_limit_jump_toward_the_level_it_implies() {
    let p = params();
    let t0 = Instant::now();
    let generation = |l: &mut Limit, at: Instant, cpu_per_task: f64, mem_per_task: f64| {
        l.filled(at);
        for _ in 0..l.value() {
            l.completed(100 * MS);
        }
        let n = l.value();
        l.observe(
            &p,
            obs(cpu_per_task * f64::from(n), 0.01 + mem_per_task * f64::from(n), n),
            at + 100 * MS,
        )
    };
    let mut l = Limit::probing(&p, 1);
    l.observe(&p, obs(0.0, 0.01, 0), t0);
    assert_eq!(generation(&mut l, t0, 0.001, 0.0001), Some(Move::Rise));
    assert_eq!(l.value(), 16);
    assert_eq!(generation(&mut l, t0 + 200 * MS, 0.001, 0.0001), Some(Move::Rise));
    assert_eq!(l.value(), 256);
    // Tasks of 8 % of the memory each: from 1, at most what fits under the target.
    let mut m = Limit::probing(&p, 1);
    m.observe(&p, obs(0.0, 0.01, 0), t0);
    generation(&mut m, t0, 0.001, 0.08);
    assert_eq!(m.value(), 1 + ((0.9 - 0.09) / 0.08f64).floor() as u32);
    // Without a finished generation (only the newest task settled), it quadruples at
    // most, and doubles where the headroom is short of twice that.
    let mut d = Limit::probing(&p, 1);
    d.observe(&p, obs(0.0, 0.01, 0), t0);
    assert_eq!(step(&mut d, &p, t0 + 30 * MS, 0.001, 0.0001), Some(Move::Rise));
    assert_eq!(d.value(), 4);
    let mut h = Limit::probing(&p, 1);
    h.observe(&p, obs(0.0, 0.01, 0), t0);
    assert_eq!(step(&mut h, &p, t0 + 30 * MS, 0.001, 0.15), Some(Move::Rise));
    assert_eq!(h.value(), 2);
}

#[test]
fn cpu_bound_tasks_stay_at_the_vcpus() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, 2);
    // Two single-threaded tasks keep both vCPUs busy: the target binds, no rise; once
    // that has lasted a task's whole life (and 100 ms) the limit has found its level.
    for i in 1..10 {
        assert_eq!(step(&mut l, &p, t0 + i * 30 * MS, 0.5, 0.001), None);
        assert_eq!(
            l.phase(),
            Phase::Probing,
            "no task has finished: it may be a start-up burst"
        );
    }
    l.completed(200 * MS);
    for i in 10..18 {
        assert_eq!(step(&mut l, &p, t0 + i * 30 * MS, 0.5, 0.001), None);
    }
    assert_eq!((l.value(), l.phase()), (2, Phase::Steady));
    assert_eq!(
        l.proven(),
        Some(Learned {
            level: 2,
            settled: true
        })
    );
}

/// Pinned to fewer cores than its allotment, or sharing them with neighbours, a worker's
/// CPU share stays under the target however many tasks it runs (here 0.6), but its tasks
/// queue for a CPU: what they asked for (used plus waited) binds the climb and, held for a
/// task's whole life, ends probing at the level reached.
#[test]
fn tasks_waiting_for_a_cpu_stop_the_climb_where_the_cpu_share_cannot_reach_the_target() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, 2);
    let starved = |running: u32| Observation {
        wait: 0.4,
        ..obs(0.6, 0.05, running)
    };
    for i in 1..10 {
        l.filled(t0 + i * 30 * MS);
        assert_eq!(l.observe(&p, starved(2), t0 + i * 30 * MS), None, "sample {i}");
    }
    l.completed(200 * MS);
    for i in 10..18 {
        l.filled(t0 + i * 30 * MS);
        assert_eq!(l.observe(&p, starved(2), t0 + i * 30 * MS), None);
    }
    assert_eq!((l.value(), l.phase()), (2, Phase::Steady));
    // A waiting worker whose own use is small (an I/O-bound one next to a busy coordinator):
    // its wait counts only up to its use, so it climbs on.
    let mut io = Limit::probing(&p, 2);
    io.filled(t0);
    let victim = Observation {
        wait: 0.8,
        ..obs(0.05, 0.05, 2)
    };
    assert_eq!(io.observe(&p, victim, t0 + 30 * MS), Some(Move::Rise));
    // The same CPU share with nothing waiting is headroom: it would have risen.
    let mut free = Limit::probing(&p, 2);
    free.filled(t0);
    assert_eq!(
        free.observe(&p, obs(0.3, 0.05, 2), t0 + 30 * MS),
        Some(Move::Rise)
    );
}

/// A level above what the CPU runs (learned on an idle host, say): its tasks wait for a CPU.
/// A burst of waiting shorter than a task does nothing; waiting for a whole task cuts the
/// limit to the running tasks over what they asked for.
#[test]
fn tasks_waiting_for_a_cpu_for_a_whole_task_cut_the_limit_to_what_the_cpu_runs() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::learned(&p, settled(6), 2);
    l.completed(300 * MS);
    // Six CPU-bound tasks on an allotment of two: it is all busy and four wait.
    let crowded = Observation {
        wait: 2.0,
        ..obs(1.0, 0.05, 6)
    };
    l.filled(t0);
    assert_eq!(
        l.observe(&p, crowded, t0),
        None,
        "the first sample starts the count"
    );
    assert_eq!(l.observe(&p, crowded, t0 + 100 * MS), None, "shorter than a task");
    // A quiet sample in between starts the count again.
    assert_eq!(l.observe(&p, obs(1.0, 0.05, 6), t0 + 200 * MS), None);
    assert_eq!(l.observe(&p, crowded, t0 + 300 * MS), None);
    assert_eq!(l.observe(&p, crowded, t0 + 500 * MS), None);
    assert_eq!(l.observe(&p, crowded, t0 + 700 * MS), Some(Move::CpuFall));
    // 6 tasks used the whole allotment and waited for twice that: counted up to what they
    // used, they asked for 2 allotments, so 3 first.
    assert_eq!(l.value(), 3);
    // At 3, the allotment busy and half of it waited for: 1.5 allotments asked, 2 it is.
    let still = Observation {
        wait: 0.5,
        ..obs(1.0, 0.05, 3)
    };
    l.filled(t0 + 800 * MS);
    assert_eq!(l.observe(&p, still, t0 + 800 * MS), None);
    assert_eq!(l.observe(&p, still, t0 + 1200 * MS), Some(Move::CpuFall));
    assert_eq!(l.value(), 2);
    // Below its level, waiting is not the level's doing (runtime copies starting): no fall.
    let mut n = Limit::learned(&p, settled(3), 2);
    n.completed(10 * MS);
    let starting = Observation {
        wait: 0.5,
        ..obs(0.95, 0.05, 1)
    };
    assert!(hold(&mut n, &p, t0, starting, 20).iter().all(Option::is_none));
    assert_eq!(n.value(), 3);
    // Microsecond tasks: their rate loads the CPU, not the level; no fall however long
    // their threads wait on a busy host.
    let mut q = Limit::learned(&p, settled(8), 2);
    q.completed(Duration::from_micros(20));
    let flooded = Observation {
        wait: 5.0,
        ..obs(1.0, 0.05, 8)
    };
    assert!(hold(&mut q, &p, t0, flooded, 20).iter().all(Option::is_none));
    assert_eq!(q.value(), 8);
    // A little waiting (under a quarter of the allotment) is no fall.
    let mut m = Limit::learned(&p, settled(3), 2);
    m.completed(10 * MS);
    let some = Observation {
        wait: 0.2,
        ..obs(1.0, 0.05, 3)
    };
    assert!(hold(&mut m, &p, t0, some, 20).iter().all(Option::is_none));
    assert_eq!(m.value(), 3);
}

/// Copies of a runtime with threads of its own (Node.js: its collector and compiler) on two
/// vCPUs: two copies keep the CPU busy and their threads wait, from nothing to twice the
/// allotment from one sample to the next, yet one copy alone leaves half of it idle. The
/// CPU fall rounds up to the fewest tasks that fill the CPU and never goes below one task
/// per vCPU, so the level stays at 2 (rounded down from one sample, it fell to 1 and the
/// batch cost 1.5 times `--slots 2`).
#[test]
fn waiting_runtime_threads_never_take_the_limit_below_its_vcpus() {
    let p = params();
    let t0 = Instant::now();
    for mut l in [Limit::learned(&p, settled(2), 2), Limit::probing(&p, 2)] {
        l.completed(480 * MS);
        for i in 0..60 {
            // The waits of a recorded second batch, in turn.
            let wait = [0.77, 2.02, 0.76, 0.45, 0.91, 1.67, 1.85, 1.05, 0.06, 1.77][i % 10];
            let busy = Observation {
                wait,
                ..obs(1.0, 0.2, 2)
            };
            l.filled(t0 + i as u32 * 50 * MS);
            assert_ne!(l.observe(&p, busy, t0 + i as u32 * 50 * MS), Some(Move::CpuFall));
            assert_eq!(l.value(), 2, "sample {i}");
        }
    }
    // Above its vCPUs, the same waiting still cuts the level, down to them at most.
    let mut l = Limit::learned(&p, settled(6), 2);
    l.completed(300 * MS);
    let crowded = Observation {
        wait: 1.0,
        ..obs(1.0, 0.05, 6)
    };
    hold(&mut l, &p, t0, crowded, 20);
    assert_eq!(l.value(), 3, "6 tasks asking for 2 allotments: 3");
    // From a level a worker only rose to, the floor is still the vCPUs, not that level.
    let mut u = Limit::learned(
        &p,
        Learned {
            level: 6,
            settled: false,
        },
        2,
    );
    u.completed(300 * MS);
    hold(&mut u, &p, t0, crowded, 20);
    assert_eq!(u.value(), 3, "6 tasks asking for 2 allotments: 3");
}

#[test]
fn a_start_up_burst_of_cpu_holds_the_climb_but_does_not_end_it() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, 2);
    // The tasks' first 25 ms touch their memory at full CPU...
    assert_eq!(step(&mut l, &p, t0 + 30 * MS, 0.5, 0.01), None);
    assert_eq!(l.phase(), Phase::Probing);
    // ... then they wait: the climb goes on.
    assert_eq!(step(&mut l, &p, t0 + 60 * MS, 0.01, 0.01), Some(Move::Rise));
    assert_eq!(l.value(), 8);
    assert_eq!(
        l.proven(),
        Some(Learned {
            level: 8,
            settled: false
        }),
        "a limit that only rose proves its level"
    );
}

#[test]
fn a_rise_is_capped_by_the_cpu_it_would_take() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, 2);
    // 0.2 of the allotment per task: 2 run at 0.4, so 4 would be 0.8 and 5 would be 1.0.
    assert_eq!(step(&mut l, &p, t0 + 30 * MS, 0.2, 0.001), Some(Move::Rise));
    assert_eq!(l.value(), 4);
    assert_eq!(
        step(&mut l, &p, t0 + 60 * MS, 0.2, 0.001),
        None,
        "a fifth task would cross 0.9"
    );
    assert_eq!(l.value(), 4);
}

/// A level that leaves part of the CPU idle where one more task would cross the target
/// rounds up to the fewest tasks that fill it, once a whole generation at the level shows
/// what it asks for: a Lambda worker of 128 MB running tasks that compute 20 ms (276 ms on
/// its fourteenth of a vCPU) and then wait 80 ms is busy 78 % of the time at one task, and
/// full at two. Samples that cover less than a task's life do not count alone (one may
/// catch every task computing); once full, the CPU binds.
#[test]
fn the_last_rise_fills_the_cpu_a_level_leaves_idle() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, 1);
    l.filled(t0);
    for i in 1..=7u32 {
        let at = t0 + i * 50 * MS;
        assert_eq!(
            l.observe(&p, obs(0.78, 0.1, 1), at),
            None,
            "sample {i}: the target holds it"
        );
    }
    l.completed(356 * MS);
    let moved = l.observe(&p, obs(0.78, 0.1, 1), t0 + 450 * MS);
    assert_eq!(
        (moved, l.value()),
        (Some(Move::Rise), 2),
        "a 78 % level rounds up to 2"
    );
    // At two the CPU is full: it binds, and holding for a task's life ends probing.
    let t1 = t0 + 450 * MS;
    l.filled(t1);
    for i in 1..=12u32 {
        assert_eq!(l.observe(&p, obs(1.0, 0.1, 2), t1 + i * 50 * MS), None);
        if i == 6 {
            l.completed(550 * MS);
            l.completed(550 * MS);
        }
    }
    assert_eq!((l.value(), l.phase()), (2, Phase::Steady));

    // A generation has finished, but the samples at the level cover less than a task.
    let mut young = Limit::probing(&p, 1);
    young.filled(t0);
    young.completed(356 * MS);
    assert_eq!(young.observe(&p, obs(0.78, 0.1, 1), t0 + 25 * MS), None);
    assert_eq!(young.observe(&p, obs(0.78, 0.1, 1), t0 + 50 * MS), None);
    assert_eq!(young.value(), 1);

    // Where the CPU already stands at its target over the level, nothing rounds up.
    let mut full = Limit::probing(&p, 1);
    full.filled(t0);
    for i in 1..=7u32 {
        full.observe(&p, obs(0.95, 0.1, 1), t0 + i * 50 * MS);
    }
    full.completed(356 * MS);
    assert_eq!(full.observe(&p, obs(0.95, 0.1, 1), t0 + 450 * MS), None);
    assert_eq!(full.value(), 1);
}

/// Tasks with their own timeout that the level stretched past half of it, on a CPU at its
/// target, cut the level by a quarter (once for those started before the fall); with the
/// CPU to spare, it was not the level.
#[test]
fn tasks_stretched_toward_their_timeouts_on_a_busy_cpu_cut_the_level() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::learned(&p, settled(40), 1);
    l.filled(t0);
    l.near_bound(t0);
    assert_eq!(
        l.observe(&p, obs(1.0, 0.05, 40), t0 + 600 * MS),
        Some(Move::BoundFall)
    );
    assert_eq!(l.value(), 30);
    // One started before that fall is the fall's own: no second one.
    l.near_bound(t0 + 100 * MS);
    assert_eq!(l.observe(&p, obs(1.0, 0.05, 30), t0 + 700 * MS), None);
    assert_eq!(l.value(), 30);
    // One started after it is a new sign.
    l.near_bound(t0 + 650 * MS);
    assert_eq!(
        l.observe(&p, obs(1.0, 0.05, 30), t0 + 1300 * MS),
        Some(Move::BoundFall)
    );
    assert_eq!(l.value(), 22);
    // A slow remote with the CPU to spare: no fall.
    let mut io = Limit::learned(&p, settled(40), 1);
    io.filled(t0);
    io.near_bound(t0);
    assert_eq!(io.observe(&p, obs(0.1, 0.05, 40), t0 + 600 * MS), None);
    assert_eq!(io.value(), 40);
    // A pinned limit never moves.
    let mut pinned = Limit::pinned(40);
    pinned.near_bound(t0);
    assert_eq!(pinned.observe(&p, obs(1.0, 0.05, 40), t0 + 600 * MS), None);
}

/// Durations that stretch while completions per second rise with the level are tasks
/// sharing what the level filled, not a queue: no fall. The same durations with completions
/// flat are (`inflated_durations_cut_the_limit_by_the_gradient`).
#[test]
fn durations_that_stretch_while_completions_rise_are_no_inflation() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::learned(&p, settled(4), 4);
    // A window at 4: 4 completions of 100 ms in 400 ms (10 a second), 0.7 of the CPU.
    l.filled(t0);
    for _ in 0..4 {
        l.completed(100 * MS);
    }
    assert_eq!(l.observe(&p, obs(0.7, 0.1, 4), t0 + 400 * MS), Some(Move::Rise));
    assert_eq!(l.value(), 5);
    // At 5 tasks take 1.6 times as long, and 13 finish a second (more than 10 x (1 + 0.25 x
    // 0.25) would need): two windows in a row, and no fall.
    for w in 1..=2u32 {
        let at = t0 + 400 * MS + w * 400 * MS;
        l.filled(at - 400 * MS);
        for _ in 0..5 {
            l.completed(160 * MS);
        }
        let moved = l.observe(&p, obs(1.0, 0.1, 5), at);
        assert_ne!(moved, Some(Move::InflationFall), "window {w}");
    }
    assert_eq!(l.value(), 5);
}

#[test]
fn memory_is_seen_before_more_tasks_are_let_in() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, 2);
    l.observe(&p, obs(0.0, 0.01, 0), t0);
    // A sample before the new tasks have settled (the newest ran 5 ms) raises nothing.
    l.filled(t0);
    let young = Observation {
        youngest: 5 * MS,
        ..obs(0.0, 0.02, 2)
    };
    assert_eq!(l.observe(&p, young, t0 + 5 * MS), None);
    // Each task holds 0.1 of the memory: 0.01 + 2 x 0.1 = 0.21, room for 6 more under 0.9.
    let mut levels = Vec::new();
    for i in 1..8 {
        step(&mut l, &p, t0 + i * 30 * MS, 0.0, 0.1);
        levels.push(l.value());
    }
    assert_eq!(
        levels,
        vec![4, 8, 8, 8, 8, 8, 8],
        "never past what fits under 0.9"
    );
    assert!(0.01 + 0.1 * f64::from(l.value()) < p.mem_target);
}

#[test]
fn memory_at_its_target_cuts_the_limit_to_what_fits() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::learned(&p, settled(20), 2);
    l.observe(&p, obs(0.0, 0.02, 0), t0);
    l.filled(t0);
    // Tasks grew after they were let in: 20 of them hold 0.95.
    assert_eq!(
        l.observe(&p, obs(0.1, 0.95, 20), t0 + 30 * MS),
        Some(Move::MemoryFall)
    );
    // (0.9 - 0.02) / ((0.95 - 0.02) / 20) = 18.9 -> 18.
    assert_eq!(l.value(), 18);
}

#[test]
fn memory_over_its_target_does_not_cascade_while_a_fall_takes_effect() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::learned(&p, settled(23), 2);
    l.observe(&p, obs(0.0, 0.02, 0), t0);
    l.filled(t0);
    // 23 tasks at 0.04 each hold 0.94: down to 22 (what fits says 22).
    assert_eq!(
        l.observe(&p, obs(0.1, 0.94, 23), t0 + 30 * MS),
        Some(Move::MemoryFall)
    );
    assert_eq!(l.value(), 22);
    // Before a task has ended, the same memory is no reason to fall again.
    assert_eq!(l.observe(&p, obs(0.1, 0.94, 23), t0 + 40 * MS), None);
    assert_eq!(l.value(), 22);
}

#[test]
fn inflated_durations_cut_the_limit_by_the_gradient() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, 4);
    // One window of `ms`-long tasks, judged at `at` with `cpu`.
    let window = |l: &mut Limit, ms: u32, at: Duration, cpu: f64| {
        l.filled(t0 + at);
        for _ in 0..4 {
            l.completed(ms * MS);
        }
        l.observe(&p, obs(cpu, 0.1, l.value()), t0 + at)
    };
    // A window at 4 sets the baseline, and nothing presses: it rises, to 8 where the CPU
    // the tasks take says so.
    assert_eq!(window(&mut l, 100, 400 * MS, 0.45), Some(Move::Rise));
    assert_eq!(l.value(), 8);
    // At 8 durations double (CPU figures that lie: the sample says 0.5, no pressure seen,
    // but the target holds the climb): one window is noise...
    assert_eq!(window(&mut l, 200, 800 * MS, 0.95), None);
    assert_eq!(l.value(), 8);
    // ... two in a row are a queue: 8 x (1 - (1 - 0.5) / 2) = 6.
    assert_eq!(window(&mut l, 200, 1200 * MS, 0.95), Some(Move::InflationFall));
    assert_eq!(l.value(), 6);
    // Four times slower than at 4: the gradient is capped at a half, so 6 x 0.75 = 4.
    window(&mut l, 400, 1600 * MS, 0.95);
    assert_eq!(window(&mut l, 400, 2000 * MS, 0.95), Some(Move::InflationFall));
    assert_eq!(l.value(), 4);
    // At the baseline's own level nothing is judged inflated: it is the reference.
    assert_eq!(window(&mut l, 400, 2400 * MS, 0.95), None);
    assert_eq!(window(&mut l, 400, 2800 * MS, 0.95), None);
    assert_eq!(l.value(), 4);
}

#[test]
fn a_worker_started_at_a_learned_level_has_no_lower_level_to_be_inflated_against() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::learned(&p, settled(22), 2);
    for i in 1..6u32 {
        l.filled(t0);
        for _ in 0..4 {
            l.completed(Duration::from_millis(500 + 100 * u64::from(i)));
        }
        assert_eq!(l.observe(&p, obs(0.95, 0.5, 22), t0 + i * 400 * MS), None);
    }
    assert_eq!(l.value(), 22);
}

#[test]
fn microsecond_noise_is_not_inflation() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::learned(&p, settled(64), 2);
    l.filled(t0);
    for _ in 0..8 {
        l.completed(Duration::from_micros(5));
    }
    l.observe(&p, obs(0.95, 0.05, 64), t0 + 10 * MS);
    for _ in 0..8 {
        l.completed(Duration::from_micros(40)); // 8x, but 35 us
    }
    assert_eq!(l.observe(&p, obs(0.95, 0.05, 64), t0 + 20 * MS), None);
    assert_eq!(l.value(), 64);
}

const TENTH: Duration = Duration::from_millis(100);

/// A limit settled at 10 that rose to 11 on a window of 10 tasks of 100 ms finishing at 100
/// a second, and when.
fn risen_to_eleven(p: &LimitParams) -> (Limit, Instant) {
    let t0 = Instant::now();
    let mut l = Limit::learned(p, settled(10), 2);
    let moved = filled_window(&mut l, p, (t0, TENTH), (10, TENTH), obs(0.3, 0.1, 10));
    assert_eq!(moved, Some(Move::Rise));
    assert_eq!(l.value(), 11);
    (l, t0 + TENTH)
}

#[test]
fn a_steady_rise_that_does_not_pay_is_undone() {
    let p = params();
    let (mut l, t1) = risen_to_eleven(&p);
    // At 11 the rate stays at 100/s (a downstream is the bottleneck): back to 10.
    let moved = filled_window(&mut l, &p, (t1, TENTH), (10, TENTH), obs(0.3, 0.1, 11));
    assert_eq!(moved, Some(Move::NoGain));
    assert_eq!(l.value(), 10);
    // And it waits a quiet period before trying again.
    let t2 = t1 + TENTH;
    let moved = filled_window(&mut l, &p, (t2, TENTH), (10, TENTH), obs(0.3, 0.1, 10));
    assert_eq!(moved, None);
}

#[test]
fn a_rise_is_not_judged_on_a_drain() {
    let p = params();
    let (mut l, t1) = risen_to_eleven(&p);
    // Filled at 11, then its admissions end: its completions fall off as it drains (half
    // the rate of the level below), which is not what 11 does.
    l.filled(t1);
    for (i, running) in (1..=5u32).zip([9, 7, 5, 3, 1]) {
        l.unfilled();
        for _ in 0..2 {
            l.completed(TENTH);
        }
        assert_eq!(l.observe(&p, obs(0.3, 0.1, running), t1 + i * 40 * MS), None);
    }
    assert_eq!(l.value(), 11);
    // Filled again (a task with a timeout of its own that still fits): judged again.
    let t2 = t1 + 2 * TENTH;
    let moved = filled_window(&mut l, &p, (t2, TENTH), (10, TENTH), obs(0.3, 0.1, 11));
    assert_eq!(moved, Some(Move::NoGain));
}

#[test]
fn a_worker_below_its_limit_does_not_raise_it() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, 2);
    l.filled(t0);
    assert_eq!(l.observe(&p, obs(0.0, 0.01, 1), t0 + 30 * MS), None);
    assert_eq!(l.value(), 2);
}

/// A whole generation finished between two samples (a busy host): no sample caught a task
/// with its memory held, but the kernel's high-water mark did, and the jump after it is
/// bounded by it as by a sample.
#[test]
fn a_generation_no_sample_caught_is_judged_by_the_memory_high_water_mark() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, 1);
    l.observe(&p, obs(0.0, 0.02, 0), t0); // idle base
    l.filled(t0);
    l.completed(300 * MS);
    // The next task has just started (nothing settled, its memory not yet there); the
    // first one peaked at 6 % of the memory on top of the base.
    let fresh = Observation {
        youngest: Duration::ZERO,
        peak: 0.08,
        ..obs(0.001, 0.02, 1)
    };
    assert_eq!(l.observe(&p, fresh, t0 + 310 * MS), Some(Move::Rise));
    let fits = 1 + ((0.9 - 0.08) / 0.06f64).floor() as u32;
    assert!(l.value() <= fits, "jumped to {} where {fits} fit", l.value());
    assert!(l.value() > 1, "a generation still lets it jump");
}

#[test]
fn short_tasks_count_as_seen_once_a_generation_has_finished() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, 2);
    l.filled(t0);
    l.completed(Duration::from_micros(10));
    l.completed(Duration::from_micros(10));
    // The newest task started a moment ago, but two have come and gone at this level.
    let fresh = Observation {
        youngest: Duration::ZERO,
        ..obs(0.1, 0.01, 2)
    };
    assert_eq!(l.observe(&p, fresh, t0 + MS), Some(Move::Rise));
}

#[test]
fn a_pinned_limit_never_moves() {
    let p = params();
    let t0 = Instant::now();
    let mut l = Limit::pinned(3);
    for i in 1..5 {
        assert_eq!(step(&mut l, &p, t0 + i * 30 * MS, 0.0, 0.5), None);
    }
    assert_eq!((l.value(), l.phase()), (3, Phase::Pinned));
}
