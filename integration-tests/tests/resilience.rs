//! Nothing lost: workers killed, streams cut, timeouts, cancellation and bad input, against
//! the real binaries.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::HashSet;
use std::time::{Duration, Instant};

use carpool_integration_tests::{Coordinator, FakeWorker, Proc, TcpProxy, eventually, hello, totals};
use carpool_proto::pb::{self, worker_message::Kind as Up};
use carpool_proto::{Bytes, payload};
use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::Code;

fn pid_of(w: &pb::WorkerInfo) -> Option<i32> {
    w.instance.strip_prefix("pid ")?.parse().ok()
}

#[tokio::test]
async fn five_hundred_tasks_survive_workers_killed_at_random() {
    // At most 4 tasks a worker: the batch lasts a couple of seconds, long enough for the
    // chaos loop's kills (a worker climbing to 256 ran it in a quarter of one).
    let coord = Coordinator::start(&[
        "--max-workers",
        "4",
        "--max-slots",
        "4",
        "--max-attempts",
        "20",
        "--sample-interval",
        "200ms",
    ]);
    let client = coord.client().await;
    let inputs = (0..500u64).map(|i| Bytes::from(format!("{}", 20 + (i * 37) % 100)));
    let mut results = client
        .map("sleep", futures::stream::iter(inputs))
        .await
        .expect("map");

    // The chaos loop: every 250 ms, SIGKILL one running worker, until the batch is done.
    let chaos_client = client.clone();
    let chaos = tokio::spawn(async move {
        let mut kills = 0u32;
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Ok(workers) = chaos_client.workers("sleep").await else {
                break;
            };
            let busy: Vec<i32> = workers
                .iter()
                .filter(|w| w.running_tasks > 0)
                .filter_map(pid_of)
                .collect();
            if busy.is_empty() {
                continue;
            }
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let victim = busy[(seed >> 33) as usize % busy.len()];
            if kill(Pid::from_raw(victim), Signal::SIGKILL).is_ok() {
                kills += 1;
            }
        }
        kills
    });

    let mut seen = HashSet::new();
    let mut succeeded = 0;
    while let Some(r) = results.next().await {
        let r = r.expect("map response");
        assert!(seen.insert(r.seq), "seq {} answered twice", r.seq);
        let result = r.result.expect("accepted");
        assert_eq!(result.state(), pb::TaskState::Succeeded, "{result:?}");
        succeeded += 1;
    }
    chaos.abort();
    let kills = chaos.await.unwrap_or(0);
    assert_eq!((succeeded, seen.len()), (500, 500));
    let t = totals(&client).await;
    assert_eq!((t.succeeded, t.failed), (500, 0));
    assert!(t.retried > 0, "no task was caught by a kill; kills: {kills}");
    eprintln!(
        "chaos: {} retried attempts, {} workers started",
        t.retried, t.workers_started
    );
}

#[tokio::test]
async fn a_task_out_of_attempts_fails_and_says_why() {
    let coord = Coordinator::start(&["--max-workers", "1", "--max-attempts", "2"]);
    let client = coord.client().await;
    let id = client.submit("sleep", "60000").await.expect("submit");
    for attempt in 1..=2 {
        let pid = eventually(&format!("attempt {attempt} to run"), || async {
            let info = client.get(id).await.ok()?;
            if info.attempts != attempt || info.state() != pb::TaskState::Running {
                return None;
            }
            let workers = client.workers("sleep").await.ok()?;
            workers
                .iter()
                .find(|w| w.worker_id == info.worker_id)
                .and_then(pid_of)
        })
        .await;
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    }
    let result = eventually("the task to fail", || async { client.get(id).await.ok()?.result }).await;
    assert_eq!(result.state(), pb::TaskState::Failed);
    assert!(
        result.error.contains("2 attempts") && result.error.contains("process exited"),
        "{}",
        result.error
    );
}

/// Waits until the task is assigned and its worker has reported it running (a worker
/// samples right after it starts a task): only then is the task really on the worker.
async fn running_on(client: &carpool_client::Client, id: u64) -> pb::TaskInfo {
    eventually("the task to run on its worker", || async {
        let info = client.get(id).await.ok()?;
        if info.state() != pb::TaskState::Running {
            return None;
        }
        let workers = client.workers("").await.ok()?;
        let w = workers.iter().find(|w| w.worker_id == info.worker_id)?;
        (w.last_sample?.running_tasks >= 1).then_some(info)
    })
    .await
}

