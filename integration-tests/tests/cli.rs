//! The `carpool` CLI against a real coordinator, and its bench and experiment at a tiny size.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::io::Write;
use std::process::{Command, Stdio};

use carpool_integration_tests::{Coordinator, bin};
use serde_json::Value;

fn carpool(url: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(bin("carpool"))
        .arg("--coordinator")
        .arg(url)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("carpool runs");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("carpool exits");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_runs_submits_gets_maps_and_reports() {
    let coord = Coordinator::start(&["--max-workers", "2"]);
    let url = coord.url.as_str();

    let (ok, out, err) = carpool(url, &["run", "echo", r#"{"a":1}"#], None);
    assert!(ok, "{err}");
    let run: Value = serde_json::from_str(&out).expect("JSON result");
    assert_eq!(
        (run["state"].as_str(), run["output"]["a"].as_i64()),
        (Some("SUCCEEDED"), Some(1))
    );

    let (ok, out, err) = carpool(url, &["submit", "sleep", "50"], None);
    assert!(ok, "{err}");
    let id = out.trim().to_owned();
    id.parse::<u64>().expect("the id on stdout");

    let lines = (0..25).map(|i| format!("{{\"n\":{i}}}\n")).collect::<String>();
    let (ok, out, err) = carpool(url, &["map", "echo"], Some(&lines));
    assert!(ok, "{err}");
    let mut seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line per result");
            assert_eq!(v["state"], "SUCCEEDED");
            assert_eq!(v["output"]["n"], v["seq"], "{v}");
            v["seq"].as_u64().expect("seq")
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..25).collect::<Vec<_>>());

    // A timeout for every task of a map: the 2 s sleep runs past 300 ms at every attempt,
    // and the exit code says a task failed.
    let (ok, out, err) = carpool(url, &["map", "sleep", "--timeout", "300ms"], Some("20\n2000\n"));
    assert!(!ok && err.contains("1 of 2 tasks did not succeed"), "{err}");
    let mut by_seq: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line per result"))
        .collect();
    by_seq.sort_by_key(|v| v["seq"].as_u64());
    assert_eq!(by_seq.len(), 2, "{out}");
    assert_eq!(by_seq[0]["state"], "SUCCEEDED", "{out}");
    assert_eq!(by_seq[1]["state"], "FAILED", "{out}");
    assert!(
        by_seq[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("timeout of 300 ms")),
        "{out}"
    );

    let (ok, out, _) = carpool(url, &["get", &id], None);
    assert!(ok);
    let info: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(info["function"], "sleep");

    let (ok, out, _) = carpool(url, &["stats"], None);
    assert!(ok && out.contains("TOTAL") && out.contains("echo"), "{out}");
    let (ok, out, _) = carpool(url, &["workers"], None);
    assert!(ok && out.starts_with("WORKER"), "{out}");
    // What was learned of echo (its level, what its size cost) is forgotten; a second time,
    // nothing is left.
    let (ok, out, err) = carpool(url, &["relearn", "echo"], None);
    assert!(ok && out.starts_with("forgot echo's learned level"), "{out}{err}");
    let (ok, out, _) = carpool(url, &["relearn", "echo"], None);
    assert!(
        ok && out.contains("at 0 memory size(s) and its cost at 0"),
        "{out}"
    );
    let (ok, _, err) = carpool(url, &["relearn", "nope"], None);
    assert!(!ok && err.contains("unknown function"), "{err}");

    // Errors are one clear line and a failing exit code.
    let (ok, _, err) = carpool(url, &["get", "99999"], None);
    assert!(!ok && err.contains("task 99999 not found"), "{err}");
    let (ok, _, err) = carpool(url, &["run", "nope", "x"], None);
    assert!(!ok && err.contains("unknown function"), "{err}");
}

#[test]
fn the_benchmark_runs_at_a_tiny_size_and_prints_every_figure() {
    let out = Command::new(bin("carpool"))
        .args(["bench", "--tiny", "--json"])
        .output()
        .expect("carpool bench runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let keys = [
        "raw_unary_p50_us",
        "raw_bidi_rtt_p50_us",
        "raw_bidi_msgs_per_s",
        "dispatch_p50_us",
        "dispatch_p99_us",
        "streamed_dispatch_p50_us",
        "streamed_dispatch_p99_us",
        "start_p50_us",
        "start_p99_us",
        "map_tasks_per_s",
        "submit_tasks_per_s",
        "real_dispatch_p50_us",
        "real_dispatch_p99_us",
        "real_streamed_dispatch_p50_us",
        "real_map_tasks_per_s",
        "real_worker_limit",
        "map_tasks_per_s_state_dir",
        "submit_tasks_per_s_state_dir",
        "fleet_20_coordinator_cpu_pct",
        "fleet_20_coordinator_rss_mb",
        "fleet_20_dispatch_p99_us",
        "idle_worker_cpu_pct",
        "pending_rss_mb",
        "pending_bytes_per_task",
        "polling_p50_us",
        "polling_p99_us",
    ];
    for key in keys {
        let v = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing from {report}"));
        assert!(v.is_finite() && v >= 0.0, "{key} = {v}");
    }
    for key in [
        "raw_unary_p50_us",
        "raw_bidi_rtt_p50_us",
        "dispatch_p50_us",
        "streamed_dispatch_p50_us",
        "map_tasks_per_s",
        "real_dispatch_p50_us",
        "real_map_tasks_per_s",
        "real_worker_limit",
        "polling_p50_us",
        "pending_rss_mb",
    ] {
        assert!(
            report[key].as_f64().unwrap_or(0.0) > 0.0,
            "{key} measured nothing: {report}"
        );
    }
}

#[test]
fn the_comparison_runs_every_workload_four_ways_through_real_workers() {
    let out = Command::new(bin("carpool"))
        .args(["compare", "--tiny", "--json"])
        .output()
        .expect("carpool compare runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = text.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text}"));
    for workload in ["io", "cpu", "memory", "mixed", "varied"] {
        let w = &report[workload];
        // Conventional FaaS is one invocation per task; every way ran every task.
        let tasks = w["conventional"]["invocations"].as_u64().unwrap_or(0);
        assert!(tasks > 0, "{workload}: {w}");
        // Lambda as it bills: one billed request per task.
        assert_eq!(
            w["lambda"]["invocations"].as_u64(),
            Some(tasks),
            "{workload}: {w}"
        );
        for way in ["conventional", "lambda", "static", "adaptive", "learned"] {
            assert_eq!(w[way]["failed"].as_u64(), Some(0), "{workload} {way}: {w}");
            assert!(
                w[way]["completion_s"].as_f64().unwrap_or(0.0) > 0.0,
                "{workload} {way}: {w}"
            );
            assert!(
                w[way]["gb_s"].as_f64().unwrap_or(0.0) > 0.0,
                "{workload} {way}: {w}"
            );
        }
        assert!(
            w["sweep"].as_array().is_some_and(|s| s.len() >= 2),
            "{workload}: {w}"
        );
        // Sharing starts fewer workers than one per task.
        assert!(
            w["adaptive"]["invocations"].as_u64().unwrap_or(u64::MAX) < tasks,
            "{workload}: {w}"
        );
    }
    for name in ["io", "cpu", "memory"] {
        assert!(
            report[name]["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{name} has no targets: {report}"
        );
    }
    // The simulated comparison at the paper's scale follows the measured one.
    assert!(text.contains("simulated at the paper's scale"), "{text}");
    assert_eq!(text.matches("    adaptive, learned level").count(), 5, "{text}");
    // And across sizes, carpool choosing, judged against every fixed pair and Lambda at
    // each size.
    assert!(
        text.contains("simulated across sizes in the Lambda-like world"),
        "{text}"
    );
    // Mixed work twice: identical tasks (they stay in step), and tasks that vary.
    assert!(
        text.contains("varied (the same, each task's CPU and wait varying 50 % either way)"),
        "{text}"
    );
    assert_eq!(
        text.matches("    sizes offered: first batch").count(),
        5,
        "{text}"
    );
    assert_eq!(
        text.matches("target: learned batch within 10% of the best fixed pair")
            .count(),
        5,
        "{text}"
    );
}

#[test]
fn the_demo_runs_a_cpu_and_an_io_batch_and_carpool_starts_fewer_workers() {
    let out = Command::new(bin("carpool"))
        .args([
            "demo",
            "--tasks",
            "4",
            "--spin-ms",
            "50",
            "--io-tasks",
            "40",
            "--sleep-ms",
            "50",
        ])
        .output()
        .expect("carpool demo runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in ["CPU-bound: 4 spin tasks", "I/O-bound: 40 sleep tasks"] {
        assert!(text.contains(kind), "{text}");
    }
    // Per batch, three rows: carpool, Lambda as it bills, one cold invocation per task;
    // each with its tasks, billed requests and cold starts.
    let rows: Vec<(String, [u64; 3])> = text
        .lines()
        .filter(|l| {
            ["carpool ", "Lambda as it bills", "one cold invocation per task"]
                .iter()
                .any(|m| l.starts_with(m))
        })
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let first = cols.iter().position(|c| c.parse::<u64>().is_ok())?;
            let n = |i: usize| cols.get(first + i)?.parse::<u64>().ok();
            Some((cols[..first].join(" "), [n(0)?, n(1)?, n(2)?]))
        })
        .collect();
    assert_eq!(rows.len(), 6, "{text}");
    for (batch, tasks) in [(0, 4), (1, 40)] {
        let [carpool, lambda, worst] = [&rows[batch * 3], &rows[batch * 3 + 1], &rows[batch * 3 + 2]];
        assert_eq!(carpool.0, "carpool", "{text}");
        assert_eq!(lambda.0, "Lambda as it bills", "{text}");
        assert_eq!(worst.0, "one cold invocation per task", "{text}");
        // Every mode ran every task; Lambda bills one request per task, on warm sandboxes
        // reused (fewer cold starts than tasks); the worst case starts a worker per task;
        // carpool starts fewer workers than tasks.
        assert!(
            rows[batch * 3..batch * 3 + 3].iter().all(|r| r.1[0] == tasks),
            "{text}"
        );
        assert_eq!(lambda.1[1], tasks, "{text}");
        assert!(lambda.1[2] < tasks, "{text}");
        assert_eq!(worst.1[2], tasks, "{text}");
        assert!(carpool.1[2] < tasks, "{text}");
    }
}

