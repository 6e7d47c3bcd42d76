//! Unit tests of the state owner: events in, messages and effects out, time as an argument.

use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_proto::Bytes;
use carpool_proto::pb::{self, TaskState, coordinator_message::Kind};

use super::*;
use crate::config::{Config, Placement, SpawnerKind};

fn state(config: Config) -> (State, Instant) {
    let now = Instant::now();
    (State::new(Arc::new(config), now), now)
}

fn external() -> Config {
    Config {
        spawner: SpawnerKind::External,
        keep_alive: Duration::from_secs(60),
        ..Config::default()
    }
}

/// A local-spawner config whose workers serve "f" by a command, their limits pinned at
/// their 2 vCPUs (so scale-out counts 2 slots per worker; adaptive limits have tests of
/// their own).
fn local(max_workers: u32) -> Config {
    Config {
        max_workers,
        memory_mb: 2048, // 2 vCPUs
        slots: Some(2),
        exec_functions: vec![("f".into(), "cat".into())],
        ..Config::default()
    }
}

fn hello(id: &str, slots: u32) -> pb::Hello {
    pb::Hello {
        worker_id: id.into(),
        function: "f".into(),
        vcpus: slots,
        memory_mb: 2048,
        slots,
        timeout_ms: 0,
        instance: "i".into(),
        ..Default::default()
    }
}

/// Connects worker `id`; its messages collect in `effects` under the returned connection.
fn connect(s: &mut State, effects: &mut Effects, id: &str, slots: u32, now: Instant) -> Conn {
    s.connect(hello(id, slots), now, effects).expect("connect")
}

/// Takes the messages for `conn` out of `effects` (leaving the rest).
fn messages(effects: &mut Effects, conn: Conn) -> Vec<Kind> {
    let mut mine = Vec::new();
    effects.out.retain_mut(|o| match o {
        Outbound::Message { conn: c, message } if *c == conn => {
            mine.extend(message.kind.take());
            false
        }
        _ => true,
    });
    mine
}

/// The task ids assigned to `conn` in the messages waiting in `effects`.
fn assigned(effects: &mut Effects, conn: Conn) -> Vec<u64> {
    messages(effects, conn)
        .into_iter()
        .filter_map(|k| match k {
            Kind::Assign(a) => Some(a.tasks.into_iter().map(|t| t.task_id)),
            _ => None,
        })
        .flatten()
        .collect()
}

fn submit(s: &mut State, effects: &mut Effects, now: Instant) -> TaskId {
    s.submit(Submission::new("f", Bytes::from_static(b"x")), None, now, effects)
        .expect("submit")
        .id()
}

/// Submits to a local-spawner state, returning the spawns the submission asked for.
fn spawns(s: &mut State, now: Instant) -> Vec<SpawnRequest> {
    let mut effects = Effects::default();
    submit(s, &mut effects, now);
    effects.spawns
}

fn result(task_id: TaskId, attempt: u32) -> pb::WorkerTaskResult {
    pb::WorkerTaskResult {
        task_id,
        attempt,
        outcome: Some(pb::worker_task_result::Outcome::Output(Bytes::from_static(b"ok"))),
        started_unix_ms: 1,
        finished_unix_ms: 2,
        duration_us: 1000,
    }
}

#[test]
fn submit_assigns_at_once_up_to_the_slots() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let rx = connect(&mut s, &mut effects, "w", 2, now);
    let ids: Vec<TaskId> = (0..3).map(|_| submit(&mut s, &mut effects, now)).collect();
    assert_eq!(assigned(&mut effects, rx), ids[..2].to_vec());
    let st = s.stats(now).total.expect("total");
    assert_eq!((st.running, st.pending), (2, 1));
    // A result frees a slot, which is refilled in the same event.
    s.results(&WorkerId::new("w"), vec![result(ids[0], 1)], now, &mut effects)
        .expect("results");
    assert_eq!(assigned(&mut effects, rx), vec![ids[2]]);
    assert_eq!(s.get(ids[0]).expect("get").state(), TaskState::Succeeded);
}

#[test]
fn pack_fills_one_worker_before_the_next_and_spread_alternates() {
    for (placement, expected) in [(Placement::Pack, (2, 0)), (Placement::Spread, (1, 1))] {
        let (mut s, now) = state(Config {
            placement,
            ..external()
        });
        let mut effects = Effects::default();
        let a = connect(&mut s, &mut effects, "a", 2, now);
        let b = connect(&mut s, &mut effects, "b", 2, now);
        submit(&mut s, &mut effects, now);
        submit(&mut s, &mut effects, now);
        assert_eq!(
            (assigned(&mut effects, a).len(), assigned(&mut effects, b).len()),
            expected,
            "{placement:?}"
        );
    }
}

