//! The host against a minimal custom runtime (Python's standard library only: the
//! Runtime API is plain HTTP, any language's runtime can speak it).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::time::Duration;

use bytes::Bytes;

use super::*;

/// A custom runtime: answers each event with its event, pid, per-process count and the
/// headers it got; `"hang"` sleeps for a minute, `"sleep"` for 300 ms.
const RUNTIME: &str = r#"
import json, os, time, urllib.request
base = "http://%s/2018-06-01/runtime/invocation" % os.environ["AWS_LAMBDA_RUNTIME_API"]
count = 0
while True:
    with urllib.request.urlopen(base + "/next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        deadline = int(r.headers["Lambda-Runtime-Deadline-Ms"])
        arn = r.headers["Lambda-Runtime-Invoked-Function-Arn"]
        event = json.loads(r.read() or b"null")
    count += 1
    if event == "hang":
        time.sleep(60)
    if event == "sleep":
        time.sleep(0.3)
    out = json.dumps({"event": event, "pid": os.getpid(), "count": count, "deadline": deadline, "arn": arn, "rid": rid})
    req = urllib.request.Request(base + "/" + rid + "/response", data=out.encode(), method="POST")
    urllib.request.urlopen(req).read()
"#;

fn host(command: &str) -> RuntimeHost {
    RuntimeHost::new(RuntimeSettings {
        command: command.to_owned(),
        function: "unit".into(),
        memory_mb: 512,
        function_arn: Some("arn:aws:lambda:eu-west-1:123456789012:function:unit".into()),
    })
}

fn python_host(dir: &tempfile::TempDir) -> RuntimeHost {
    let script = dir.path().join("runtime.py");
    std::fs::write(&script, RUNTIME).unwrap();
    host(&format!("exec python3 {}", script.display()))
}

fn task(id: u64, event: &str, timeout: Option<Duration>) -> Task {
    Task {
        id,
        attempt: 1,
        function: "unit".into(),
        payload: Bytes::from(event.to_owned()),
        timeout,
    }
}

fn json(out: &Outcome) -> serde_json::Value {
    let bytes = out.as_ref().unwrap_or_else(|e| panic!("task failed: {e}"));
    serde_json::from_slice(bytes).unwrap()
}

async fn until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} did not happen within 10 s");
}