#[test]
fn the_experiment_runs_at_a_tiny_size_and_writes_its_table_and_chart() {
    let dir = std::env::temp_dir().join(format!("carpool-experiment-test-{}", std::process::id()));
    let out = Command::new(bin("carpool"))
        .args([
            "experiment",
            "--tasks",
            "4",
            "--sizes",
            "2048,4096",
            "--image-width",
            "300",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .expect("carpool experiment runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The three modes (carpool, Lambda as it bills, one cold invocation per task) measured
    // at each size next to the simulator (three checks at the size that fits), the 3-vCPU
    // size flagged as sharing this machine's cores, then every size simulated.
    assert_eq!(
        text.lines().filter(|l| l.contains("measured  ")).count(),
        6,
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("simulated vs measured"))
            .count(),
        3,
        "{text}"
    );
    assert!(text.contains("Lambda as it bills"), "{text}");
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 3 {
        assert!(text.contains("4096 MB has 3 vCPUs"), "{text}");
    }
    // The sizes offered together, judged against every fixed pair and Lambda as it bills.
    assert!(
        text.contains("the sizes offered together (2048, 4096 MB"),
        "{text}"
    );
    assert!(text.contains("of the best fixed pair"), "{text}");
    for size in ["2048", "4096"] {
        let rows = text
            .lines()
            .filter(|l| l.trim_start().starts_with(size) && l.contains(" simulated "))
            .count();
        assert!(rows >= 2, "{size}: {text}");
    }
    let svg = std::fs::read_to_string(dir.join("chart.svg")).expect("chart written");
    assert!(
        svg.starts_with("<svg") && svg.matches("<rect").count() == 12,
        "two sizes x two modes x three panels"
    );
    // Every task really produced its thumbnail.
    let thumbs = std::fs::read_dir(&dir).expect("dir").filter(|e| {
        e.as_ref()
            .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("thumb-"))
    });
    assert_eq!(thumbs.count(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}
