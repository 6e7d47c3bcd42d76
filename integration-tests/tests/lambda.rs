//! The Lambda path against real emulators, through the real aws-sdk-lambda client:
//! - cargo-lambda's `watch --only-lambda-apis` serves the Lambda Invoke and Runtime APIs;
//!   the test starts `carpool-worker` processes in Lambda mode against it, and a
//!   coordinator with `--spawner lambda` invokes them;
//! - AWS's Runtime Interface Emulator runs the worker with a real invocation deadline and
//!   function timeout;
//! - moto's Lambda (Docker off) answers Invoke as AWS does (202 for Event, 404 for an
//!   unknown function) and records every request.
//!
//! The tools are installed by `./scripts/test` and named by CARPOOL_CARGO_LAMBDA,
//! CARPOOL_LAMBDA_RIE, CARPOOL_MOTO_SERVER and CARPOOL_PYTHON.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::HashSet;
use std::time::{Duration, Instant};

use carpool_integration_tests::emulators::{
    Container, FUNCTION, LambdaMoto, Rie, cargo_lambda, lambda_args, lambda_worker, start_coordinator,
    start_coordinator_via,
};
use carpool_integration_tests::{Coordinator, Proc, WAIT, eventually};
use carpool_proto::pb;
use carpool_proto::{Bytes, payload};
use futures::StreamExt;
use serde_json::Value;

fn stats_of(s: &pb::StatsResponse, function: &str) -> pb::FunctionStats {
    s.functions
        .iter()
        .find(|f| f.function == function)
        .cloned()
        .unwrap_or_default()
}

fn is_request_id(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test]
async fn a_hundred_tasks_run_on_lambda_invocations_through_the_emulator() {
    let (_emulator, url) = cargo_lambda();
    let _workers: Vec<Proc> = (0..3).map(|_| lambda_worker(&url, &[])).collect();
    let coord = start_coordinator(
        &url,
        &lambda_args(FUNCTION, "3", &["--slots", "2", "--keep-alive", "60s"]),
    );
    let client = coord.client().await;
    // Sleeps of distinct lengths keep the slots busy, so the fleet grows past one worker.
    let inputs: Vec<u64> = (0..100).map(|i| 20 + i % 7).collect();
    let results: Vec<pb::MapResponse> = client
        .map(
            "sleep",
            futures::stream::iter(inputs.clone().into_iter().map(|ms| Bytes::from(ms.to_string()))),
        )
        .await
        .expect("map")
        .map(|r| r.expect("map response"))
        .collect()
        .await;
    assert_eq!(results.len(), 100);
    let mut ran_on = HashSet::new();
    for r in &results {
        let result = r
            .result
            .as_ref()
            .unwrap_or_else(|| panic!("seq {} rejected: {}", r.seq, r.rejected));
        assert_eq!(result.state(), pb::TaskState::Succeeded, "{result:?}");
        let out: Value =
            serde_json::from_slice(&payload::into_bytes(result.output.clone())).expect("JSON output");
        assert_eq!(
            out["slept_ms"], inputs[r.seq as usize],
            "task {} got another task's result",
            result.task_id
        );
        ran_on.insert(result.worker_id.clone());
    }
    assert!(
        ran_on.len() >= 2,
        "100 tasks ran on {ran_on:?}: expected several workers"
    );

    // Every worker is a Lambda invocation: its request id is its instance.
    let workers = client.workers("sleep").await.expect("workers");
    let ids: HashSet<&str> = workers.iter().map(|w| w.instance.as_str()).collect();
    assert_eq!(ids.len(), workers.len(), "request ids repeat: {workers:?}");
    for w in &workers {
        assert!(
            is_request_id(&w.instance),
            "worker {} shows {:?}, not a request id",
            w.worker_id,
            w.instance
        );
        assert!(w.cold_start_ms > 0, "worker {} has no cold start", w.worker_id);
        assert_eq!(
            w.memory_mb, 2048,
            "memory comes from AWS_LAMBDA_FUNCTION_MEMORY_SIZE"
        );
    }
    for id in &ran_on {
        assert!(workers.iter().any(|w| &w.worker_id == id), "{id} is not listed");
    }
    let s = stats_of(&client.stats().await.expect("stats"), "sleep");
    assert_eq!(s.workers_started, workers.len() as u64);
    assert_eq!(s.cold_starts, workers.len() as u64, "{s:?}");
    assert!(
        s.cold_start_p50_ms > 0 && s.cold_start_p50_ms <= s.cold_start_max_ms,
        "{s:?}"
    );
    assert_eq!(s.spawn_failures, 0, "{s:?}");
}

