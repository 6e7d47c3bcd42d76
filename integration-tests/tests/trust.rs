//! Starting safely and riding out pauses, through the real binaries: protected mode, one
//! table of bounds for the coordinator's flags and its workers' hellos, a built-in that a
//! `--runtime` may not shadow, coordinator URL lists checked whole at start; a coordinator
//! paused past its workers' lease that gives them a fresh grace instead of writing them off;
//! a worker that leaves a frozen coordinator for the next URL within seconds; and a leader
//! paused in the middle of its writes that no longer blocks the standby's takeover.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::process::{Command, Stdio};
use std::time::Duration;

use carpool_integration_tests::postgres::Postgres;
use carpool_integration_tests::{Coordinator, Proc, bin, eventually, totals};
use carpool_proto::pb::TaskState;
use nix::sys::signal::Signal;

#[test]
fn a_coordinator_listening_beyond_loopback_without_tokens_refuses_to_start() {
    let mut cmd = Command::new(bin("carpool-coordinator"));
    let out = cmd
        .args(["--listen", "0.0.0.0:0", "--spawner", "external"])
        .stdin(Stdio::null())
        .output()
        .expect("run the coordinator");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for flag in ["--client-token", "--worker-token", "--allow-unauthenticated"] {
        assert!(err.contains(flag), "the message does not name {flag}: {err}");
    }
    let (code, err) = Coordinator::refused(&["--metrics-listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--metrics-listen"), "{err}");
    // With both tokens it starts (and is stopped by its handle).
    let public = Coordinator::start_at(
        "0.0.0.0:0",
        &[
            "--spawner",
            "external",
            "--client-token",
            "c",
            "--worker-token",
            "w",
        ],
        &[],
    );
    drop(public);
}

