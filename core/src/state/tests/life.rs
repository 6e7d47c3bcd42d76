//! A worker's life: admission by expected duration, tasks longer than a life, successors,
//! tasks killed at a deadline.

use super::*;

fn secs(n: f64) -> Duration {
    Duration::from_secs_f64(n)
}

/// [`local`], with idle workers kept for a minute (so that one is there between tasks).
fn local_kept(max_workers: u32) -> Config {
    let mut c = local(max_workers);
    c.fleet.keep_alive = secs(60.0);
    c
}

/// A worker of function "f" with `life` left at its hello.
fn hello_with_life(id: &str, slots: u32, life: Duration) -> pb::Hello {
    pb::Hello {
        timeout_ms: life.as_millis() as u64,
        ..hello(id, slots)
    }
}

/// Runs `n` tasks of `took` each on worker `id` (connection `conn`), one at a time, at `now`.
fn run_tasks(s: &mut State, id: &str, conn: Conn, n: usize, took: Duration, now: Instant) {
    for _ in 0..n {
        let mut effects = Effects::default();
        let t = submit(s, &mut effects, now);
        assert_eq!(assigned(&mut effects, conn), vec![t]);
        let r = pb::WorkerTaskResult {
            duration_us: took.as_micros() as u64,
            ..result(t, 1)
        };
        s.results(&WorkerId::new(id), vec![r], now, &mut effects)
            .expect("result");
    }
}

/// An external-spawner state whose worker "a" lives 10 s and has run eight tasks of
/// `took` at its hello; returns its connection and the time then.
fn known(took: Duration) -> (State, Instant, Conn) {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let a = s
        .connect(hello_with_life("a", 2, secs(10.0)), now, &mut effects)
        .expect("connect");
    run_tasks(&mut s, "a", a, 8, took, now);
    (s, now, a)
}

#[test]
fn a_worker_takes_no_task_its_function_s_longest_attempt_would_not_finish_in_its_life() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let a = s
        .connect(hello_with_life("a", 2, secs(10.0)), now, &mut effects)
        .expect("connect");
    // Nothing measured: the fraction rule (0.8 of 10 s).
    assert_eq!(s.stats(now).functions[0].duration_bound_ms, 0);
    assert_eq!(s.stats(now).functions[0].admitting_share, 0.8);
    run_tasks(&mut s, "a", a, 8, secs(3.0), now);
    assert_eq!(s.stats(now).functions[0].duration_bound_ms, 3000);
    // 3 s tasks need 3.3 s and 250 ms of slack: admissions end at 6.45 s, not 8 s.
    let mut effects = Effects::default();
    let t = submit(&mut s, &mut effects, now + secs(6.4));
    assert_eq!(assigned(&mut effects, a), vec![t]);
    let mut effects = Effects::default();
    let late = submit(&mut s, &mut effects, now + secs(6.5));
    assert!(
        assigned(&mut effects, a).is_empty(),
        "a task admitted that would not finish"
    );
    assert_eq!(s.get(late).expect("get").state(), TaskState::Pending);
    let st = &s.stats(now + secs(6.5)).functions[0];
    assert_eq!(st.refused_for_time, 1, "{st:?}");
}

#[test]
fn stats_say_how_much_of_a_life_admits_and_a_short_one_is_told_once() {
    let (mut s, now, _) = known(secs(3.0));
    // 3 s tasks need 3.55 s of the worker's 10 s life (not the 15 minutes of
    // --execution-timeout: the life its worker said it had).
    let st = &s.stats(now).functions[0];
    assert!((st.admitting_share - 0.645).abs() < 1e-9, "{st:?}");
    // The life that admits as long as the fixed rule: 3.55 s is its last fifth.
    assert_eq!(st.life_wanted_ms, 17_750);
    assert!(!s.functions["f"].told_short_life);
    // Its admissions end at 6.45 s with a task waiting: told once, for the function.
    let mut effects = Effects::default();
    submit(&mut s, &mut effects, now + secs(6.5));
    assert!(s.functions["f"].told_short_life);
}

