//! A Lambda handler like users' own, unchanged: the paper's thumbnailer as SeBS ships it for
//! AWS (Python, boto3 and Pillow, `integration-tests/handlers/thumb.py`), reading a ~3 MB
//! JPEG from S3 (moto on loopback) and writing the thumbnail back, under AWS's
//! awslambdaric, through the real coordinator and worker binaries with default flags.
//!
//! What it proves: the adaptive limit never lets a worker's memory pass its size at the
//! peak, even while interpreters import their libraries; a worker busy starting copies
//! keeps its session (it is never written off, nothing runs twice); a second batch starts
//! from what the first learned without overshooting; copies start for work that exists.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use carpool_integration_tests::emulators::Moto;
use carpool_integration_tests::{Client, Coordinator, Proc, bin, eventually, fleet_gone, tool};
use carpool_proto::pb::{self, TaskState};
use carpool_proto::{Bytes, payload};
use futures::StreamExt;
use serde_json::Value;

/// The thumbnailer's runtime command, in the handlers' directory (its task root).
fn thumb_runtime() -> String {
    let python = tool(
        "CARPOOL_PYTHON",
        "the test venv's Python, with awslambdaric, boto3 and Pillow",
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("handlers");
    format!(
        "cd '{}' && exec '{}' -m awslambdaric thumb.handler",
        dir.display(),
        python.display()
    )
}

/// moto with a bucket holding a ~3 MB JPEG at `in/photo.jpg` (the paper's input size).
async fn s3_with_photo() -> Moto {
    let moto = Moto::start();
    let s3 = moto.s3();
    s3.create_bucket()
        .bucket("photos")
        .send()
        .await
        .expect("create bucket");
    let jpeg = carpool_worker::thumbnail::synthetic_jpeg(2400).expect("image");
    assert!(jpeg.len() > 2_000_000, "the input is {} bytes", jpeg.len());
    s3.put_object()
        .bucket("photos")
        .key("in/photo.jpg")
        .body(jpeg.into())
        .send()
        .await
        .expect("put");
    moto
}

/// Runs `n` thumbnails through Map; checks every output and that each thumbnail is in S3.
/// Returns the runtime processes that ran them.
async fn thumbnails(client: &Client, moto: &Moto, batch: &str, n: usize) -> BTreeSet<u64> {
    let prefix = format!("out/{batch}-");
    let inputs = (0..n).map(move |i| {
        Bytes::from(
            serde_json::json!({"bucket": "photos", "key": "in/photo.jpg", "out": format!("{prefix}{i}.jpg")})
                .to_string(),
        )
    });
    let mut results = client
        .map("thumb", futures::stream::iter(inputs))
        .await
        .expect("map");
    let mut pids = BTreeSet::new();
    let mut done = 0;
    while let Some(r) = results.next().await {
        let r = r.expect("map response");
        let result = r
            .result
            .unwrap_or_else(|| panic!("seq {} rejected: {}", r.seq, r.rejected));
        assert_eq!(result.state(), TaskState::Succeeded, "{}", result.error);
        let out: Value = serde_json::from_slice(&payload::into_bytes(result.output)).expect("JSON output");
        // 2400 x 1600 shrunk into 200 x 200 (the size the handler's shipped settings give).
        assert_eq!(
            (out["width"].as_u64(), out["height"].as_u64()),
            (Some(200), Some(133)),
            "{out}"
        );
        pids.insert(out["pid"].as_u64().expect("pid"));
        done += 1;
    }
    assert_eq!(done, n);
    let listed = moto
        .s3()
        .list_objects_v2()
        .bucket("photos")
        .prefix(format!("out/{batch}-"))
        .send()
        .await
        .expect("list");
    assert_eq!(listed.key_count(), Some(n as i32), "thumbnails written back");
    pids
}

async fn thumb_stats(client: &Client) -> pb::FunctionStats {
    let stats = client.stats().await.expect("stats");
    stats
        .functions
        .into_iter()
        .find(|f| f.function == "thumb")
        .unwrap_or_default()
}

#[tokio::test]
async fn a_heavy_import_handler_never_passes_its_memory_and_a_learned_batch_does_not_overshoot() {
    let moto = s3_with_photo().await;
    let env = moto.aws_env("AWS_ENDPOINT_URL_S3");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let runtime = format!("thumb={}", thumb_runtime());
    // 1024 MB: a dozen interpreters with boto3 and Pillow fill it.
    let coord = Coordinator::start_with_env(
        &["--max-workers", "1", "--memory-mb", "1024", "--runtime", &runtime],
        &env,
    );
    let client = coord.client().await;
    for batch in ["first", "second"] {
        let pids = thumbnails(&client, &moto, batch, 40).await;
        fleet_gone(&client).await;
        let f = thumb_stats(&client).await;
        assert!(
            f.memory_peak_fraction > 0.0 && f.memory_peak_fraction < 1.0,
            "{batch} batch: the worker's memory peaked at {:.2} of its size",
            f.memory_peak_fraction
        );
        assert_eq!(
            f.retried, 0,
            "{batch} batch: a worker was lost, its tasks ran again: {f:?}"
        );
        assert_eq!(f.failed, 0, "{f:?}");
        assert!(
            pids.len() <= 40,
            "{batch} batch: {} copies for 40 tasks",
            pids.len()
        );
    }
    let f = thumb_stats(&client).await;
    assert_eq!(f.succeeded, 80);
    // One worker per batch: no write-off, no replacement.
    assert_eq!(f.workers_started, 2, "{f:?}");
}

#[tokio::test]
async fn a_worker_starting_many_copies_keeps_its_session_and_starts_them_for_work_that_exists() {
    let moto = s3_with_photo().await;
    let coord = Coordinator::start(&[
        "--spawner",
        "external",
        "--keep-alive",
        "60s",
        "--sample-interval",
        "200ms",
    ]);
    let client = coord.client().await;
    // Pinned far above what the work needs at first: copies follow the tasks, not the limit.
    let mut cmd = Command::new(bin("carpool-worker"));
    cmd.args([
        "--coordinator",
        &coord.url,
        "--function",
        "thumb",
        "--id",
        "busy-starting",
        "--slots",
        "24",
        "--memory-mb",
        "4096",
        "--runtime",
        &thumb_runtime(),
    ])
    .envs(moto.aws_env("AWS_ENDPOINT_URL_S3"));
    let _worker = Proc::start("heavy-worker", cmd);
    eventually("the worker to connect", || async {
        let ws = client.workers("thumb").await.ok()?;
        (!ws.is_empty()).then_some(())
    })
    .await;
    let few = thumbnails(&client, &moto, "few", 3).await;
    assert!(few.len() <= 3, "{} copies ran 3 tasks", few.len());
    // Then 48 at once: it starts copies (a few at a time) while its session stays up.
    let many = thumbnails(&client, &moto, "many", 48).await;
    assert!(many.len() <= 24, "{} copies under a limit of 24", many.len());
    let f = thumb_stats(&client).await;
    assert_eq!(
        f.retried, 0,
        "the worker was written off and its tasks ran again: {f:?}"
    );
    assert_eq!(f.workers_started, 1, "{f:?}");
    assert!(f.memory_peak_fraction < 1.0, "peak {:.2}", f.memory_peak_fraction);
    let ws = client.workers("thumb").await.expect("workers");
    assert_eq!(ws.len(), 1, "{ws:?}");
    assert_eq!(ws[0].worker_id, "busy-starting");
}

/// An HTTP service on loopback that answers every request after `delay`; stopped with
/// the returned guard.
async fn slow_service(delay: std::time::Duration) -> (String, tokio_util::sync::DropGuard) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = tokio::select! {
                accepted = listener.accept() => match accepted { Ok(c) => c, Err(_) => continue },
                () = token.cancelled() => return,
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(delay).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    (url, stop.drop_guard())
}

#[tokio::test]
async fn interpreters_that_wait_climb_past_the_vcpus_and_stop_where_memory_holds() {
    let (url, _service) = slow_service(std::time::Duration::from_millis(300)).await;
    let python = tool(
        "CARPOOL_PYTHON",
        "the test venv's Python, with awslambdaric and boto3",
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("handlers");
    let runtime = format!(
        "wait=cd '{}' && exec '{}' -m awslambdaric wait.handler",
        dir.display(),
        python.display()
    );
    // 512 MB: about a dozen interpreters with boto3 fit; the work would take 60 at once.
    let coord = Coordinator::start(&["--max-workers", "1", "--memory-mb", "512", "--runtime", &runtime]);
    let client = coord.client().await;
    for batch in ["first", "second"] {
        let event = Bytes::from(serde_json::json!({ "url": url }).to_string());
        let inputs = futures::stream::iter(std::iter::repeat_n(event, 60));
        let mut results = client.map("wait", inputs).await.expect("map");
        let mut pids = BTreeSet::new();
        while let Some(r) = results.next().await {
            let result = r.expect("map response").result.expect("accepted");
            assert_eq!(result.state(), TaskState::Succeeded, "{}", result.error);
            let out: Value = serde_json::from_slice(&payload::into_bytes(result.output)).expect("JSON");
            assert_eq!(out["status"], 200, "{out}");
            pids.insert(out["pid"].as_u64().expect("pid"));
        }
        fleet_gone(&client).await;
        let stats = client.stats().await.expect("stats");
        let f = stats
            .functions
            .iter()
            .find(|f| f.function == "wait")
            .expect("wait's stats");
        assert!(
            f.memory_peak_fraction < 1.0,
            "{batch} batch: memory peaked at {:.2} of the size",
            f.memory_peak_fraction
        );
        assert_eq!(f.retried, 0, "{batch} batch: {f:?}");
        // Past its one vCPU (waiting work runs side by side), not past what memory holds.
        assert!(pids.len() > 2, "{batch} batch: {} copies", pids.len());
        assert!(
            pids.len() < 20,
            "{batch} batch: {} interpreters in 512 MB",
            pids.len()
        );
    }
}