#[test]
fn flags_the_workers_would_refuse_and_a_shadowed_built_in_are_refused_at_start() {
    for (args, names) in [
        (&["--memory-mb", "300000"][..], "--memory-mb 300000"),
        (&["--vcpus", "600"][..], "--vcpus 600"),
        (&["--execution-timeout", "8days"][..], "--execution-timeout"),
        (&["--max-slots", "70000"][..], "--max-slots 70000"),
        (
            &["--runtime", "echo=python3 -m awslambdaric app.handler"][..],
            "built-in",
        ),
        (&["--exec", "spin=cat"][..], "built-in"),
    ] {
        let (code, err) = Coordinator::refused(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
    }
    // The worker refuses the same bounds at start, naming the flag.
    let err = worker_refused(&[
        "--coordinator",
        "http://127.0.0.1:1",
        "--function",
        "echo",
        "--memory-mb",
        "300000",
    ]);
    assert!(err.contains("--memory-mb 300000"), "{err}");
}

/// Runs `carpool-worker` with `args`, which it must refuse at start (exit 2); its message.
fn worker_refused(args: &[&str]) -> String {
    let out = Command::new(bin("carpool-worker"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the worker");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn database_mistakes_fail_at_once_with_the_servers_words_and_an_unreachable_one_is_not_serving() {
    let pg = Postgres::start();
    let url = pg.url();
    // A database that does not exist, a role the server does not know, TLS required of a
    // server that offers none: no wait mends them, so the start fails at once (well within
    // the minute an unreachable database is waited for), saying what the server said.
    let missing = url.replace("/postgres", "/nosuchdb");
    let stranger = url.replace("carpool@", "stranger@");
    let tls = format!("{url}?sslmode=require");
    for (state_url, says) in [
        (&missing, "\"nosuchdb\" does not exist"),
        (&stranger, "\"stranger\" does not exist"),
        (&tls, "does not support TLS"),
    ] {
        let (code, err) = Coordinator::refused(&["--spawner", "external", "--state-url", state_url]);
        assert_ne!(code, Some(0), "{err}");
        assert!(err.contains(says), "{state_url}: {err}");
        assert!(!err.contains("state directory"), "{err}");
    }
    // Nothing listens on the database's port yet: the coordinator waits, and meanwhile its
    // port answers NOT_SERVING, and UNAVAILABLE saying why.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    let away = format!("postgres://carpool@127.0.0.1:{port}/postgres");
    let coord = Coordinator::start(&["--spawner", "external", "--state-url", &away]);
    let channel = tonic::transport::Channel::from_shared(coord.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("the port answers while the database is away");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "carpool.v1.Tasks".into(),
        })
        .await
        .expect("health answers");
    assert_eq!(health.get_ref().status, 2, "NOT_SERVING");
    let refused = coord
        .client()
        .await
        .submit("job", "x")
        .await
        .expect_err("refused");
    assert!(
        refused.to_string().contains("waiting for its database"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_coordinator_url_list_is_checked_whole_at_start_and_tolerates_blank_entries() {
    let err = worker_refused(&[
        "--coordinator",
        "http://127.0.0.1:1,garbage",
        "--function",
        "echo",
    ]);
    assert!(err.contains("entry 2") && err.contains("garbage"), "{err}");
    // Blanks and spaces around entries are fine: the worker serves.
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "30s"]);
    let list = format!(" , {} , ,", coord.url);
    let _worker = Proc::worker(&["--coordinator", &list, "--function", "echo", "--id", "listed"]);
    let client = coord.client().await;
    let r = client.run("echo", "hi").await.expect("run");
    assert_eq!(r.state(), TaskState::Succeeded);
    assert_eq!(r.worker_id, "listed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_paused_past_the_lease_gives_its_workers_a_fresh_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().display().to_string();
    let coord = Coordinator::start(&[
        "--spawner",
        "external",
        "--keep-alive",
        "60s",
        "--state-dir",
        &state,
    ]);
    let _worker = Proc::worker(&[
        "--coordinator",
        &coord.url,
        "--function",
        "sleep",
        "--id",
        "steady",
        "--slots",
        "4",
    ]);
    let client = coord.client().await;
    eventually("the worker to connect", || async {
        (!client.workers("sleep").await.ok()?.is_empty()).then_some(())
    })
    .await;
    let ids: Vec<u64> = futures::future::join_all((0..4).map(|_| client.submit("sleep", "9000")))
        .await
        .into_iter()
        .map(|r| r.expect("submit"))
        .collect();
    eventually("four tasks running", || async {
        (totals(&client).await.running == 4).then_some(())
    })
    .await;
    // Frozen for longer than the 5 s liveness lease, then woken.
    coord.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(7)).await;
    coord.signal(Signal::SIGCONT);
    let mut results = client.watch(ids.clone()).await.expect("watch");
    let mut done = 0;
    while let Some(r) = futures::StreamExt::next(&mut results).await {
        let r = r.expect("a result");
        assert_eq!(r.state(), TaskState::Succeeded, "{}", r.error);
        assert_eq!(
            r.attempts, 1,
            "task {} ran again after the coordinator's own pause",
            r.task_id
        );
        done += 1;
        if done == ids.len() {
            break;
        }
    }
    assert_eq!(done, ids.len());
    let t = totals(&client).await;
    assert_eq!((t.retried, t.workers_started), (0, 1), "{t:?}");
    assert!(
        coord.log().contains("this coordinator was paused"),
        "{}",
        coord.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_leaves_a_frozen_coordinator_for_the_next_url_within_seconds() {
    let a = Coordinator::start(&["--spawner", "external", "--keep-alive", "60s"]);
    let b = Coordinator::start(&["--spawner", "external", "--keep-alive", "60s"]);
    let urls = format!("{},{}", a.url, b.url);
    let _worker = Proc::worker(&["--coordinator", &urls, "--function", "echo", "--id", "mover"]);
    let a_client = a.client().await;
    eventually("the worker on the first coordinator", || async {
        (!a_client.workers("echo").await.ok()?.is_empty()).then_some(())
    })
    .await;
    a.signal(Signal::SIGSTOP);
    // HTTP/2 keepalive (3 s pings, 5 s to answer) notices the silence; the worker moves on.
    let b_client = b.client().await;
    eventually("the worker on the second coordinator", || async {
        (!b_client.workers("echo").await.ok()?.is_empty()).then_some(())
    })
    .await;
    let r = b_client.run("echo", "moved").await.expect("run");
    assert_eq!(r.worker_id, "mover");
    a.signal(Signal::SIGCONT);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_in_the_middle_of_its_writes_does_not_block_the_takeover() {
    let pg = Postgres::start();
    let url = pg.url();
    let args = ["--spawner", "external", "--state-url", &url, "--lease", "2s"];
    let mut leader = Coordinator::start(&args);
    eventually("the first coordinator to be active", || async {
        leader.client().await.submit("job", "warm").await.ok()
    })
    .await;
    let mut frozen = Vec::new();
    for round in 0..3 {
        let standby = Coordinator::start(&args);
        // A stream of submissions keeps the leader's writer in a transaction most of the
        // time; it is frozen at a different moment each round.
        let client = leader.client().await;
        let load = tokio::spawn(async move {
            loop {
                let batch = (0..16).map(|_| client.submit("job", "x"));
                let _ = futures::future::join_all(batch).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(300 + 170 * round)).await;
        leader.signal(Signal::SIGSTOP);
        // While it stays frozen (no SIGCONT), the standby takes over.
        let standby_client = standby.client().await;
        eventually("the standby to take over from the frozen leader", || async {
            standby_client.submit("job", "after").await.ok()
        })
        .await;
        load.abort();
        frozen.push(std::mem::replace(&mut leader, standby));
    }
    for old in frozen {
        old.signal(Signal::SIGCONT);
        old.kill9();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_idempotency_key_is_acknowledged_only_once_the_first_write_is_durable() {
    let pg = Postgres::start();
    let url = pg.url();
    let coord = Coordinator::start(&["--spawner", "external", "--state-url", &url]);
    let client = coord.client().await;
    eventually("the coordinator to be active", || async {
        client.submit("job", "warm").await.ok()
    })
    .await;
    let keyed = || carpool_proto::pb::SubmitRequest {
        function: "job".into(),
        input: Some(carpool_proto::payload::text("x")),
        idempotency_key: "retry-me".into(),
        ..Default::default()
    };
    pg.freeze(true);
    let first = {
        let c = client.clone();
        tokio::spawn(async move { c.submit_request(keyed()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The client retries while its first attempt is still being written.
    let repeat = {
        let c = client.clone();
        tokio::spawn(async move { c.submit_request(keyed()).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !repeat.is_finished(),
        "the repeat was acknowledged while the first write was not durable: {:?}",
        repeat.await
    );
    pg.freeze(false);
    let first = first.await.expect("join").expect("acknowledged once written");
    let repeat = repeat.await.expect("join").expect("acknowledged once written");
    assert_eq!(first, repeat, "the same key, the same task");
    let db = pg.client().await;
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM carpool_tasks WHERE idempotency_key = 'retry-me'",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(stored, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn task_ids_never_repeat_after_a_takeover_not_even_those_never_written() {
    let pg = Postgres::start();
    let url = pg.url();
    let args = ["--spawner", "external", "--state-url", &url, "--lease", "2s"];
    let leader = Coordinator::start(&args);
    let client = leader.client().await;
    let warm = eventually("the first coordinator to be active", || async {
        client.submit("job", "warm").await.ok()
    })
    .await;
    let standby = Coordinator::start(&args);
    // The database freezes: submissions get ids in the leader's memory, never written.
    pg.freeze(true);
    let hanging: Vec<_> = (0..3)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.submit("job", "never written").await })
        })
        .collect();
    let handed_out = eventually("the leader to hand out ids it cannot write", || async {
        let mut seen = Vec::new();
        for id in warm + 1..=warm + 8 {
            if client.get(id).await.is_ok() {
                seen.push(id);
            }
        }
        (seen.len() == 3).then_some(seen)
    })
    .await;
    leader.kill9();
    for h in hanging {
        h.abort();
    }
    pg.freeze(false);
    let standby_client = standby.client().await;
    let after = eventually("the standby to take over", || async {
        standby_client.submit("job", "after").await.ok()
    })
    .await;
    let highest = *handed_out.iter().max().expect("three ids");
    assert!(
        after > highest,
        "the new leader gave id {after}, at or below ids the old one handed out: {handed_out:?}"
    );
    let info = standby_client.get(after).await.expect("the new task");
    assert_eq!(info.function, "job");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_final_state_reaches_its_waiter_only_once_the_journal_holds_it() {
    let pg = Postgres::start();
    let url = pg.url();
    let coord = Coordinator::start(&[
        "--spawner",
        "external",
        "--state-url",
        &url,
        "--keep-alive",
        "60s",
    ]);
    let client = coord.client().await;
    eventually("the coordinator to be active", || async {
        client.submit("job", "warm").await.ok()
    })
    .await;
    let _worker = Proc::worker(&[
        "--coordinator",
        &coord.url,
        "--function",
        "sleep",
        "--id",
        "sleeper",
    ]);
    eventually("the worker to connect", || async {
        (!client.workers("sleep").await.ok()?.is_empty()).then_some(())
    })
    .await;
    let run = {
        let c = client.clone();
        tokio::spawn(async move { c.run("sleep", "1000").await })
    };
    eventually("the task to run", || async {
        (totals(&client).await.running == 1).then_some(())
    })
    .await;
    // The result arrives while the database is frozen: it is not durable yet.
    pg.freeze(true);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !run.is_finished(),
        "the client saw a final state the journal did not hold: {:?}",
        run.await
    );
    pg.freeze(false);
    let r = run.await.expect("join").expect("run");
    assert_eq!(r.state(), TaskState::Succeeded, "{}", r.error);
    let db = pg.client().await;
    let finished: i64 = db
        .query_one(
            "SELECT count(*) FROM carpool_tasks WHERE id = $1 AND result IS NOT NULL",
            &[&(r.task_id as i64)],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(finished, 1, "the result the client saw is in the database");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_given_a_frozen_first_coordinator_answers_from_the_next() {
    let frozen = Coordinator::start(&["--spawner", "external"]);
    let live = Coordinator::start(&["--spawner", "external"]);
    frozen.signal(Signal::SIGSTOP);
    let list = format!("{},{}", frozen.url, live.url);
    let mut child = Command::new(bin("carpool"))
        .args(["--coordinator", &list, "stats"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CLI");
    // The probe of the frozen one has a deadline (5 s); without one the CLI waited on it.
    let status = eventually("the CLI to answer past the frozen coordinator", || {
        let done = child.try_wait().ok().flatten();
        async move { done }
    })
    .await;
    frozen.signal(Signal::SIGCONT);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(status.success(), "{err}");
}
