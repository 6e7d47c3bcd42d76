//! carpool chooses each function's memory size (`--memory-sizes`) through the real binaries:
//! every size offered is tried, a waiting batch then goes to the small size (the same work
//! at four times the memory costs four times as much per task), and what each size cost
//! survives a restart with a state directory. Also the goals a batch may carry: a Map call's
//! budget in dollars, a deadline that the cheapest size would miss moving new workers to a
//! size that meets it, and a deadline that cannot be met refused at once. And forgetting
//! what was learned (Relearn), through a restart.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use carpool_integration_tests::{Client, Coordinator, fleet_gone, function_stats};
use carpool_proto::Bytes;
use carpool_proto::pb::{self, TaskState};
use futures::StreamExt;

/// Runs `n` tasks of the built-in `function` (`ms` each) through Map; all must succeed.
async fn run_all(client: &Client, function: &str, n: usize, ms: &str) {
    let input = Bytes::from(ms.to_owned());
    let inputs = futures::stream::iter((0..n).map(move |_| input.clone()));
    let mut results = client.map(function, inputs).await.expect("map");
    let mut ok = 0;
    while let Some(r) = results.next().await {
        let res = r.expect("map response").result.expect("a result");
        assert_eq!(res.state(), TaskState::Succeeded, "{res:?}");
        ok += 1;
    }
    assert_eq!(ok, n);
}

/// Runs `n` tasks of `function` (`ms` each) a batch, each batch ended by the fleet leaving
/// (a worker's cost is known once it has ended), until every size offered has finished
/// `at_least` tasks (each size is tried by one worker at a time, the smallest first).
/// Returns the function's stats then, and the batches it took.
async fn until_every_size_tried(
    client: &Client,
    function: &str,
    n: usize,
    ms: &str,
    at_least: u64,
) -> (pb::FunctionStats, u32) {
    let mut batches = 0;
    loop {
        run_all(client, function, n, ms).await;
        fleet_gone(client).await;
        batches += 1;
        let stats = function_stats(client, function).await;
        if stats.sizes.iter().all(|s| s.tasks >= at_least) {
            return (stats, batches);
        }
        assert!(
            batches < 4,
            "a size still untried after {batches} batches: {stats:?}"
        );
    }
}

fn cost(stats: &pb::FunctionStats, memory_mb: u32) -> pb::SizeCost {
    stats
        .sizes
        .iter()
        .find(|s| s.memory_mb == memory_mb)
        .cloned()
        .unwrap_or_else(|| panic!("no cost of {memory_mb} MB in {stats:?}"))
}

#[tokio::test]
async fn a_waiting_batch_goes_to_the_small_size_and_the_choice_survives_a_restart() {
    let dir = tempfile::tempdir().expect("state dir");
    let state_dir = dir.path().to_str().expect("utf-8 path");
    let args = [
        "--memory-sizes",
        "4096,1024",
        "--max-workers",
        "2",
        "--state-dir",
        state_dir,
    ];
    let coord = Coordinator::start(&args);
    let client = coord.client().await;

    // Batches until both sizes have been tried.
    let (stats, batches) = until_every_size_tried(&client, "sleep", 40, "100", 1).await;
    let (small, large) = (cost(&stats, 1024), cost(&stats, 4096));
    println!("after {batches} batches: 1024 MB {small:?}; 4096 MB {large:?}");
    assert!(
        small.gb_s_per_task < large.gb_s_per_task,
        "waiting work should cost less per task at 1024 MB: {small:?} against {large:?}"
    );
    assert_eq!(
        (stats.memory_mb, stats.memory_reason.as_str()),
        (1024, "cheapest"),
        "{stats:?}"
    );

    // Restarted on the same directory, it knows before any task runs...
    assert!(coord.terminate().success());
    let coord = Coordinator::start(&[&args[..], &["--keep-alive", "30s"]].concat());
    let client = coord.client().await;
    let restored = function_stats(&client, "sleep").await;
    assert_eq!(
        (restored.memory_mb, restored.memory_reason.as_str()),
        (1024, "cheapest")
    );
    assert_eq!(cost(&restored, 1024).tasks, small.tasks);
    // ... and its new workers are of the small size.
    run_all(&client, "sleep", 20, "50").await;
    let workers = client.workers("sleep").await.expect("workers");
    assert!(!workers.is_empty());
    assert!(workers.iter().all(|w| w.memory_mb == 1024), "{workers:?}");
}

