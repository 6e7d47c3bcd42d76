//! The core control plane, end to end: real coordinator and worker binaries on loopback.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::HashMap;
use std::time::Duration;

use carpool_integration_tests::{Coordinator, FakeWorker, eventually, hello, totals};
use carpool_proto::pb::{self, coordinator_message::Kind as Down, worker_message::Kind as Up};
use carpool_proto::{Bytes, payload};
use futures::StreamExt;
use serde_json::Value;
use tonic::Code;

fn output_json(r: &pb::TaskResult) -> Value {
    let bytes = payload::into_bytes(r.output.clone());
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("task {} output is not JSON: {e}", r.task_id))
}

#[tokio::test]
async fn two_hundred_tasks_all_return_their_own_payload() {
    let coord = Coordinator::start(&["--max-workers", "2"]);
    let client = coord.client().await;
    let inputs = (0..200).map(|i| Bytes::from(format!("{{\"i\":{i}}}")));
    let mut results = client
        .map("echo", futures::stream::iter(inputs))
        .await
        .expect("map");
    let mut seen = [false; 200];
    while let Some(r) = results.next().await {
        let r = r.expect("map response");
        let result = r
            .result
            .unwrap_or_else(|| panic!("seq {} rejected: {}", r.seq, r.rejected));
        assert_eq!(result.state(), pb::TaskState::Succeeded, "{result:?}");
        let out = output_json(&result);
        assert_eq!(
            out["i"], r.seq,
            "result for seq {} carries another payload: {out}",
            r.seq
        );
        assert!(!seen[r.seq as usize], "seq {} answered twice", r.seq);
        seen[r.seq as usize] = true;
    }
    assert_eq!(seen.iter().filter(|s| **s).count(), 200);
    let t = totals(&client).await;
    assert_eq!((t.succeeded, t.failed, t.pending, t.running), (200, 0, 0, 0));
    assert!(t.workers_started >= 1 && t.workers_started <= 2, "{t:?}");
}

#[tokio::test]
async fn tasks_run_concurrently_inside_one_two_vcpu_worker() {
    let coord = Coordinator::start(&["--max-workers", "2", "--memory-mb", "2048"]);
    let client = coord.client().await;
    let inputs = (0..8).map(|_| Bytes::from_static(b"300"));
    let results: Vec<pb::TaskResult> = client
        .map("sleep", futures::stream::iter(inputs))
        .await
        .expect("map")
        .map(|r| r.expect("response").result.expect("accepted"))
        .collect()
        .await;
    assert_eq!(results.len(), 8);
    let mut by_worker: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for r in &results {
        assert_eq!(r.state(), pb::TaskState::Succeeded, "{r:?}");
        by_worker
            .entry(r.worker_id.clone())
            .or_default()
            .push((r.started_unix_ms, r.finished_unix_ms));
    }
    assert!(
        by_worker.len() <= 2,
        "more workers than --max-workers: {:?}",
        by_worker.keys()
    );
    let overlapping = by_worker
        .values()
        .filter(|spans| {
            spans
                .iter()
                .enumerate()
                .any(|(i, a)| spans.iter().skip(i + 1).any(|b| a.0 < b.1 && b.0 < a.1))
        })
        .count();
    assert!(overlapping >= 1, "no worker ran two tasks at once: {by_worker:?}");
}

