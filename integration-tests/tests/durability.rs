//! Accepted means durable: a coordinator killed with SIGKILL and restarted on the same
//! state directory loses no acknowledged task and creates no twin for a retried key.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::HashMap;

use carpool_integration_tests::{Coordinator, eventually, totals};
use carpool_proto::payload;
use carpool_proto::pb;

fn keyed(i: u32) -> pb::SubmitRequest {
    pb::SubmitRequest {
        function: "sleep".into(),
        input: Some(payload::text("5")),
        idempotency_key: format!("job-{i}"),
        ..Default::default()
    }
}

async fn submit_all(client: &carpool_client::Client, n: u32) -> HashMap<u32, u64> {
    let mut ids = HashMap::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let acks = futures::future::join_all(
            chunk
                .iter()
                .map(|&i| async move { (i, client.submit_request(keyed(i)).await.expect("acknowledged")) }),
        )
        .await;
        ids.extend(acks);
    }
    ids
}

#[tokio::test]
async fn acknowledged_tasks_survive_a_kill_9_and_restart_without_twins() {
    let dir = std::env::temp_dir().join(format!("carpool-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state_dir = dir.to_string_lossy().into_owned();
    let args = ["--state-dir", state_dir.as_str(), "--max-workers", "2"];

    let first = Coordinator::start(&args);
    let client = first.client().await;
    let ids = submit_all(&client, 1000).await;
    assert_eq!(ids.len(), 1000);
    eventually("some tasks to finish before the crash", || async {
        (totals(&client).await.succeeded >= 100).then_some(())
    })
    .await;
    let before_crash = totals(&client).await;
    assert!(
        before_crash.succeeded < 1000,
        "the crash came too late to prove anything"
    );
    first.kill9();

    let second = Coordinator::start(&args);
    let client = second.client().await;
    let done = eventually("every acknowledged task to finish after the restart", || async {
        let t = totals(&client).await;
        (t.succeeded == 1000 && t.pending == 0 && t.running == 0).then_some(t)
    })
    .await;
    assert_eq!(done.failed, 0);
    for (i, id) in &ids {
        let info = client
            .get(*id)
            .await
            .expect("every acknowledged id is known after the restart");
        assert_eq!(info.state(), pb::TaskState::Succeeded, "job-{i}");
    }
    // A client retrying after the crash with the same keys gets the same ids, and nothing new runs.
    let again = submit_all(&client, 1000).await;
    assert_eq!(again, ids, "a resubmitted key got a different task");
    let after = totals(&client).await;
    assert_eq!((after.succeeded, after.pending, after.running), (1000, 0, 0));
    let _ = std::fs::remove_dir_all(&dir);
}