#[test]
fn short_tasks_are_admitted_past_the_fraction_while_they_fit() {
    let (mut s, now, a) = known(secs(0.05));
    // 9.5 s into a 10 s life: past 0.8, but 50 ms tasks still fit.
    let mut effects = Effects::default();
    let t = submit(&mut s, &mut effects, now + secs(9.5));
    assert_eq!(assigned(&mut effects, a), vec![t]);
    // A life long for its tasks: most of it admits, and nothing is told.
    let st = &s.stats(now).functions[0];
    assert!((st.admitting_share - 0.969_5).abs() < 1e-9, "{st:?}");
    assert_eq!(st.life_wanted_ms, 0);
    let mut effects = Effects::default();
    submit(&mut s, &mut effects, now + secs(9.8));
    submit(&mut s, &mut effects, now + secs(9.8));
    assert!(!s.functions["f"].told_short_life);
}

#[test]
fn a_task_whose_own_timeout_outlasts_a_whole_life_is_refused_at_once_with_why() {
    let (mut s, now) = state(Config {
        fleet: Fleet {
            execution_timeout: secs(5.0),
            ..external().fleet
        },
        ..external()
    });
    let mut effects = Effects::default();
    let sub = Submission {
        timeout: Some(secs(6.0)),
        ..Submission::new("f", Bytes::from_static(b"x"))
    };
    let err = s.submit(sub, None, now, &mut effects).expect_err("refused");
    assert_eq!(err.kind(), crate::error::Kind::Precondition);
    let msg = err.to_string();
    assert!(
        msg.contains("6000 ms") && msg.contains("5000 ms") && msg.contains("--execution-timeout"),
        "{msg}"
    );
    assert_eq!(s.stats(now).total.expect("total").pending, 0, "nothing was kept");
    // One that fits is taken.
    let fits = Submission {
        timeout: Some(secs(4.0)),
        ..Submission::new("f", Bytes::from_static(b"x"))
    };
    s.submit(fits, None, now, &mut effects).expect("fits");
}

#[test]
fn a_task_with_its_own_timeout_waits_for_a_worker_with_the_life_for_it_and_short_ones_pass_it() {
    let (mut s, now) = state(local_kept(4));
    let mut effects = Effects::default();
    let old = s
        .connect(hello_with_life("old", 2, secs(4.0)), now, &mut effects)
        .expect("connect");
    let later = now + secs(2.0);
    // 3 s of timeout needs 3.25 s: the old worker (2 s left) cannot take it.
    let long = Submission {
        timeout: Some(secs(3.0)),
        ..Submission::new("f", Bytes::from_static(b"long"))
    };
    let mut effects = Effects::default();
    let long = s.submit(long, None, later, &mut effects).expect("submit").id();
    let short = submit(&mut s, &mut effects, later);
    assert_eq!(
        assigned(&mut effects, old),
        vec![short],
        "the short task passes the long one"
    );
    assert_eq!(effects.spawns.len(), 1, "a fresh worker for the long task");
    let id = effects.spawns[0].id.clone();
    let mut effects = Effects::default();
    let fresh = s
        .connect(hello_with_life(id.as_str(), 2, secs(4.0)), later, &mut effects)
        .expect("connect");
    assert_eq!(assigned(&mut effects, fresh), vec![long]);
}

#[test]
fn a_worker_whose_admissions_ended_still_takes_a_task_its_own_timeout_bounds() {
    use crate::config::Admission;
    let run = |admission: Admission, at: f64| {
        let mut c = external();
        c.fleet.admission = admission;
        let (mut s, now) = state(c);
        let mut effects = Effects::default();
        let a = s
            .connect(hello_with_life("a", 4, secs(10.0)), now, &mut effects)
            .expect("connect");
        // The function's longest attempt is 3 s: admissions end at 6 s.
        run_tasks(&mut s, "a", a, 8, secs(3.0), now);
        let at = now + secs(at);
        // A task without a timeout may be as long: it waits.
        let mut effects = Effects::default();
        let open = submit(&mut s, &mut effects, at);
        // One bounded by 1 s needs 1.25 s of what is left (3 s at 7 s): the worker takes
        // it, past the one that waits. One bounded by 2.9 s does not fit and waits too.
        let sub = |ms: u64| Submission {
            timeout: Some(Duration::from_millis(ms)),
            ..Submission::new("f", Bytes::from_static(b"x"))
        };
        let short = s.submit(sub(1000), None, at, &mut effects).expect("submit").id();
        let long = s.submit(sub(2900), None, at, &mut effects).expect("submit").id();
        let got = assigned(&mut effects, a);
        let pending = |s: &State, id| s.get(id).expect("get").state() == TaskState::Pending;
        let waiting = (pending(&s, open), pending(&s, long));
        let late = s.stats(at).functions[0].taken_late;
        (got, short, waiting, late)
    };
    let (got, short, waiting, late) = run(Admission::Duration, 7.0);
    assert_eq!(got, vec![short], "the bounded task that fits, and only it");
    assert_eq!(waiting, (true, true));
    assert_eq!(late, 1, "counted as taken late");
    // The fraction rule is the paper's: past 0.8 of the life its admissions end for every
    // task, even one that would fit.
    let (got, _, waiting, late) = run(Admission::Fraction, 8.5);
    assert!(got.is_empty(), "{got:?}");
    assert_eq!((waiting, late), ((true, true), 0));
}

