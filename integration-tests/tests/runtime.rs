//! Existing Lambda handlers as task code, unchanged, under AWS's own runtime clients:
//! `awslambdaric` (PyPI) and `aws-lambda-ric` (npm), run by the real `carpool-worker`
//! against the Runtime API it hosts. The handlers are `integration-tests/handlers/`.
//!
//! Each test's coordinator and workers are stopped by their handles; a worker's runtime
//! processes go with it (checked).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use carpool_integration_tests::{Client, Coordinator, Proc, eventually, installed, tool};
use carpool_proto::pb::{TaskResult, TaskState};
use carpool_proto::{Bytes, payload};
use futures::StreamExt;
use serde_json::Value;

fn handlers() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("handlers")
}

/// `python3 -m awslambdaric MODULE.handler`, in the handlers' directory.
fn python_runtime(module: &str) -> String {
    let python = tool("CARPOOL_PYTHON", "the test venv's Python, with awslambdaric");
    format!(
        "cd '{}' && exec '{}' -m awslambdaric {module}.handler",
        handlers().display(),
        python.display()
    )
}

/// `node aws-lambda-ric index.handler`, in the handlers' directory.
fn node_runtime() -> String {
    let node = installed("node", "nodejs");
    let ric = tool("CARPOOL_NODE_RIC", "aws-lambda-ric's entry point (npm)");
    format!(
        "cd '{}' && exec '{}' '{}' index.handler",
        handlers().display(),
        node.display(),
        ric.display()
    )
}

fn output(r: &TaskResult) -> Value {
    assert_eq!(r.state(), TaskState::Succeeded, "{r:?}");
    let bytes = payload::into_bytes(r.output.clone());
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("output is not JSON ({e}): {r:?}"))
}

async fn run(client: &Client, function: &str, event: Value, timeout: Option<Duration>) -> TaskResult {
    let request = Client::request(function, event.to_string(), timeout);
    client.run_request(request).await.expect("run")
}

/// Runs `n` events `{"n": i}` through Map and checks every output: `n` and its square
/// come back, the request id names the task and attempt, and the module's invocation
/// counter counts each process's invocations exactly once (module state across them).
async fn thousand(client: &Client, function: &str, n: u64) {
    let inputs = futures::stream::iter((0..n).map(|i| Bytes::from(format!("{{\"n\": {i}}}"))));
    let mut results = client.map(function, inputs).await.expect("map");
    let mut seen = BTreeSet::new();
    let mut per_process: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
    while let Some(r) = results.next().await {
        let r = r.expect("map response");
        let result = r
            .result
            .unwrap_or_else(|| panic!("seq {} rejected: {}", r.seq, r.rejected));
        let out = output(&result);
        assert_eq!(out["n"], r.seq, "{out}");
        assert_eq!(out["square"], r.seq * r.seq, "{out}");
        assert_eq!(out["function"], function, "{out}");
        assert_eq!(
            out["request_id"],
            format!("carpool-{}-{}", result.task_id, result.attempts),
            "{out}"
        );
        assert!(seen.insert(r.seq), "seq {} twice", r.seq);
        per_process
            .entry((result.worker_id.clone(), out["pid"].as_u64().unwrap()))
            .or_default()
            .push(out["invocation"].as_u64().unwrap());
    }
    assert_eq!(seen.len() as u64, n);
    for (process, mut counts) in per_process.clone() {
        counts.sort_unstable();
        let expected: Vec<u64> = (1..=counts.len() as u64).collect();
        assert_eq!(
            counts, expected,
            "process {process:?}: its module state did not count each invocation once"
        );
    }
    // Processes are reused: far fewer than tasks.
    assert!(
        per_process.len() < 100,
        "{} runtime processes for {n} tasks",
        per_process.len()
    );
}

