//! Workers over their life: breaks, grace, silence, timeouts, limits, the index.

use super::*;

#[test]
fn a_broken_stream_keeps_its_tasks_through_a_reconnect_within_grace() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let conn = connect(&mut s, &mut effects, "a", 2, now);
    let t1 = submit(&mut s, &mut effects, now);
    let t2 = submit(&mut s, &mut effects, now);
    assert_eq!(assigned(&mut effects, conn), vec![t1, t2]);
    let mut effects = Effects::default();
    s.disconnect(&WorkerId::new("a"), conn, StreamEnd::Broken, now, &mut effects);
    // Detached: nothing requeued, nothing assigned to it.
    let t3 = submit(&mut s, &mut effects, now);
    assert_eq!(s.get(t3).expect("get").state(), TaskState::Pending);
    // Back with only t1 still running (t2's result was lost with the stream): t1 is kept,
    // t2 goes back to the pool and comes straight back to it, and a stray task is cancelled.
    let mut h = hello("a", 2);
    h.running_task_ids = vec![t1, 999];
    let later = now + Duration::from_secs(1);
    let conn = s.connect(h, later, &mut effects).expect("resume");
    let mut cancelled = Vec::new();
    let mut got = Vec::new();
    for kind in messages(&mut effects, conn) {
        match kind {
            Kind::Cancel(c) => cancelled.extend(c.task_ids),
            Kind::Assign(a) => got.extend(a.tasks.iter().map(|t| (t.task_id, t.attempt))),
            _ => {}
        }
    }
    assert_eq!(cancelled, vec![999]);
    assert_eq!(got, vec![(t2, 2)], "t2 should be re-run as attempt 2");
    assert_eq!(s.get(t1).expect("get").attempts, 1, "t1 must not be re-run");
    assert_eq!(s.get(t3).expect("get").state(), TaskState::Pending);
    assert_eq!(s.stats(later).total.expect("total").retried, 1);
}

#[test]
fn after_the_grace_a_detached_worker_is_written_off_and_its_tasks_requeued() {
    let (mut s, now) = state(Config {
        fleet: Fleet {
            reconnect_grace: Duration::from_secs(2),
            ..external().fleet.clone()
        },
        ..external()
    });
    let mut effects = Effects::default();
    let conn = connect(&mut s, &mut effects, "a", 1, now);
    let t = submit(&mut s, &mut effects, now);
    assert_eq!(assigned(&mut effects, conn), vec![t]);
    let mut effects = Effects::default();
    s.disconnect(&WorkerId::new("a"), conn, StreamEnd::Broken, now, &mut effects);
    s.sweep(now + Duration::from_secs(1), &mut effects);
    assert_eq!(s.live_workers(), 1, "written off before the grace ended");
    s.sweep(now + Duration::from_secs(2), &mut effects);
    assert_eq!(s.live_workers(), 0);
    assert_eq!(s.get(t).expect("get").state(), TaskState::Pending);
}

#[test]
fn a_silent_worker_is_treated_as_lost_after_its_lease() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let rx = connect(&mut s, &mut effects, "a", 1, now);
    let t = submit(&mut s, &mut effects, now);
    assert_eq!(assigned(&mut effects, rx), vec![t]);
    let lease = s.config.fleet.liveness_lease();
    let mut effects = Effects::default();
    s.sample(&WorkerId::new("a"), sample(0.1), now + lease / 2, &mut effects)
        .expect("sample");
    // The sweep runs many times a lease (a longer gap is the coordinator's own pause).
    sweep_every(&mut s, now, now + lease, &mut effects);
    assert_eq!(s.live_workers(), 1, "a sample renews the lease");
    sweep_every(
        &mut s,
        now + lease,
        now + lease / 2 + lease + Duration::from_millis(1),
        &mut effects,
    );
    assert_eq!(s.live_workers(), 0);
    assert_eq!(s.get(t).expect("get").state(), TaskState::Pending);
}

/// Sweeps every 100 ms from `from` to `to` (the sweeper's cadence), and at `to`.
fn sweep_every(s: &mut State, from: Instant, to: Instant, effects: &mut Effects) {
    let mut at = from;
    while at < to {
        s.sweep(at, effects);
        at += Duration::from_millis(100);
    }
    s.sweep(to, effects);
}

