//! Unit tests of the state owner: events in, messages and effects out, time as an argument.

use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_proto::Bytes;
use carpool_proto::pb::{self, TaskState, coordinator_message::Kind};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::*;
use crate::config::{Config, Placement, SpawnerKind};

type Rx = UnboundedReceiver<Result<pb::CoordinatorMessage, tonic::Status>>;

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

/// A local-spawner config whose workers serve "f" by a command.
fn local(max_workers: u32) -> Config {
    Config {
        max_workers,
        memory_mb: 2048, // 2 vCPUs, 2 slots
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
        instance: String::new(),
    }
}

fn connect(s: &mut State, id: &str, slots: u32, now: Instant) -> (u64, Rx) {
    let (tx, rx) = unbounded_channel();
    let conn = s
        .connect(hello(id, slots), tx, now, &mut Effects::default())
        .expect("connect");
    (conn, rx)
}

/// The assigned task ids of every message waiting on `rx` (after the welcome).
fn assigned(rx: &mut Rx) -> Vec<u64> {
    let mut ids = Vec::new();
    while let Ok(Ok(msg)) = rx.try_recv() {
        if let Some(Kind::Assign(a)) = msg.kind {
            ids.extend(a.tasks.iter().map(|t| t.task_id));
        }
    }
    ids
}

fn submit(s: &mut State, now: Instant) -> (TaskId, Effects) {
    let mut fx = Effects::default();
    let id = s
        .submit("f", Bytes::from_static(b"x"), None, now, &mut fx)
        .expect("submit");
    (id, fx)
}

fn result(task_id: TaskId, attempt: u32) -> pb::WorkerTaskResult {
    pb::WorkerTaskResult {
        task_id,
        attempt,
        outcome: Some(pb::worker_task_result::Outcome::Output(Bytes::from_static(b"ok"))),
        started_unix_ms: 1,
        finished_unix_ms: 2,
    }
}

#[test]
fn submit_assigns_at_once_up_to_the_slots() {
    let (mut s, now) = state(external());
    let (_, mut rx) = connect(&mut s, "w", 2, now);
    let ids: Vec<TaskId> = (0..3).map(|_| submit(&mut s, now).0).collect();
    assert_eq!(assigned(&mut rx), ids[..2].to_vec());
    let st = s.stats(now).total.expect("total");
    assert_eq!((st.running, st.pending), (2, 1));
    // A result frees a slot, which is refilled in the same event.
    s.results(
        &WorkerId::new("w"),
        vec![result(ids[0], 1)],
        now,
        &mut Effects::default(),
    );
    assert_eq!(assigned(&mut rx), vec![ids[2]]);
    assert_eq!(s.get(ids[0]).expect("get").state(), TaskState::Succeeded);
}

