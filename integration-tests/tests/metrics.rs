//! `/metrics` scraped by the real Prometheus server (Debian's `prometheus` package, which
//! `./scripts/test` installs), its figures read back through Prometheus's HTTP query API
//! and compared with what Stats says; `promtool check metrics` on the exposition; and
//! `--log-format json` on the binaries.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::process::{Command, Stdio};

use bytes::Bytes;
use carpool_integration_tests::{Coordinator, Proc, eventually, free_port, http_get, totals};
use futures::StreamExt;
use serde_json::Value;

/// A program of the `prometheus` package, which the test command installs.
fn prometheus_tool(name: &str) -> std::path::PathBuf {
    carpool_integration_tests::installed(name, "prometheus")
}

/// One instant-query value from Prometheus (`None` while the series does not exist yet).
async fn query(prometheus: &str, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = http_get(prometheus, &format!("/api/v1/query?query={encoded}"), None)
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test]
async fn prometheus_scrapes_the_coordinator_and_its_counters_match_stats() {
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let coord = Coordinator::start(&["--metrics-listen", &metrics_addr]);
    let client = coord.client().await;

    // Work with every outcome: successes, a failure (an unknown program), a cancellation.
    let inputs = futures::stream::iter((0..40).map(|i| Bytes::from(format!("\"{i}\""))));
    let results: Vec<_> = client.map("echo", inputs).await.expect("map").collect().await;
    assert_eq!(results.len(), 40);
    let held = client.submit("sleep", "60000").await.expect("submit");
    client.cancel(held).await.expect("cancel");
    // The bill closes when the fleet has left.
    let stats = eventually("the fleet to leave", || async {
        let t = totals(&client).await;
        (t.workers_live == 0 && t.workers_starting == 0).then_some(t)
    })
    .await;

    // promtool accepts the exposition, in both formats Prometheus reads.
    for accept in [None, Some("application/openmetrics-text; version=1.0.0")] {
        let (status, body) = http_get(&metrics_addr, "/metrics", accept)
            .await
            .expect("GET /metrics");
        assert_eq!(status, 200);
        if accept.is_none() {
            let mut check = Command::new(prometheus_tool("promtool"))
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("promtool");
            std::io::Write::write_all(&mut check.stdin.take().expect("stdin"), body.as_bytes())
                .expect("write");
            let out = check.wait_with_output().expect("promtool");
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}\n{body}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            assert!(body.trim_end().ends_with("# EOF"), "{body}");
        }
    }

    // The real server scrapes it every second.
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: carpool\n    static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )
    .expect("config");
    let web = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(prometheus_tool("prometheus"));
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"));
    let prometheus = Proc::start("prometheus", cmd);

    let succeeded = eventually("Prometheus to have scraped the succeeded tasks", || async {
        query(&web, r#"sum(carpool_tasks_total{outcome="succeeded"})"#).await
    })
    .await;
    assert_eq!(succeeded, stats.succeeded as f64, "{}", prometheus.log());
    for (promql, expected) in [
        (
            r#"sum(carpool_tasks_total{outcome="failed"})"#,
            stats.failed as f64,
        ),
        (
            r#"sum(carpool_tasks_total{outcome="cancelled"})"#,
            stats.cancelled as f64,
        ),
        ("sum(carpool_worker_spawns_total)", stats.workers_started as f64),
        ("sum(carpool_task_retries_total)", stats.retried as f64),
        ("sum(carpool_tasks_pending)", stats.pending as f64),
        (
            "sum(carpool_task_execution_seconds_count)",
            (stats.succeeded + stats.failed) as f64,
        ),
    ] {
        let got = eventually(promql, || async { query(&web, promql).await }).await;
        assert_eq!(got, expected, "{promql}");
    }
    let billed = eventually("the bill", || async {
        query(&web, "sum(carpool_billed_gigabyte_seconds_total)").await
    })
    .await;
    let stats_billed = stats.billed_gb_ms / 1000.0;
    assert!(
        (billed - stats_billed).abs() <= 1e-6 * stats_billed.max(1.0),
        "Prometheus {billed} GB-s, Stats {stats_billed} GB-s"
    );
    let cost = eventually("the cost", || async {
        query(&web, "sum(carpool_cost_usd_total)").await
    })
    .await;
    assert!(
        (cost - stats.cost_usd).abs() <= 1e-9,
        "Prometheus {cost} USD, Stats {} USD",
        stats.cost_usd
    );
    let idle = eventually("idle shutdowns", || async {
        query(&web, r#"sum(carpool_worker_shutdowns_total{reason="idle"})"#).await
    })
    .await;
    assert!(idle >= 1.0, "{idle}");
}

#[tokio::test]
async fn the_metrics_port_is_refused_when_taken_and_logs_can_be_json() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, err) = Coordinator::refused(&["--metrics-listen", &addr]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("--metrics-listen"), "{err}");

    let coord = Coordinator::start_with_env(&["--log-format", "json"], &[("RUST_LOG", "debug")]);
    let client = coord.client().await;
    let id = client.submit("echo", "hi").await.expect("submit");
    eventually("the task to finish", || async {
        (client.get(id).await.ok()?.state() == carpool_proto::pb::TaskState::Succeeded).then_some(())
    })
    .await;
    let log = coord.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let assigned = lines
        .iter()
        .find(|l| l["fields"]["message"] == "assigned")
        .unwrap_or_else(|| panic!("no assignment logged:\n{log}"));
    assert_eq!(assigned["fields"]["task"], id, "{assigned}");
    assert!(assigned["fields"]["worker"].is_string(), "{assigned}");
    assert!(assigned["level"].is_string() && assigned["timestamp"].is_string());
}