#[test]
fn starting_workers_count_as_capacity_so_a_burst_does_not_over_spawn() {
    let (mut s, now) = state(local(8));
    let mut spawned = 0;
    for _ in 0..5 {
        spawned += spawns(&mut s, now).len();
    }
    // 5 tasks at 2 slots per worker: 3 workers, not 5.
    assert_eq!(spawned, 3);
    let mut effects = Effects::default();
    for _ in 0..100 {
        s.submit(Submission::new("f", Bytes::new()), None, now, &mut effects)
            .expect("submit");
    }
    // The cap of 8 holds whatever the burst.
    assert_eq!(spawned + effects.spawns.len(), 8);
    assert_eq!(s.stats(now).total.expect("total").workers_starting, 8);
}

#[test]
fn a_failed_spawn_releases_its_capacity_and_retries_after_a_backoff() {
    let (mut s, now) = state(local(1));
    let id = spawns(&mut s, now)[0].id.clone();
    let mut effects = Effects::default();
    s.spawn_failed(&id, "spawner", "boom", now, &mut effects);
    assert!(effects.spawns.is_empty(), "respawned without a backoff");
    assert!(matches!(effects.timers.as_slice(), [(_, Timer::Function(_))]));
    let st = s.stats(now).total.expect("total");
    assert_eq!((st.workers_starting, st.spawn_failures, st.pending), (0, 1, 1));
    let mut effects = Effects::default();
    s.on_timer(
        Timer::Function(Arc::from("f")),
        now + Duration::from_secs(1),
        &mut effects,
    );
    assert_eq!(effects.spawns.len(), 1, "the pending task was stranded");
}

#[test]
fn a_spawned_worker_that_never_connects_is_written_off_after_the_start_timeout() {
    let config = Config {
        start_timeout: Duration::from_secs(10),
        ..local(1)
    };
    let (mut s, now) = state(config);
    assert_eq!(spawns(&mut s, now).len(), 1);
    let mut effects = Effects::default();
    s.sweep(now + Duration::from_secs(9), &mut effects);
    assert_eq!(
        s.stats(now).total.expect("total").workers_starting,
        1,
        "written off too early"
    );
    s.sweep(now + Duration::from_secs(11), &mut effects);
    let st = s.stats(now).total.expect("total");
    assert_eq!((st.workers_starting, st.spawn_failures, st.pending), (0, 1, 1));
    assert!(
        st.last_spawn_error.contains("start timeout of 10s"),
        "{}",
        st.last_spawn_error
    );
}

#[test]
fn cold_starts_are_measured_from_spawn_to_hello() {
    let (mut s, now) = state(local(3));
    let mut effects = Effects::default();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.extend(spawns(&mut s, now).into_iter().map(|r| r.id));
    }
    assert_eq!(ids.len(), 3);
    for (i, id) in ids.iter().enumerate() {
        let at = now + Duration::from_millis(100 * (i as u64 + 1));
        s.connect(hello(id.as_str(), 2), at, &mut effects)
            .expect("connect");
    }
    let st = s.stats(now + Duration::from_secs(1)).total.expect("total");
    assert_eq!(
        (st.cold_starts, st.cold_start_p50_ms, st.cold_start_max_ms),
        (3, 200, 300)
    );
    let listed: Vec<u64> = s
        .list_workers("", now + Duration::from_secs(1))
        .iter()
        .map(|w| w.cold_start_ms)
        .collect();
    assert_eq!(listed, vec![100, 200, 300]);
    // A worker started by hand has no cold start of ours.
    s.connect(hello("by-hand", 2), now, &mut effects)
        .expect("connect");
    assert_eq!(s.stats(now).total.expect("total").cold_starts, 3);
}

#[test]
fn lost_worker_returns_its_tasks_to_the_front_of_the_pool() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let conn = connect(&mut s, &mut effects, "a", 1, now);
    let first = submit(&mut s, &mut effects, now);
    let second = submit(&mut s, &mut effects, now);
    assert_eq!(assigned(&mut effects, conn), vec![first]);
    s.disconnect(&WorkerId::new("a"), conn, StreamEnd::Closed, now, &mut effects);
    let rx = connect(&mut s, &mut effects, "b", 1, now);
    // The requeued task goes first, ahead of the one that was waiting.
    assert_eq!(assigned(&mut effects, rx), vec![first]);
    let info = s.get(first).expect("get");
    assert_eq!((info.attempts, info.worker_id.as_str()), (2, "b"));
    assert_eq!(s.stats(now).total.expect("total").retried, 1);
    let _ = second;
}

