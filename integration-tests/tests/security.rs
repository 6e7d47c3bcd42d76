//! Bearer tokens on every service, against the real binaries.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use carpool_client::{Client, ConnectOptions};
use carpool_integration_tests::{Coordinator, FakeWorker, hello};
use carpool_proto::pb::{self, worker_message::Kind as Up};
use carpool_proto::{Bearer, Secret};
use tonic::Code;

const CLIENT_TOKEN: &str = "client-tok-4f9a1c";
const WORKER_TOKEN: &str = "worker-tok-7d2e88";
const WRONG_TOKEN: &str = "bad-tok-31337";

fn code(e: carpool_client::Error) -> Code {
    match e {
        carpool_client::Error::Status(s) => s.code(),
        other => panic!("expected a status, got {other}"),
    }
}

#[tokio::test]
async fn tokens_guard_every_service_and_never_reach_the_log() {
    let coord = Coordinator::start(&["--client-token", CLIENT_TOKEN, "--worker-token", WORKER_TOKEN]);
    let with = |token: Option<&str>| ConnectOptions {
        token: token.map(Secret::new),
    };

    // The right token: local workers got theirs from the spawner, so the task runs.
    let client = Client::connect_with(&coord.url, &with(Some(CLIENT_TOKEN)))
        .await
        .expect("connect");
    let r = client.run("echo", "authorized").await.expect("run");
    assert_eq!(r.state(), pb::TaskState::Succeeded, "{r:?}");

    let mut refused = 0;
    for token in [None, Some(WRONG_TOKEN), Some(WORKER_TOKEN)] {
        let c = Client::connect_with(&coord.url, &with(token))
            .await
            .expect("connect");
        assert_eq!(
            code(c.submit("echo", "x").await.expect_err("submit")),
            Code::Unauthenticated,
            "{token:?}"
        );
        assert_eq!(
            code(c.stats().await.expect_err("stats")),
            Code::Unauthenticated,
            "{token:?}"
        );
        assert_eq!(
            code(c.workers("").await.expect_err("workers")),
            Code::Unauthenticated,
            "{token:?}"
        );
        refused += 3;
    }
    assert_eq!(refused, 9);

    for token in [None, Some(WRONG_TOKEN), Some(CLIENT_TOKEN)] {
        let channel = coord.channel().await;
        let bearer = Bearer::new(token.map(Secret::new).as_ref()).expect("header");
        let mut workers = pb::workers_client::WorkersClient::with_interceptor(channel, bearer);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::WorkerMessage {
            kind: Some(Up::Hello(hello("intruder", "echo", 1))),
        })
        .await
        .expect("send");
        let status = workers
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect_err("a worker without the worker token was admitted");
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
    }
    // A worker with the right token is admitted.
    let bearer = Bearer::new(Some(&Secret::new(WORKER_TOKEN))).expect("header");
    let channel = coord.channel().await;
    let _ = FakeWorker::connect_with(channel, bearer, hello("insider", "echo", 1)).await;

    let stats = client.stats().await.expect("stats").total.expect("total");
    assert_eq!(stats.succeeded, 1, "refused requests changed the stats");
    let log = coord.log();
    assert!(
        log.contains("rejected a request"),
        "refusals are not logged:\n{log}"
    );
    for secret in [CLIENT_TOKEN, WORKER_TOKEN, WRONG_TOKEN] {
        assert!(!log.contains(secret), "the log shows a token");
    }
}