#[test]
fn a_task_still_running_ends_late_admissions_on_every_worker_of_its_function_before_it_ends() {
    // Short tasks known: 50 ms.
    let (mut s, now, a) = known(secs(0.05));
    assert_eq!(s.stats(now).functions[0].duration_bound_ms, 50);
    // One that turns out long starts on a at 1 s; b comes at 1 s with a whole life.
    let mut effects = Effects::default();
    let long = submit(&mut s, &mut effects, now + secs(1.0));
    assert_eq!(assigned(&mut effects, a), vec![long]);
    let b = s
        .connect(hello_with_life("b", 2, secs(10.0)), now + secs(1.0), &mut effects)
        .expect("connect");
    // At 7 s it has run 6 s: a task may take that long, which needs 7.75 s of a life. The
    // figure alone (50 ms) would let b, 6 s into its life, take one until 9.6 s; it does
    // not, nor does a.
    let mut effects = Effects::default();
    let waiting = submit(&mut s, &mut effects, now + secs(7.0));
    assert!(assigned(&mut effects, a).is_empty());
    assert!(assigned(&mut effects, b).is_empty());
    assert_eq!(s.get(waiting).expect("get").state(), TaskState::Pending);
    // Its worker gone, the long attempt no longer bounds anything (its task back in the
    // pool, not known to be long): at its next sample b, with 4 s left, takes both.
    let mut effects = Effects::default();
    s.disconnect(
        &WorkerId::new("a"),
        a,
        StreamEnd::Closed,
        now + secs(7.1),
        &mut effects,
    );
    let idle = pb::ResourceSample {
        cpu: 0.01,
        memory_used_bytes: 1,
        memory_limit_bytes: 100,
        ..Default::default()
    };
    s.sample(&WorkerId::new("b"), idle, now + secs(7.2), &mut effects)
        .expect("sample");
    let mut got = assigned(&mut effects, b);
    got.sort_unstable();
    assert_eq!(got, vec![long, waiting]);
}

/// A cold start whose slow end, while it is the only one known, is 1 s (its fitted tail:
/// 3.2 times it).
const COLD: Duration = Duration::from_micros(312_500);

/// A local-spawner state whose one worker ("w", spawned) took `cold` to start, lives
/// `life`, and has run eight 100 ms tasks; returns its connection and the time then.
fn measured_worker(max_workers: u32, cold: Duration, life: Duration) -> (State, Instant, Conn, WorkerId) {
    let (mut s, now) = state(local_kept(max_workers));
    let mut effects = Effects::default();
    submit(&mut s, &mut effects, now);
    let id = effects.spawns[0].id.clone();
    let hello_at = now + cold;
    let mut effects = Effects::default();
    let conn = s
        .connect(hello_with_life(id.as_str(), 2, life), hello_at, &mut effects)
        .expect("connect");
    let first = assigned(&mut effects, conn);
    let r = pb::WorkerTaskResult {
        duration_us: 100_000,
        ..result(first[0], 1)
    };
    s.results(&id, vec![r], hello_at, &mut effects).expect("result");
    run_tasks(&mut s, id.as_str(), conn, 7, secs(0.1), hello_at);
    (s, hello_at, conn, id)
}