#[test]
fn a_coordinator_that_was_paused_gives_its_workers_a_fresh_lease_instead_of_writing_them_off() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let a = connect(&mut s, &mut effects, "a", 1, now);
    let t = submit(&mut s, &mut effects, now);
    assert_eq!(assigned(&mut effects, a), vec![t]);
    let lease = s.config.fleet.liveness_lease();
    s.sweep(now, &mut effects);
    // Frozen for three leases: the first sweep after it sees its own gap.
    let woke = now + lease * 3;
    let mut effects = Effects::default();
    s.sweep(woke, &mut effects);
    assert_eq!(s.live_workers(), 1, "written off for the coordinator's own pause");
    assert_eq!(s.get(t).expect("get").state(), TaskState::Running);
    // A worker that stays silent after that is still written off, one lease later.
    sweep_every(
        &mut s,
        woke,
        woke + lease + Duration::from_millis(1),
        &mut effects,
    );
    assert_eq!(s.live_workers(), 0);
    assert_eq!(s.get(t).expect("get").state(), TaskState::Pending);
}

fn sample(cpu: f64) -> pb::ResourceSample {
    pb::ResourceSample {
        cpu,
        memory_used_bytes: 1,
        memory_limit_bytes: 2,
        running_tasks: 1,
        ..Default::default()
    }
}

#[test]
fn a_timed_out_attempt_is_cancelled_on_its_worker_and_retried() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let rx = connect(&mut s, &mut effects, "a", 1, now);
    let mut effects = Effects::default();
    let sub = Submission {
        timeout: Some(Duration::from_millis(300)),
        ..Submission::new("f", Bytes::new())
    };
    let t = s.submit(sub, None, now, &mut effects).expect("submit").id();
    assert!(effects.timers.iter().any(
        |(d, timer)| *d == Duration::from_millis(300) && matches!(timer, Timer::Task(id, 1) if *id == t)
    ));
    s.on_timer(Timer::Task(t, 1), now, &mut effects);
    let mut cancels = 0;
    let mut reassigned = Vec::new();
    for kind in messages(&mut effects, rx) {
        match kind {
            Kind::Cancel(c) if c.task_ids == vec![t] => cancels += 1,
            Kind::Assign(a) => reassigned.extend(a.tasks.iter().map(|x| x.attempt)),
            _ => {}
        }
    }
    assert_eq!(cancels, 1);
    assert_eq!(reassigned, vec![1, 2], "first attempt, then the retry");
    // The late result of attempt 1 is ignored; attempt 2's counts.
    s.results(&WorkerId::new("a"), vec![result(t, 1)], now, &mut effects)
        .expect("late result");
    assert_eq!(s.get(t).expect("get").state(), TaskState::Running);
    s.results(&WorkerId::new("a"), vec![result(t, 2)], now, &mut effects)
        .expect("result");
    assert_eq!(s.get(t).expect("get").state(), TaskState::Succeeded);
    assert_eq!(s.stats(now).total.expect("total").timed_out, 1);
}

#[test]
fn an_idempotency_key_returns_the_first_task() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let keyed = || Submission {
        key: "k1".into(),
        ..Submission::new("f", Bytes::from_static(b"x"))
    };
    let a = s.submit(keyed(), None, now, &mut effects).expect("submit").id();
    let b = s.submit(keyed(), None, now, &mut effects).expect("resubmit").id();
    assert_eq!(a, b);
    assert_eq!(s.stats(now).total.expect("total").pending, 1);
}

#[test]
fn a_full_pool_refuses_without_changing_anything() {
    let (mut s, now) = state(Config {
        limits: Limits {
            max_pending: 2,
            ..external().limits.clone()
        },
        ..external()
    });
    let mut effects = Effects::default();
    submit(&mut s, &mut effects, now);
    submit(&mut s, &mut effects, now);
    let mut effects = Effects::default();
    let err = s
        .submit(Submission::new("f", Bytes::new()), None, now, &mut effects)
        .expect_err("accepted");
    assert!(matches!(err, crate::Error::PoolFull(2)), "{err:?}");
    assert_eq!(s.stats(now).total.expect("total").pending, 2);
}