#[tokio::test]
async fn a_failed_invocation_is_one_invocation_and_the_task_waits_for_a_worker() {
    let (_emulator, url) = cargo_lambda();
    let worker = lambda_worker(&url, &[]);
    let coord = start_coordinator(&url, &lambda_args(FUNCTION, "1", &[]));
    let client = coord.client().await;
    // The worker binary has no handler for this function: each invocation fails at once,
    // and the emulator answers the Event invoke with HTTP 500.
    let task = client.submit("no-such-builtin", "{}").await.expect("submit");
    let s = eventually("three failed spawns", || async {
        let s = stats_of(&client.stats().await.ok()?, "no-such-builtin");
        (s.spawn_failures >= 3).then_some(s)
    })
    .await;
    assert!(
        s.last_spawn_error.contains("UnknownCarpoolFunction") || s.last_spawn_error.contains("no handler"),
        "{s:?}"
    );
    // One spawn, one invocation: the SDK's retries are off and a function error is not
    // retried. Compare while no spawn is in flight (the spawn backoff has grown by now).
    eventually("a quiet moment with as many invocations as spawns", || async {
        let before = stats_of(&client.stats().await.ok()?, "no-such-builtin");
        let invocations = worker
            .log()
            .matches("no handler for the event's function")
            .count() as u64;
        let after = stats_of(&client.stats().await.ok()?, "no-such-builtin");
        // No worker ever said hello (workers_started counts those): every spawn failed.
        let quiet = before.spawn_failures == after.spawn_failures
            && after.workers_starting == 0
            && after.workers_started == 0;
        (quiet && invocations == after.spawn_failures).then_some(())
    })
    .await;
    // Nothing ran, so nothing is billed, and the error is one line.
    let after = stats_of(&client.stats().await.expect("stats"), "no-such-builtin");
    assert_eq!((after.billed_gb_ms, after.cost_usd), (0.0, 0.0), "{after:?}");
    assert!(
        !after.last_spawn_error.contains('\n'),
        "{:?}",
        after.last_spawn_error
    );
    // The task was never stranded or failed: it waits in the pool for a worker that can run it.
    let info = client.get(task).await.expect("get");
    assert_eq!(info.state(), pb::TaskState::Pending, "{info:?}");
    assert_eq!(s.pending, 1);
    client.cancel(task).await.expect("cancel");
}

#[tokio::test]
async fn sigterm_ends_a_lambda_session_and_its_task_goes_back_at_once() {
    let (_emulator, url) = cargo_lambda();
    let mut worker = lambda_worker(&url, &[]);
    // A long reconnect grace: the task must come back because the session ended cleanly,
    // not because the grace ran out.
    let coord = start_coordinator(&url, &lambda_args(FUNCTION, "1", &["--reconnect-grace", "10m"]));
    let client = coord.client().await;
    let task = client.submit("sleep", "60000").await.expect("submit");
    eventually("the task to run", || async {
        (client.get(task).await.ok()?.state() == pb::TaskState::Running).then_some(())
    })
    .await;
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    let status = worker.wait_exit();
    assert!(status.success(), "the worker exited with {status}");
    let s = eventually("the task to be given back", || async {
        let s = stats_of(&client.stats().await.ok()?, "sleep");
        (s.retried == 1 && s.workers_live == 0).then_some(s)
    })
    .await;
    assert_eq!(s.running, 0, "{s:?}");
    assert!(worker.log().contains("told to stop"), "{}", worker.log());
}

