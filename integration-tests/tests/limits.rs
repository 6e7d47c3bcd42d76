//! Bad input gets a precise answer and changes nothing; nothing a peer or a flag does grows
//! memory or cost without bound. Each test runs the real binaries.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use carpool_integration_tests::{Coordinator, FakeWorker, eventually, hello, raw, totals};
use carpool_proto::pb::{self, tasks_client::TasksClient, worker_message::Kind as Up};
use futures::StreamExt;
use prost::Message;
use tonic::Code;

fn code(e: carpool_client::Error) -> (Code, String) {
    match e {
        carpool_client::Error::Status(s) => (s.code(), s.message().to_owned()),
        other => panic!("expected a status, got {other}"),
    }
}

fn submit_bytes(function: &str, input: &str) -> bytes::Bytes {
    pb::SubmitRequest {
        function: function.into(),
        input: Some(carpool_proto::payload::text(input)),
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

#[tokio::test]
async fn undecodable_and_oversize_requests_get_invalid_argument_and_resource_exhausted() {
    let coord = Coordinator::start(&["--spawner", "external"]);
    let garbage = bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    for method in [
        "/carpool.v1.Tasks/Submit",
        "/carpool.v1.Tasks/Get",
        "/carpool.v1.Cluster/Stats",
    ] {
        let status = raw::unary(coord.channel().await, method, garbage.clone())
            .await
            .expect_err("garbage accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
    }
    let first = raw::streaming(
        coord.channel().await,
        "/carpool.v1.Workers/Connect",
        vec![garbage],
    )
    .await;
    let status = match first {
        Err(s) => s,
        Ok(stream) => raw::drain(stream).await.1,
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Over the message limit (the payload limit with room for the envelope): gRPC's own
    // code for a message too large.
    let big = submit_bytes("resize", &"x".repeat(9 << 20));
    let status = raw::unary(coord.channel().await, "/carpool.v1.Tasks/Submit", big)
        .await
        .expect_err("9 MiB accepted");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let huge_hello = bytes::Bytes::from(vec![0u8; 20 << 20]);
    let status = match raw::streaming(
        coord.channel().await,
        "/carpool.v1.Workers/Connect",
        vec![huge_hello],
    )
    .await
    {
        Err(s) => s,
        Ok(stream) => raw::drain(stream).await.1,
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let t = totals(&coord.client().await).await;
    assert_eq!(
        (t.pending, t.workers_started),
        (0, 0),
        "bad bytes changed state: {t:?}"
    );
}

#[tokio::test]
async fn a_malformed_map_item_ends_the_call_with_its_status_after_the_accepted_results() {
    let coord = Coordinator::start(&[]);
    let item = |seq: u64| -> bytes::Bytes {
        pb::MapRequest {
            function: "echo".into(),
            input: Some(carpool_proto::payload::text(format!("item {seq}"))),
            seq,
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    };
    let messages = vec![
        item(1),
        item(2),
        bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
    ];
    let stream = raw::streaming(coord.channel().await, "/carpool.v1.Tasks/Map", messages)
        .await
        .expect("map");
    let (got, status) = raw::drain(stream).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let mut seqs: Vec<u64> = got
        .iter()
        .map(|b| {
            let r = pb::MapResponse::decode(b.as_ref()).expect("a MapResponse");
            assert_eq!(r.result.expect("a result").state(), pb::TaskState::Succeeded);
            r.seq
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2], "the accepted items' results came first");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let coord = Coordinator::start(&["--spawner", "external", "--client-token", "s3cret"]);
    for header in ["bearer s3cret", "BEARER s3cret"] {
        let mut c = TasksClient::with_interceptor(coord.channel().await, move |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", header.parse().expect("ascii"));
            Ok(r)
        });
        let err = c
            .get(pb::GetRequest { task_id: 9 })
            .await
            .expect_err("no such task");
        assert_eq!(err.code(), Code::NotFound, "{header}: {err:?}");
    }
    let mut basic = TasksClient::with_interceptor(coord.channel().await, |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("authorization", "Basic czNjcmV0".parse().expect("ascii"));
        Ok(r)
    });
    let err = basic.get(pb::GetRequest { task_id: 9 }).await.expect_err("basic");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("Bearer scheme"), "{}", err.message());
}

#[tokio::test]
async fn absurd_hellos_are_refused_and_bill_nothing() {
    let coord = Coordinator::start(&["--spawner", "external"]);
    let cases = [
        pb::Hello {
            memory_mb: u32::MAX,
            ..hello("big", "resize", 1)
        },
        pb::Hello {
            vcpus: 0,
            ..hello("none", "resize", 1)
        },
        pb::Hello {
            slots: 1 << 20,
            ..hello("many", "resize", 1)
        },
        pb::Hello {
            worker_id: "w".repeat(300),
            ..hello("long", "resize", 1)
        },
        pb::Hello {
            function: "no spaces".into(),
            ..hello("space", "resize", 1)
        },
    ];
    for h in cases {
        let first = pb::WorkerMessage {
            kind: Some(Up::Hello(h.clone())),
        };
        let refused = FakeWorker::try_connect(coord.channel().await, first)
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted {h:?}"));
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let t = totals(&coord.client().await).await;
    assert_eq!((t.workers_started, t.billed_gb_ms), (0, 0.0), "{t:?}");
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_submission_is_already_exists() {
    let coord = Coordinator::start(&["--spawner", "external"]);
    let client = coord.client().await;
    let req = |function: &str, input: &str| pb::SubmitRequest {
        function: function.into(),
        input: Some(carpool_proto::payload::text(input)),
        idempotency_key: "order-7".into(),
        ..Default::default()
    };
    let id = client.submit_request(req("resize", "a")).await.expect("submit");
    assert_eq!(
        client.submit_request(req("resize", "a")).await.expect("retry"),
        id
    );
    for other in [req("resize", "b"), req("encode", "a")] {
        let (c, msg) = code(
            client
                .submit_request(other)
                .await
                .expect_err("reused key accepted"),
        );
        assert_eq!(c, Code::AlreadyExists, "{msg}");
        assert!(msg.contains("order-7") && msg.contains(&id.to_string()), "{msg}");
    }
    assert_eq!(totals(&client).await.pending, 1);
}

#[tokio::test]
async fn a_payload_at_the_default_limit_comes_back_to_a_client_with_default_settings() {
    let coord = Coordinator::start(&[]);
    // tonic's default, like every gRPC client's: 4 MiB per received message.
    let mut plain = TasksClient::new(coord.channel().await);
    let limit = carpool_coordinator::config::DEFAULT_MAX_PAYLOAD_BYTES;
    let input = vec![b'x'; limit];
    let r = plain
        .run(pb::SubmitRequest {
            function: "echo".into(),
            input: Some(pb::Payload {
                data: Some(pb::payload::Data::Binary(input.clone().into())),
            }),
            ..Default::default()
        })
        .await
        .expect("a full payload's result fits a default client")
        .into_inner();
    assert_eq!(r.state(), pb::TaskState::Succeeded, "{}", r.error);
    assert_eq!(carpool_proto::payload::into_bytes(r.output).len(), limit);
}

#[tokio::test]
async fn a_self_signed_ca_certificate_is_refused_at_start_saying_what_to_change() {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    // What plain `openssl req -x509` makes: a CA certificate.
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let (code, err) = Coordinator::refused(&[
        "--tls-cert",
        &cert_path.to_string_lossy(),
        "--tls-key",
        &key_path.to_string_lossy(),
    ]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("CA:TRUE") && err.contains("basicConstraints=critical,CA:FALSE"),
        "{err}"
    );
}

#[tokio::test]
async fn functions_fleet_and_failed_spawns_are_bounded() {
    // An allow-list and a cap on distinct functions.
    let coord = Coordinator::start(&["--spawner", "external", "--functions", "resize,encode"]);
    let client = coord.client().await;
    client.submit("resize", "x").await.expect("listed");
    let (c, msg) = code(client.submit("mine", "x").await.expect_err("unlisted accepted"));
    assert_eq!(c, Code::InvalidArgument, "{msg}");
    drop(coord);
    let coord = Coordinator::start(&["--spawner", "external", "--max-functions", "2"]);
    let client = coord.client().await;
    client.submit("f1", "x").await.expect("f1");
    client.submit("f2", "x").await.expect("f2");
    let (c, msg) = code(client.submit("f3", "x").await.expect_err("a third function"));
    assert_eq!(c, Code::ResourceExhausted, "{msg}");
    drop(coord);

    // The fleet cap holds over all functions together.
    let coord = Coordinator::start(&["--max-workers", "2", "--max-fleet", "3", "--slots", "1"]);
    let client = coord.client().await;
    for f in ["sleep", "spin"] {
        for _ in 0..4 {
            client.submit(f, "2000").await.expect("submit");
        }
    }
    let mut most = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let t = totals(&client).await;
        most = most.max(t.workers_live + t.workers_starting);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(most, 3, "live plus starting workers over both functions");
    drop(coord);

    // A function no worker can run: after --max-spawn-failures spawns in a row, its tasks
    // fail with the cause instead of being respawned for ever.
    let coord = Coordinator::start(&[
        "--worker-bin",
        "/bin/false",
        "--max-spawn-failures",
        "3",
        "--max-workers",
        "1",
    ]);
    let client = coord.client().await;
    let task = client.submit("echo", "x").await.expect("submit");
    let info = eventually("the task to fail after three failed spawns", || async {
        let info = client.get(task).await.ok()?;
        info.result.is_some().then_some(info)
    })
    .await;
    let r = info.result.expect("result");
    assert_eq!(r.state(), pb::TaskState::Failed);
    assert!(r.error.contains("3 spawns in a row failed"), "{}", r.error);
    let t = totals(&client).await;
    assert_eq!(
        (t.spawn_failures, t.workers_started, t.billed_gb_ms),
        (3, 0, 0.0),
        "{t:?}"
    );
    assert!(!t.last_spawn_error.contains('\n'), "{:?}", t.last_spawn_error);
}

#[tokio::test]
async fn settings_out_of_range_are_refused_at_start() {
    for (args, says) in [
        (
            vec!["--sample-interval", "0s"],
            "--sample-interval must be at least 10ms",
        ),
        (
            vec!["--deadline-fraction=-1"],
            "--deadline-fraction must be in (0, 1]",
        ),
        (vec!["--max-fleet", "0"], "--max-fleet must be at least 1"),
        (vec!["--functions", "a b"], "--functions"),
    ] {
        let (code, err) = Coordinator::refused(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn results_of_the_drain_survive_and_a_damaged_journal_refuses_to_start() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().to_string_lossy().into_owned();
    let coord = Coordinator::start(&["--state-dir", &state]);
    let client = coord.client().await;
    let id = client.submit("sleep", "700").await.expect("submit");
    eventually("the task to run", || async {
        (client.get(id).await.ok()?.state() == pb::TaskState::Running).then_some(())
    })
    .await;
    // SIGTERM while it runs: the drain lets it finish, and its result is on disk before
    // the process exits.
    assert!(coord.terminate().success());
    let coord = Coordinator::start(&["--state-dir", &state, "--spawner", "external"]);
    let client = coord.client().await;
    let info = client.get(id).await.expect("known");
    assert_eq!(info.state(), pb::TaskState::Succeeded, "{info:?}");
    assert_eq!(info.attempts, 1);
    drop(client);
    let log = coord.log();
    let status = coord.terminate();
    assert!(status.success(), "{status:?}: {log}");

    // Damage the task's record: the next start refuses, naming it.
    {
        let db = redb::Database::create(dir.path().join("carpool.redb")).expect("open");
        let tasks: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("tasks");
        let tx = db.begin_write().expect("tx");
        tx.open_table(tasks)
            .expect("table")
            .insert(id, [0xffu8, 0xff, 0xff].as_slice())
            .expect("insert");
        tx.commit().expect("commit");
    }
    let (code, err) = Coordinator::refused(&["--state-dir", &state]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains(&format!("record of task {id} does not decode")),
        "{err}"
    );
}

#[tokio::test]
async fn thumbnail_touches_no_file_outside_its_data_dir() {
    let outside = tempfile::tempdir().expect("dir");
    let secret = outside.path().join("secret.jpg");
    std::fs::write(&secret, b"not yours").expect("write");
    let target = outside.path().join("out.jpg");
    let data = tempfile::tempdir().expect("data dir");
    for args in [
        vec![],
        vec![
            "--worker-data-dir".to_owned(),
            data.path().to_string_lossy().into_owned(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let coord = Coordinator::start(&args);
        let client = coord.client().await;
        let job = format!(
            r#"{{"input":"{}","output":"{}","width":8}}"#,
            secret.display(),
            target.display()
        );
        let r = client.run("thumbnail", job).await.expect("run");
        assert_eq!(r.state(), pb::TaskState::Failed, "{args:?}: {r:?}");
        assert!(
            r.error.contains("data dir") || r.error.contains("s3://"),
            "{}",
            r.error
        );
        assert!(!target.exists(), "a file was written outside the data dir");
    }
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = stat.rsplit_once(')').expect("comm").1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

#[tokio::test]
async fn a_cancelled_spin_stops_burning_its_core() {
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "60s"]);
    let client = coord.client().await;
    let worker = carpool_integration_tests::Proc::worker(&[
        "--coordinator",
        &coord.url,
        "--function",
        "spin",
        "--id",
        "spinner",
    ]);
    let id = client.submit("spin", "60000").await.expect("submit");
    eventually("the spin to run", || async {
        (client.get(id).await.ok()?.state() == pb::TaskState::Running).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.cancel(id).await.expect("cancel");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_seconds(worker.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_seconds(worker.pid()) - before;
    assert!(
        used < 0.5,
        "the cancelled spin still burns {used:.2} CPU-seconds per second"
    );
}

#[tokio::test]
async fn an_output_over_the_limit_fails_its_task_alone() {
    let coord = Coordinator::start(&[
        "--max-payload-bytes",
        "1024",
        "--exec",
        "big=head -c 5000 /dev/zero",
        "--exec",
        "small=cat",
        "--max-workers",
        "1",
    ]);
    let client = coord.client().await;
    let r = client.run("big", "x").await.expect("run");
    assert_eq!(r.state(), pb::TaskState::Failed, "{r:?}");
    assert!(
        r.error.contains("output too large") && r.error.contains("5000"),
        "{}",
        r.error
    );
    let ok = client.run("small", "fine").await.expect("run");
    assert_eq!(ok.state(), pb::TaskState::Succeeded, "{ok:?}");
    assert!(!coord.log().contains("stream broke"), "{}", coord.log());
}

#[tokio::test]
async fn silent_connections_are_closed_and_connections_are_capped() {
    let coord = Coordinator::start(&["--handshake-timeout", "300ms"]);
    // A connection that never sends its preface, or only half of it, is closed after the
    // handshake timeout.
    for sent in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut silent = std::net::TcpStream::connect(coord.addr()).expect("connect");
        silent.write_all(sent).expect("write");
        silent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        assert_eq!(
            silent.read(&mut buf).unwrap_or(0),
            0,
            "a silent connection was kept"
        );
    }
    drop(coord);
    let coord = Coordinator::start(&["--handshake-timeout", "60s", "--max-connections", "2"]);
    let addr = coord.addr().to_owned();
    // Two connections that stay hold both places: a third caller waits until one goes.
    let mut held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).expect("connect");
            s.write_all(b"PRI * HTTP/2.0\r\n").expect("write");
            s
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let channel = tonic::transport::Channel::from_shared(coord.url.clone())
        .expect("url")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_millis(500));
    let waited = match channel.connect().await {
        Err(_) => true,
        Ok(c) => carpool_client::Client::from_channel(c, None)
            .expect("client")
            .stats()
            .await
            .is_err(),
    };
    assert!(waited, "a third connection was served past --max-connections 2");
    held.clear();
    let client = eventually("a place to free up", || async {
        carpool_client::Client::connect(&coord.url).await.ok()
    })
    .await;
    client.stats().await.expect("served once a place is free");
}

#[tokio::test]
async fn a_worker_that_stops_reading_is_written_off_and_its_tasks_go_back() {
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "60s"]);
    let client = coord.client().await;
    // It takes every task it is given and never reads its stream.
    let greedy = pb::Hello {
        vcpus: 2,
        ..hello("deaf", "resize", 65_536)
    };
    let _deaf = FakeWorker::connect(coord.channel().await, greedy).await;
    let input = "x".repeat(4096);
    let reqs = futures::stream::iter(0..3000).map(|i| {
        let client = &client;
        let input = input.clone();
        async move {
            client
                .submit("resize", format!("{i}{input}"))
                .await
                .expect("submit")
        }
    });
    let _ids: Vec<u64> = reqs.buffer_unordered(64).collect().await;
    let t = eventually("the deaf worker to be written off", || async {
        let t = totals(&client).await;
        (t.workers_live == 0).then_some(t)
    })
    .await;
    assert_eq!((t.running, t.pending), (0, 3000), "{t:?}");
}

#[tokio::test]
async fn watch_ids_are_bounded() {
    let coord = Coordinator::start(&["--spawner", "external"]);
    let client = coord.client().await;
    let err = match client.watch((0..20_000).collect()).await {
        Err(e) => e,
        Ok(mut s) => match s.next().await {
            Some(Err(e)) => e,
            other => panic!("watched 20,000 ids: {:?}", other.map(|r| r.is_ok())),
        },
    };
    let (c, msg) = code(err);
    assert_eq!(c, Code::ResourceExhausted, "{msg}");
    assert!(msg.contains("10000"), "{msg}");
}

fn big(function: &str, fill: char, key: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        function: function.into(),
        input: Some(carpool_proto::payload::text(fill.to_string().repeat(3 << 20))),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

fn output_of(r: &pb::TaskResult) -> (usize, Option<char>) {
    match r.output.as_ref().and_then(|p| p.data.as_ref()) {
        Some(pb::payload::Data::Text(t)) => (t.len(), t.chars().next()),
        _ => (0, None),
    }
}

/// The attack of a client that holds memory through payloads and results: pending payloads
/// are refused past `--max-pending-bytes`, and results past `--max-result-bytes` are evicted
/// oldest first, after which reads of them say so (there is no journal to read them from).
#[tokio::test]
async fn held_payloads_and_results_are_bounded_in_bytes() {
    // Nothing serves `f`: its payloads stay pending.
    let coord = Coordinator::start(&["--spawner", "external", "--max-pending-bytes", "10000000"]);
    let client = coord.client().await;
    for i in 0..3 {
        client
            .submit_request(big("f", 'p', &format!("p{i}")))
            .await
            .expect("under the budget");
    }
    let (c, message) = code(
        client
            .submit_request(big("f", 'p', "p3"))
            .await
            .expect_err("past the budget"),
    );
    assert_eq!(c, Code::ResourceExhausted, "{message}");
    assert!(message.contains("--max-pending-bytes"), "{message}");
    assert_eq!(totals(&client).await.pending, 3, "the refusal changed something");
    drop(coord);

    // Real workers echo 3 MiB back; a budget of 10 MB holds three results.
    let coord = Coordinator::start(&["--max-result-bytes", "10000000", "--max-workers", "1"]);
    let client = coord.client().await;
    let mut ids = Vec::new();
    for (i, fill) in ['a', 'b', 'c', 'd', 'e', 'f'].into_iter().enumerate() {
        let r = client
            .run_request(big("echo", fill, &format!("r{i}")))
            .await
            .expect("run");
        assert_eq!(
            output_of(&r),
            (3 << 20, Some(fill)),
            "a live waiter gets its whole result"
        );
        ids.push(r.task_id);
    }
    let (c, message) = code(client.get(ids[0]).await.expect_err("evicted"));
    assert_eq!(c, Code::FailedPrecondition, "{message}");
    assert!(
        message.contains("evicted") && message.contains("--max-result-bytes"),
        "{message}"
    );
    let (c, _) = code(
        client
            .watch(ids.clone())
            .await
            .map(|_| ())
            .expect_err("a watch of an evicted result"),
    );
    assert_eq!(c, Code::FailedPrecondition);
    let (c, _) = code(
        client
            .run_request(big("echo", 'a', "r0"))
            .await
            .expect_err("a Run repeating an evicted task's key"),
    );
    assert_eq!(c, Code::FailedPrecondition);
    // The newest are kept whole.
    let last = client.get(ids[5]).await.expect("kept");
    assert_eq!(output_of(&last.result.expect("result")), (3 << 20, Some('f')));
}

/// With a journal, an evicted result is read back from it: by Get, by Watch and by a Run
/// that repeats its key, also after a restart (which loads no more than the budget).
#[tokio::test]
async fn with_a_journal_evicted_results_are_read_back_from_it() {
    let dir = std::env::temp_dir().join(format!("carpool-evict-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state_dir = dir.to_string_lossy().into_owned();
    let args = [
        "--state-dir",
        state_dir.as_str(),
        "--max-result-bytes",
        "7000000",
        "--max-workers",
        "1",
    ];
    let fills = ['a', 'b', 'c', 'd'];
    let mut ids = Vec::new();
    let coord = Coordinator::start(&args);
    let client = coord.client().await;
    for (i, fill) in fills.into_iter().enumerate() {
        let r = client
            .run_request(big("echo", fill, &format!("r{i}")))
            .await
            .expect("run");
        ids.push(r.task_id);
    }
    let check = |client: carpool_client::Client, ids: Vec<u64>| async move {
        for (id, fill) in ids.iter().zip(fills) {
            let info = client.get(*id).await.expect("get");
            assert_eq!(output_of(&info.result.expect("a result")), (3 << 20, Some(fill)));
        }
        let mut watched: Vec<(u64, (usize, Option<char>))> = client
            .watch(ids.clone())
            .await
            .expect("watch")
            .map(|r| {
                let r = r.expect("a result");
                (r.task_id, output_of(&r))
            })
            .collect()
            .await;
        watched.sort_unstable();
        let expected: Vec<_> = ids
            .iter()
            .zip(fills)
            .map(|(id, f)| (*id, (3 << 20, Some(f))))
            .collect();
        assert_eq!(watched, expected);
        let again = client
            .run_request(big("echo", 'a', "r0"))
            .await
            .expect("a Run repeating the first key");
        assert_eq!((again.task_id, output_of(&again)), (ids[0], (3 << 20, Some('a'))));
    };
    check(client, ids.clone()).await;
    drop(coord);
    let coord = Coordinator::start(&args);
    check(coord.client().await, ids).await;
    drop(coord);
    let _ = std::fs::remove_dir_all(&dir);
}