#[test]
fn a_successor_starts_its_cold_start_ahead_of_its_predecessor_s_end_when_work_is_queued() {
    // One worker allowed: the successor takes the place of one whose admissions end.
    let (mut s, at, conn, id) = measured_worker(1, COLD, secs(10.0));
    // Admissions end at 10 - 0.11 - 0.25 s; the lead is the 1 s cold start.
    let end = secs(10.0) - secs(0.11) - secs(0.25);
    // Fill both slots and queue more than it can finish by its end (100 ms tasks, two at a
    // time: 18 in 0.9 s), well before the lead: no successor.
    let mut effects = Effects::default();
    for _ in 0..40 {
        submit(&mut s, &mut effects, at + secs(1.0));
    }
    let running = assigned(&mut effects, conn);
    assert_eq!(running.len(), 2);
    assert!(effects.spawns.is_empty(), "{:?}", effects.spawns);
    // The two end before the lead (one running for 7.7 s would be a task that long), and
    // two more start.
    let within = at + end - secs(0.9);
    let mut effects = Effects::default();
    let done = running
        .iter()
        .map(|&t| pb::WorkerTaskResult {
            duration_us: 100_000,
            ..result(t, 1)
        })
        .collect();
    s.results(&id, done, within - secs(0.2), &mut effects)
        .expect("results");
    assert_eq!(assigned(&mut effects, conn).len(), 2);
    assert!(effects.spawns.is_empty(), "{:?}", effects.spawns);
    // Within the lead, the function is looked at again (the timer the worker armed) and a
    // successor starts although the cap is one worker.
    let mut effects = Effects::default();
    s.on_timer(Timer::Function(Arc::from("f")), within, &mut effects);
    assert_eq!(effects.spawns.len(), 1, "a successor");
    let st = &s.stats(within).functions[0];
    assert_eq!(st.successors_started, 1);
    // 900 ms before the end the figure gives; the two running for 200 ms already count as
    // if they ended now: a tail that ends at 225 ms (200 ms and the mean gap to the 100 ms
    // ones below it), which needs 137.5 ms more of the life than 100 ms tasks.
    assert_eq!(st.successor_lead_ms, 762);
    // Once: the successor starting covers the queue.
    let mut effects = Effects::default();
    s.on_timer(Timer::Function(Arc::from("f")), within + secs(0.1), &mut effects);
    assert!(effects.spawns.is_empty());
}

#[test]
fn no_successor_starts_when_nothing_is_queued_or_the_queue_empties_before_the_end() {
    let (mut s, at, conn, _) = measured_worker(1, COLD, secs(10.0));
    let mut effects = Effects::default();
    s.on_timer(Timer::Function(Arc::from("f")), at + secs(9.0), &mut effects);
    assert!(effects.spawns.is_empty());
    // Six queued behind two running: done in 0.4 s, before its admissions end (9.625 s),
    // looked at within the successor's lead (1 s) while the two have run less than two
    // median tasks (past that, they would be long ones).
    for _ in 0..8 {
        submit(&mut s, &mut effects, at + secs(8.65));
    }
    assert_eq!(assigned(&mut effects, conn).len(), 2);
    s.on_timer(Timer::Function(Arc::from("f")), at + secs(8.7), &mut effects);
    assert!(effects.spawns.is_empty());
    assert_eq!(s.stats(at + secs(9.0)).functions[0].successors_started, 0);
}

#[test]
fn a_worker_ending_with_tasks_running_at_its_deadline_counts_them_as_killed() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let a = s
        .connect(hello_with_life("a", 2, secs(2.0)), now, &mut effects)
        .expect("connect");
    let t = submit(&mut s, &mut effects, now);
    assert_eq!(assigned(&mut effects, a), vec![t]);
    s.disconnect(
        &WorkerId::new("a"),
        a,
        StreamEnd::Closed,
        now + secs(2.0),
        &mut effects,
    );
    let st = &s.stats(now + secs(2.0)).functions[0];
    assert_eq!((st.killed_at_deadline, st.retried), (1, 1), "{st:?}");
    assert_eq!(s.get(t).expect("get").state(), TaskState::Pending);
    // One that leaves early with tasks is lost, not killed at a deadline.
    let b = s
        .connect(hello_with_life("b", 2, secs(10.0)), now + secs(2.0), &mut effects)
        .expect("connect");
    assert_eq!(assigned(&mut effects, b), vec![t]);
    s.disconnect(
        &WorkerId::new("b"),
        b,
        StreamEnd::Closed,
        now + secs(3.0),
        &mut effects,
    );
    assert_eq!(s.stats(now + secs(3.0)).functions[0].killed_at_deadline, 1);
}