#[test]
fn impossible_samples_and_results_for_tasks_never_held_are_violations() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let _rx = connect(&mut s, &mut effects, "a", 1, now);
    let _rx_b = connect(&mut s, &mut effects, "b", 1, now);
    let mut effects = Effects::default();
    let a = WorkerId::new("a");
    assert!(s.sample(&a, sample(f64::NAN), now, &mut effects).is_err());
    assert!(s.sample(&a, sample(-0.1), now, &mut effects).is_err());
    assert!(s.sample(&a, sample(5000.0), now, &mut effects).is_err());
    let endless_init = pb::ResourceSample {
        copy_init_ms: 900_001,
        ..sample(0.5)
    };
    assert!(matches!(
        s.sample(&a, endless_init, now, &mut effects),
        Err(crate::Error::InvalidSample(_, e)) if e.contains("copy_init_ms")
    ));
    // Past the allotment is possible (a worker bursting on Lambda), not a violation.
    assert!(s.sample(&a, sample(1.5), now, &mut effects).is_ok());
    let t = submit(&mut s, &mut effects, now); // goes to a (first in order)
    assert!(matches!(
        s.results(&WorkerId::new("b"), vec![result(t, 1)], now, &mut effects),
        Err(crate::Error::ResultNotHeld(..))
    ));
    assert!(matches!(
        s.results(&a, vec![result(4242, 1)], now, &mut effects),
        Err(crate::Error::ResultForUnknownTask(..))
    ));
    assert_eq!(
        s.get(t).expect("get").state(),
        TaskState::Running,
        "a refused result changed the task"
    );
}

#[test]
fn results_are_forgotten_after_the_retention_with_their_key() {
    let (mut s, now) = state(Config {
        limits: Limits {
            result_retention: Duration::from_secs(60),
            ..external().limits.clone()
        },
        ..external()
    });
    let mut effects = Effects::default();
    let rx = connect(&mut s, &mut effects, "a", 1, now);
    let mut effects = Effects::default();
    let sub = Submission {
        key: "once".into(),
        ..Submission::new("f", Bytes::new())
    };
    let t = s
        .submit(sub.clone(), None, now, &mut effects)
        .expect("submit")
        .id();
    assert_eq!(assigned(&mut effects, rx), vec![t]);
    s.results(&WorkerId::new("a"), vec![result(t, 1)], now, &mut effects)
        .expect("result");
    s.sweep(now + Duration::from_secs(59), &mut effects);
    assert!(s.get(t).is_ok(), "forgotten before the retention");
    s.sweep(now + Duration::from_secs(60), &mut effects);
    assert!(matches!(s.get(t), Err(crate::Error::UnknownTask(_))));
    // The key is free again: it names a new task now.
    let again = s.submit(sub, None, now, &mut effects).expect("submit").id();
    assert_ne!(again, t);
}

#[test]
fn samples_of_an_idle_worker_do_not_pile_up_keep_alive_timers() {
    let (mut s, now) = state(external()); // keep-alive 60 s
    let mut effects = Effects::default();
    let _rx = connect(&mut s, &mut effects, "a", 1, now);
    let mut keep_alive_timers = 0;
    for i in 1..=100u64 {
        let mut effects = Effects::default();
        s.sample(
            &WorkerId::new("a"),
            sample(0.1),
            now + Duration::from_millis(500 * i),
            &mut effects,
        )
        .expect("sample");
        keep_alive_timers += effects
            .timers
            .iter()
            .filter(|(_, t)| matches!(t, Timer::Worker(..)))
            .count();
    }
    assert_eq!(
        keep_alive_timers, 0,
        "the recheck armed at connect already covers these samples"
    );
    // It runs a task that ends at 20 s, so at 60 s, when the recheck fires, it has been idle
    // for only 40 s: exactly one new recheck is armed, for the remaining 20 s.
    let mut effects = Effects::default();
    let t = s
        .submit(
            Submission::new("f", Bytes::new()),
            None,
            now + Duration::from_secs(10),
            &mut effects,
        )
        .expect("submit")
        .id();
    s.results(
        &WorkerId::new("a"),
        vec![result(t, 1)],
        now + Duration::from_secs(20),
        &mut effects,
    )
    .expect("result");
    let mut effects = Effects::default();
    s.on_timer(
        Timer::Worker(WorkerId::new("a"), 1),
        now + Duration::from_secs(60),
        &mut effects,
    );
    let rearmed: Vec<Duration> = effects
        .timers
        .iter()
        .filter(|(_, t)| matches!(t, Timer::Worker(..)))
        .map(|(d, _)| *d)
        .collect();
    assert_eq!(rearmed, vec![Duration::from_secs(20)]);
}

