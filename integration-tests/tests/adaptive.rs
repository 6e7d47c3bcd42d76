//! Adaptive concurrency through the real binaries: a worker's limit climbs far past its vCPUs
//! for waiting work (its first task seen while it runs) and stops where memory fits; the level it learns survives a coordinator
//! restart with a state directory; a worker judges itself by its own load, so a busy host
//! does not make an idle worker look busy; and the thumbnail round trip through S3 (moto).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use carpool_integration_tests::emulators::Moto;
use carpool_integration_tests::{Client, Coordinator, Proc, eventually, fleet_gone, function_stats, totals};
use carpool_proto::pb::{self, TaskState};
use carpool_proto::{Bytes, payload};
use futures::StreamExt;

/// Runs `n` tasks of `function` with `input` through Map; returns how many succeeded and the
/// most tasks one worker ran at once (ListWorkers, polled meanwhile).
async fn batch(client: &Client, function: &str, input: &str, n: usize) -> (usize, u32) {
    let peak = Arc::new(AtomicU32::new(0));
    let watch = {
        let (client, peak, function) = (client.clone(), peak.clone(), function.to_owned());
        tokio::spawn(async move {
            loop {
                if let Ok(ws) = client.workers(&function).await {
                    let most = ws.iter().map(|w| w.running_tasks).max().unwrap_or(0);
                    peak.fetch_max(most, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let input = Bytes::from(input.to_owned());
    let inputs = futures::stream::iter((0..n).map(move |_| input.clone()));
    let mut results = client.map(function, inputs).await.expect("map");
    let mut ok = 0;
    while let Some(r) = results.next().await {
        let r = r.expect("map response");
        let res = r
            .result
            .unwrap_or_else(|| panic!("seq {} rejected: {}", r.seq, r.rejected));
        assert_eq!(res.state(), TaskState::Succeeded, "{res:?}");
        ok += 1;
    }
    watch.abort();
    (ok, peak.load(Ordering::Relaxed))
}

#[tokio::test]
async fn waiting_work_climbs_past_the_vcpus_and_the_learned_level_survives_a_restart() {
    let dir = tempfile::tempdir().expect("state dir");
    let state_dir = dir.path().to_str().expect("utf-8 path");
    // One 1-vCPU worker (1024 MB): with static slots it would run one task at a time.
    let args = [
        "--max-workers",
        "1",
        "--memory-mb",
        "1024",
        "--state-dir",
        state_dir,
    ];
    let coord = Coordinator::start(&args);
    let client = coord.client().await;
    let (ok, peak) = batch(&client, "sleep", "100", 400).await;
    assert_eq!(ok, 400);
    assert!(
        peak >= 16,
        "one 1-vCPU worker ran at most {peak} waiting tasks at once"
    );
    fleet_gone(&client).await;
    let learned = function_stats(&client, "sleep").await.slots_learned;
    assert!(learned >= 16, "learned {learned}");
    assert_eq!(
        totals(&client).await.workers_started,
        1,
        "the first worker was enough"
    );

    // Restarted on the same state directory, it knows the level before any task runs...
    assert!(coord.terminate().success());
    let coord = Coordinator::start(&[&args[..], &["--keep-alive", "30s"]].concat());
    let client = coord.client().await;
    assert_eq!(function_stats(&client, "sleep").await.slots_learned, learned);
    // ... and its first new worker starts there instead of at its one vCPU.
    let r = client.run("sleep", "1").await.expect("run");
    assert_eq!(r.state(), TaskState::Succeeded);
    let workers = client.workers("sleep").await.expect("workers");
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert!(workers[0].slots >= learned, "{:?}", workers[0]);
}

#[tokio::test]
async fn a_first_task_shows_itself_while_it_runs_not_only_once_it_ends() {
    // No sample on the interval for 10 s: what the worker reports comes from its settle
    // sample, 25 ms after its tasks change. Its first sample (the interval's first tick) is
    // taken as the first task starts and cannot show it; the settle sample must still come,
    // or the limit stays at one vCPU until that task ends.
    let coord = Coordinator::start(&[
        "--max-workers",
        "1",
        "--memory-mb",
        "1024",
        "--sample-interval",
        "10s",
    ]);
    let client = coord.client().await;
    let task = client.submit("sleep", "5000").await.expect("submit");
    let slots = eventually("the worker's limit to rise past its one vCPU", || {
        let client = client.clone();
        async move {
            let workers = client.workers("sleep").await.ok()?;
            workers.iter().map(|w| w.slots).max().filter(|&s| s > 1)
        }
    })
    .await;
    let info = client.get(task).await.expect("get");
    assert_eq!(
        info.state(),
        TaskState::Running,
        "the limit rose to {slots} only once the first task had ended: {info:?}"
    );
    client.cancel(task).await.expect("cancel");
}

#[tokio::test]
async fn a_burst_of_memory_heavy_tasks_never_runs_a_worker_out_of_memory() {
    // 512 MB workers, tasks of 30 MB: about 15 fit under the 0.9 memory threshold.
    let coord = Coordinator::start(&["--max-workers", "1", "--memory-mb", "512"]);
    let client = coord.client().await;
    let (ok, peak) = batch(&client, "hold", r#"{"mb": 30, "ms": 300}"#, 60).await;
    assert_eq!(ok, 60);
    fleet_gone(&client).await;
    let f = function_stats(&client, "hold").await;
    assert_eq!(f.failed, 0);
    eprintln!(
        "memory peak {:.3} of the size, {peak} at once",
        f.memory_peak_fraction
    );
    // With margin: the peak is the kernel's high-water mark, not a sample's reading.
    assert!(
        f.memory_peak_fraction > 0.0 && f.memory_peak_fraction < 0.95,
        "the worker's memory peaked at {:.2} of its size",
        f.memory_peak_fraction
    );
    assert!(peak >= 4, "it never climbed past its vCPU: {peak} at once");
}

#[tokio::test]
async fn an_idle_worker_on_a_busy_host_is_not_judged_busy_and_keeps_its_tasks() {
    let coord = Coordinator::start(&[
        "--spawner",
        "external",
        "--keep-alive",
        "60s",
        "--sample-interval",
        "200ms",
    ]);
    let client = coord.client().await;
    // Neighbours that keep every core busy (they are not the worker's children).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _hogs: Vec<Proc> = (0..cores * 2)
        .map(|_| {
            let mut c = Command::new("sh");
            c.args(["-c", "while :; do :; done"]);
            Proc::start("busy-neighbour", c)
        })
        .collect();
    let _worker = Proc::worker(&["--coordinator", &coord.url, "--function", "echo", "--id", "calm"]);
    // Several samples on the busy host.
    let cpu = eventually("the worker's fifth sample", || async {
        let ws = client.workers("echo").await.ok()?;
        let w = ws.iter().find(|w| w.worker_id == "calm")?;
        (w.age_ms >= 1000).then(|| w.last_sample.map_or(0.0, |s| s.cpu))
    })
    .await;
    assert!(cpu < 0.5, "an idle worker on a busy host reported CPU {cpu}");
    let (ok, _) = batch(&client, "echo", "x", 50).await;
    assert_eq!(ok, 50);
    let ws = client.workers("echo").await.expect("workers");
    assert!(
        ws.iter()
            .any(|w| w.worker_id == "calm" && w.state() == pb::WorkerState::Active),
        "the worker was sent away: {ws:?}"
    );
    let t = totals(&client).await;
    assert_eq!((t.succeeded, t.workers_started), (50, 1));
}

#[tokio::test]
async fn a_thumbnail_reads_and_writes_s3_objects() {
    let moto = Moto::start();
    let env = moto.aws_env("AWS_ENDPOINT_URL_S3");
    let s3 = moto.s3();
    s3.create_bucket()
        .bucket("photos")
        .send()
        .await
        .expect("create bucket");
    let original = carpool_worker::thumbnail::synthetic_jpeg(600).expect("image");
    s3.put_object()
        .bucket("photos")
        .key("in/cat.jpg")
        .body(original.into())
        .send()
        .await
        .expect("put");

    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let coord = Coordinator::start_with_env(&["--max-workers", "1"], &env);
    let client = coord.client().await;
    let r = client
        .run(
            "thumbnail",
            r#"{"input": "s3://photos/in/cat.jpg", "output": "s3://photos/out/cat.jpg", "size": 64}"#,
        )
        .await
        .expect("run");
    assert_eq!(r.state(), TaskState::Succeeded, "{}", r.error);
    let out: serde_json::Value =
        serde_json::from_slice(&payload::into_bytes(r.output)).expect("output is JSON");
    assert_eq!(out["width"].as_u64(), Some(64), "{out}");
    assert!(matches!(out["height"].as_u64(), Some(42 | 43)), "{out}");
    let thumb = s3
        .get_object()
        .bucket("photos")
        .key("out/cat.jpg")
        .send()
        .await
        .expect("get")
        .body
        .collect()
        .await
        .expect("body")
        .into_bytes();
    assert_eq!(&thumb[..2], &[0xFF, 0xD8], "the object is not a JPEG");

    // A missing object fails the task with S3's answer; a local path is refused (no data dir).
    for (payload, want) in [
        (
            r#"{"input": "s3://photos/nope.jpg", "output": "s3://photos/x.jpg"}"#,
            "NoSuchKey",
        ),
        (r#"{"input": "/etc/passwd", "output": "out.jpg"}"#, "--data-dir"),
    ] {
        let r = client.run("thumbnail", payload).await.expect("run");
        assert_eq!(r.state(), TaskState::Failed);
        assert!(r.error.contains(want), "{payload}: {}", r.error);
    }
}
