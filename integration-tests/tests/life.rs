//! A worker's life through the real binaries (local workers with a short
//! `--execution-timeout`): a task whose own timeout outlasts a whole life is refused at once
//! with its cause; a batch longer than a life is handed over to a successor that starts
//! before its predecessor has drained, with no task killed at a deadline and none run
//! twice; a worker whose queue is empty gets no successor.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::BTreeMap;

use carpool_integration_tests::{Client, Coordinator, eventually, fleet_gone, function_stats};
use carpool_proto::Bytes;
use carpool_proto::pb::{self, TaskState};
use futures::StreamExt;

/// Runs `n` tasks of `sleep` (`ms` each) through Map; returns their results.
async fn sleeps(client: &Client, n: usize, ms: &str) -> Vec<pb::TaskResult> {
    let input = Bytes::from(ms.to_owned());
    let inputs = futures::stream::iter((0..n).map(move |_| input.clone()));
    let mut results = client.map("sleep", inputs).await.expect("map");
    let mut out = Vec::new();
    while let Some(r) = results.next().await {
        out.push(r.expect("map response").result.expect("a result"));
    }
    out
}

#[tokio::test]
async fn a_task_whose_timeout_outlasts_a_whole_life_fails_at_once_with_its_cause() {
    let coord = Coordinator::start(&["--execution-timeout", "3s"]);
    let client = coord.client().await;
    let err = client
        .submit_request(Client::request(
            "sleep",
            "10",
            Some(std::time::Duration::from_secs(5)),
        ))
        .await
        .expect_err("refused");
    let status = match err {
        carpool_client::Error::Status(s) => s,
        other => panic!("expected a status, got {other:?}"),
    };
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let msg = status.message();
    assert!(
        msg.contains("5000 ms") && msg.contains("3000 ms") && msg.contains("--execution-timeout"),
        "{msg}"
    );
    let stats = client.stats().await.expect("stats");
    assert!(stats.functions.iter().all(|f| f.pending == 0), "{stats:?}");
    // One that fits runs.
    let ok = client
        .run_request(Client::request(
            "sleep",
            "10",
            Some(std::time::Duration::from_secs(2)),
        ))
        .await
        .expect("run");
    assert_eq!(ok.state(), TaskState::Succeeded, "{ok:?}");
}

#[tokio::test]
async fn a_batch_longer_than_a_life_is_handed_over_before_the_deadline_and_nothing_runs_twice() {
    // One worker at a time, two tasks at once, 4 s of life; 40 tasks of 500 ms are 10 s of
    // work: at least two hand-overs.
    let coord = Coordinator::start(&["--execution-timeout", "4s", "--max-workers", "1", "--slots", "2"]);
    let client = coord.client().await;
    let results = sleeps(&client, 40, "500").await;
    assert_eq!(results.len(), 40);
    let mut by_worker: BTreeMap<String, Vec<&pb::TaskResult>> = BTreeMap::new();
    for r in &results {
        assert_eq!(r.state(), TaskState::Succeeded, "{r:?}");
        assert_eq!(r.attempts, 1, "a task ran twice: {r:?}");
        by_worker.entry(r.worker_id.clone()).or_default().push(r);
    }
    let stats = function_stats(&client, "sleep").await;
    assert_eq!(stats.killed_at_deadline, 0, "{stats:?}");
    assert_eq!(stats.retried, 0, "{stats:?}");
    assert!(stats.successors_started >= 1, "{stats:?}");
    assert!(stats.refused_for_time >= 1, "{stats:?}");
    assert!(
        (500..1000).contains(&stats.duration_bound_ms),
        "the bound is the longest 500 ms sleep: {stats:?}"
    );
    // Each successor ran its first task while its predecessor was still finishing its last:
    // it was there before the predecessor drained.
    let mut spans: Vec<(u64, u64)> = by_worker
        .values()
        .map(|rs| {
            let first = rs.iter().map(|r| r.started_unix_ms).min().unwrap_or(0);
            let last = rs.iter().map(|r| r.finished_unix_ms).max().unwrap_or(0);
            (first, last)
        })
        .collect();
    spans.sort_unstable();
    assert!(spans.len() >= 3, "{spans:?}");
    for pair in spans.windows(2) {
        let ((_, predecessor_last), (successor_first, _)) = (pair[0], pair[1]);
        assert!(
            successor_first <= predecessor_last,
            "a successor started its first task at {successor_first}, after its predecessor's last ended at {predecessor_last}: {spans:?}"
        );
    }
    fleet_gone(&client).await;
}

#[tokio::test]
async fn a_worker_with_nothing_queued_gets_no_successor() {
    let coord = Coordinator::start(&[
        "--execution-timeout",
        "3s",
        "--keep-alive",
        "60s",
        "--slots",
        "2",
        "--max-workers",
        "1",
    ]);
    let client = coord.client().await;
    let results = sleeps(&client, 10, "20").await;
    assert!(results.iter().all(|r| r.state() == TaskState::Succeeded));
    // Kept idle to the end of its admissions, it is shut down (deadline), and nothing
    // replaces it.
    eventually("the worker to reach its deadline and go", || async {
        let s = function_stats(&client, "sleep").await;
        (s.workers_live == 0 && s.workers_starting == 0).then_some(())
    })
    .await;
    let stats = function_stats(&client, "sleep").await;
    assert_eq!(
        (stats.workers_started, stats.successors_started),
        (1, 0),
        "{stats:?}"
    );
    assert_eq!(stats.killed_at_deadline, 0, "{stats:?}");
}
