//! Unit tests of the state owner: events in, messages and effects out, time as an argument.

use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_messages::Bytes;
use carpool_messages::pb::{self, TaskState, coordinator_message::Kind};

use super::*;
use crate::config::{Config, Fleet, Functions, Limits, Placement, SpawnerKind};

fn state(config: Config) -> (State, Instant) {
    let now = Instant::now();
    let mut s = State::new(Arc::new(config), now);
    s.recount = true;
    (s, now)
}

fn external() -> Config {
    Config {
        fleet: Fleet {
            spawner: SpawnerKind::External,
            keep_alive: Duration::from_secs(60),
            ..Fleet::default()
        },
        ..Config::default()
    }
}

/// A local-spawner config whose workers serve "f" by a command, their limits pinned at
/// their 2 vCPUs (so scale-out counts 2 slots per worker; adaptive limits have tests of
/// their own).
fn local(max_workers: u32) -> Config {
    Config {
        fleet: Fleet {
            max_workers,
            memory_mb: 2048, // 2 vCPUs
            slots: Some(2),
            ..Fleet::default()
        },
        functions: Functions {
            exec: vec![("f".into(), "cat".into())],
            ..Functions::default()
        },
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
            fleet: Fleet {
                placement,
                ..external().fleet.clone()
            },
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
        fleet: Fleet {
            start_timeout: Duration::from_secs(10),
            ..local(1).fleet.clone()
        },
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
fn an_attempt_lost_with_its_worker_counts_in_its_tasks_bill() {
    let (mut s, now) = state(external());
    let mut effects = Effects::default();
    let conn = connect(&mut s, &mut effects, "a", 1, now);
    let id = submit(&mut s, &mut effects, now);
    assert_eq!(assigned(&mut effects, conn), vec![id]);
    // Lost after 10 s alone on a 2048 MB worker (20 GB-s), then run to its end elsewhere.
    let later = now + Duration::from_secs(10);
    s.disconnect(&WorkerId::new("a"), conn, StreamEnd::Closed, later, &mut effects);
    let rx = connect(&mut s, &mut effects, "b", 1, later);
    assert_eq!(assigned(&mut effects, rx), vec![id]);
    s.results(&WorkerId::new("b"), vec![result(id, 2)], later, &mut effects)
        .expect("results");
    let billed = s.get(id).expect("get").result.expect("result").billed_gb_s;
    // 20 GB-s lost, and 1 ms at 2 GB for the attempt that finished.
    assert!((billed - 20.002).abs() < 1e-6, "{billed}");
}

#[test]
fn a_task_fails_with_its_cause_once_out_of_attempts() {
    let (mut s, now) = state(Config {
        limits: Limits {
            max_attempts: 2,
            ..external().limits.clone()
        },
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

mod journaled;
mod life;
mod lifecycle;
mod sizes;
