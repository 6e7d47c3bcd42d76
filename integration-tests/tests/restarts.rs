//! Restarts and reconnects against the real binaries: a coordinator restarted on its state
//! directory keeps the tasks reconnecting workers still run, attempts keep counting, a
//! worker written off is told so, and a stream that sends what does not decode is a
//! violation, not a broken connection.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use carpool_integration_tests::{
    Coordinator, FakeWorker, Proc, RunLog, TcpProxy, bin, eventually, hello, raw, totals,
};
use carpool_proto::pb::{self, worker_message::Kind as Up};
use prost::Message;
use tonic::Code;

/// A real worker of `function` with `id`, dialling `url`, its log kept.
fn worker(url: &str, function: &str, id: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("carpool-worker"));
    cmd.args(["--coordinator", url, "--function", function, "--id", id])
        .args(extra)
        .env("RUST_LOG", "info");
    Proc::start(id, cmd)
}

fn state_dir(name: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("carpool-{name}-"))
        .tempdir()
        .expect("temp dir");
    let path = dir.path().to_string_lossy().into_owned();
    (dir, path)
}

/// A coordinator's flags here: workers started by hand, kept a minute when idle, a journal
/// in `state`, `grace` for a worker to come back after a restart; then `extra`.
fn journaled<'a>(state: &'a str, grace: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--spawner",
        "external",
        "--state-dir",
        state,
        "--keep-alive",
        "60s",
        "--reconnect-grace",
        grace,
    ];
    args.extend_from_slice(extra);
    args
}

async fn running(client: &carpool_client::Client, id: u64) -> pb::TaskInfo {
    eventually("the task to run", || async {
        let info = client.get(id).await.ok()?;
        (info.state() == pb::TaskState::Running).then_some(info)
    })
    .await
}

async fn finished(client: &carpool_client::Client, id: u64) -> pb::TaskInfo {
    eventually("the task to finish", || async {
        let info = client.get(id).await.ok()?;
        info.result.is_some().then_some(info)
    })
    .await
}

#[tokio::test]
async fn a_restarted_coordinator_keeps_what_a_reconnecting_worker_runs_and_attempts_keep_counting() {
    let (_dir, state) = state_dir("reconcile");
    let args = journaled(&state, "300ms", &["--sample-interval", "100ms"]);
    let first = Coordinator::start(&args);
    let listen = first.addr().to_owned();
    let url = first.url.clone();
    let client = first.client().await;
    // Attempt 1 runs on a, which is killed; after the grace attempt 2 goes to b.
    let mut a = worker(&url, "slow", "a", &["--exec", "sleep 3; cat"]);
    let task = client.submit("slow", "kept").await.expect("submit");
    assert_eq!(running(&client, task).await.worker_id, "a");
    // SIGKILL, at once: a stop that waits (a SIGINT the environment ignores, then the
    // guard's 5 s) would let attempt 1 finish on a.
    a.kill9();
    let b = worker(&url, "slow", "b", &["--exec", "sleep 3; cat"]);
    let info = eventually("attempt 2 to run on b", || async {
        let info = client.get(task).await.ok()?;
        (info.state() == pb::TaskState::Running && info.worker_id == "b").then_some(info)
    })
    .await;
    assert_eq!(info.attempts, 2);
    // The coordinator dies while b runs attempt 2, and comes back on the same address.
    first.kill9();
    let second = Coordinator::start_at(&listen, &args, &[]);
    let client = second.client().await;
    let done = finished(&client, task).await;
    let result = done.result.clone().expect("result");
    assert_eq!(result.state(), pb::TaskState::Succeeded, "{result:?}");
    assert_eq!(
        carpool_proto::payload::into_bytes(result.output),
        "kept".as_bytes()
    );
    assert_eq!(
        done.attempts, 2,
        "attempts restarted at 1, or b's run was thrown out and the task ran again"
    );
    let log = second.log();
    assert!(
        !log.contains("does not hold") && !log.contains("protocol"),
        "the reconnecting worker was refused: {log}"
    );
    assert!(b.log().contains("resumed=true"), "{}", b.log());
    assert_eq!(totals(&client).await.succeeded, 1);
}

#[tokio::test]
async fn an_attempt_a_coordinator_restart_cost_is_not_counted_against_max_attempts() {
    let (_dir, state) = state_dir("forgive");
    let args = journaled(&state, "300ms", &["--max-attempts", "1"]);
    let first = Coordinator::start(&args);
    let listen = first.addr().to_owned();
    let url = first.url.clone();
    let client = first.client().await;
    let mut a = worker(&url, "slow", "a", &["--exec", "sleep 3; cat"]);
    let task = client.submit("slow", "again").await.expect("submit");
    assert_eq!(running(&client, task).await.worker_id, "a");
    // The coordinator dies while its only attempt runs, and the worker with it.
    first.kill9();
    a.kill9();
    let second = Coordinator::start_at(&listen, &args, &[]);
    let client = second.client().await;
    let _b = worker(&second.url, "slow", "b", &["--exec", "sleep 1; cat"]);
    let done = finished(&client, task).await;
    let result = done.result.clone().expect("result");
    assert_eq!(
        result.state(),
        pb::TaskState::Succeeded,
        "the attempt the restart cost was counted: {result:?}"
    );
    assert_eq!(done.worker_id, "b");
}

