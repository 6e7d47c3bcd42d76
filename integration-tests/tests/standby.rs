//! More than one coordinator: state in a real PostgreSQL server (each test runs its own
//! cluster, `initdb` in a temporary directory), one active coordinator holding the lease,
//! standbys that take over. Through the real binaries, with real workers that reconnect.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use carpool_integration_tests::postgres::Postgres;
use carpool_integration_tests::{Coordinator, Proc, RunLog, bin, eventually, totals};
use carpool_proto::pb;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A real worker of `function` with `id`, dialling every coordinator in `urls`.
fn worker(urls: &str, function: &str, id: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("carpool-worker"));
    cmd.args(["--coordinator", urls, "--function", function, "--id", id])
        .args(extra)
        .env("RUST_LOG", "info");
    Proc::start(id, cmd)
}

/// Whether `coord` reports SERVING for the Tasks service.
async fn serving(coord: &Coordinator) -> bool {
    let Ok(channel) = tonic::transport::Channel::from_shared(coord.url.clone())
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    let request = HealthCheckRequest {
        service: "carpool.v1.Tasks".into(),
    };
    matches!(
        HealthClient::new(channel).check(request).await,
        Ok(r) if r.get_ref().status == 1
    )
}

/// The index of the one active coordinator among `coords` (waits for one).
async fn active(coords: &[&Coordinator]) -> usize {
    eventually("a coordinator to be active", || async {
        for (i, c) in coords.iter().enumerate() {
            if serving(c).await {
                return Some(i);
            }
        }
        None
    })
    .await
}

