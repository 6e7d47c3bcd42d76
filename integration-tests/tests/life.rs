//! A worker's life through the real binaries (local workers with a short
//! `--execution-timeout`): a task whose own timeout outlasts a whole life is refused at once
//! with its cause; a batch longer than a life is handed over to a successor that starts
//! before its predecessor has drained, with no task killed at a deadline and none run
//! twice; a worker whose queue is empty gets no successor; a worker whose admissions have
//! ended still takes a task bounded by its own timeout that fits what is left of its life,
//! and one whose timeout is generous by what tasks like it have taken;
//! a task still running counts as long as it has run, ending late admissions before it ends;
//! long tasks that vary set a bound past the longest of them;
//! under the fixed fraction, the coordinator counts the wait a hand-over leaves.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

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

/// One worker at a time, two tasks at once, 4 s of life (and `more` flags); 40 tasks of
/// 500 ms are 10 s of work: at least two hand-overs. The coordinator, its client and the
/// results.
async fn longer_than_a_life(more: &[&str]) -> (Coordinator, Client, Vec<pb::TaskResult>) {
    let mut args = vec!["--execution-timeout", "4s", "--max-workers", "1", "--slots", "2"];
    args.extend_from_slice(more);
    let coord = Coordinator::start(&args);
    let client = coord.client().await;
    let results = sleeps(&client, 40, "500").await;
    (coord, client, results)
}