#[tokio::test]
async fn a_worker_written_off_for_silence_hears_it_and_its_task_goes_back() {
    let coord = Coordinator::start(&[
        "--spawner",
        "external",
        "--keep-alive",
        "60s",
        "--sample-interval",
        "100ms",
        "--liveness-intervals",
        "3",
    ]);
    let client = coord.client().await;
    let mut silent = FakeWorker::connect(coord.channel().await, hello("mute", "resize", 1)).await;
    let task = client.submit("resize", "x").await.expect("submit");
    assert_eq!(silent.expect_assign().await[0].task_id, task);
    // It never samples: past its lease it is written off, and its stream ends saying so.
    let status = silent.next_status().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("silent"), "{}", status.message());
    let info = client.get(task).await.expect("get");
    assert_eq!(info.state(), pb::TaskState::Pending, "{info:?}");
    // A live worker that hears this reconnects and runs it.
    let mut back = FakeWorker::connect(coord.channel().await, hello("mute", "resize", 1)).await;
    let again = back.expect_assign().await;
    back.finish(&again[0], "done").await;
    let r = finished(&client, task).await;
    assert_eq!(r.result.expect("result").state(), pb::TaskState::Succeeded);
}

fn encoded(kind: Up) -> bytes::Bytes {
    pb::WorkerMessage { kind: Some(kind) }.encode_to_vec().into()
}

#[tokio::test]
async fn bytes_that_do_not_decode_or_are_too_large_after_hello_are_violations() {
    let coord = Coordinator::start(&[
        "--spawner",
        "external",
        "--reconnect-grace",
        "10m",
        "--keep-alive",
        "60s",
    ]);
    let client = coord.client().await;
    for (name, bad, code) in [
        (
            "garbage",
            bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Code::InvalidArgument,
        ),
        (
            "huge",
            bytes::Bytes::from(vec![0u8; 20 << 20]),
            Code::ResourceExhausted,
        ),
    ] {
        let task = client.submit("resize", name).await.expect("submit");
        let first = encoded(Up::Hello(hello(name, "resize", 1)));
        let stream = raw::streaming(
            coord.channel().await,
            "/carpool.v1.Workers/Connect",
            vec![first, bad],
        )
        .await
        .expect("connect");
        let (got, status) = raw::drain(stream).await;
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(got.len() >= 2, "{name}: a welcome and the assignment came first");
        // A violation ends the session at once (no reconnect grace, 10 minutes here, is
        // kept for it): what it held is back in the pool.
        let info = eventually("the violator's task to be back in the pool", || async {
            let info = client.get(task).await.ok()?;
            (info.state() == pb::TaskState::Pending).then_some(info)
        })
        .await;
        assert_eq!(info.attempts, 1, "{info:?}");
        client.cancel(task).await.expect("cancel");
    }
    let t = totals(&client).await;
    assert_eq!((t.workers_live, t.workers_reconnecting), (0, 0), "{t:?}");
}

#[tokio::test]
async fn a_worker_too_busy_for_the_work_is_kept_when_nothing_would_replace_it() {
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "60s"]);
    let client = coord.client().await;
    let mut w = FakeWorker::connect(coord.channel().await, hello("hot", "resize", 1)).await;
    // Someone else's load (nothing of ours runs): too busy for new work.
    w.sample(0.99, 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let task = client.submit("resize", "x").await.expect("submit");
    match w.next_within(Duration::from_secs(1)).await {
        None => {}
        Some(other) => panic!("the only worker got {other:?} while too busy"),
    }
    // Its load passes: it takes the task.
    w.sample(0.1, 0).await;
    let got = w.expect_assign().await;
    assert_eq!(got[0].task_id, task);
}