fn args(url: &str) -> Vec<String> {
    [
        "--spawner",
        "external",
        "--state-url",
        url,
        "--keep-alive",
        "60s",
        "--reconnect-grace",
        "5s",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn keyed(key: &str, payload: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        function: "job".into(),
        input: Some(carpool_proto::payload::text(format!("{payload}\n"))),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn takeovers_under_load_lose_nothing_run_nothing_twice_and_keep_idempotency_keys() {
    let pg = Postgres::start();
    let args = args(&pg.url());
    let mut coords = vec![Coordinator::start(&refs(&args))];
    assert_eq!(active(&[&coords[0]]).await, 0);
    coords.push(Coordinator::start(&refs(&args)));
    let addrs: Vec<String> = coords.iter().map(|c| c.addr().to_owned()).collect();
    let urls = format!("{},{}", coords[0].url, coords[1].url);
    let runs = RunLog::default();
    let exec = runs.exec();
    let workers: Vec<Proc> = (0..3)
        .map(|i| {
            worker(
                &urls,
                "job",
                &format!("w{i}"),
                &["--exec", &exec, "--slots", "4", "--reconnect-for", "120s"],
            )
        })
        .collect();
    let mut acked: HashMap<u64, String> = HashMap::new();
    let mut keys: HashMap<String, u64> = HashMap::new();
    let mut next = 0u32;
    for round in 0..3 {
        let i = active(&coords.iter().collect::<Vec<_>>()).await;
        let client = coords[i].client().await;
        for _ in 0..40 {
            let p = format!("t{next}");
            next += 1;
            let id = client.submit_request(keyed(&p, &p)).await.expect("acknowledged");
            acked.insert(id, p.clone());
            keys.insert(p, id);
        }
        eventually("some of the wave to be running", || async {
            (totals(&client).await.running >= 4).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200 + 150 * round)).await;
        // kill -9 the active one; it comes back on its address as a standby.
        let dead = coords.remove(i);
        dead.kill9();
        coords.insert(i, Coordinator::start_at(&addrs[i], &refs(&args), &[]));
    }
    let i = active(&coords.iter().collect::<Vec<_>>()).await;
    let client = coords[i].client().await;
    let done = eventually("every acknowledged task to finish", || async {
        let t = totals(&client).await;
        (t.pending == 0 && t.running == 0 && t.succeeded + t.failed == acked.len() as u64).then_some(t)
    })
    .await;
    assert_eq!(done.failed, 0, "{done:?}");
    for (id, p) in &acked {
        let r = client
            .get(*id)
            .await
            .expect("known after the takeovers")
            .result
            .expect("result");
        assert_eq!(r.state(), pb::TaskState::Succeeded, "{p}: {r:?}");
        let out = carpool_proto::payload::into_bytes(r.output);
        assert_eq!(String::from_utf8_lossy(&out).trim(), p.as_str());
    }
    runs.assert_each_ran_once(acked.len());
    // Idempotency keys still name their first task after the takeovers.
    for (key, id) in keys.iter().take(10) {
        assert_eq!(
            client.submit_request(keyed(key, key)).await.expect("resubmit"),
            *id,
            "{key}"
        );
    }
    for w in &workers {
        assert!(
            !w.log().contains("FailedPrecondition"),
            "a worker session was refused: {}",
            w.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_active_coordinator_writes_nothing_after_the_standby_took_over() {
    let pg = Postgres::start();
    let args = args(&pg.url());
    let mut a = Coordinator::start(&refs(&args));
    assert_eq!(active(&[&a]).await, 0);
    let b = Coordinator::start(&refs(&args));
    // The standby refuses, naming the active coordinator, and is NOT_SERVING.
    let refused = b
        .client()
        .await
        .submit("job", "x")
        .await
        .expect_err("a standby refuses");
    let status = match refused {
        carpool_client::Error::Status(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&a.url), "{status:?}");
    assert!(!serving(&b).await);
    let first = a.client().await.submit("job", "before").await.expect("submit");
    let a_client = a.client().await;

    a.signal(nix::sys::signal::Signal::SIGSTOP);
    let started = Instant::now();
    eventually("the standby to take over", || async {
        serving(&b).await.then_some(())
    })
    .await;
    let took = started.elapsed();
    let b_client = b.client().await;
    assert_eq!(
        b_client
            .get(first)
            .await
            .expect("the task is the new one's")
            .task_id,
        first
    );
    // A submission sent to the paused one, answered once it runs again: refused, unwritten.
    let late = tokio::spawn(async move { a_client.submit("job", "late").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal(nix::sys::signal::Signal::SIGCONT);
    let late = late.await.expect("join");
    assert!(
        late.is_err(),
        "the old leader acknowledged a task after losing its lease: {late:?}"
    );
    let status = a.wait_exit();
    assert!(!status.success(), "the old leader went on: {status:?}");
    assert!(a.log().contains("lost its lease"), "{}", a.log());
    // The database holds what the active one knows, and nothing from the paused one.
    let db = pg.client().await;
    let rows = db
        .query("SELECT id FROM carpool_tasks ORDER BY id", &[])
        .await
        .expect("query");
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        ids,
        vec![first as i64],
        "the paused coordinator wrote after the takeover"
    );
    let second = b_client
        .submit("job", "after")
        .await
        .expect("the new one accepts");
    assert!(second > first);
    eprintln!("takeover from a paused coordinator in {took:?}");
}

/// A paused active coordinator keeps its workers' connections open and silent. Its worker
/// notices the silence by its keepalive, and the standby, seeing the lease no longer
/// renewed, says in its refusals when it will take over: the worker waits for it rather than
/// dialing the frozen one again, and runs the standby's first task while the old one is
/// still frozen.
#[tokio::test(flavor = "multi_thread")]
async fn while_the_active_coordinator_is_paused_its_worker_waits_for_the_standby() {
    let pg = Postgres::start();
    let mut args = args(&pg.url());
    // A long lease: the stretch between a missed renewal and the takeover is seconds wide.
    args.extend(["--lease".to_owned(), "9s".to_owned()]);
    let a = Coordinator::start(&refs(&args));
    assert_eq!(active(&[&a]).await, 0);
    let b = Coordinator::start(&refs(&args));
    let urls = format!("{},{}", a.url, b.url);
    let w = worker(&urls, "echo", "w", &["--reconnect-for", "120s"]);
    let a_client = a.client().await;
    let r = a_client.run("echo", "before").await.expect("run on a");
    assert_eq!(r.state(), carpool_client::TaskState::Succeeded);

    a.signal(nix::sys::signal::Signal::SIGSTOP);
    // The standby's refusals: first plain, then, once the renewal is missed, with the hint.
    let b_client = b.client().await;
    let hint = eventually("the standby to say when it takes over", || async {
        match b_client.submit("echo", "probe").await {
            Err(carpool_client::Error::Status(s)) if s.code() == Code::Unavailable => s
                .metadata()
                .get(carpool_proto::TAKEOVER_IN_MS)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map(|ms| (ms, s.message().to_owned())),
            Err(e) => panic!("unexpected refusal: {e:?}"),
            Ok(id) => panic!("the standby accepted task {id} before the lease expired"),
        }
    })
    .await;
    assert!(hint.0 <= 9_000, "{hint:?}");
    assert!(hint.1.contains("missed its lease renewal"), "{hint:?}");
    // The worker reaches the standby, which runs a task while the old one is still frozen.
    eventually("the standby to take over", || async {
        serving(&b).await.then_some(())
    })
    .await;
    let r = b_client.run("echo", "after").await.expect("run on the standby");
    assert_eq!(r.state(), carpool_client::TaskState::Succeeded);
    assert!(
        w.log().contains("a standby is taking over; waiting for it"),
        "{}",
        w.log()
    );
    a.signal(nix::sys::signal::Signal::SIGCONT);
    drop(w);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_restart_under_load_is_ridden_out_and_loses_nothing() {
    let mut pg = Postgres::start();
    let args = args(&pg.url());
    let coord = Coordinator::start(&refs(&args));
    assert_eq!(active(&[&coord]).await, 0);
    let _workers: Vec<Proc> = (0..2)
        .map(|i| {
            worker(
                &coord.url,
                "job",
                &format!("w{i}"),
                &["--exec", "read p; echo \"$p\"", "--slots", "8"],
            )
        })
        .collect();
    let client = coord.client().await;
    let submitting = {
        let client = client.clone();
        tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0u32);
            let until = Instant::now() + Duration::from_secs(6);
            let mut n = 0;
            while Instant::now() < until {
                let p = format!("t{n}");
                n += 1;
                match client.submit_request(keyed("", &p)).await {
                    Ok(id) => acked.push((id, p)),
                    Err(carpool_client::Error::Status(s)) if s.code() == Code::Unavailable => refused += 1,
                    Err(e) => panic!("unexpected: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (acked, refused)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.restart();
    let (acked, refused) = submitting.await.expect("submitter");
    assert!(
        refused > 0,
        "no submission was refused while the database was down"
    );
    eventually("every acknowledged task to finish", || async {
        let t = totals(&client).await;
        (t.pending == 0 && t.running == 0 && t.succeeded == acked.len() as u64).then_some(())
    })
    .await;
    for (id, p) in &acked {
        let r = client.get(*id).await.expect("get").result.expect("result");
        assert_eq!(
            String::from_utf8_lossy(&carpool_proto::payload::into_bytes(r.output)).trim(),
            p
        );
    }
    // Every result reached the database once it was back.
    let db = pg.client().await;
    let unfinished: i64 = eventually("the results to be written", || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM carpool_tasks WHERE result IS NULL", &[])
            .await
            .ok()?
            .get(0);
        (n == 0).then_some(n)
    })
    .await;
    assert_eq!(unfinished, 0);
    let stored: i64 = db
        .query_one("SELECT count(*) FROM carpool_tasks", &[])
        .await
        .expect("count")
        .get(0);
    assert!(
        stored >= acked.len() as i64,
        "{stored} stored, {} acknowledged",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_at_an_older_schema_version_is_upgraded_and_its_tasks_run() {
    let pg = Postgres::start();
    let db = pg.client().await;
    // What a coordinator of schema version 1 left: its tables, one task waiting.
    db.batch_execute(include_str!("../../coordinator/src/journal/schema/v1.sql"))
        .await
        .expect("schema v1");
    db.batch_execute(
        "CREATE TABLE carpool_schema (version INTEGER NOT NULL); INSERT INTO carpool_schema VALUES (1);
         INSERT INTO carpool_tasks VALUES (7, 'echo', convert_to('\"from v1\"', 'UTF8'), 0, 'k7', 0, 0, NULL);
         UPDATE carpool_meta SET value = 8 WHERE key = 'next_task_id';",
    )
    .await
    .expect("a v1 task");
    let coord = Coordinator::start(&["--state-url", &pg.url()]);
    let client = coord.client().await;
    let done = eventually("the v1 task to run", || async {
        let info = client.get(7).await.ok()?;
        info.result.filter(|r| r.state() == pb::TaskState::Succeeded)
    })
    .await;
    assert_eq!(
        carpool_proto::payload::into_bytes(done.output).as_ref(),
        b"\"from v1\""
    );
    let version: i32 = db
        .query_one("SELECT version FROM carpool_schema", &[])
        .await
        .expect("version")
        .get(0);
    assert_eq!(version, 4);
    let url: String = db
        .query_one("SELECT url FROM carpool_lease", &[])
        .await
        .expect("lease")
        .get(0);
    assert_eq!(url, coord.url, "version 2 names the active coordinator");
    // Version 3 keeps what each size cost: the worker that ran the task, once it has ended.
    let (workers, tasks): (i64, i64) = eventually("its worker's cost to be stored", || async {
        let row = db
            .query_opt(
                "SELECT workers, tasks FROM carpool_size_costs WHERE function = 'echo' AND memory_mb = 2048",
                &[],
            )
            .await
            .ok()??;
        Some((row.get(0), row.get(1)))
    })
    .await;
    assert_eq!((workers, tasks), (1, 1));
    assert_eq!(
        client.submit("echo", "1").await.expect("submit"),
        8,
        "ids go on from v1's"
    );
    // Version 4 keeps a task's deadline, for a restart or a takeover to keep hurrying.
    let id = client
        .submit_request(pb::SubmitRequest {
            function: "echo".into(),
            input: Some(carpool_proto::payload::text("2")),
            deadline_ms: 60_000,
            ..Default::default()
        })
        .await
        .expect("submit with a deadline");
    let row = db
        .query_one(
            "SELECT deadline_unix_ms, submitted_unix_ms FROM carpool_tasks WHERE id = $1",
            &[&(id as i64)],
        )
        .await
        .expect("the task's row");
    let (deadline, submitted): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        deadline,
        submitted + 60_000,
        "the deadline is stored with its task"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_sslmode_require_the_database_connection_is_tls_verified_against_state_ca() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let pg = Postgres::start_tls(&certified.cert.pem(), &certified.signing_key.serialize_pem());
    let ca = tempfile::NamedTempFile::new().expect("ca file");
    std::fs::write(ca.path(), certified.cert.pem()).expect("write ca");
    let url = format!(
        "postgres://carpool@localhost:{}/postgres?sslmode=require",
        pg.port
    );
    let coord = Coordinator::start(&["--state-url", &url, "--state-ca", &ca.path().to_string_lossy()]);
    let client = coord.client().await;
    let r = client.run("echo", "\"over tls\"").await.expect("run");
    assert_eq!(r.state(), pb::TaskState::Succeeded, "{r:?}");
    let db = pg.client().await;
    let tls: Vec<bool> = db
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'carpool-coordinator'",
            &[],
        )
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !tls.is_empty() && tls.iter().all(|t| *t),
        "the coordinator's connections: {tls:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_given_every_coordinator_uses_the_active_one() {
    let pg = Postgres::start();
    let args = args(&pg.url());
    let a = Coordinator::start(&refs(&args));
    assert_eq!(active(&[&a]).await, 0);
    let b = Coordinator::start(&refs(&args));
    let python = carpool_integration_tests::tool("CARPOOL_PYTHON", "the Python client");
    // The standby first: the client goes on to the active one.
    let targets = format!("{},{}", b.addr(), a.addr());
    let script =
        "import sys\nfrom carpool import Client\nprint(Client(sys.argv[1], timeout=10).submit('job', 'x'))";
    let out = Command::new(&python)
        .args(["-c", script, &targets])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a task id");
    assert_eq!(
        a.client()
            .await
            .get(id)
            .await
            .expect("the active one has it")
            .task_id,
        id
    );
    // Only the standby: its UNAVAILABLE, naming the active one.
    let only = b.addr().to_owned() + "," + b.addr();
    let out = Command::new(&python)
        .args(["-c", script, &only])
        .output()
        .expect("python runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("UNAVAILABLE") && err.contains(&a.url),
        "{err}"
    );
}