#[tokio::test]
async fn relearning_a_function_forgets_its_levels_and_sizes_for_good() {
    let dir = tempfile::tempdir().expect("state dir");
    let state_dir = dir.path().to_str().expect("utf-8 path");
    forgets_for_good(&["--state-dir", state_dir]).await;
}

#[tokio::test]
async fn relearning_a_function_forgets_its_levels_and_sizes_for_good_in_postgresql() {
    let pg = carpool_integration_tests::postgres::Postgres::start();
    let url = pg.url();
    forgets_for_good(&["--state-url", &url]).await;
}

/// Learns a waiting function's level and sizes, forgets them (Relearn), and checks that a
/// restart on the same `state` (a journal's flag and where) does not bring them back.
async fn forgets_for_good(state: &[&str]) {
    let args = [&["--memory-sizes", "4096,1024", "--max-workers", "2"], state].concat();
    let coord = Coordinator::start(&args);
    let client = coord.client().await;
    let (learned, _) = until_every_size_tried(&client, "sleep", 40, "100", 1).await;
    assert_eq!(learned.memory_reason, "cheapest", "{learned:?}");
    assert!(learned.slots_learned > 0, "{learned:?}");

    // Names it does not serve, and no name, are refused before anything changes.
    let code = |r: carpool_client::Result<pb::RelearnResponse>| match r {
        Err(carpool_client::Error::Status(s)) => s.code(),
        other => panic!("expected a status, got {other:?}"),
    };
    assert_eq!(code(client.relearn("nope").await), tonic::Code::InvalidArgument);
    assert_eq!(code(client.relearn("").await), tonic::Code::InvalidArgument);
    assert_eq!(function_stats(&client, "sleep").await.sizes, learned.sizes);

    // Forgotten at both sizes: the sizes are tried again, the level found again.
    let forgot = client.relearn("sleep").await.expect("relearn");
    assert_eq!(forgot.costs, 2, "{forgot:?}");
    assert!(forgot.levels >= 1, "{forgot:?}");
    let fresh = function_stats(&client, "sleep").await;
    assert_eq!(fresh.slots_learned, 0, "{fresh:?}");
    assert!(fresh.sizes.iter().all(|s| s.tasks == 0), "{fresh:?}");
    assert_ne!(fresh.memory_reason, "cheapest", "{fresh:?}");
    // Again: nothing left to forget.
    let again = client.relearn("sleep").await.expect("relearn");
    assert_eq!((again.levels, again.costs), (0, 0));

    // For good: a restart on the same directory does not bring it back.
    assert!(coord.terminate().success());
    let coord = Coordinator::start(&args);
    let client = coord.client().await;
    let restored = function_stats(&client, "sleep").await;
    assert_eq!(restored.slots_learned, 0, "{restored:?}");
    assert!(restored.sizes.iter().all(|s| s.tasks == 0), "{restored:?}");
    // And it learns again.
    let (relearned, _) = until_every_size_tried(&client, "sleep", 40, "100", 1).await;
    assert_eq!(relearned.memory_reason, "cheapest", "{relearned:?}");
}