#[tokio::test]
async fn worker_above_cpu_threshold_gets_no_task_until_it_reports_below() {
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "60s"]);
    let client = coord.client().await;
    let mut w = FakeWorker::connect(coord.channel().await, hello("fake-cpu", "resize", 4)).await;
    let a = client.submit("resize", "a").await.expect("submit a");
    let first = w.expect_assign().await;
    assert_eq!(first.iter().map(|t| t.task_id).collect::<Vec<_>>(), vec![a]);

    w.sample(0.95, 1).await;
    // The sample and the submit travel on different connections: wait until it is applied.
    eventually("the busy sample to be applied", || async {
        let ws = client.workers("resize").await.expect("workers");
        ws.first()?.last_sample.filter(|s| s.cpu > 0.9).map(|_| ())
    })
    .await;
    let b = client.submit("resize", "b").await.expect("submit b");
    assert!(
        w.next_within(Duration::from_millis(500)).await.is_none(),
        "a busy worker was given a task"
    );
    assert_eq!(
        client.get(b).await.expect("get b").state(),
        pb::TaskState::Pending
    );

    w.sample(0.10, 1).await;
    let second = w.expect_assign().await;
    assert_eq!(second.iter().map(|t| t.task_id).collect::<Vec<_>>(), vec![b]);
    let info = client.get(b).await.expect("get b");
    assert_eq!(
        (info.state(), info.worker_id.as_str()),
        (pb::TaskState::Running, "fake-cpu")
    );

    w.finish(&first[0], "\"done a\"").await;
    w.finish(&second[0], "\"done b\"").await;
    let t = eventually("both tasks to succeed", || async {
        let t = totals(&client).await;
        (t.succeeded == 2).then_some(t)
    })
    .await;
    assert_eq!(t.failed, 0);
}

#[tokio::test]
async fn deadline_fraction_drains_the_worker_and_stops_assignment() {
    let coord = Coordinator::start(&[
        "--spawner",
        "external",
        "--keep-alive",
        "60s",
        "--deadline-fraction",
        "0.5",
    ]);
    let client = coord.client().await;
    let mut h = hello("fake-deadline", "resize", 2);
    h.timeout_ms = 1000;
    let mut w = FakeWorker::connect(coord.channel().await, h).await;
    // Idle and past 0.5 x 1 s: the deadline timer tells it to stop.
    match w.next().await {
        Down::Shutdown(s) => assert_eq!(s.reason(), pb::ShutdownReason::Deadline),
        other => panic!("expected a deadline shutdown, got {other:?}"),
    }
    let id = client.submit("resize", "late").await.expect("submit");
    assert!(
        w.next_within(Duration::from_millis(300)).await.is_none(),
        "a draining worker got a task"
    );
    assert_eq!(client.get(id).await.expect("get").state(), pb::TaskState::Pending);
}

#[tokio::test]
async fn busy_worker_past_its_deadline_drains_then_stops_when_idle() {
    let coord = Coordinator::start(&[
        "--spawner",
        "external",
        "--keep-alive",
        "60s",
        "--deadline-fraction",
        "0.5",
    ]);
    let client = coord.client().await;
    let mut h = hello("fake-drain", "resize", 2);
    h.timeout_ms = 1000;
    let mut w = FakeWorker::connect(coord.channel().await, h).await;
    let a = client.submit("resize", "a").await.expect("submit");
    let tasks = w.expect_assign().await;
    assert_eq!(tasks[0].task_id, a);
    // Past the fraction it is DRAINING: the second task waits although a slot is free.
    let listed = eventually("the worker to be listed as draining", || async {
        let ws = client.workers("resize").await.expect("workers");
        ws.into_iter().find(|w| w.state() == pb::WorkerState::Draining)
    })
    .await;
    assert_eq!(listed.running_tasks, 1);
    let b = client.submit("resize", "b").await.expect("submit");
    assert!(
        w.next_within(Duration::from_millis(300)).await.is_none(),
        "a draining worker got a task"
    );
    w.finish(&tasks[0], "1").await;
    match w.next().await {
        Down::Shutdown(s) => assert_eq!(s.reason(), pb::ShutdownReason::Deadline),
        other => panic!("expected a deadline shutdown once idle, got {other:?}"),
    }
    assert_eq!(client.get(b).await.expect("get").state(), pb::TaskState::Pending);
}