#[tokio::test]
async fn the_invocation_deadline_is_the_workers_timeout_and_a_bad_event_fails_fast() {
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "60s"]);
    let client = coord.client().await;
    let rie = Rie::start(4);

    // A malformed event fails the invocation at once, naming the problem.
    let (body, took) = rie
        .invoke(serde_json::json!({ "worker_id": "x", "function": "echo" }))
        .await;
    assert!(body.contains("missing field `coordinator_url`"), "{body}");
    assert!(body.contains("InvalidCarpoolEvent"), "{body}");
    assert!(took < Duration::from_secs(3), "a bad event took {took:?}");

    // A good one: the worker serves tasks, then leaves before the real deadline (4 s), not
    // at its 15-minute default, and says why: once its tasks are measured, its admissions
    // end when the longest of them would no longer fit, and none of them runs twice.
    let event = serde_json::json!({ "coordinator_url": coord.url, "worker_id": "rie-1", "function": "echo" });
    let invocation = tokio::spawn(async move { rie.invoke(event).await });
    let w = eventually("the worker to connect", || async {
        client
            .workers("echo")
            .await
            .ok()?
            .into_iter()
            .find(|w| w.worker_id == "rie-1")
    })
    .await;
    assert!(
        is_request_id(&w.instance),
        "instance {:?} is not the request id",
        w.instance
    );
    for i in 0..10 {
        let out = client.run("echo", format!("\"hello {i}\"")).await.expect("run");
        assert_eq!(
            payload::into_bytes(out.output.clone()),
            Bytes::from(format!("\"hello {i}\""))
        );
        assert_eq!(out.attempts, 1, "{out:?}");
    }
    let (body, took) = invocation.await.expect("invocation");
    let summary: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("summary {body:?}: {e}"));
    assert_eq!(summary["worker_id"], "rie-1");
    assert_eq!(summary["tasks_run"], 10);
    assert_eq!(summary["ended"], "shutdown: deadline", "{summary}");
    assert!(
        took < Duration::from_secs(4),
        "the session outlived the function timeout: {took:?}"
    );
    let stats = client.stats().await.expect("stats");
    let echo = stats
        .functions
        .iter()
        .find(|f| f.function == "echo")
        .expect("echo stats");
    assert_eq!((echo.killed_at_deadline, echo.retried), (0, 0), "{echo:?}");
    assert!(echo.duration_bound_ms > 0, "{echo:?}");
}