/// A coordinator (external spawner, `extra` flags), a real worker dialling it through a
/// cuttable proxy, and a 1.5 s task running on that worker.
async fn worker_behind_a_proxy(
    extra: &[&str],
    worker_id: &str,
) -> (Coordinator, TcpProxy, Proc, carpool_client::Client, u64) {
    let mut args = vec!["--spawner", "external", "--keep-alive", "60s"];
    args.extend_from_slice(extra);
    let coord = Coordinator::start(&args);
    let proxy = TcpProxy::start(&coord.url).await;
    let worker = Proc::worker(&[
        "--coordinator",
        &proxy.url(),
        "--function",
        "sleep",
        "--id",
        worker_id,
    ]);
    let client = coord.client().await;
    let id = client.submit("sleep", "1500").await.expect("submit");
    running_on(&client, id).await;
    (coord, proxy, worker, client, id)
}

#[tokio::test]
async fn a_stream_cut_within_grace_does_not_rerun_tasks() {
    let (coord, proxy, _worker, client, id) =
        worker_behind_a_proxy(&["--reconnect-grace", "20s"], "cut-w").await;
    proxy.cut();
    let result = eventually("the task to finish", || async {
        client.get(id).await.ok()?.result
    })
    .await;
    assert_eq!(result.state(), pb::TaskState::Succeeded, "{result:?}");
    assert_eq!(
        result.attempts, 1,
        "the task was re-run although its worker came back in time"
    );
    let t = totals(&client).await;
    assert_eq!((t.retried, t.workers_live), (0, 1));
    let log = coord.log();
    assert!(
        log.contains("stream broke") && !log.contains("worker gone"),
        "{log}"
    );
}

#[tokio::test]
async fn past_the_grace_the_task_goes_back_and_its_returning_worker_claims_it() {
    let extra = ["--reconnect-grace", "300ms", "--sample-interval", "100ms"];
    let (_coord, proxy, _worker, client, id) = worker_behind_a_proxy(&extra, "late-w").await;
    proxy.refuse(true);
    proxy.cut();
    eventually("the task to go back to the pool after the grace", || async {
        let t = totals(&client).await;
        (t.retried == 1 && t.workers_live == 0).then_some(())
    })
    .await;
    proxy.refuse(false);
    let result = eventually("the task to finish", || async {
        client.get(id).await.ok()?.result
    })
    .await;
    // Nobody else took it while it was back in the pool, and the worker came back still
    // running it: the coordinator adopts that run instead of starting a second one.
    assert_eq!(result.state(), pb::TaskState::Succeeded, "{result:?}");
    assert_eq!(
        result.attempts, 1,
        "the task ran a second time although its first run was claimed"
    );
    let t = totals(&client).await;
    assert_eq!((t.succeeded, t.retried), (1, 1));
}

#[tokio::test]
async fn a_timed_out_task_is_cancelled_retried_and_failed_with_its_cause() {
    let coord = Coordinator::start(&["--max-attempts", "2"]);
    let client = coord.client().await;
    let request = pb::SubmitRequest {
        function: "sleep".into(),
        input: Some(payload::text("5000")),
        timeout_ms: 300,
        ..Default::default()
    };
    let id = client.submit_request(request).await.expect("submit");
    let result = eventually("the task to time out twice", || async {
        client.get(id).await.ok()?.result
    })
    .await;
    assert_eq!(result.state(), pb::TaskState::Failed);
    assert!(result.error.contains("timeout of 300 ms"), "{}", result.error);
    assert_eq!(result.attempts, 2);
    assert_eq!(totals(&client).await.timed_out, 2);
}