#[tokio::test]
async fn idle_workers_get_shutdown_and_their_processes_exit() {
    let coord = Coordinator::start(&["--max-workers", "2"]);
    let client = coord.client().await;
    let id = client.submit("sleep", "400").await.expect("submit");
    let pid = eventually("the spawned worker to connect and be listed", || async {
        let ws = client.workers("").await.expect("workers");
        let w = ws.into_iter().find(|w| w.state() == pb::WorkerState::Active)?;
        w.instance.strip_prefix("pid ")?.parse::<i32>().ok()
    })
    .await;
    let r = client.run("echo", "{}").await.expect("run echo");
    assert_eq!(r.state(), pb::TaskState::Succeeded);
    let info = eventually("the sleep task to finish", || async {
        let info = client.get(id).await.expect("get");
        info.result.is_some().then_some(info)
    })
    .await;
    assert_eq!(info.state(), pb::TaskState::Succeeded);
    let t = eventually("every worker to be shut down and gone", || async {
        let t = totals(&client).await;
        (t.workers_live == 0 && t.workers_starting == 0).then_some(t)
    })
    .await;
    assert_eq!(t.succeeded, 2);
    eventually("the worker process to exit", || async {
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err();
        gone.then_some(())
    })
    .await;
    assert!(t.billed_gb_ms > 0.0 && t.cost_usd > 0.0, "{t:?}");
}