#[tokio::test]
async fn a_batch_longer_than_a_life_is_handed_over_before_the_deadline_and_nothing_runs_twice() {
    let (_coord, client, results) = longer_than_a_life(&[]).await;
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
async fn the_coordinator_counts_the_wait_the_fixed_fraction_leaves_across_a_hand_over() {
    // The same batch under the paper's rule: no successor, so the queue waits across each
    // hand-over while the old worker drains its last tasks and a new one starts. By
    // duration (the test above) successors start ahead; Stats count what is left.
    let (_coord, client, results) = longer_than_a_life(&["--admission", "fraction"]).await;
    assert!(
        results.iter().all(|r| r.state() == TaskState::Succeeded),
        "{results:?}"
    );
    let stats = function_stats(&client, "sleep").await;
    assert_eq!(stats.successors_started, 0, "{stats:?}");
    assert!(stats.handover_wait_longest_ms > 0, "{stats:?}");
    assert!(
        stats.handover_wait_longest_ms <= stats.handover_wait_ms,
        "the longest is one of them: {stats:?}"
    );
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

/// A `sleep` task of `ms`, bounded by `timeout` if given.
fn sleep(ms: &str, timeout: Option<Duration>) -> pb::SubmitRequest {
    Client::request("sleep", Bytes::from(ms.to_owned()), timeout)
}

/// One worker at a time with four slots and 10 s of life, kept by a 7 s task (returned, to
/// be awaited), and taught by `teach` (each `sleep` ms and its own timeout, run at once):
/// the coordinator, its client, and the first worker once its admissions of tasks without a
/// bound have ended, with more than 3 s of its life left.
async fn past_admissions(
    teach: Vec<(&'static str, Option<Duration>)>,
) -> (
    Coordinator,
    Client,
    tokio::task::JoinHandle<carpool_client::Result<pb::TaskResult>>,
    pb::WorkerInfo,
) {
    let coord = Coordinator::start(&["--execution-timeout", "10s", "--max-workers", "1", "--slots", "4"]);
    let client = coord.client().await;
    let keeper = {
        let client = client.clone();
        tokio::spawn(async move { client.run_request(sleep("7000", None)).await })
    };
    let mut taught = Vec::new();
    for (ms, timeout) in teach {
        let client = client.clone();
        taught.push(tokio::spawn(async move {
            client.run_request(sleep(ms, timeout)).await
        }));
    }
    for t in taught {
        let r = t.await.expect("join").expect("run");
        assert_eq!(r.state(), TaskState::Succeeded, "{r:?}");
    }
    let stats = function_stats(&client, "sleep").await;
    assert!((4000..4500).contains(&stats.duration_bound_ms), "{stats:?}");
    let first = eventually("the first worker's admissions to end", || async {
        let w = client.workers("sleep").await.ok()?.into_iter().next()?;
        (w.life_left_ms > 0 && w.life_left_ms < 4500).then_some(w)
    })
    .await;
    assert!(first.life_left_ms > 3000, "too late to test: {first:?}");
    (coord, client, keeper, first)
}

/// The keeper ran once and nothing was killed or retried; one bounded task was taken late.
async fn kept_and_one_taken_late(
    client: &Client,
    keeper: tokio::task::JoinHandle<carpool_client::Result<pb::TaskResult>>,
) {
    let kept = keeper.await.expect("join").expect("run");
    assert_eq!(
        (kept.state(), kept.attempts),
        (TaskState::Succeeded, 1),
        "{kept:?}"
    );
    let stats = function_stats(client, "sleep").await;
    assert_eq!((stats.killed_at_deadline, stats.retried), (0, 0), "{stats:?}");
    assert_eq!(stats.taken_late, 1, "{stats:?}");
    fleet_gone(client).await;
}

#[tokio::test]
async fn a_worker_whose_admissions_ended_still_takes_a_task_bounded_by_its_own_timeout() {
    // Seven of 50 ms and one of 4 s teach the function that its tasks may take 4 s, so the
    // first worker's admissions end at 5.35 s (10 s less 4 s times 1.1 and 250 ms).
    let teach = std::iter::once(("4000", None))
        .chain(std::iter::repeat_n(("50", None), 7))
        .collect();
    let (_coord, client, keeper, first) = past_admissions(teach).await;
    // A task bounded by 1 s needs 1.35 s of the life left: the first worker takes it. One
    // without a bound may take 4 s: a fresh worker does.
    let (bounded, open) = tokio::join!(
        client.run_request(sleep("100", Some(Duration::from_secs(1)))),
        client.run_request(sleep("100", None)),
    );
    let (bounded, open) = (bounded.expect("run"), open.expect("run"));
    assert_eq!(
        (bounded.state(), open.state()),
        (TaskState::Succeeded, TaskState::Succeeded)
    );
    assert_eq!(bounded.worker_id, first.worker_id, "{bounded:?}");
    assert_ne!(open.worker_id, first.worker_id, "{open:?}");
    kept_and_one_taken_late(&client, keeper).await;
}

#[tokio::test]
async fn a_task_still_running_ends_late_admissions_before_it_has_ended() {
    // One worker at a time (a successor aside), four tasks at once, 10 s of life.
    let coord = Coordinator::start(&["--execution-timeout", "10s", "--max-workers", "1", "--slots", "4"]);
    let client = coord.client().await;
    let sleep = |ms: &str| Client::request("sleep", Bytes::from(ms.to_owned()), None);
    // A task of 6 s starts on the first worker (which ends when it is idle: it keeps it).
    let keeper = {
        let client = client.clone();
        tokio::spawn(async move { client.run_request(sleep("6000")).await })
    };
    // Eight of 50 ms beside it: by what has ended, the function's tasks take 50 ms and a
    // worker admits them until 9.7 s of its life.
    for r in sleeps(&client, 8, "50").await {
        assert_eq!(r.state(), TaskState::Succeeded, "{r:?}");
    }
    let first = client.workers("sleep").await.expect("workers");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].running_tasks, 1, "{first:?}");
    let first = first[0].worker_id.clone();
    // While it has run little, a task like it fits: another task goes to the same worker.
    let early = client.run_request(sleep("100")).await.expect("run");
    assert_eq!(early.worker_id, first, "{early:?}");
    // Once it has run long enough that a task as long no longer fits what is left of the
    // worker's life (4.8 s run: 5.53 s needed, under 5.2 s left), the worker takes no task without a
    // bound, although every task that has ended took 100 ms at most: a fresh worker does.
    let stats = eventually("the running task to count as the duration bound", || async {
        let s = function_stats(&client, "sleep").await;
        (s.duration_bound_ms >= 4800).then_some(s)
    })
    .await;
    assert!(stats.duration_bound_ms < 6000, "too late to test: {stats:?}");
    let late = client.run_request(sleep("100")).await.expect("run");
    assert_eq!(late.state(), TaskState::Succeeded, "{late:?}");
    assert_ne!(late.worker_id, first, "{late:?}");
    // Its admissions ended at about half its life, short of the fixed rule's 0.8, with a
    // task waiting: the coordinator said so once, with the life that would not be short.
    let said = "earlier in its life than --deadline-fraction";
    let log = eventually("the short life to be logged", || async {
        let log = coord.log();
        log.contains(said).then_some(log)
    })
    .await;
    assert_eq!(log.matches(said).count(), 1, "{log}");
    assert!(log.contains("life_wanted_ms="), "{log}");
    let kept = keeper.await.expect("join").expect("run");
    assert_eq!(
        (kept.state(), kept.attempts, kept.worker_id.as_str()),
        (TaskState::Succeeded, 1, first.as_str()),
        "{kept:?}"
    );
    let stats = function_stats(&client, "sleep").await;
    assert_eq!((stats.killed_at_deadline, stats.retried), (0, 0), "{stats:?}");
    fleet_gone(&client).await;
}

#[tokio::test]
async fn a_generous_timeout_is_planned_by_what_tasks_bounded_like_it_take() {
    // One of 4 s and seven of 50 ms without a bound end the first worker's admissions of
    // such tasks at 5.35 s; eight of 50 ms bounded by 8 s (a timeout 160 times what they
    // take) teach what the bounded ones take.
    let generous = Some(Duration::from_secs(8));
    let teach = std::iter::once(("4000", None))
        .chain(std::iter::repeat_n(("50", None), 7))
        .chain(std::iter::repeat_n(("50", generous), 8))
        .collect();
    let (_coord, client, keeper, first) = past_admissions(teach).await;
    // Its 8 s timeout does not fit what is left (under 4.5 s), but what tasks bounded like it
    // take does: the first worker takes it, late. Before, it waited for a fresh worker.
    let bounded = client.run_request(sleep("100", generous)).await.expect("run");
    assert_eq!(bounded.state(), TaskState::Succeeded, "{bounded:?}");
    assert_eq!(bounded.worker_id, first.worker_id, "{bounded:?}");
    kept_and_one_taken_late(&client, keeper).await;
}

#[tokio::test]
async fn long_tasks_that_vary_set_a_bound_past_the_longest_of_them() {
    let coord = Coordinator::start(&["--execution-timeout", "10s", "--max-workers", "1", "--slots", "8"]);
    let client = coord.client().await;
    for r in sleeps(&client, 8, "50").await {
        assert_eq!(r.state(), TaskState::Succeeded, "{r:?}");
    }
    // Alike short ones: the bound is the longest of them.
    let stats = function_stats(&client, "sleep").await;
    let short = stats.duration_bound_ms;
    assert!((50..200).contains(&short), "{short}");
    // A 10 s life is long for them: a new worker takes them for nearly all of it.
    assert!(stats.admitting_share > 0.95, "{stats:?}");
    assert_eq!(stats.life_wanted_ms, 0, "{stats:?}");
    // Five long ones 250 ms apart, at once: the next may well be longer than the longest,
    // by the mean gap between them (2000 ms and (2000 - 1000) / 4 ms).
    let runs: Vec<_> = ["1000", "1250", "1500", "1750", "2000"]
        .into_iter()
        .map(|ms| {
            let client = client.clone();
            tokio::spawn(async move { client.run_request(sleep(ms, None)).await })
        })
        .collect();
    for run in runs {
        let r = run.await.expect("join").expect("run");
        assert_eq!(r.state(), TaskState::Succeeded, "{r:?}");
    }
    let stats = function_stats(&client, "sleep").await;
    assert!((2200..2400).contains(&stats.duration_bound_ms), "{stats:?}");
    // Not for these: the last 2.7 s of a 10 s life take no such task, which is more than the
    // fixed rule's last fifth; a life five times what the last task needs would not be short.
    let need = stats.duration_bound_ms as f64 * 1.1 + 250.0;
    assert!(
        (stats.admitting_share - (10_000.0 - need) / 10_000.0).abs() < 0.005,
        "{stats:?}"
    );
    assert!(
        (stats.life_wanted_ms as f64 - need * 5.0).abs() < 25.0,
        "{stats:?}"
    );
    fleet_gone(&client).await;
}