#[test]
fn dispatch_takes_the_best_worker_from_the_index_among_many() {
    // Pack over 1,000 two-slot workers: the half-full one wins wherever it is, then the
    // oldest connection among the idle ones.
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let rxs: Vec<Conn> = (0..1000)
        .map(|i| connect(&mut s, &mut effects, &format!("w{i}"), 2, now))
        .collect();
    let first = submit(&mut s, &mut effects, now);
    assert_eq!(assigned(&mut effects, rxs[0]), vec![first]);
    // w0 is half full: the next task joins it, then w1 (the oldest idle one) is next.
    let second = submit(&mut s, &mut effects, now);
    assert_eq!(assigned(&mut effects, rxs[0]), vec![second]);
    let third = submit(&mut s, &mut effects, now);
    assert_eq!(assigned(&mut effects, rxs[1]), vec![third]);
    // A result makes w0 half full again: it is re-keyed, level with w1, and connected first.
    s.results(&WorkerId::new("w0"), vec![result(first, 1)], now, &mut effects)
        .expect("results");
    let fourth = submit(&mut s, &mut effects, now);
    assert_eq!(
        assigned(&mut effects, rxs[0]),
        vec![fourth],
        "w0 and w1 are equal; w0 connected first"
    );
    assert!(rxs[2..].iter().all(|&rx| assigned(&mut effects, rx).is_empty()));
}

#[test]
fn a_busy_worker_leaves_the_index_and_a_calm_sample_brings_it_back() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let rx = connect(&mut s, &mut effects, "w", 2, now);
    let id = WorkerId::new("w");
    // Load seen while none of our tasks ran is someone else's: it counts in full.
    let busy = pb::ResourceSample {
        running_tasks: 0,
        ..sample(0.95)
    };
    s.sample(&id, busy, now, &mut effects).expect("sample");
    let task = submit(&mut s, &mut effects, now);
    assert!(assigned(&mut effects, rx).is_empty(), "a busy worker got a task");
    s.sample(&id, sample(0.1), now, &mut effects).expect("sample");
    assert_eq!(assigned(&mut effects, rx), vec![task]);
}

#[test]
fn a_worker_past_its_deadline_fraction_is_dropped_from_the_index_when_met() {
    // Time alone makes it ineligible (no event re-keys it): dispatch must notice.
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let old = connect(&mut s, &mut effects, "old", 2, now);
    let later = now + Duration::from_secs(13 * 60); // past 0.8 of the 15-minute timeout
    let young = connect(&mut s, &mut effects, "young", 2, later);
    let task = submit(&mut s, &mut effects, later);
    assert!(
        assigned(&mut effects, old).is_empty(),
        "a draining worker got a task"
    );
    assert_eq!(assigned(&mut effects, young), vec![task]);
}

#[test]
fn a_worker_written_off_for_silence_is_told_and_gets_its_task_back_when_it_returns() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let a = connect(&mut s, &mut effects, "a", 1, now);
    let t = submit(&mut s, &mut effects, now);
    assert_eq!(assigned(&mut effects, a), vec![t]);
    let later = now + s.config.fleet.liveness_lease() + Duration::from_millis(1);
    s.sweep(later, &mut effects);
    assert!(
        effects.out.iter().any(
            |o| matches!(o, Outbound::End { conn, error: Some(crate::Error::WrittenOff(..)) } if *conn == a)
        ),
        "{:?}",
        effects.out
    );
    assert_eq!(s.get(t).expect("get").state(), TaskState::Pending);
    let b = connect(&mut s, &mut effects, "a", 1, later);
    assert_eq!(assigned(&mut effects, b), vec![t]);
}