#[tokio::test]
async fn each_spawn_is_one_event_invocation_and_an_unknown_function_is_reported() {
    let moto = LambdaMoto::start();
    // An unknown function: moto answers 404 ResourceNotFoundException, which is not retried.
    let bad_coord = start_coordinator_via(
        "AWS_ENDPOINT_URL",
        &moto.0.url,
        &lambda_args("no-such-function", "1", &[]),
    );
    let bad_client = bad_coord.client().await;
    let task = bad_client.submit("echo", "1").await.expect("submit");
    let s = eventually("a failed spawn", || async {
        let s = stats_of(&bad_client.stats().await.ok()?, "echo");
        (s.spawn_failures >= 1).then_some(s)
    })
    .await;
    assert!(
        s.last_spawn_error
            .contains("ResourceNotFoundException (HTTP 404)"),
        "{s:?}"
    );
    assert!(s.last_spawn_error.contains("no-such-function"), "{s:?}");
    assert!(bad_coord.log().contains("spawn failed"), "the failure is logged");
    assert_eq!(
        bad_client.get(task).await.expect("get").state(),
        pb::TaskState::Pending
    );
    let bad: Vec<Value> = moto
        .invocations()
        .into_iter()
        .filter(|c| c["function"] == "no-such-function")
        .collect();
    assert!(!bad.is_empty(), "moto saw no invoke of the unknown function");
    let ids: HashSet<&str> = bad
        .iter()
        .filter_map(|c| c["event"]["worker_id"].as_str())
        .collect();
    assert_eq!(
        ids.len(),
        bad.len(),
        "a failed spawn was invoked more than once: {bad:?}"
    );
    drop(bad_coord);

    moto.create_function();
    // moto accepts the invocation but runs nothing: the worker never connects, so the start
    // timeout writes it off, and the pending task gets a new spawn.
    let coord = start_coordinator(
        &moto.0.url,
        &lambda_args(
            FUNCTION,
            "1",
            &[
                "--advertise-url",
                "https://carpool.example.com:50051",
                "--worker-token",
                "s3cret",
                "--start-timeout",
                "1s",
            ],
        ),
    );
    let client = coord.client().await;
    client.submit("echo", "1").await.expect("submit");
    let s = eventually(
        "a spawn written off by the start timeout, and a second spawn",
        || async {
            let s = stats_of(&client.stats().await.ok()?, "echo");
            // A second spawn is starting after the first was written off (none said hello).
            (s.spawn_failures >= 1 && s.workers_starting >= 1 && s.workers_started == 0).then_some(s)
        },
    )
    .await;
    assert!(
        s.last_spawn_error
            .contains("did not connect within the start timeout of 1s"),
        "{s:?}"
    );
    assert_eq!(s.pending, 1, "the task stays in the pool: {s:?}");
    let calls: Vec<Value> = moto
        .invocations()
        .into_iter()
        .filter(|c| c["function"] == FUNCTION)
        .collect();
    assert!(calls.len() >= 2, "{calls:?}");
    let mut worker_ids = HashSet::new();
    for c in &calls {
        assert_eq!(c["function"], FUNCTION, "{c}");
        assert_eq!(c["invocation_type"], "Event", "{c}");
        assert!(
            c["sdk_request"].as_str().unwrap_or("").ends_with("max=1"),
            "SDK retries must be off: {c}"
        );
        let e = &c["event"];
        assert_eq!(e["coordinator_url"], "https://carpool.example.com:50051", "{c}");
        assert_eq!(e["function"], "echo", "{c}");
        assert_eq!(e["token"], "s3cret", "{c}");
        let id = e["worker_id"].as_str().unwrap_or_default().to_owned();
        assert!(worker_ids.insert(id), "a spawn was invoked twice: {calls:?}");
    }
}

/// The worker ids moto was invoked with, in order, once `n` spawns have been written off
/// and another is starting.
async fn written_off(client: &carpool_integration_tests::Client, moto: &LambdaMoto, n: usize) -> Vec<String> {
    eventually("the spawns to be written off and replaced", || async {
        let s = stats_of(&client.stats().await.ok()?, "echo");
        let ids: Vec<String> = moto
            .invocations()
            .into_iter()
            .filter_map(|c| c["event"]["worker_id"].as_str().map(str::to_owned))
            .collect();
        (s.spawn_failures as usize >= n && s.workers_starting == 1 && ids.len() > n).then_some(ids)
    })
    .await
}

#[tokio::test]
async fn a_worker_that_starts_after_its_start_timeout_is_welcomed_within_the_cap_or_sent_away() {
    // Lambda queues an Event invoke it cannot run yet instead of refusing it: the worker may
    // start after --start-timeout has written its spawn off. moto accepts and runs nothing,
    // so the test plays the late workers itself. The start timeout leaves the test time to
    // connect a late worker while the replacement spawn still counts as starting, also on a
    // loaded machine.
    let moto = LambdaMoto::start();
    moto.create_function();
    let coord = start_coordinator(
        &moto.0.url,
        &lambda_args(
            FUNCTION,
            "2",
            &["--start-timeout", "3s", "--advertise-url", "http://127.0.0.1:1"],
        ),
    );
    let client = coord.client().await;
    let first_task = client.submit("echo", "\"late\"").await.expect("submit");
    let late = |id: &str| pb::Hello {
        worker_id: id.to_owned(),
        function: "echo".into(),
        vcpus: 1,
        memory_mb: 2048,
        slots: 1,
        ..Default::default()
    };
    // The first spawn is written off and a second starts: the first arrives late, one of
    // two places taken, and is welcomed with the waiting task.
    let spawned = written_off(&client, &moto, 1).await;
    let mut w =
        carpool_integration_tests::FakeWorker::connect(coord.channel().await, late(&spawned[0])).await;
    let got = w.expect_assign().await;
    assert_eq!(got[0].task_id, first_task);
    // A second task waits (both places are taken); the second spawn is written off too and
    // a third starts: the second arrives late with no place left, and is sent away.
    client.submit("echo", "\"more\"").await.expect("submit");
    let spawned = written_off(&client, &moto, 2).await;
    let mut surplus =
        carpool_integration_tests::FakeWorker::connect(coord.channel().await, late(&spawned[1])).await;
    match surplus.next().await {
        carpool_proto::pb::coordinator_message::Kind::Shutdown(s) => {
            assert_eq!(s.reason(), pb::ShutdownReason::Surplus);
        }
        other => panic!("expected Shutdown SURPLUS, got {other:?}"),
    }
    w.finish(&got[0], "\"late\"").await;
    let r = eventually("the late worker's result", || async {
        client.get(first_task).await.ok()?.result
    })
    .await;
    assert_eq!(r.state(), pb::TaskState::Succeeded, "{r:?}");
    let s = stats_of(&client.stats().await.expect("stats"), "echo");
    assert_eq!(
        s.workers_started, 2,
        "each worker that said hello is one started: {s:?}"
    );
}