#[test]
fn a_task_fails_with_its_cause_once_out_of_attempts() {
    let (mut s, now) = state(Config {
        max_attempts: 2,
        ..external()
    });
    let mut effects = Effects::default();
    let id = submit(&mut s, &mut effects, now);
    for worker in ["a", "b"] {
        let conn = connect(&mut s, &mut effects, worker, 1, now);
        assert_eq!(assigned(&mut effects, conn), vec![id]);
        s.disconnect(&WorkerId::new(worker), conn, StreamEnd::Closed, now, &mut effects);
    }
    let info = s.get(id).expect("get");
    let error = info.result.clone().expect("result").error;
    assert_eq!(info.state(), TaskState::Failed);
    assert!(
        error.contains("2 attempts") && error.contains("worker b"),
        "{error}"
    );
}

#[test]
fn a_result_for_a_stale_attempt_is_ignored() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let rx = connect(&mut s, &mut effects, "a", 1, now);
    let _rx_b = connect(&mut s, &mut effects, "b", 1, now);
    let id = submit(&mut s, &mut effects, now);
    assert_eq!(assigned(&mut effects, rx), vec![id]);
    let mut effects = Effects::default();
    // From the right worker with a stale attempt number: ignored (the wrong worker is a
    // protocol violation, see below).
    s.results(&WorkerId::new("a"), vec![result(id, 7)], now, &mut effects)
        .expect("results");
    assert_eq!(s.get(id).expect("get").state(), TaskState::Running);
    s.results(&WorkerId::new("a"), vec![result(id, 1)], now, &mut effects)
        .expect("results");
    assert_eq!(s.get(id).expect("get").state(), TaskState::Succeeded);
    assert_eq!(s.stats(now).total.expect("total").succeeded, 1);
}

#[test]
fn a_stale_disconnect_does_not_remove_a_newer_connection() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let old = connect(&mut s, &mut effects, "a", 1, now);
    s.disconnect(&WorkerId::new("a"), old, StreamEnd::Closed, now, &mut effects);
    let _rx2 = connect(&mut s, &mut effects, "a", 1, now);
    s.disconnect(&WorkerId::new("a"), old, StreamEnd::Closed, now, &mut effects);
    assert_eq!(s.live_workers(), 1);
}

#[test]
fn billing_counts_each_worker_from_connect_to_disconnect() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let conn = connect(&mut s, &mut effects, "a", 1, now);
    let later = now + Duration::from_millis(1500);
    s.disconnect(&WorkerId::new("a"), conn, StreamEnd::Closed, later, &mut effects);
    let t = s.stats(later).total.expect("total");
    assert_eq!(t.billed_gb_ms, 1500.0 * 2.0);
    assert_eq!(t.workers_started, 1);
    assert!((t.cost_usd - crate::billing::cost_usd(3000.0, 1)).abs() < 1e-15);
}

#[test]
fn stats_bill_live_workers_to_their_own_function() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let _ra = connect(&mut s, &mut effects, "a", 1, now);
    let _rb = connect(&mut s, &mut effects, "b", 1, now + Duration::from_millis(500));
    let g = pb::Hello {
        function: "g".into(),
        ..hello("c", 1)
    };
    s.connect(g, now, &mut effects).expect("connect");
    let stats = s.stats(now + Duration::from_millis(1000));
    let per: Vec<(String, u32, f64)> = stats
        .functions
        .iter()
        .map(|f| (f.function.clone(), f.workers_live, f.billed_gb_ms))
        .collect();
    // f: 1000 ms + 500 ms at 2 GB; g: 1000 ms at 2 GB.
    assert_eq!(per, vec![("f".into(), 2, 3000.0), ("g".into(), 1, 2000.0)]);
    assert_eq!(stats.total.expect("total").billed_gb_ms, 5000.0);
}

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
        reconnect_grace: Duration::from_secs(2),
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
    let lease = s.config.liveness_lease();
    let mut effects = Effects::default();
    s.sample(&WorkerId::new("a"), sample(0.1), now + lease / 2, &mut effects)
        .expect("sample");
    s.sweep(now + lease, &mut effects);
    assert_eq!(s.live_workers(), 1, "a sample renews the lease");
    s.sweep(now + lease / 2 + lease + Duration::from_millis(1), &mut effects);
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
        max_pending: 2,
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
        result_retention: Duration::from_secs(60),
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
    let later = now + s.config.liveness_lease() + Duration::from_millis(1);
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

