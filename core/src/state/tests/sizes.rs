//! Choosing a memory size: a deadline waiting moves new workers to a size that meets it.

use super::*;
use crate::scheduler::SizeCost;
use crate::scheduler::SizeReason;

/// [`local`] offering 1024 and 4096 MB, with "f" measured at both: 1024 MB the cheaper
/// per task (0.1 against 0.3 GB-s) and the slower (4 s a task against 1 s).
fn measured() -> (State, Instant) {
    let mut c = local(4);
    c.fleet.memory_sizes = vec![1024, 4096];
    c.fleet.slots = Some(1);
    let (mut s, now) = state(c);
    let key: Arc<str> = Arc::from("f");
    s.learned.restore_cost(
        &key,
        1024,
        SizeCost {
            workers: 1,
            tasks: 10,
            billed_gb_ms: 1_000.0,
            ..SizeCost::default()
        },
    );
    s.learned.restore_cost(
        &key,
        4096,
        SizeCost {
            workers: 1,
            tasks: 10,
            billed_gb_ms: 3_000.0,
            ..SizeCost::default()
        },
    );
    // The function's entry, with its attempts' durations at each size.
    let mut effects = Effects::default();
    submit(&mut s, &mut effects, now);
    let f = s.functions.get_mut("f").expect("f");
    for _ in 0..crate::scheduler::life::MIN_DURATIONS {
        f.durations(1024).push(Duration::from_secs(4), false);
        f.durations(4096).push(Duration::from_secs(1), false);
    }
    (s, now)
}

fn with_deadline(s: &mut State, deadline: Duration, now: Instant) {
    let mut effects = Effects::default();
    let mut sub = Submission::new("f", Bytes::from_static(b"x"));
    sub.deadline = Some(deadline);
    s.submit(sub, None, now, &mut effects).expect("submit");
}

#[test]
fn without_a_deadline_the_cheapest_size_is_chosen() {
    let (s, now) = measured();
    assert_eq!(s.choose_size("f", now), (1024, SizeReason::Cheapest));
}

#[test]
fn a_deadline_the_cheapest_size_would_miss_moves_new_workers_to_one_that_meets_it() {
    let (mut s, now) = measured();
    // Two tasks waiting, at most 4 workers of one slot: 4 s a task at 1024 MB misses 3 s,
    // 1 s at 4096 MB meets it.
    with_deadline(&mut s, Duration::from_secs(3), now);
    assert_eq!(s.choose_size("f", now), (4096, SizeReason::Deadline));
    let stats = s.stats(now);
    assert_eq!(stats.functions[0].memory_mb, 4096);
    assert_eq!(stats.functions[0].memory_reason, "deadline");
    // Once it has passed, the cheapest again.
    let after = now + Duration::from_secs(4);
    assert_eq!(s.choose_size("f", after), (1024, SizeReason::Cheapest));
}

#[test]
fn a_deadline_the_cheapest_size_meets_keeps_it() {
    let (mut s, now) = measured();
    with_deadline(&mut s, Duration::from_secs(60), now);
    assert_eq!(s.choose_size("f", now), (1024, SizeReason::Cheapest));
}

#[test]
fn a_deadline_no_size_meets_takes_the_one_that_finishes_soonest() {
    let (mut s, now) = measured();
    with_deadline(&mut s, Duration::from_millis(1500), now);
    let mut effects = Effects::default();
    // An earlier deadline still: the earliest counts.
    let mut sub = Submission::new("f", Bytes::from_static(b"x"));
    sub.deadline = Some(Duration::from_millis(900));
    // Refused at once (even the soonest finish misses it) or taken: either way the size
    // for the waiting deadline is the fastest.
    let _ = s.submit(sub, None, now, &mut effects);
    assert_eq!(s.choose_size("f", now).0, 4096);
}

/// [`external`] with no keep-alive: a worker with nothing to do is told to stop at once.
fn stopping_at_once() -> (State, Instant) {
    state(Config {
        fleet: Fleet {
            slots: Some(1),
            keep_alive: Duration::ZERO,
            ..external().fleet.clone()
        },
        ..external()
    })
}