#[test]
fn pack_fills_one_worker_before_the_next_and_spread_alternates() {
    for (placement, expected) in [(Placement::Pack, (2, 0)), (Placement::Spread, (1, 1))] {
        let (mut s, now) = state(Config {
            placement,
            ..external()
        });
        let (_, mut a) = connect(&mut s, "a", 2, now);
        let (_, mut b) = connect(&mut s, "b", 2, now);
        submit(&mut s, now);
        submit(&mut s, now);
        assert_eq!(
            (assigned(&mut a).len(), assigned(&mut b).len()),
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
        spawned += submit(&mut s, now).1.spawns.len();
    }
    // 5 tasks at 2 slots per worker: 3 workers, not 5.
    assert_eq!(spawned, 3);
    let mut fx = Effects::default();
    for _ in 0..100 {
        s.submit("f", Bytes::new(), None, now, &mut fx).expect("submit");
    }
    // The cap of 8 holds whatever the burst.
    assert_eq!(spawned + fx.spawns.len(), 8);
    assert_eq!(s.stats(now).total.expect("total").workers_starting, 8);
}

#[test]
fn a_failed_spawn_releases_its_capacity_and_retries_after_a_backoff() {
    let (mut s, now) = state(local(1));
    let (_, fx) = submit(&mut s, now);
    let id = fx.spawns[0].id.clone();
    let mut fx = Effects::default();
    s.spawn_failed(&id, "boom", now, &mut fx);
    assert!(fx.spawns.is_empty(), "respawned without a backoff");
    assert!(matches!(fx.timers.as_slice(), [(_, Timer::Function(_))]));
    let st = s.stats(now).total.expect("total");
    assert_eq!((st.workers_starting, st.spawn_failures, st.pending), (0, 1, 1));
    let mut fx = Effects::default();
    s.on_timer(
        Timer::Function(Arc::from("f")),
        now + Duration::from_secs(1),
        &mut fx,
    );
    assert_eq!(fx.spawns.len(), 1, "the pending task was stranded");
}

#[test]
fn lost_worker_returns_its_tasks_to_the_front_of_the_pool() {
    let (mut s, now) = state(external());
    let (conn, mut rx) = connect(&mut s, "a", 1, now);
    let first = submit(&mut s, now).0;
    let second = submit(&mut s, now).0;
    assert_eq!(assigned(&mut rx), vec![first]);
    s.disconnect(&WorkerId::new("a"), conn, now, &mut Effects::default());
    let (_, mut rx) = connect(&mut s, "b", 1, now);
    // The requeued task goes first, ahead of the one that was waiting.
    assert_eq!(assigned(&mut rx), vec![first]);
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
    let id = submit(&mut s, now).0;
    for worker in ["a", "b"] {
        let (conn, mut rx) = connect(&mut s, worker, 1, now);
        assert_eq!(assigned(&mut rx), vec![id]);
        s.disconnect(&WorkerId::new(worker), conn, now, &mut Effects::default());
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
fn results_for_tasks_a_worker_does_not_hold_are_ignored() {
    let (mut s, now) = state(external());
    let (_, mut rx) = connect(&mut s, "a", 1, now);
    let (_, _rx_b) = connect(&mut s, "b", 1, now);
    let id = submit(&mut s, now).0;
    assert_eq!(assigned(&mut rx), vec![id]);
    let mut fx = Effects::default();
    // From the wrong worker, and from the right worker with a stale attempt number.
    s.results(&WorkerId::new("b"), vec![result(id, 1)], now, &mut fx);
    s.results(&WorkerId::new("a"), vec![result(id, 7)], now, &mut fx);
    assert_eq!(s.get(id).expect("get").state(), TaskState::Running);
    s.results(&WorkerId::new("a"), vec![result(id, 1)], now, &mut fx);
    assert_eq!(s.get(id).expect("get").state(), TaskState::Succeeded);
    assert_eq!(s.stats(now).total.expect("total").succeeded, 1);
}

#[test]
fn a_stale_disconnect_does_not_remove_a_newer_connection() {
    let (mut s, now) = state(external());
    let (old, _rx) = connect(&mut s, "a", 1, now);
    s.disconnect(&WorkerId::new("a"), old, now, &mut Effects::default());
    let (_, _rx2) = connect(&mut s, "a", 1, now);
    s.disconnect(&WorkerId::new("a"), old, now, &mut Effects::default());
    assert_eq!(s.live_workers(), 1);
}

#[test]
fn billing_counts_each_worker_from_connect_to_disconnect() {
    let (mut s, now) = state(external());
    let (conn, _rx) = connect(&mut s, "a", 1, now);
    let later = now + Duration::from_millis(1500);
    s.disconnect(&WorkerId::new("a"), conn, later, &mut Effects::default());
    let t = s.stats(later).total.expect("total");
    assert_eq!(t.billed_gb_ms, 1500.0 * 2.0);
    assert_eq!(t.workers_started, 1);
    assert!((t.cost_usd - crate::billing::cost_usd(3000.0, 1)).abs() < 1e-15);
}
