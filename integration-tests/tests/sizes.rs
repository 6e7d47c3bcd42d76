//! carpool chooses each function's memory size (`--memory-sizes`) through the real binaries:
//! every size offered is tried, a waiting batch then goes to the small size (the same work
//! at four times the memory costs four times as much per task), and what each size cost
//! survives a restart with a state directory.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use carpool_integration_tests::{Client, Coordinator, fleet_gone, function_stats};
use carpool_proto::Bytes;
use carpool_proto::pb::{self, TaskState};
use futures::StreamExt;

/// Runs `n` tasks of `sleep` (`ms` each) through Map; all must succeed.
async fn sleeps(client: &Client, n: usize, ms: &str) {
    let input = Bytes::from(ms.to_owned());
    let inputs = futures::stream::iter((0..n).map(move |_| input.clone()));
    let mut results = client.map("sleep", inputs).await.expect("map");
    let mut ok = 0;
    while let Some(r) = results.next().await {
        let res = r.expect("map response").result.expect("a result");
        assert_eq!(res.state(), TaskState::Succeeded, "{res:?}");
        ok += 1;
    }
    assert_eq!(ok, n);
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

    // Batches until both sizes have been tried (each is tried by one worker at a time, the
    // smallest first; a worker's cost is known once it has ended).
    let mut batches = 0;
    let stats = loop {
        sleeps(&client, 40, "100").await;
        fleet_gone(&client).await;
        batches += 1;
        let stats = function_stats(&client, "sleep").await;
        if stats.sizes.iter().all(|s| s.tasks > 0) {
            break stats;
        }
        assert!(
            batches < 4,
            "a size still untried after {batches} batches: {stats:?}"
        );
    };
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
    sleeps(&client, 20, "50").await;
    let workers = client.workers("sleep").await.expect("workers");
    assert!(!workers.is_empty());
    assert!(workers.iter().all(|w| w.memory_mb == 1024), "{workers:?}");
}

#[tokio::test]
async fn more_than_one_size_needs_local_workers_and_sizes_in_range() {
    for (args, says) in [
        (&["--memory-sizes", "1024,64"][..], "--memory-sizes 64"),
        (
            &["--memory-sizes", "1024,2048", "--spawner", "external"][..],
            "needs --spawner local",
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