/// With a journal, a submission waits outside the pool for its write. A worker freed while
/// the pool is empty (the next submission still being written) must still get that
/// submission once it is written.
#[test]
fn a_submission_written_after_the_pool_ran_dry_is_still_placed() {
    let (mut s, now) = state(Config {
        state_dir: Some("unused".into()),
        slots: Some(1),
        ..external()
    });
    let mut effects = Effects::default();
    let conn = connect(&mut s, &mut effects, "a", 1, now);
    let first = s
        .submit(Submission::new("f", Bytes::new()), None, now, &mut effects)
        .expect("submit");
    let second = s
        .submit(Submission::new("f", Bytes::new()), None, now, &mut effects)
        .expect("submit");
    assert!(matches!(first, Submitted::Write(..)) && matches!(second, Submitted::Write(..)));
    assert_eq!(
        s.stats(now).total.expect("total").pending,
        2,
        "both count as pending"
    );
    s.accepted(first.id(), now, &mut effects);
    assert_eq!(assigned(&mut effects, conn), vec![first.id()]);
    // The worker finishes with the pool empty: the second is still being written.
    s.results(
        &WorkerId::new("a"),
        vec![result(first.id(), 1)],
        now,
        &mut effects,
    )
    .expect("results");
    assert_eq!(s.stats(now).total.expect("total").pending, 1);
    s.accepted(second.id(), now, &mut effects);
    assert_eq!(assigned(&mut effects, conn), vec![second.id()]);
    assert_eq!(s.stats(now).total.expect("total").pending, 0);
}

/// A submission cancelled while its record is written is not placed once written, and
/// counts once.
#[test]
fn a_submission_cancelled_while_written_is_not_placed() {
    let (mut s, now) = state(Config {
        state_dir: Some("unused".into()),
        ..external()
    });
    let mut effects = Effects::default();
    let conn = connect(&mut s, &mut effects, "a", 2, now);
    let t = s
        .submit(Submission::new("f", Bytes::new()), None, now, &mut effects)
        .expect("submit");
    assert_eq!(
        s.cancel(t.id(), now, &mut effects).expect("cancel"),
        TaskState::Cancelled
    );
    s.accepted(t.id(), now, &mut effects);
    assert!(assigned(&mut effects, conn).is_empty());
    let total = s.stats(now).total.expect("total");
    assert_eq!((total.pending, total.cancelled), (0, 1));
}

/// After a restart, nothing is placed for a short pause: a worker that was running a task
/// whose start never reached the journal claims it before another worker is given it.
#[test]
fn after_a_restart_placement_waits_for_running_workers_to_claim_their_tasks() {
    let (mut s, now) = state(Config {
        state_dir: Some("unused".into()),
        ..external()
    });
    let mut effects = Effects::default();
    let stored = |payload: &'static [u8]| StoredTask {
        function: "f".into(),
        payload: Bytes::from_static(payload),
        ..Default::default()
    };
    s.restore(
        Recovered {
            tasks: vec![(1, stored(b"a"), 0), (2, stored(b"b"), 0)],
            next_id: 3,
            learned: Vec::new(),
        },
        now,
        &mut effects,
    );
    let pause = effects
        .timers
        .iter()
        .find(|(_, t)| matches!(t, Timer::Settled))
        .map(|(d, _)| *d)
        .expect("a pause is armed");
    assert!(pause <= RESTART_SETTLE);
    // Another worker connects first: it is given nothing yet.
    let other = connect(&mut s, &mut effects, "other", 4, now);
    assert!(assigned(&mut effects, other).is_empty());
    // The worker that was running task 1 comes back and claims it.
    let mut back = hello("runner", 4);
    back.running_task_ids = vec![1];
    back.running_attempts = vec![1];
    let runner = s.connect(back, now, &mut effects).expect("connect");
    assert!(assigned(&mut effects, runner).is_empty());
    assert_eq!(s.get(1).expect("task 1").state(), TaskState::Running);
    // Once the pause is over, the rest is placed, and task 1 is not given out again.
    s.on_timer(Timer::Settled, now + pause, &mut effects);
    let given: Vec<u64> = assigned(&mut effects, other)
        .into_iter()
        .chain(assigned(&mut effects, runner))
        .collect();
    assert_eq!(given, vec![2]);
}