async fn echo_twenty(client: &carpool_integration_tests::Client) -> HashSet<String> {
    let results: Vec<pb::MapResponse> = client
        .map(
            "echo",
            futures::stream::iter((0..20).map(|i| Bytes::from(format!("{{\"i\":{i}}}")))),
        )
        .await
        .expect("map")
        .map(|r| r.expect("map response"))
        .collect()
        .await;
    assert_eq!(results.len(), 20);
    let mut workers = HashSet::new();
    for r in &results {
        let result = r.result.as_ref().expect("accepted");
        assert_eq!(result.state(), pb::TaskState::Succeeded, "{result:?}");
        let out: Value = serde_json::from_slice(&payload::into_bytes(result.output.clone())).expect("JSON");
        assert_eq!(
            out["i"], r.seq,
            "task {} got another task's output",
            result.task_id
        );
        workers.insert(result.worker_id.clone());
    }
    workers
}

#[tokio::test]
async fn the_worker_image_runs_as_a_lambda_function_and_as_a_plain_worker() {
    // As a Lambda function: the image's entrypoint, with only the Runtime API's environment.
    let (_emulator, url) = cargo_lambda();
    let runtime_api = format!("{url}/.rt/{FUNCTION}");
    let container = Container::run(
        "carpool-lambda",
        &[
            ("AWS_LAMBDA_RUNTIME_API", runtime_api.as_str()),
            ("AWS_LAMBDA_FUNCTION_NAME", FUNCTION),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            ("RUST_LOG", "info"),
            ("NO_COLOR", "1"),
        ],
        &[],
    );
    let deadline = Instant::now() + WAIT;
    while !container.log().contains("serving Lambda invocations") {
        assert!(
            Instant::now() < deadline,
            "the container did not start: {}",
            container.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let coord = start_coordinator(&url, &lambda_args(FUNCTION, "1", &["--keep-alive", "30s"]));
    let client = coord.client().await;
    let ran_on = echo_twenty(&client).await;
    let workers = client.workers("echo").await.expect("workers");
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert!(ran_on.contains(&workers[0].worker_id));
    assert!(is_request_id(&workers[0].instance), "{:?}", workers[0].instance);
    assert_eq!(workers[0].memory_mb, 1024);
    drop(client);
    drop(coord);
    drop(container);

    // As a plain worker: the usual flags, external spawner.
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "30s"]);
    let client = coord.client().await;
    let container = Container::run(
        "carpool-worker",
        &[("NO_COLOR", "1")],
        &[
            "--coordinator",
            &coord.url,
            "--function",
            "echo",
            "--id",
            "in-a-container",
        ],
    );
    eventually("the container to connect", || async {
        let listed = client.workers("echo").await.ok()?;
        listed
            .iter()
            .any(|w| w.worker_id == "in-a-container")
            .then_some(())
    })
    .await;
    let ran_on = echo_twenty(&client).await;
    assert_eq!(
        ran_on,
        HashSet::from(["in-a-container".to_owned()]),
        "{}",
        container.log()
    );
}

