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
        ..Default::default()
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

#[tokio::test]
async fn tls_end_to_end_with_a_throwaway_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("certificate");
    let dir = std::env::temp_dir().join(format!("carpool-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let (cert_s, key_s) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let coord = Coordinator::start(&[
        "--tls-cert",
        &cert_s,
        "--tls-key",
        &key_s,
        "--client-token",
        CLIENT_TOKEN,
    ]);
    let url = coord.url.replace("http://", "https://");

    // Local workers dial back over TLS (they get the CA and the name from the spawner),
    // so a task that runs proves both directions.
    let tls = carpool_proto::TlsOptions {
        ca_pem: Some(certified.cert.pem().into_bytes()),
        domain: Some("localhost".into()),
    };
    let options = ConnectOptions {
        token: Some(Secret::new(CLIENT_TOKEN)),
        tls: tls.clone(),
    };
    let client = Client::connect_with(&url, &options).await.expect("TLS connect");
    let r = client.run("echo", "over tls").await.expect("run");
    assert_eq!(r.state(), pb::TaskState::Succeeded, "{r:?}");
    assert_eq!(
        carpool_proto::payload::into_bytes(r.output),
        "over tls".as_bytes()
    );

    // Plaintext to the TLS port fails, and so does TLS without trusting the certificate.
    let plain = Client::connect_with(&coord.url, &with_token()).await;
    let plain_failed = match plain {
        Err(_) => true,
        Ok(c) => c.stats().await.is_err(),
    };
    assert!(plain_failed, "plaintext was served on the TLS port");
    let untrusted = ConnectOptions {
        token: Some(Secret::new(CLIENT_TOKEN)),
        ..Default::default()
    };
    let untrusted_failed = match Client::connect_with(&url, &untrusted).await {
        Err(_) => true,
        Ok(c) => c.stats().await.is_err(),
    };
    assert!(untrusted_failed, "an untrusted certificate was accepted");
    let _ = std::fs::remove_dir_all(&dir);
}

fn with_token() -> ConnectOptions {
    ConnectOptions {
        token: Some(Secret::new(CLIENT_TOKEN)),
        ..Default::default()
    }
}