#[tokio::test]
async fn exec_runs_a_python_script_as_a_task() {
    let dir = std::env::temp_dir().join(format!("carpool-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = dir.join("add.py");
    std::fs::write(
        &script,
        "import json, sys\nargs = json.load(sys.stdin)\nif 'a' not in args:\n    sys.exit('missing a')\nprint(json.dumps({'sum': args['a'] + args['b']}))\n",
    )
    .expect("write script");
    let exec = format!("add=python3 {}", script.display());
    let coord = Coordinator::start(&["--exec", &exec]);
    let client = coord.client().await;
    let ok = client.run("add", r#"{"a": 2, "b": 3}"#).await.expect("run");
    assert_eq!(ok.state(), pb::TaskState::Succeeded, "{ok:?}");
    assert_eq!(output_json(&ok)["sum"], 5);
    let bad = client.run("add", r#"{"b": 3}"#).await.expect("run");
    assert_eq!(bad.state(), pb::TaskState::Failed);
    assert!(
        bad.error.contains("missing a"),
        "stderr not in the error: {}",
        bad.error
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn oversize_payload_is_rejected_and_changes_nothing() {
    let coord = Coordinator::start(&["--max-payload-bytes", "1024"]);
    let client = coord.client().await;
    let before = totals(&client).await;
    let err = client
        .submit("echo", vec![b'x'; 2000])
        .await
        .expect_err("oversize accepted");
    match err {
        carpool_client::Error::Status(s) => {
            assert_eq!(s.code(), Code::ResourceExhausted);
            assert!(
                s.message().contains("2000") && s.message().contains("1024"),
                "{}",
                s.message()
            );
        }
        other => panic!("expected a status, got {other}"),
    }
    let mut map = client
        .map("echo", futures::stream::iter([Bytes::from(vec![b'y'; 2000])]))
        .await
        .expect("map");
    let r = map.next().await.expect("one response").expect("response");
    assert!(r.result.is_none() && r.rejected.contains("exceeds"), "{r:?}");
    assert_eq!(
        totals(&client).await,
        before,
        "a rejected submission changed the stats"
    );
}

#[tokio::test]
async fn bad_requests_get_precise_statuses() {
    let coord = Coordinator::start(&[]);
    let client = coord.client().await;
    let code = |e: carpool_client::Error| match e {
        carpool_client::Error::Status(s) => s.code(),
        other => panic!("expected a status, got {other}"),
    };
    assert_eq!(
        code(client.get(999).await.expect_err("unknown id")),
        Code::NotFound
    );
    assert_eq!(
        code(client.cancel(999).await.expect_err("unknown id")),
        Code::NotFound
    );
    assert_eq!(
        code(client.submit("", "x").await.expect_err("empty fn")),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.submit("nope", "x").await.expect_err("unknown fn")),
        Code::InvalidArgument
    );
    let first = pb::WorkerMessage {
        kind: Some(Up::Sample(pb::ResourceSample::default())),
    };
    let refused = FakeWorker::try_connect(coord.channel().await, first)
        .await
        .err()
        .expect("accepted");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let t = totals(&client).await;
    assert_eq!((t.pending, t.workers_started), (0, 0));
}

#[tokio::test]
async fn duplicate_worker_id_is_refused() {
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "60s"]);
    let _first = FakeWorker::connect(coord.channel().await, hello("twin", "resize", 1)).await;
    // Same id from a different instance: refused (the same instance would be resuming).
    let mut twin = hello("twin", "resize", 1);
    twin.instance = "another-host".into();
    let again = pb::WorkerMessage {
        kind: Some(Up::Hello(twin)),
    };
    let refused = FakeWorker::try_connect(coord.channel().await, again)
        .await
        .err()
        .expect("accepted");
    assert_eq!(refused.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn cancel_reaches_the_worker_and_frees_its_slot() {
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "60s"]);
    let client = coord.client().await;
    let mut w = FakeWorker::connect(coord.channel().await, hello("fake-cancel", "resize", 1)).await;
    let a = client.submit("resize", "a").await.expect("submit");
    let b = client.submit("resize", "b").await.expect("submit");
    assert_eq!(w.expect_assign().await[0].task_id, a);
    assert_eq!(client.cancel(a).await.expect("cancel"), pb::TaskState::Cancelled);
    match w.next().await {
        Down::Cancel(c) => assert_eq!(c.task_ids, vec![a]),
        other => panic!("expected a cancellation, got {other:?}"),
    }
    assert_eq!(
        w.expect_assign().await[0].task_id,
        b,
        "the freed slot was not refilled"
    );
    // A pending task cancelled never reaches a worker.
    let c = client.submit("resize", "c").await.expect("submit");
    assert_eq!(client.cancel(c).await.expect("cancel"), pb::TaskState::Cancelled);
    let info = client.get(a).await.expect("get");
    assert_eq!(info.state(), pb::TaskState::Cancelled);
    let t = totals(&client).await;
    assert_eq!((t.cancelled, t.running, t.pending), (2, 1, 0));
}

#[tokio::test]
async fn watch_streams_results_of_given_tasks() {
    let coord = Coordinator::start(&[]);
    let client = coord.client().await;
    let ids = vec![
        client.submit("sleep", "100").await.expect("submit"),
        client.submit("echo", "\"hi\"").await.expect("submit"),
    ];
    let results: Vec<_> = client.watch(ids.clone()).await.expect("watch").collect().await;
    let mut got: Vec<u64> = results
        .iter()
        .map(|r| r.as_ref().expect("result").task_id)
        .collect();
    got.sort_unstable();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn reflection_and_health_are_served() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let coord = Coordinator::start(&["--spawner", "external"]);
    let mut reflection = ServerReflectionClient::new(coord.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection response")
        .expect("one response");
    let services: Vec<String> = match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    };
    for name in ["carpool.v1.Tasks", "carpool.v1.Cluster", "carpool.v1.Workers"] {
        assert!(
            services.iter().any(|s| s == name),
            "{name} missing from {services:?}"
        );
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(coord.channel().await);
    for service in ["", "carpool.v1.Tasks", "carpool.v1.Workers"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status();
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
}

#[tokio::test]
async fn sigterm_drains_workers_and_exits_cleanly() {
    let coord = Coordinator::start(&["--max-workers", "1", "--keep-alive", "60s"]);
    let client = coord.client().await;
    let r = client.run("echo", "1").await.expect("run");
    assert_eq!(r.state(), pb::TaskState::Succeeded);
    let pid = eventually("the kept-alive worker to be listed", || async {
        let ws = client.workers("").await.expect("workers");
        ws.first()?.instance.strip_prefix("pid ")?.parse::<i32>().ok()
    })
    .await;
    let status = coord.terminate();
    assert!(status.success(), "coordinator exit: {status}");
    eventually("the worker process to exit with its coordinator", || async {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .is_err()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_coordinator_on_one_thread_runs_tasks_and_zero_threads_is_refused() {
    let coord = Coordinator::start(&["--max-workers", "2", "--threads", "1"]);
    let client = coord.client().await;
    let r = client.run("echo", "\"one\"").await.expect("run");
    assert_eq!(r.state(), pb::TaskState::Succeeded, "{r:?}");
    // Refused by the flag parser, before anything is bound or started.
    let out = std::process::Command::new(carpool_integration_tests::bin("carpool-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--threads", "0"])
        .output()
        .expect("carpool-coordinator runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--threads"), "{stderr}");
}