#[tokio::test]
async fn every_query_of_the_grafana_dashboard_names_an_exported_metric() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read the dashboard"))
        .expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["panels"].is_array());

    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let coord = Coordinator::start(&["--metrics-listen", &metrics_addr]);
    let client = coord.client().await;
    client.run("echo", "x").await.expect("run");
    let (_, body) = http_get(&metrics_addr, "/metrics", None)
        .await
        .expect("GET /metrics");
    let exported: std::collections::HashSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let mut queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queries += 1;
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("carpool_"))
                .collect();
            assert!(!names.is_empty(), "{expr} names no carpool metric");
            for name in names {
                assert!(
                    exported.contains(name),
                    "{expr}: {name} is not exported; exported: {exported:?}"
                );
            }
        }
    }
    assert!(queries >= 5, "{queries}");
}

/// One raw HTTP/1.1 GET of /metrics, with `authorization` if given: the status code.
fn scrape_status(addr: &str, authorization: Option<&str>) -> u16 {
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let request = format!("GET /metrics HTTP/1.1\r\nHost: carpool\r\n{auth}Connection: close\r\n\r\n");
    match carpool_integration_tests::http_raw(addr, &request) {
        (0, response) => panic!("not an HTTP response: {response:?}"),
        (status, _) => status,
    }
}

#[tokio::test]
async fn the_metrics_port_takes_a_token_closes_silent_clients_and_shares_the_connection_budget() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let coord = Coordinator::start(&[
        "--metrics-listen",
        &metrics_addr,
        "--metrics-token",
        "s3cret",
        "--handshake-timeout",
        "300ms",
    ]);
    // The token: missing or wrong is 401, right is the exposition.
    eventually("the metrics port to listen", || async {
        std::net::TcpStream::connect(&metrics_addr).ok()
    })
    .await;
    assert_eq!(scrape_status(&metrics_addr, None), 401);
    assert_eq!(scrape_status(&metrics_addr, Some("Bearer wrong")), 401);
    assert_eq!(scrape_status(&metrics_addr, Some("bearer s3cret")), 200);
    // A client that sends nothing, or half a request head, is closed after the timeout.
    for sent in [&b""[..], b"GET /metrics HTTP/1.1\r\nHost: carpool\r\n"] {
        let mut slow = std::net::TcpStream::connect(&metrics_addr).expect("connect");
        slow.write_all(sent).expect("write");
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut answer = Vec::new();
        let closed = slow.read_to_end(&mut answer).is_ok();
        assert!(closed, "a silent metrics client was kept past the timeout");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    drop(coord);
    // One budget for both ports: two idle metrics connections hold both places of
    // --max-connections 2, and a gRPC caller waits until one goes.
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let coord = Coordinator::start(&[
        "--metrics-listen",
        &metrics_addr,
        "--max-connections",
        "2",
        "--handshake-timeout",
        "60s",
    ]);
    eventually("the metrics port to listen", || async {
        std::net::TcpStream::connect(&metrics_addr).ok()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(&metrics_addr).expect("connect"))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
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
    assert!(
        waited,
        "idle metrics connections did not count against --max-connections"
    );
    held.clear();
    let client = eventually("a place to free up", || async {
        carpool_client::Client::connect(&coord.url).await.ok()
    })
    .await;
    client.stats().await.expect("served once a place is free");
}