#[tokio::test]
async fn workers_within_their_reconnect_grace_are_not_counted_live() {
    let coord = Coordinator::start(&[
        "--spawner",
        "external",
        "--reconnect-grace",
        "10m",
        "--keep-alive",
        "60s",
    ]);
    let client = coord.client().await;
    let proxy = TcpProxy::start(&coord.url).await;
    let channel = tonic::transport::Channel::from_shared(proxy.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let _w = FakeWorker::connect(channel, hello("away", "resize", 1)).await;
    let _here = FakeWorker::connect(coord.channel().await, hello("here", "resize", 1)).await;
    proxy.refuse(true);
    proxy.cut();
    let t = eventually("the cut worker to be reconnecting", || async {
        let t = totals(&client).await;
        (t.workers_reconnecting == 1).then_some(t)
    })
    .await;
    assert_eq!(t.workers_live, 1, "{t:?}");
}

#[tokio::test]
async fn many_restarts_under_load_lose_nothing_and_run_nothing_twice() {
    let (_dir, state) = state_dir("restarts");
    let args = journaled(&state, "5s", &[]);
    let mut coord = Coordinator::start(&args);
    let listen = coord.addr().to_owned();
    let url = coord.url.clone();
    let runs = RunLog::default();
    let exec = runs.exec();
    let workers: Vec<Proc> = (0..3)
        .map(|i| {
            worker(
                &url,
                "job",
                &format!("w{i}"),
                &["--exec", &exec, "--slots", "4", "--reconnect-for", "120s"],
            )
        })
        .collect();
    let mut acked: HashMap<u64, String> = HashMap::new();
    let mut next = 0u32;
    for round in 0..4 {
        let client = coord.client().await;
        // Submit a wave; some of it runs, some waits, when the coordinator dies.
        for _ in 0..40 {
            let p = format!("t{next}");
            next += 1;
            let req = pb::SubmitRequest {
                function: "job".into(),
                input: Some(carpool_proto::payload::text(format!("{p}\n"))),
                ..Default::default()
            };
            acked.insert(client.submit_request(req).await.expect("acknowledged"), p);
        }
        eventually("some of the wave to be running", || async {
            (totals(&client).await.running >= 4).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200 + 150 * round)).await;
        coord.kill9();
        coord = Coordinator::start_at(&listen, &args, &[]);
    }
    let client = coord.client().await;
    let done = eventually("every acknowledged task to finish", || async {
        let t = totals(&client).await;
        (t.pending == 0 && t.running == 0 && t.succeeded + t.failed == acked.len() as u64).then_some(t)
    })
    .await;
    assert_eq!(done.failed, 0, "{done:?}");
    for (id, p) in &acked {
        let info = client.get(*id).await.expect("known after the restarts");
        let r = info.result.expect("result");
        assert_eq!(r.state(), pb::TaskState::Succeeded, "{p}: {r:?}");
        let out = carpool_proto::payload::into_bytes(r.output);
        assert_eq!(String::from_utf8_lossy(&out).trim(), p.as_str());
    }
    runs.assert_each_ran_once(acked.len());
    for w in &workers {
        let log = w.log();
        assert!(
            !log.contains("FailedPrecondition") && !log.contains("does not hold"),
            "a worker session was refused as a violation: {log}"
        );
    }
}

#[tokio::test]
async fn a_result_a_paused_then_dead_coordinator_never_read_is_repeated_however_late_the_reconnect() {
    let (_dir, state) = state_dir("resend");
    let args = journaled(&state, "30s", &[]);
    let first = Coordinator::start(&args);
    let listen = first.addr().to_owned();
    let url = first.url.clone();
    let client = first.client().await;
    let runs = RunLog::default();
    let exec = format!("sleep 1; {}", runs.exec());
    let _w = worker(&url, "job", "w", &["--exec", &exec, "--reconnect-for", "60s"]);
    let task = client.submit("job", "once\n").await.expect("submit");
    running(&client, task).await;
    // Paused while the task runs: its result reaches the socket and is never read.
    first.signal(nix::sys::signal::Signal::SIGSTOP);
    eventually("the task to have run", || async {
        runs.ran().contains("once").then_some(())
    })
    .await;
    // Paused for longer than the worker remembers a result the coordinator has been heard
    // from since; then gone, and back only after the worker has retried for a while. What
    // it sent to the paused coordinator must still be repeated.
    tokio::time::sleep(carpool_worker::session::RESEND_WINDOW + Duration::from_secs(2)).await;
    first.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = Coordinator::start_at(&listen, &args, &[]);
    let client = second.client().await;
    let info = finished(&client, task).await;
    assert_eq!(info.attempts, 1, "{info:?}");
    let result = info.result.expect("result");
    assert_eq!(result.state(), pb::TaskState::Succeeded, "{result:?}");
    runs.assert_each_ran_once(1);
}

#[tokio::test]
async fn a_deadline_still_ahead_is_restored_with_its_task() {
    let (_dir, state) = state_dir("deadline");
    let args = journaled(&state, "5s", &[]);
    let first = Coordinator::start(&args);
    let listen = first.addr().to_owned();
    let client = first.client().await;
    let submit = |deadline_ms| pb::SubmitRequest {
        function: "job".into(),
        input: Some(carpool_proto::payload::text("x")),
        deadline_ms,
        ..Default::default()
    };
    // No worker: both wait. One has a deadline a minute ahead.
    client.submit_request(submit(60_000)).await.expect("submit");
    client.submit_request(submit(0)).await.expect("submit");
    first.kill9();
    let second = Coordinator::start_at(&listen, &args, &[("RUST_LOG", "info")]);
    let _client = second.client().await;
    eventually("the restore to be logged", || async {
        second.log().contains("restored from the journal").then_some(())
    })
    .await;
    let log = second.log();
    assert!(log.contains("pending=2") && log.contains("deadlines=1"), "{log}");
}