#[tokio::test]
async fn more_than_one_size_needs_a_spawner_and_sizes_in_range() {
    for (args, says) in [
        (&["--memory-sizes", "1024,64"][..], "--memory-sizes 64"),
        (
            &["--memory-sizes", "1024,2048", "--spawner", "external"][..],
            "needs a spawner that starts workers",
        ),
        (
            &["--memory-sizes", "1024,2048", "--lambda-size", "1024=small"][..],
            "need --spawner lambda",
        ),
        (
            &[
                "--spawner",
                "lambda",
                "--lambda-function",
                "f",
                "--lambda-size",
                "1024",
            ][..],
            "expected SIZE=QUALIFIER",
        ),
        (
            &[
                "--spawner",
                "lambda",
                "--lambda-function",
                "f",
                "--lambda-publish-sizes",
                "--lambda-qualifier",
                "live",
            ][..],
            "cannot be used with",
        ),
    ] {
        let out = std::process::Command::new(carpool_integration_tests::bin("carpool-coordinator"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .expect("run the coordinator");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_map_call_stops_at_its_budget_with_a_precise_status() {
    use carpool_client::MapOptions;
    let coord = Coordinator::start(&["--slots", "1", "--max-workers", "1"]);
    let client = coord.client().await;

    // A budget that is not a positive number of dollars is refused with its item.
    let one = futures::stream::iter([Bytes::from("1")]);
    let bad = MapOptions {
        budget_usd: Some(-1.0),
        ..MapOptions::default()
    };
    let answers: Vec<_> = client
        .map_with("sleep", one, bad)
        .await
        .expect("map")
        .collect()
        .await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    let answer = answers[0].as_ref().expect("an answer");
    assert_eq!(
        answer.rejected_code,
        tonic::Code::InvalidArgument as i32,
        "{answer:?}"
    );
    assert!(answer.rejected.contains("budget_usd"), "{answer:?}");

    // One worker running one task at a time, 30 tasks of 200 ms, and a budget the first
    // result spends: the tasks still pending come back CANCELLED with the budget.
    let (tx, rx) = futures::channel::mpsc::unbounded();
    for _ in 0..30 {
        tx.unbounded_send(Bytes::from("200")).expect("queue an input");
    }
    let tiny = MapOptions {
        budget_usd: Some(1e-12),
        ..MapOptions::default()
    };
    let mut results = client.map_with("sleep", rx, tiny).await.expect("map");
    let (mut succeeded, mut cancelled) = (0, 0);
    for _ in 0..30 {
        let r = results.next().await.expect("a response").expect("map response");
        let res = r
            .result
            .clone()
            .unwrap_or_else(|| panic!("a result, not a rejection: {r:?}"));
        match res.state() {
            TaskState::Succeeded => {
                assert!(
                    res.billed_gb_s > 0.0,
                    "a result carries its estimated bill: {res:?}"
                );
                succeeded += 1;
            }
            TaskState::Cancelled => {
                assert!(res.error.contains("budget of $"), "{res:?}");
                cancelled += 1;
            }
            other => panic!("{other:?}: {res:?}"),
        }
    }
    assert!(
        (1..=5).contains(&succeeded),
        "only what ran before the budget was spent: {succeeded}"
    );
    assert_eq!(succeeded + cancelled, 30);

    // A submission after that is refused with RESOURCE_EXHAUSTED; the call goes on.
    tx.unbounded_send(Bytes::from("1")).expect("queue an input");
    let r = results.next().await.expect("a response").expect("map response");
    assert_eq!(r.rejected_code, tonic::Code::ResourceExhausted as i32, "{r:?}");
    assert!(r.rejected.contains("budget of $"), "{r:?}");
    drop(tx);
    assert!(
        results.next().await.is_none(),
        "the call ends once the input does"
    );
    let stats = function_stats(&client, "sleep").await;
    assert_eq!(stats.pending, 0, "{stats:?}");
}

#[tokio::test]
async fn a_deadline_that_cannot_be_met_is_refused_at_once_with_why() {
    use carpool_client::MapOptions;
    let coord = Coordinator::start(&["--slots", "1", "--max-workers", "1"]);
    let client = coord.client().await;
    // Nothing measured yet: nothing is refused.
    let mut first = Client::request("sleep", Bytes::from("300"), None);
    first.deadline_ms = 1;
    let r = client
        .run_request(first)
        .await
        .expect("a first task with nothing measured");
    assert_eq!(r.state(), TaskState::Succeeded, "{r:?}");
    // What the function's tasks take is now measured (300 ms, one at a time on one worker).
    run_all(&client, "sleep", 3, "300").await;

    // 20 tasks of 300 ms on one worker of one slot, all within a second: the first few
    // are accepted, the rest refused at once, each saying why.
    let inputs = futures::stream::iter((0..20).map(|_| Bytes::from("300")));
    let options = MapOptions {
        deadline: Some(std::time::Duration::from_secs(1)),
        ..MapOptions::default()
    };
    let answers: Vec<pb::MapResponse> = client
        .map_with("sleep", inputs, options)
        .await
        .expect("map")
        .map(|r| r.expect("map response"))
        .collect()
        .await;
    assert_eq!(answers.len(), 20);
    let (accepted, refused): (Vec<_>, Vec<_>) = answers.iter().partition(|a| a.result.is_some());
    assert!((1..=4).contains(&accepted.len()), "{answers:?}");
    for a in &accepted {
        assert_eq!(
            a.result.as_ref().map(|r| r.state()),
            Some(TaskState::Succeeded),
            "{a:?}"
        );
    }
    for a in &refused {
        assert_eq!(a.rejected_code, tonic::Code::FailedPrecondition as i32, "{a:?}");
        assert!(
            a.rejected.contains("the deadline of") && a.rejected.contains("cannot be met"),
            "{a:?}"
        );
    }
    // A deadline it can meet is accepted.
    let mut easy = Client::request("sleep", Bytes::from("300"), None);
    easy.deadline_ms = 60_000;
    assert_eq!(
        client.run_request(easy).await.expect("run").state(),
        TaskState::Succeeded
    );
}

#[tokio::test]
async fn a_deadline_the_cheapest_size_would_miss_goes_to_a_size_that_meets_it() {
    use carpool_client::MapOptions;
    // One worker at a time. At 1024 MB a worker has one vCPU and runs one CPU-bound task at
    // a time; at 4096 MB its allotment is three vCPUs (on a machine of two cores its tasks
    // share them), so it finishes a batch sooner at about twice the cost per task.
    let coord = Coordinator::start(&["--memory-sizes", "1024,4096", "--max-workers", "1"]);
    let client = coord.client().await;
    // Both sizes tried, each with enough attempts for a median of what a task takes there.
    let (stats, batches) = until_every_size_tried(&client, "spin", 20, "100", 8).await;
    let (small, large) = (cost(&stats, 1024), cost(&stats, 4096));
    println!("after {batches} batches: 1024 MB {small:?}; 4096 MB {large:?}");
    assert_eq!(
        (stats.memory_mb, stats.memory_reason.as_str()),
        (1024, "cheapest"),
        "without a deadline the small size is the cheaper: {stats:?}"
    );
    assert!(
        stats.slots_learned > 0,
        "the level learned is the chosen size's: {stats:?}"
    );

    // The same 20 tasks of 100 ms within 1.6 s: one worker of one vCPU needs 2 s, so the
    // batch's worker is of the large size, chosen for the deadline (and were the machine
    // too busy for any size to meet it, the size that finishes soonest).
    let input = Bytes::from("100");
    let inputs = futures::stream::iter((0..20).map(move |_| input.clone()));
    let options = MapOptions {
        deadline: Some(std::time::Duration::from_millis(1600)),
        ..MapOptions::default()
    };
    let started = std::time::Instant::now();
    let mut results = client.map_with("spin", inputs, options).await.expect("map");
    let first = results.next().await.expect("a response").expect("map response");
    let workers = client.workers("spin").await.expect("workers");
    let rest: Vec<_> = results.collect().await;
    let took = started.elapsed();
    assert!(!workers.is_empty(), "a worker serves the batch");
    assert!(
        workers.iter().all(|w| w.memory_mb == 4096),
        "the deadline moved new workers to the size that meets it: {workers:?}"
    );
    let answers: Vec<pb::MapResponse> = std::iter::once(first)
        .chain(rest.into_iter().map(|r| r.expect("map response")))
        .collect();
    assert_eq!(answers.len(), 20);
    for a in &answers {
        if let Some(r) = &a.result {
            assert_eq!(r.state(), TaskState::Succeeded, "{a:?}");
        } else {
            // A refusal is only ever the deadline's, said at once.
            assert!(a.rejected.contains("cannot be met"), "{a:?}");
        }
    }
    let served = answers.iter().filter(|a| a.result.is_some()).count();
    println!(
        "{served} of 20 served in {took:?} on {} MB",
        workers.first().map_or(0, |w| w.memory_mb)
    );
}
