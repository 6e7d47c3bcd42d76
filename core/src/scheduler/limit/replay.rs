//! The controller replayed on what real handlers showed it: the samples, completions and
//! fills one worker's limit saw, recorded from the real binaries running users' kind of
//! Lambda handlers under awslambdaric (`integration-tests/handlers/`), first worker of a
//! first batch with default flags:
//! - `recorded/wait-512.txt`: `wait.py` (boto3 imported, one HTTP call of 300 ms) at
//!   512 MB: memory, not CPU, bounds it (each interpreter holds about 7 % of the size);
//! - `recorded/thumb-2048.txt`: `thumb.py`, the paper's thumbnailer (boto3 and Pillow,
//!   a 3.2 MB JPEG from S3) at 2048 MB: CPU bounds it, and the level of 2 leaves a fifth of
//!   it idle through each task's S3 reads, so the limit fills it at 3 (recorded again on
//!   2026-12-07, when the last rise began to fill the CPU);
//! - `recorded/node-2048.txt`: `node/index.js` (jimp, under aws-lambda-ric) at 2048 MB:
//!   CPU bounds it, and each copy's own threads wait for a CPU too.
//!
//! Recorded with `scripts/bench-handlers --handlers wait --sizes 512 --record DIR`, then
//! `scripts/bench-handlers --fixture DIR/wait-512-adaptive.jsonl w1-h` (likewise thumb).
//! Each line: `T_US f` (filled), `T_US c DURATION_US`, or `T_US s CPU MEM PEAK RUNNING
//! YOUNGEST_MS LIMIT [WAIT]` (a sample, the limit the coordinator set after it, and the CPU
//! wait, absent in traces recorded before workers reported it).

use super::*;

enum Recorded {
    Filled,
    Completed(Duration),
    Sample(Observation, u32),
}

fn parse(text: &str) -> Vec<(Duration, Recorded)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| -> f64 {
                f.get(i)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("field {i} of {line:?}"))
            };
            let at = Duration::from_micros(num(0) as u64);
            let event = match f.get(1).copied() {
                Some("f") => Recorded::Filled,
                Some("c") => Recorded::Completed(Duration::from_micros(num(2) as u64)),
                Some("s") => Recorded::Sample(
                    Observation {
                        cpu: num(2),
                        mem: num(3),
                        peak: num(4),
                        running: num(5) as u32,
                        youngest: Duration::from_millis(num(6) as u64),
                        // Absent in traces recorded before workers reported it.
                        wait: if f.len() > 8 { num(8) } else { 0.0 },
                    },
                    num(7) as u32,
                ),
                other => panic!("unknown event {other:?} in {line:?}"),
            };
            (at, event)
        })
        .collect()
}

/// What one replay saw: at each sample, (running, memory, peak, limit after it).
struct Replay {
    samples: Vec<(u32, f64, f64, u32)>,
}

/// Replays `text` on a new probing limit starting at `vcpus`; the limit after every sample
/// must be what the coordinator set then (the controller is a pure function of what it saw).
fn replay(text: &str, vcpus: u32) -> Replay {
    let p = LimitParams::default();
    let t0 = Instant::now();
    let mut l = Limit::probing(&p, vcpus);
    let mut samples = Vec::new();
    for (at, event) in parse(text) {
        match event {
            Recorded::Filled => l.filled(t0 + at),
            Recorded::Completed(d) => l.completed(d),
            Recorded::Sample(obs, recorded) => {
                l.observe(&p, obs, t0 + at);
                assert_eq!(l.value(), recorded, "at {at:?} after {obs:?}");
                samples.push((obs.running, obs.mem, obs.peak, l.value()));
            }
        }
    }
    Replay { samples }
}

#[test]
fn interpreters_that_wait_climb_past_the_vcpus_only_as_fast_as_they_run_and_stop_where_memory_holds() {
    let r = replay(include_str!("recorded/wait-512.txt"), 1);
    let mut most_running = 0;
    for &(running, _, peak, limit) in &r.samples {
        most_running = most_running.max(running);
        // A level counts only once its tasks run on ready copies: the limit doubles from
        // the most tasks that have run at once, or, once a whole generation has finished,
        // jumps 16 times at most toward what their memory implies (the 104 of 2 seen
        // before either rule).
        assert!(
            limit <= (16 * most_running).max(1),
            "limit {limit} with at most {most_running} run"
        );
        assert!(peak < 0.9, "memory peaked at {peak}");
    }
    let &(_, _, _, last) = r.samples.last().expect("samples");
    assert!(last > 4, "waiting work climbs past the one vCPU: {last}");
    // Where it stopped, memory at that many copies stays under the 0.9 target: the cost of
    // one more running task (memory over tasks, above the worker's own base) times the level.
    let base = r.samples.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    let (running, mem, _, _) = *r.samples.iter().max_by_key(|s| s.0).expect("samples");
    let per_task = (mem - base) / f64::from(running);
    assert!(
        base + per_task * f64::from(last) <= 0.9 + per_task,
        "a limit of {last} at {per_task:.3} per task over {base:.3}"
    );
}

#[test]
fn the_thumbnailer_settles_at_its_vcpus_where_cpu_binds() {
    let r = replay(include_str!("recorded/thumb-2048.txt"), 2);
    let highest = r.samples.iter().map(|s| s.3).max().unwrap_or(0);
    let last = r.samples.last().map_or(0, |s| s.3);
    // Two vCPUs of resizing between S3 reads: one task past them at most, to fill them.
    assert!(highest <= 4, "it climbed to {highest}");
    assert!((2..=3).contains(&last), "it settled at {last}");
    assert!(r.samples.iter().all(|s| s.2 < 0.9));
}

#[test]
fn node_copies_whose_own_threads_wait_stay_at_the_vcpus() {
    let r = replay(include_str!("recorded/node-2048.txt"), 2);
    // Two vCPUs, two copies busy, their collector and compiler threads waiting (up to twice
    // the allotment in one sample): never below the vCPUs, and no climb past them.
    assert!(r.samples.iter().all(|s| s.3 == 2), "the limit left 2");
    assert!(r.samples.iter().all(|s| s.2 < 0.9));
}
