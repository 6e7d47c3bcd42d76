//! The library worker (`carpool_worker::run` with a closure) in this test's own process.
//!
//! Alone in its test binary on purpose: a worker samples the CPUs of the machine it runs on,
//! and the benchmark and experiment tests (which saturate both cores) would make it look
//! busy, so the coordinator would rightly shut it down as ineligible.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use carpool_integration_tests::{Coordinator, WAIT, eventually, totals};
use carpool_proto::pb;

// Several threads: the panic hook (a backtrace, if enabled) must not stall the worker's
// stream, as it could on the test's single thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_task_and_the_worker_keeps_serving() {
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "60s"]);
    let client = coord.client().await;
    let mut config = carpool_worker::WorkerConfig::new(coord.url.clone(), "fragile");
    config.id = "lib-worker".into();
    let worker = tokio::spawn(carpool_worker::run(
        config,
        |task: carpool_worker::Task| async move {
            if task.payload.as_ref() == b"boom" {
                panic!("the handler exploded");
            }
            Ok::<_, String>(task.payload)
        },
    ));
    eventually("the library worker to connect", || async {
        (totals(&client).await.workers_live == 1).then_some(())
    })
    .await;
    let run = |payload: &'static str| {
        let client = client.clone();
        async move {
            tokio::time::timeout(WAIT, client.run("fragile", payload))
                .await
                .unwrap_or_else(|_| panic!("no result for {payload:?} within {WAIT:?}"))
                .expect("run")
        }
    };
    let boom = run("boom").await;
    assert_eq!(boom.state(), pb::TaskState::Failed);
    assert!(
        boom.error.contains("panicked") && boom.error.contains("exploded"),
        "{}",
        boom.error
    );
    let fine = run("fine").await;
    assert_eq!(
        (fine.state(), fine.worker_id.as_str()),
        (pb::TaskState::Succeeded, "lib-worker")
    );
    assert!(!worker.is_finished(), "the worker died with its task");
    worker.abort();
}