#[tokio::test]
async fn each_task_is_one_invocation_with_lambdas_headers() {
    let _alone = crate::children::SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let host = python_host(&dir);
    host.prepare().await.unwrap();
    let before = carpool_proto::unix_ms();
    let out = json(
        &host
            .call(task(7, r#"{"n": 1}"#, Some(Duration::from_secs(5))))
            .await,
    );
    assert_eq!(out["event"]["n"], 1);
    assert_eq!(out["rid"], "carpool-7-1");
    assert_eq!(out["arn"], "arn:aws:lambda:eu-west-1:123456789012:function:unit");
    // The deadline is the attempt's own timeout from when the task arrived.
    let deadline = out["deadline"].as_u64().unwrap();
    assert!(
        deadline >= before + 5000 && deadline <= carpool_proto::unix_ms() + 5000,
        "{deadline}"
    );
    // Module state lives across the invocations of one copy.
    let again = json(&host.call(task(8, "2", None)).await);
    assert_eq!(
        (again["pid"].clone(), again["count"].clone()),
        (out["pid"].clone(), 2.into())
    );
}

#[tokio::test]
async fn copies_follow_the_work_up_to_the_limit_and_fall_with_it() {
    let _alone = crate::children::SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(python_host(&dir));
    host.prepare().await.unwrap();
    host.limit(4);
    // A limit alone starts nothing: there is no work for more than the first copy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(host.copies(), 1);
    // Twelve slow tasks at once: copies start (at most `ramp` initializing at a time) up to
    // the limit, never past it.
    let calls: Vec<_> = (0..12).map(|i| host.call(task(i, r#""sleep""#, None))).collect();
    let watcher = {
        let host = host.clone();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..400 {
                most = most.max(host.copies());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            most
        })
    };
    let outs = futures::future::join_all(calls).await;
    let pids: std::collections::BTreeSet<u64> =
        outs.iter().map(|o| json(o)["pid"].as_u64().unwrap()).collect();
    assert!(
        pids.len() > 1 && pids.len() <= 4,
        "{} copies: {outs:?}",
        pids.len()
    );
    // Warm copies stay up to the limit.
    until("4 copies ready", || host.ready_copies() == 4).await;
    assert!(watcher.await.unwrap() <= 4);
    host.limit(2);
    until("2 copies", || host.copies() == 2).await;
    assert_eq!(json(&host.call(task(99, "1", None)).await)["event"], 1);
}

#[tokio::test]
async fn one_task_at_a_time_needs_one_copy_whatever_the_limit() {
    let _alone = crate::children::SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let host = python_host(&dir);
    host.prepare().await.unwrap();
    host.limit(32);
    let mut pids = std::collections::BTreeSet::new();
    for i in 0..5 {
        pids.insert(
            json(&host.call(task(i, "1", None)).await)["pid"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(pids.len(), 1);
    assert_eq!(host.copies(), 1);
}

#[tokio::test]
async fn a_task_waiting_for_a_copy_is_not_reported_as_running() {
    let _alone = crate::children::SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(python_host(&dir));
    host.prepare().await.unwrap();
    host.limit(1);
    let a = host.call(task(1, r#""sleep""#, None));
    let b = host.call(task(2, r#""sleep""#, None));
    let both = tokio::spawn(futures::future::join(a, b));
    until("one invocation running", || {
        host.running().is_some_and(|r| r.tasks == 1 && r.newest.is_some())
    })
    .await;
    // Two handed over, one copy: one runs, one waits (and is not counted).
    assert_eq!(host.running().map(|r| r.tasks), Some(1));
    let (a, b) = both.await.unwrap();
    assert_eq!(
        (json(&a)["event"].clone(), json(&b)["event"].clone()),
        ("sleep".into(), "sleep".into())
    );
    assert_eq!(host.running().map(|r| r.tasks), Some(0));
}

#[tokio::test]
async fn a_cancelled_task_has_its_copy_killed_and_replaced() {
    let _alone = crate::children::SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let host = python_host(&dir);
    host.prepare().await.unwrap();
    let first = json(&host.call(task(1, "1", None)).await)["pid"]
        .as_u64()
        .unwrap();
    // The coordinator cancels a task by dropping its future.
    let hanging = host.call(task(2, r#""hang""#, None));
    let _ = tokio::time::timeout(Duration::from_millis(500), hanging).await;
    let next = json(&host.call(task(3, "3", None)).await);
    assert_ne!(
        next["pid"].as_u64().unwrap(),
        first,
        "the hanging copy was not replaced"
    );
    assert_eq!(next["count"], 1);
}

#[tokio::test]
async fn a_handler_past_its_timeout_and_grace_is_killed() {
    let _alone = crate::children::SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let host = python_host(&dir);
    host.prepare().await.unwrap();
    let out = host
        .call(task(1, r#""hang""#, Some(Duration::from_millis(300))))
        .await;
    assert_eq!(out, Err("Task timed out after 0.30 seconds".to_owned()));
    assert_eq!(json(&host.call(task(2, "2", None)).await)["count"], 1);
}

#[tokio::test]
async fn a_runtime_that_exits_before_asking_fails_with_its_status_and_stderr() {
    let _alone = crate::children::SERIAL.lock().await;
    let host = host("echo 'no handler here' >&2; exit 7");
    let err = host.prepare().await.unwrap_err();
    assert!(
        err.contains("exit status: 7") && err.contains("no handler here"),
        "{err}"
    );
    assert_eq!(host.broken().await, err);
}

#[tokio::test]
async fn a_copys_init_is_measured_from_its_start_to_its_first_request() {
    let _alone = crate::children::SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("runtime.py");
    std::fs::write(&script, RUNTIME).unwrap();
    // An init of at least 300 ms (an interpreter's imports), before the first request.
    let host = host(&format!("sleep 0.3 && exec python3 {}", script.display()));
    assert_eq!(
        host.running().and_then(|r| r.copy_init),
        None,
        "no copy ready yet"
    );
    host.prepare().await.unwrap();
    let init = host.running().and_then(|r| r.copy_init);
    assert!(init.is_some_and(|d| d >= Duration::from_millis(300)), "{init:?}");
    let out = host.call(task(1, r#""x""#, None)).await;
    assert_eq!(json(&out)["event"], "x");
}

#[tokio::test]
async fn copies_held_for_a_first_tasks_memory_start_once_a_task_has_run_a_while() {
    let _alone = crate::children::SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(python_host(&dir));
    host.prepare().await.unwrap();
    let ramp = host.inner.ramp;
    host.limit(ramp as u32 + 1);
    // As many long tasks as copies may exist before a task has finished, then a short one:
    // before, it waited for a long one to end (a minute here); now, once a task has run for
    // its working memory to show, another copy starts for it.
    let long: Vec<_> = (0..ramp as u64)
        .map(|i| tokio::spawn(host.call(task(i, r#""hang""#, None))))
        .collect();
    until("the long tasks running", || {
        host.running().is_some_and(|r| r.tasks == ramp as u32)
    })
    .await;
    let short = tokio::time::timeout(Duration::from_secs(20), host.call(task(99, "1", None)))
        .await
        .expect("the short task waited for a long one");
    assert_eq!(json(&short)["event"], 1);
    assert_eq!(host.copies(), ramp + 1);
    drop(host);
    for l in long {
        l.abort();
    }
}