#[test]
fn payloads_held_for_unfinished_tasks_are_bounded_in_bytes_and_freed_by_their_results() {
    let (mut s, now) = state(Config {
        limits: Limits {
            max_pending_bytes: 10,
            max_payload_bytes: 10,
            ..external().limits.clone()
        },
        ..external()
    });
    let mut effects = Effects::default();
    let four = || Submission::new("f", Bytes::from_static(b"1234"));
    let a = s.submit(four(), None, now, &mut effects).expect("first").id();
    s.submit(four(), None, now, &mut effects).expect("second");
    let err = s
        .submit(four(), None, now, &mut effects)
        .expect_err("past the bytes");
    assert!(
        matches!(
            err,
            crate::Error::PoolBytesFull {
                held: 8,
                size: 4,
                limit: 10
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), crate::Kind::Exhausted);
    // Refused before anything changed; a smaller one still fits.
    assert_eq!(s.stats(now).total.expect("total").pending, 2);
    s.submit(
        Submission::new("f", Bytes::from_static(b"12")),
        None,
        now,
        &mut effects,
    )
    .expect("fits");
    // A running task holds its payload; its result frees it.
    let rx = connect(&mut s, &mut effects, "a", 1, now);
    assert_eq!(assigned(&mut effects, rx), vec![a]);
    s.submit(four(), None, now, &mut effects)
        .expect_err("still full while it runs");
    s.results(&WorkerId::new("a"), vec![result(a, 1)], now, &mut effects)
        .expect("result");
    s.submit(four(), None, now, &mut effects)
        .expect("its payload was freed");
}

#[test]
fn results_past_their_byte_budget_are_evicted_oldest_first_and_reads_of_them_are_refused_without_a_journal() {
    let one = result_size_for_tests();
    let (mut s, now) = state(Config {
        limits: Limits {
            max_result_bytes: 2 * one,
            ..external().limits.clone()
        },
        ..external()
    });
    let mut effects = Effects::default();
    let rx = connect(&mut s, &mut effects, "a", 1, now);
    let ids: Vec<TaskId> = (0..3)
        .map(|i| {
            let sub = Submission {
                key: format!("k{i}"),
                ..Submission::new("f", Bytes::new())
            };
            run_on_a(&mut s, sub, rx, now)
        })
        .collect();
    // The oldest result went; the two newest stay.
    let err = s.get(ids[0]).expect_err("evicted");
    assert!(matches!(err, crate::Error::ResultEvicted(..)), "{err:?}");
    assert_eq!(err.kind(), crate::Kind::Precondition);
    for t in &ids[1..] {
        assert!(s.get(*t).expect("kept").result.is_some());
    }
    let who = crate::state::WaiterId(7);
    let mut effects = Effects::default();
    assert!(matches!(
        s.watch(&ids, who, &mut effects),
        Err(crate::Error::ResultEvicted(..))
    ));
    assert!(effects.out.is_empty(), "a refused watch delivered something");
    // A Run repeating the evicted task's key is refused too; a plain Submit gets its id.
    let waiter = Waiter { id: who, tag: 0 };
    let repeat = || Submission {
        key: "k0".into(),
        ..Submission::new("f", Bytes::new())
    };
    assert!(matches!(
        s.submit(repeat(), Some(waiter), now, &mut effects),
        Err(crate::Error::ResultEvicted(..))
    ));
    assert_eq!(
        s.submit(repeat(), None, now, &mut effects).expect("submit").id(),
        ids[0]
    );
    // The retention sweep forgets them all and the count comes back to zero.
    s.sweep(now + Duration::from_secs(3600), &mut effects);
    assert_eq!(s.held_bytes(), (0, 0));
}

#[test]
fn with_a_journal_an_evicted_result_is_loaded_for_its_waiter() {
    let one = result_size_for_tests();
    let (mut s, now) = state(Config {
        limits: Limits {
            max_result_bytes: one,
            ..external().limits.clone()
        },
        journaled: true,
        ..external()
    });
    let mut effects = Effects::default();
    let rx = connect(&mut s, &mut effects, "a", 1, now);
    let ids: Vec<TaskId> = (0..2)
        .map(|_| run_on_a(&mut s, Submission::new("f", Bytes::new()), rx, now))
        .collect();
    let info = s.get(ids[0]).expect("get");
    assert!(info.result.is_none() && info.state() == TaskState::Succeeded);
    let mut effects = Effects::default();
    assert_eq!(
        s.watch(&ids, crate::state::WaiterId(3), &mut effects)
            .expect("watch"),
        2
    );
    let loads: Vec<_> = effects
        .out
        .iter()
        .filter_map(|o| match o {
            Outbound::Load { task, .. } => Some(*task),
            _ => None,
        })
        .collect();
    assert_eq!(
        loads,
        vec![ids[0]],
        "the evicted one is read back, the other sent"
    );
}

/// What one task's result through `result()` costs in memory.
fn result_size_for_tests() -> u64 {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let _rx = connect(&mut s, &mut effects, "a", 1, now);
    let t = submit(&mut s, &mut effects, now);
    s.results(&WorkerId::new("a"), vec![result(t, 1)], now, &mut effects)
        .expect("result");
    s.held_bytes().1
}

/// Submits `sub` (accepting its journal write, if any), checks that worker `a` (on `rx`)
/// gets it, and finishes it there.
fn run_on_a(s: &mut State, sub: Submission, rx: Conn, now: Instant) -> TaskId {
    let mut effects = Effects::default();
    let t = s.submit(sub, None, now, &mut effects).expect("submit").id();
    s.accepted(t, now, &mut effects);
    assert_eq!(assigned(&mut effects, rx), vec![t]);
    s.results(&WorkerId::new("a"), vec![result(t, 1)], now, &mut effects)
        .expect("result");
    t
}

/// Results of `ids` (attempt 1) from worker `id`, each having taken `took`.
fn finish(s: &mut State, effects: &mut Effects, id: &str, ids: &[TaskId], took: Duration, now: Instant) {
    let results = ids
        .iter()
        .map(|&t| pb::WorkerTaskResult {
            duration_us: took.as_micros() as u64,
            ..result(t, 1)
        })
        .collect();
    s.results(&WorkerId::new(id), results, now, effects)
        .expect("results");
}

#[test]
fn a_tail_task_waits_for_a_slot_about_to_free_on_a_worker_that_runs_anyway() {
    // Two workers of 3 slots whose rounds of 1 s tasks end together; 2 tasks left for the
    // last round. Given one each, both workers would live one more task; packed, one does
    // and the other stops.
    let (mut s, t0) = state(Config {
        fleet: Fleet {
            slots: Some(3),
            keep_alive: Duration::ZERO,
            ..external().fleet.clone()
        },
        ..external()
    });
    let second = Duration::from_secs(1);
    let mut effects = Effects::default();
    // Two rounds of 6 tasks of 1 s (the function's typical attempt once 8 are known): the
    // second waits in the pool while the first runs, and takes its slots as they free. (The
    // workers come after the tasks: with no keep-alive, an idle worker is stopped at once.)
    let ids: Vec<TaskId> = (0..12).map(|_| submit(&mut s, &mut effects, t0)).collect();
    let a = connect(&mut s, &mut effects, "a", 3, t0);
    let b = connect(&mut s, &mut effects, "b", 3, t0);
    assert_eq!(assigned(&mut effects, a), ids[..3].to_vec());
    assert_eq!(assigned(&mut effects, b), ids[3..6].to_vec());
    let now = t0 + second;
    finish(&mut s, &mut effects, "a", &ids[..3], second, now);
    finish(&mut s, &mut effects, "b", &ids[3..6], second, now);
    let on = (assigned(&mut effects, a), assigned(&mut effects, b));
    assert_eq!((on.0.len(), on.1.len()), (3, 3));
    // The last 2 tasks wait for a slot.
    let last: Vec<TaskId> = (0..2)
        .map(|_| submit(&mut s, &mut effects, now + second / 2))
        .collect();
    // The round ends: a's first slot frees and takes one (nobody runs long anyway).
    let end = now + second;
    finish(&mut s, &mut effects, "a", &on.0[..1], second, end);
    assert_eq!(assigned(&mut effects, a), vec![last[0]]);
    // b's first slot frees: given the other task, b would live one more second; a's two
    // slots about to free take it at no cost. Held, with a look again armed.
    effects.timers.clear();
    let ms = Duration::from_millis(1);
    finish(&mut s, &mut effects, "b", &on.1[..1], second, end + ms);
    assert!(assigned(&mut effects, b).is_empty());
    assert!(
        effects
            .timers
            .iter()
            .any(|(_, t)| matches!(t, Timer::Function(f) if f.as_ref() == "f")),
        "{:?}",
        effects.timers
    );
    assert_eq!(s.stats(end).total.expect("total").pending, 1);
    // a's slots free: the held task goes to a, which runs a task of this round anyway.
    finish(&mut s, &mut effects, "a", &on.0[1..], second, end + 2 * ms);
    assert_eq!(assigned(&mut effects, a), vec![last[1]]);
    // b ends its round with nothing left for it, and is told to stop.
    finish(&mut s, &mut effects, "b", &on.1[1..], second, end + 3 * ms);
    assert!(
        messages(&mut effects, b)
            .iter()
            .any(|k| matches!(k, Kind::Shutdown(_))),
        "b was not stopped"
    );
}