#[tokio::test]
async fn cancelling_an_exec_task_kills_its_process() {
    let dir = std::env::temp_dir().join(format!("carpool-cancel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pidfile = dir.join("pid");
    let exec = format!("hang=sh -c 'echo $$ > {}; exec sleep 60'", pidfile.display());
    let coord = Coordinator::start(&["--exec", &exec]);
    let client = coord.client().await;
    let id = client.submit("hang", "").await.expect("submit");
    let pid: i32 = eventually("the command to start", || async {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    })
    .await;
    assert_eq!(client.cancel(id).await.expect("cancel"), pb::TaskState::Cancelled);
    eventually("the command to be killed", || async {
        // Gone, or a zombie waiting for its parent: either way it no longer runs.
        let gone = kill(Pid::from_raw(pid), None).is_err()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
        gone.then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_full_pool_is_resource_exhausted_and_nothing_is_dropped() {
    let coord = Coordinator::start(&["--spawner", "external", "--max-pending", "3"]);
    let client = coord.client().await;
    let ids: Vec<u64> = futures::future::join_all((0..3).map(|_| client.submit("resize", "x")))
        .await
        .into_iter()
        .map(|r| r.expect("submit"))
        .collect();
    let before = totals(&client).await;
    match client
        .submit("resize", "x")
        .await
        .expect_err("accepted past --max-pending")
    {
        carpool_client::Error::Status(s) => assert_eq!(s.code(), Code::ResourceExhausted),
        other => panic!("{other}"),
    }
    assert_eq!(totals(&client).await, before);
    // The accepted ones are all still there and run once a worker comes.
    let mut w = FakeWorker::connect(coord.channel().await, hello("late", "resize", 3)).await;
    let assigned: HashSet<u64> = w.expect_assign().await.iter().map(|t| t.task_id).collect();
    assert_eq!(assigned, ids.into_iter().collect());
}

#[tokio::test]
async fn impossible_samples_and_foreign_results_end_the_worker_stream() {
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "60s"]);
    let client = coord.client().await;
    let mut bad = FakeWorker::connect(coord.channel().await, hello("bad-sample", "resize", 1)).await;
    bad.send(Up::Sample(pb::ResourceSample {
        cpu: -1.0,
        memory_used_bytes: 1,
        memory_limit_bytes: 1,
        running_tasks: 0,
        ..Default::default()
    }))
    .await;
    assert_eq!(bad.next_status().await.code(), Code::InvalidArgument);

    let mut holder = FakeWorker::connect(coord.channel().await, hello("holder", "resize", 1)).await;
    let id = client.submit("resize", "x").await.expect("submit");
    assert_eq!(holder.expect_assign().await[0].task_id, id);
    let mut thief = FakeWorker::connect(coord.channel().await, hello("thief", "resize", 1)).await;
    let stolen = pb::TaskAssignment {
        task_id: id,
        attempt: 1,
        ..Default::default()
    };
    thief.finish(&stolen, "\"mine\"").await;
    assert_eq!(thief.next_status().await.code(), Code::FailedPrecondition);
    // The task is untouched and still the holder's.
    let info = client.get(id).await.expect("get");
    assert_eq!(
        (info.state(), info.worker_id.as_str()),
        (pb::TaskState::Running, "holder")
    );
    assert_eq!(totals(&client).await.succeeded, 0);
}

#[tokio::test]
async fn a_client_that_leaves_mid_map_still_gets_its_results_by_id() {
    let coord = Coordinator::start(&["--max-workers", "2"]);
    let client = coord.client().await;
    let inputs = (0..20).map(|_| Bytes::from_static(b"200"));
    let mut results = client
        .map("sleep", futures::stream::iter(inputs))
        .await
        .expect("map");
    let first = results
        .next()
        .await
        .expect("one result")
        .expect("ok")
        .result
        .expect("accepted");
    drop(results); // the client goes away with 19 tasks in flight
    let deadline = Instant::now() + Duration::from_secs(30);
    let t = loop {
        let t = totals(&client).await;
        if t.succeeded == 20 || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(t.succeeded, 20, "tasks of a departed Map client were dropped");
    // Ids are sequential per coordinator: every task of the call is retrievable.
    for id in first.task_id.saturating_sub(19)..first.task_id + 20 {
        if let Ok(info) = client.get(id).await {
            assert_eq!(info.state(), pb::TaskState::Succeeded, "task {id}");
        }
    }
}