/// The handler's remaining time is the task's own timeout.
async fn remaining_time_is_the_tasks_timeout(client: &Client, function: &str) {
    let out = output(
        &run(
            client,
            function,
            serde_json::json!({"n": 3}),
            Some(Duration::from_secs(10)),
        )
        .await,
    );
    let left = out["remaining_ms"].as_u64().unwrap();
    assert!(
        left > 5_000 && left <= 10_000,
        "remaining {left} ms of a 10 s timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_handler_under_awslambdaric_runs_1000_tasks_unchanged() {
    let coord = Coordinator::start(&["--runtime", &format!("resize={}", python_runtime("app"))]);
    let client = coord.client().await;
    thousand(&client, "resize", 1000).await;
    remaining_time_is_the_tasks_timeout(&client, "resize").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_handler_under_aws_lambda_ric_runs_1000_tasks_unchanged() {
    let coord = Coordinator::start(&["--runtime", &format!("thumbs={}", node_runtime())]);
    let client = coord.client().await;
    thousand(&client, "thumbs", 1000).await;
    remaining_time_is_the_tasks_timeout(&client, "thumbs").await;
    let raised = run(
        &client,
        "thumbs",
        serde_json::json!({"n": 1, "action": "raise"}),
        None,
    )
    .await;
    assert_eq!(
        (raised.state(), raised.error.as_str()),
        (TaskState::Failed, "TypeError: cannot handle n=1")
    );
    let exited = run(
        &client,
        "thumbs",
        serde_json::json!({"n": 2, "action": "exit"}),
        None,
    )
    .await;
    assert!(
        exited.error.contains("exited mid-task (exit status: 3)")
            && exited.error.contains("giving up on n=2"),
        "{exited:?}"
    );
    assert_eq!(
        output(&run(&client, "thumbs", serde_json::json!({"n": 4}), None).await)["n"],
        4
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_raises_exits_or_hangs_fails_only_its_own_task() {
    // Ordinary tasks and failing ones on workers of their own (the invocation counts of
    // the ordinary ones' copies are checked).
    let coord = Coordinator::start(&[
        "--runtime",
        &format!("resize={}", python_runtime("app")),
        "--runtime",
        &format!("flaky={}", python_runtime("app")),
        "--max-attempts",
        "2",
    ]);
    let client = coord.client().await;
    // Ordinary tasks keep going alongside the failures.
    let ordinary = {
        let client = client.clone();
        tokio::spawn(async move { thousand(&client, "resize", 300).await })
    };
    let raised = run(
        &client,
        "flaky",
        serde_json::json!({"n": 1, "action": "raise"}),
        None,
    )
    .await;
    assert_eq!(
        (raised.state(), raised.error.as_str(), raised.attempts),
        (TaskState::Failed, "ValueError: cannot handle n=1", 1)
    );
    let exited = run(
        &client,
        "flaky",
        serde_json::json!({"n": 2, "action": "exit"}),
        None,
    )
    .await;
    assert_eq!(exited.state(), TaskState::Failed);
    assert!(
        exited.error.contains("exited mid-task (exit status: 3)")
            && exited.error.contains("giving up on n=2"),
        "the cause is missing: {exited:?}"
    );
    let hung = run(
        &client,
        "flaky",
        serde_json::json!({"n": 3, "action": "sleep", "seconds": 60}),
        Some(Duration::from_secs(1)),
    )
    .await;
    assert_eq!((hung.state(), hung.attempts), (TaskState::Failed, 2), "{hung:?}");
    assert!(hung.error.contains("past its timeout of 1000 ms"), "{hung:?}");
    ordinary.await.expect("the ordinary tasks");
    // The copies that died were replaced: the function still serves.
    assert_eq!(
        output(&run(&client, "resize", serde_json::json!({"n": 5}), None).await)["n"],
        5
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_init_error_ends_the_worker_with_the_runtimes_message() {
    let coord = Coordinator::start(&["--spawner", "external"]);
    let mut worker = Proc::worker(&[
        "--coordinator",
        &coord.url,
        "--function",
        "model",
        "--runtime",
        &python_runtime("broken"),
    ]);
    let status = worker.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", worker.log());
    assert!(
        worker
            .log()
            .contains("the Lambda runtime failed to initialize: RuntimeError: cannot load the model"),
        "{}",
        worker.log()
    );
    // It never dialed: no session was opened for a runtime that cannot serve.
    assert!(
        coord
            .client()
            .await
            .workers("model")
            .await
            .expect("workers")
            .is_empty()
    );
}

/// The runtime processes a worker runs: its children, started by any of its threads
/// (each copy is `exec`ed by `sh`).
fn copies(worker: u32) -> Vec<u32> {
    let threads = std::fs::read_dir(format!("/proc/{worker}/task"))
        .into_iter()
        .flatten()
        .flatten();
    threads
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_copies_follow_the_work_up_to_the_workers_limit_and_stop_with_it() {
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "1h"]);
    let client = coord.client().await;
    let runtime = python_runtime("app");
    // Pinned: one copy while there is no work; as many as slots once work needs them.
    let mut pinned = Proc::worker(&[
        "--coordinator",
        &coord.url,
        "--function",
        "pinned",
        "--slots",
        "3",
        "--runtime",
        &runtime,
    ]);
    eventually("one copy before any work", || async {
        let connected = !client.workers("pinned").await.ok()?.is_empty();
        (connected && copies(pinned.pid()).len() == 1).then_some(())
    })
    .await;
    let event = Bytes::from(r#"{"n": 1, "action": "sleep", "seconds": 0.3}"#);
    let inputs = futures::stream::iter((0..12).map(move |_| event.clone()));
    let mut results = client.map("pinned", inputs).await.expect("map");
    while let Some(r) = results.next().await {
        output(&r.expect("map response").result.expect("a result"));
    }
    eventually("three warm copies for --slots 3", || async {
        (copies(pinned.pid()).len() == 3).then_some(())
    })
    .await;
    // Adaptive: waiting tasks raise the limit past the vCPUs, and copies follow it up.
    let mut adaptive = Proc::worker(&[
        "--coordinator",
        &coord.url,
        "--function",
        "waits",
        "--vcpus",
        "1",
        "--runtime",
        &runtime,
    ]);
    eventually("the adaptive worker connects", || async {
        (!client.workers("waits").await.ok()?.is_empty()).then_some(())
    })
    .await;
    let pid = adaptive.pid();
    let watcher = tokio::spawn(async move {
        let mut most = 0;
        loop {
            most = most.max(copies(pid).len());
            tokio::time::sleep(Duration::from_millis(20)).await;
            if most >= 4 {
                return most;
            }
        }
    });
    let event = Bytes::from(r#"{"n": 1, "action": "sleep", "seconds": 0.2}"#);
    let inputs = futures::stream::iter((0..300).map(move |_| event.clone()));
    let mut results = client.map("waits", inputs).await.expect("map");
    while let Some(r) = results.next().await {
        let r = r.expect("map response");
        output(&r.result.expect("a result"));
    }
    let most = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the copies never went past 3 while the limit climbed")
        .expect("watcher");
    assert!(most >= 4, "{most}");
    // Idle again: its warm copies stay, never more than its limit now says.
    let limit = client.workers("waits").await.expect("workers")[0].slots as usize;
    eventually("copies settle within the limit", || async {
        (copies(pid).len() <= limit).then_some(())
    })
    .await;
    // A worker that stops takes its copies with it.
    let running: Vec<u32> = copies(pinned.pid()).into_iter().chain(copies(pid)).collect();
    pinned.signal(nix::sys::signal::Signal::SIGTERM);
    adaptive.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(pinned.wait_exit().success() && adaptive.wait_exit().success());
    eventually("the runtime processes are gone", || async {
        running.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
}

/// Runs `n` events through Map; returns each output's (pid, invocation count).
async fn invocations(client: &Client, function: &str, n: u64) -> Vec<(u64, u64)> {
    let inputs = futures::stream::iter((0..n).map(|i| Bytes::from(format!("{{\"n\": {i}}}"))));
    let mut results = client.map(function, inputs).await.expect("map");
    let mut out = Vec::new();
    while let Some(r) = results.next().await {
        let o = output(&r.expect("map response").result.expect("a result"));
        out.push((o["pid"].as_u64().unwrap(), o["invocation"].as_u64().unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn under_lambda_the_event_names_the_runtime_and_its_copies_stay_warm_between_invocations() {
    use carpool_integration_tests::emulators::Rie;
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "1s"]);
    let client = coord.client().await;
    // AWS's emulator runs carpool-worker as the function; the event names the runtime.
    let rie = std::sync::Arc::new(Rie::start(60));
    let mut rounds = Vec::new();
    for round in 0..2 {
        let event = serde_json::json!({
            "coordinator_url": coord.url,
            "worker_id": format!("rie-{round}"),
            "function": "resize",
            "runtime": python_runtime("app"),
        });
        let invoker = rie.clone();
        let invocation = tokio::spawn(async move { invoker.invoke(event).await });
        rounds.push(invocations(&client, "resize", 50).await);
        let (body, _) = invocation.await.expect("invocation");
        let summary: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("summary {body:?}: {e}"));
        assert_eq!(summary["tasks_run"], 50, "{summary}");
    }
    // The second invocation found the first one's runtime processes warm: their module
    // state went on counting.
    let first: BTreeMap<u64, u64> = rounds[0].iter().fold(BTreeMap::new(), |mut m, &(pid, n)| {
        let e = m.entry(pid).or_insert(0);
        *e = (*e).max(n);
        m
    });
    let warm: Vec<&(u64, u64)> = rounds[1]
        .iter()
        .filter(|(pid, _)| first.contains_key(pid))
        .collect();
    assert!(
        !warm.is_empty(),
        "no runtime process of the first invocation served the second"
    );
    for (pid, n) in warm {
        assert!(
            *n > first[pid],
            "process {pid} started counting again: {n} after {}",
            first[pid]
        );
    }
}