#[test]
fn a_worker_stopped_before_it_was_ever_given_a_task_does_not_price_its_size() {
    let (mut s, t0) = stopping_at_once();
    let mut effects = Effects::default();
    let second = Duration::from_secs(1);
    // It came for work others finished first: stopped at its hello, gone a second later.
    let idle = connect(&mut s, &mut effects, "idle", 1, t0);
    assert!(
        messages(&mut effects, idle)
            .iter()
            .any(|k| matches!(k, Kind::Shutdown(_)))
    );
    s.disconnect(
        &WorkerId::new("idle"),
        idle,
        StreamEnd::Closed,
        t0 + second,
        &mut effects,
    );
    assert_eq!(s.learned.cost("f", 2048), SizeCost::default());
    // Its bill is still the function's.
    assert_eq!(
        s.stats(t0 + second).total.expect("total").billed_gb_ms,
        2.0 * 1000.0
    );
    // A worker that ran a task prices its size with its whole bill.
    let task = submit(&mut s, &mut effects, t0);
    let busy = connect(&mut s, &mut effects, "busy", 1, t0);
    assert_eq!(assigned(&mut effects, busy), vec![task]);
    s.results(
        &WorkerId::new("busy"),
        vec![result(task, 1)],
        t0 + second,
        &mut effects,
    )
    .expect("results");
    s.disconnect(
        &WorkerId::new("busy"),
        busy,
        StreamEnd::Closed,
        t0 + second,
        &mut effects,
    );
    // Pinned (`slots` in its hello): a known level, so a measure that stands.
    let priced = SizeCost {
        workers: 1,
        tasks: 1,
        billed_gb_ms: 2.0 * 1000.0,
        provisional: false,
    };
    assert_eq!(s.learned.cost("f", 2048), priced);
    // A worker lost with its task running prices its size too (a size its tasks kill is
    // dear), though it finished none.
    let task = submit(&mut s, &mut effects, t0);
    let lost = connect(&mut s, &mut effects, "lost", 1, t0);
    assert_eq!(assigned(&mut effects, lost), vec![task]);
    s.disconnect(
        &WorkerId::new("lost"),
        lost,
        StreamEnd::Broken,
        t0 + second,
        &mut effects,
    );
    let grace = s.config.fleet.reconnect_grace;
    s.sweep(t0 + second + grace, &mut effects);
    assert_eq!(s.live_workers(), 0, "written off");
    assert_eq!(s.learned.cost("f", 2048).workers, 2);
    assert_eq!(s.learned.cost("f", 2048).tasks, 1);
}

#[test]
fn a_size_measured_on_thin_evidence_is_not_revisited_while_a_deadline_waits() {
    let (mut s, now) = measured();
    // 4096 MB rests on 10 tasks as 1024 MB does: nothing thinner than the chosen size.
    assert_eq!(s.choose_size("f", now), (1024, SizeReason::Cheapest));
    // 1024 MB measured on 40 tasks, and 4096 MB within a tenth of it on 10: measured again.
    let key: Arc<str> = Arc::from("f");
    let cost = |tasks: u64, per_task: f64| SizeCost {
        workers: 2,
        tasks,
        billed_gb_ms: per_task * tasks as f64,
        ..SizeCost::default()
    };
    s.learned.restore_cost(&key, 1024, cost(40, 100.0));
    s.learned.restore_cost(&key, 4096, cost(10, 108.0));
    assert_eq!(s.choose_size("f", now), (4096, SizeReason::Revisiting));
    assert_eq!(s.stats(now).functions[0].memory_reason, "revisiting");
    // Not while a deadline waits that the cheapest size meets.
    with_deadline(&mut s, Duration::from_secs(60), now);
    assert_eq!(s.choose_size("f", now), (1024, SizeReason::Cheapest));
}

#[test]
fn relearn_forgets_every_size_of_one_function_and_refuses_a_name_it_does_not_serve() {
    let (mut s, now) = measured();
    s.journaled = true;
    let mut effects = Effects::default();
    // Refused before anything changes.
    for bad in ["", "no-such-function"] {
        assert!(
            s.handle(now, Event::Relearn(bad.to_owned()), &mut effects)
                .is_err(),
            "{bad:?}"
        );
    }
    assert!(effects.journal.is_empty());
    assert_eq!(s.choose_size("f", now), (1024, SizeReason::Cheapest));
    // What its attempts took at the chosen size: a duration bound.
    assert_eq!(s.stats(now).functions[0].duration_bound_ms, 4000);
    // What scale-out weighs a new worker's start against: the median task, the reach.
    if let Some(f) = s.functions.get_mut("f") {
        f.reach.task(Duration::from_secs(4));
        f.reach
            .first_result(Duration::from_secs(5), Duration::from_secs(4));
    }
    let reach = |s: &State| s.functions.get("f").map(|f| f.reach.typical());
    assert!(matches!(reach(&s), Some(Some(_))), "the median task is known");
    // Forgotten at both sizes, in the journal too: every size is tried again.
    let reply = s
        .handle(now, Event::Relearn("f".to_owned()), &mut effects)
        .expect("relearn");
    assert!(
        matches!(reply, Reply::Relearned { levels: 0, costs: 2 }),
        "{reply:?}"
    );
    assert!(
        matches!(effects.journal.as_slice(), [JournalOp::Unlearn(f)] if f.as_ref() == "f"),
        "{:?}",
        effects.journal
    );
    assert_ne!(s.choose_size("f", now).1, SizeReason::Cheapest);
    assert!(s.learned.cost("f", 1024).per_task().is_none());
    // And what its attempts took: no bound until enough are measured again.
    assert_eq!(s.stats(now).functions[0].duration_bound_ms, 0);
    // Nor what scale-out weighs a new worker against: the median task, the reach.
    assert_eq!(reach(&s), Some(None));
    assert!(
        s.functions
            .get("f")
            .is_some_and(|f| f.reach.to_first_result().is_none())
    );
}