/// The first invoke moto recorded for `FUNCTION`, once there is one.
async fn first_invoke(moto: &LambdaMoto) -> Value {
    eventually("an invoke of the worker function", || async {
        moto.invocations().into_iter().find(|c| c["function"] == FUNCTION)
    })
    .await
}

#[tokio::test]
async fn each_memory_size_is_a_version_carpool_publishes_once_or_an_alias_the_user_names() {
    let moto = LambdaMoto::start();
    moto.create_function(); // at 2048 MB
    let sizes = ["--memory-sizes", "1024,4096", "--start-timeout", "30s"];
    let mut publish = lambda_args(FUNCTION, "1", &sizes);
    publish.push("--lambda-publish-sizes");

    // carpool publishes a version per size, puts $LATEST's memory back, and invokes the
    // first worker (the smallest size is tried first) by its version.
    let coord = start_coordinator(&moto.0.url, &publish);
    let client = coord.client().await;
    client.submit("echo", "1").await.expect("submit");
    let call = first_invoke(&moto).await;
    let versions = moto.versions();
    let of = |mb: u64| -> Vec<String> {
        versions
            .iter()
            .filter(|v| v["version"] != "$LATEST" && v["memory"].as_u64() == Some(mb))
            .map(|v| v["version"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(of(1024).len(), 1, "{versions:?}");
    assert_eq!(of(4096).len(), 1, "{versions:?}");
    assert_eq!(versions[0]["version"], "$LATEST", "{versions:?}");
    assert_eq!(
        versions[0]["memory"], 2048,
        "$LATEST's memory is put back: {versions:?}"
    );
    assert!(
        versions.iter().skip(1).all(|v| v["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("carpool worker, "))),
        "{versions:?}"
    );
    assert_eq!(call["qualifier"].as_str(), Some(of(1024)[0].as_str()), "{call}");
    drop(client);
    drop(coord);

    // A restart (or the standby taking over) reuses the versions: nothing new is published,
    // and the next worker is invoked by the same version.
    let before = moto.invocations().len();
    let coord = start_coordinator(&moto.0.url, &publish);
    let client = coord.client().await;
    client.submit("echo", "2").await.expect("submit");
    let call = eventually("an invoke after the restart", || async {
        let calls = moto.invocations();
        (calls.len() > before).then(|| calls[before].clone())
    })
    .await;
    assert_eq!(moto.versions().len(), versions.len(), "{:?}", moto.versions());
    assert_eq!(call["qualifier"].as_str(), Some(of(1024)[0].as_str()), "{call}");
    drop(client);
    drop(coord);

    // Aliases the user made: each size is invoked by its own.
    let moto = LambdaMoto::start();
    moto.create_function();
    let mut named = lambda_args(FUNCTION, "1", &sizes);
    named.extend(["--lambda-size", "1024=small,4096=large"]);
    let coord = start_coordinator(&moto.0.url, &named);
    let client = coord.client().await;
    client.submit("echo", "1").await.expect("submit");
    assert_eq!(first_invoke(&moto).await["qualifier"], "small");
    drop(coord);

    // A size with no way to reach it is refused at start, with the flag to pass.
    let mut missing = lambda_args(FUNCTION, "1", &sizes);
    missing.extend(["--lambda-size", "1024=small", "--listen", "127.0.0.1:0"]);
    let out = std::process::Command::new(carpool_integration_tests::bin("carpool-coordinator"))
        .args(&missing)
        .envs(carpool_integration_tests::emulators::aws_env(
            "AWS_ENDPOINT_URL_LAMBDA",
            &moto.0.url,
        ))
        .output()
        .expect("run the coordinator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a size without a qualifier was accepted");
    assert!(
        stderr.contains("4096 MB has none") && stderr.contains("--lambda-publish-sizes"),
        "{stderr}"
    );
}