#[test]
fn slots_holding_tasks_far_past_the_median_do_not_count_as_turning_over() {
    // Two workers allowed; the first has run eight tasks of 100 ms and lives long.
    let (mut s, at, conn, _) = measured_worker(2, secs(1.0), secs(100.0));
    let mut effects = Effects::default();
    for _ in 0..302 {
        submit(&mut s, &mut effects, at + secs(1.0));
    }
    assert_eq!(assigned(&mut effects, conn).len(), 2);
    // Two just started, 300 queued: its two slots, turning over every 100 ms, finish 252 of
    // them in fourteen times what a new worker takes to start (1 s, less a task): the rest
    // does not pay for a new one (paced scale-out).
    assert!(effects.spawns.is_empty(), "{:?}", effects.spawns);
    // A second later the two still run: long ones, whose slots finish nothing for as long
    // as those take. The queue pays for a new worker.
    let mut effects = Effects::default();
    s.on_timer(Timer::Function(Arc::from("f")), at + secs(2.0), &mut effects);
    assert_eq!(effects.spawns.len(), 1, "{:?}", effects.spawns);
}

#[test]
fn a_running_task_that_brings_the_end_nearer_has_the_successor_looked_at_before_the_next_sample() {
    let (mut s, at, conn, id) = measured_worker(1, COLD, secs(10.0));
    let mut effects = Effects::default();
    let long = submit(&mut s, &mut effects, at + secs(1.0));
    assert_eq!(assigned(&mut effects, conn), vec![long]);
    for _ in 0..40 {
        submit(&mut s, &mut effects, at + secs(1.0));
    }
    // At 4.5 s it has run 3.5 s: admissions end at 10 - 3.85 - 0.25 = 5.9 s, 1.4 s away, and
    // 1.1 s nearer for every second it goes on. The successor's lead is 1 s: the end is
    // within it in 0.4 s / 2.1, before the next sample (500 ms): a look is due then.
    let busy = pb::ResourceSample {
        cpu: 0.01,
        memory_used_bytes: 1,
        memory_limit_bytes: 100,
        running_tasks: 2,
        ..Default::default()
    };
    let mut effects = Effects::default();
    s.sample(&id, busy, at + secs(4.5), &mut effects).expect("sample");
    let looks: Vec<Duration> = effects
        .timers
        .iter()
        .filter(|(_, t)| matches!(t, Timer::Function(f) if f.as_ref() == "f"))
        .map(|(d, _)| *d)
        .collect();
    let look = looks
        .iter()
        .copied()
        .find(|d| d.abs_diff(secs(0.4 / 2.1)) < secs(0.01))
        .unwrap_or_else(|| panic!("no look when the end comes within the lead: {looks:?}"));
    // Then the successor starts, 1 s ahead of the end.
    let mut effects = Effects::default();
    s.on_timer(
        Timer::Function(Arc::from("f")),
        at + secs(4.5) + look,
        &mut effects,
    );
    assert_eq!(effects.spawns.len(), 1, "a successor");
}

#[test]
fn tasks_waiting_while_every_worker_s_admissions_have_ended_count_as_a_hand_over_wait() {
    // Before any worker: a first cold start, not a hand-over.
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    submit(&mut s, &mut effects, now);
    s.watch_handovers(now);
    s.watch_handovers(now + secs(1.0));
    assert_eq!(s.stats(now + secs(1.0)).functions[0].handover_wait_ms, 0);

    // A worker of 10 s whose tasks take 3 s ends its admissions at 6 s.
    let (mut s, now, a) = known(secs(3.0));
    // Both slots full: tasks wait, but it may take work again.
    let mut effects = Effects::default();
    let (t1, t2) = (
        submit(&mut s, &mut effects, now),
        submit(&mut s, &mut effects, now),
    );
    assert_eq!(assigned(&mut effects, a), vec![t1, t2]);
    submit(&mut s, &mut effects, now);
    s.watch_handovers(now);
    s.watch_handovers(now + secs(1.0));
    assert_eq!(
        s.stats(now).functions[0].handover_wait_ms,
        0,
        "a full worker is no hand-over"
    );
    // Past its admissions' end, tasks still waiting: from 6.1 s to the next worker at 7 s.
    s.watch_handovers(now + secs(6.1));
    s.watch_handovers(now + secs(6.5));
    let b = s
        .connect(hello_with_life("b", 2, secs(10.0)), now + secs(7.0), &mut effects)
        .expect("connect");
    assert_eq!(assigned(&mut effects, b).len(), 1);
    s.watch_handovers(now + secs(7.0));
    let st = &s.stats(now + secs(7.0)).functions[0];
    assert_eq!(
        (st.handover_wait_ms, st.handover_wait_longest_ms),
        (900, 900),
        "{st:?}"
    );
    // Nothing waits now: no more is counted.
    s.watch_handovers(now + secs(8.0));
    assert_eq!(s.stats(now + secs(8.0)).functions[0].handover_wait_ms, 900);
}