#[test]
fn a_successor_is_started_ahead_by_the_cold_starts_measured_at_the_size_it_will_get() {
    let (mut s, now) = measured();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.extend(spawns(&mut s, now).into_iter().map(|r| r.id));
    }
    assert!(ids.len() >= 2, "{ids:?}");
    // A worker of 1024 MB took 2 s from its spawn to its hello, one of 4096 MB 200 ms (its
    // init had four times the CPU).
    let mut effects = Effects::default();
    for (id, memory_mb, cold) in [(&ids[0], 1024, 2_000), (&ids[1], 4096, 200)] {
        let hello = pb::Hello {
            memory_mb,
            ..hello(id.as_str(), 1)
        };
        s.connect(hello, now + Duration::from_millis(cold), &mut effects)
            .expect("connect");
    }
    let later = now + Duration::from_secs(3);
    // One cold start known at a size: its fitted tail, 3.2 times it (see `slow_end`).
    let at = |ms: f64| Duration::from_secs_f64(ms * (2.326f64 * 0.5).exp() / 1000.0);
    // New workers get 1024 MB, the cheaper: the lead is what starts take there.
    assert_eq!(s.choose_size("f", later).0, 1024);
    let lead = s.successor_lead("f", later);
    assert!(lead.abs_diff(at(2_000.0)) < Duration::from_millis(2), "{lead:?}");
    // Once 4096 MB is the cheaper, what starts take there.
    let key: Arc<str> = Arc::from("f");
    s.learned.restore_cost(
        &key,
        4096,
        SizeCost {
            workers: 1,
            tasks: 100,
            billed_gb_ms: 3_000.0,
            ..SizeCost::default()
        },
    );
    assert_eq!(s.choose_size("f", later).0, 4096);
    let lead = s.successor_lead("f", later);
    assert!(lead.abs_diff(at(200.0)) < Duration::from_millis(2), "{lead:?}");
    // The function's own figures still count every start.
    let st = &s.stats(later).functions[0];
    assert_eq!((st.cold_starts, st.cold_start_max_ms), (2, 2_000), "{st:?}");
}

/// Connects worker `id` at `at` and gives it a task; returns the task.
fn one_task_on(s: &mut State, id: &str, at: Instant) -> TaskId {
    let mut effects = Effects::default();
    let conn = connect(s, &mut effects, id, 1, at);
    let t = submit(s, &mut effects, at);
    assert_eq!(assigned(&mut effects, conn), vec![t]);
    t
}

/// Worker `id` finishes task `t` at `at` and is gone a second later.
fn done_and_gone(s: &mut State, id: &str, t: TaskId, at: Instant) {
    let mut effects = Effects::default();
    s.results(&WorkerId::new(id), vec![result(t, 1)], at, &mut effects)
        .expect("result");
    s.finalize(
        &WorkerId::new(id),
        "gone",
        None,
        at + Duration::from_secs(1),
        &mut effects,
    );
}

/// Relearns function "f" at `at`: what it forgot.
fn relearn_f(s: &mut State, at: Instant) -> Reply {
    s.handle(at, Event::Relearn("f".to_owned()), &mut Effects::default())
        .expect("relearn")
}

#[test]
fn a_worker_live_when_its_function_is_relearned_does_not_teach_it_again() {
    let (mut s, now) = state(external());
    let t = one_task_on(&mut s, "a", now);
    // The handler changes while the worker runs it: relearned.
    relearn_f(&mut s, now);
    done_and_gone(&mut s, "a", t, now);
    // What it cost is the old handler's: not learned.
    assert!(s.learned.cost("f", 2048).per_task().is_none());
    let later = now + Duration::from_secs(2);
    let again = relearn_f(&mut s, later);
    assert!(
        matches!(again, Reply::Relearned { levels: 0, costs: 0 }),
        "{again:?}"
    );
    // A worker that said hello since teaches.
    let t = one_task_on(&mut s, "b", later);
    done_and_gone(&mut s, "b", t, later);
    assert!(s.learned.cost("f", 2048).per_task().is_some());
}
