//! Other-language clients against the real coordinator: grpcurl by hand (no .proto at
//! hand, only reflection) and the Python package. `scripts/test` installs both and points
//! CARPOOL_GRPCURL and CARPOOL_PYTHON at them.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::path::PathBuf;
use std::process::{Command, Output};

use carpool_integration_tests::{Coordinator, tool};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

struct Grpcurl {
    bin: PathBuf,
    addr: String,
}

impl Grpcurl {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .arg("-plaintext")
            .arg(&self.addr)
            .args(args)
            .output()
            .expect("grpcurl runs");
        ok(out, &format!("grpcurl {args:?}"))
    }

    fn call(&self, method: &str, data: Option<&str>) -> String {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-plaintext");
        if let Some(d) = data {
            cmd.args(["-d", d]);
        }
        let out = cmd.arg(&self.addr).arg(method).output().expect("grpcurl runs");
        ok(out, &format!("grpcurl {method}"))
    }
}

/// grpcurl prints a stream of pretty JSON objects; split them.
fn json_stream(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|v| v.expect("grpcurl prints JSON"))
        .collect()
}

#[test]
fn grpcurl_lists_describes_submits_maps_and_checks_health_through_reflection() {
    let coord = Coordinator::start(&["--max-workers", "2"]);
    let g = Grpcurl {
        bin: tool("CARPOOL_GRPCURL", "grpcurl"),
        addr: coord.url.trim_start_matches("http://").to_owned(),
    };
    let services = g.run(&["list"]);
    for s in [
        "carpool.v1.Tasks",
        "carpool.v1.Cluster",
        "carpool.v1.Workers",
        "grpc.health.v1.Health",
    ] {
        assert!(services.lines().any(|l| l == s), "{s} not listed:\n{services}");
    }
    let described = g.run(&["describe", "carpool.v1.SubmitRequest"]);
    assert!(
        described.contains("string function = 1;") && described.contains("// The function"),
        "{described}"
    );

    let run = g.call(
        "carpool.v1.Tasks/Run",
        Some(r#"{"function":"echo","input":{"text":"{\"hello\":\"world\"}"}}"#),
    );
    let run: Value = serde_json::from_str(&run).expect("JSON");
    assert_eq!(run["state"], "TASK_STATE_SUCCEEDED");
    // The output is readable text holding the JSON sent, not base64.
    let output: Value =
        serde_json::from_str(run["output"]["text"].as_str().expect("text output")).expect("JSON text");
    assert_eq!(output["hello"], "world");

    let submitted = g.call(
        "carpool.v1.Tasks/Submit",
        Some(r#"{"function":"sleep","input":{"text":"50"}}"#),
    );
    let id: Value = serde_json::from_str(&submitted).expect("JSON");
    let id = id["taskId"].as_str().expect("taskId").to_owned();

    let mapped = g.call(
        "carpool.v1.Tasks/Map",
        Some(r#"{"function":"echo","input":{"text":"a"},"seq":1} {"input":{"text":"b"},"seq":2} {"input":{"text":"c"},"seq":3}"#),
    );
    let mut seen: Vec<(String, String)> = json_stream(&mapped)
        .iter()
        .map(|m| {
            (
                m["seq"].as_str().unwrap_or("").to_owned(),
                m["result"]["output"]["text"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [("1", "a"), ("2", "b"), ("3", "c")].map(|(s, t)| (s.to_owned(), t.to_owned()))
    );

    // A batch by hand: the results come back in batches too, each tagged with its seq.
    let batched = g.call(
        "carpool.v1.Tasks/Map",
        Some(
            r#"{"function":"echo","tasks":[{"input":{"text":"x"},"seq":1},{"input":{"text":"y"},"seq":2}]}"#,
        ),
    );
    let mut seen: Vec<(String, String)> = json_stream(&batched)
        .iter()
        .flat_map(|m| m["results"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            (
                r["seq"].as_str().unwrap_or("").to_owned(),
                r["result"]["output"]["text"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [("1", "x"), ("2", "y")].map(|(s, t)| (s.to_owned(), t.to_owned())),
        "{batched}"
    );

    let got = g.call("carpool.v1.Tasks/Get", Some(&format!(r#"{{"task_id":{id}}}"#)));
    let got: Value = serde_json::from_str(&got).expect("JSON");
    assert_eq!(got["function"], "sleep");

    let stats: Value = serde_json::from_str(&g.call("carpool.v1.Cluster/Stats", None)).expect("JSON");
    assert!(stats["total"]["workersStarted"].as_str().is_some(), "{stats}");
    let _workers: Value =
        serde_json::from_str(&g.call("carpool.v1.Cluster/ListWorkers", None)).expect("JSON");
    let health: Value = serde_json::from_str(&g.call("grpc.health.v1.Health/Check", None)).expect("JSON");
    assert_eq!(health["status"], "SERVING");

    // A bad request shows its status code to the person at the shell.
    let out = Command::new(&g.bin)
        .args([
            "-plaintext",
            "-d",
            r#"{"task_id":424242}"#,
            &g.addr,
            "carpool.v1.Tasks/Get",
        ])
        .output()
        .expect("grpcurl runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("NotFound") && err.contains("424242"),
        "{err}"
    );
}

#[test]
fn python_client_runs_its_tests_and_example_against_the_real_coordinator() {
    let python = tool("CARPOOL_PYTHON", "the Python client");
    let coord = Coordinator::start(&["--max-workers", "2"]);
    let target = coord.url.trim_start_matches("http://").to_owned();
    // The tests start their own coordinators and workers too (a restart, a worker killed,
    // TLS), from the binaries next to this test's, with a throwaway certificate.
    let bin_dir = carpool_integration_tests::bin("carpool-coordinator")
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let tls = tempfile::tempdir().expect("temp dir");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert, key) = (tls.path().join("cert.pem"), tls.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(repo().join("client/python/tests"))
        .env("CARPOOL_TARGET", &target)
        .env("CARPOOL_BIN_DIR", &bin_dir)
        .env("CARPOOL_TEST_TLS_CERT", &cert)
        .env("CARPOOL_TEST_TLS_KEY", &key)
        .env_remove("CARPOOL_COORDINATOR")
        .env_remove("CARPOOL_TOKEN")
        .env_remove("CARPOOL_TOKEN_FILE")
        .output()
        .expect("pytest runs");
    let text = ok(out, "pytest client/python/tests");
    assert!(text.contains("21 passed"), "{text}");

    let out = Command::new(&python)
        .arg(repo().join("client/python/examples/map_echo.py"))
        .args(["--target", &target, "--tasks", "100"])
        .output()
        .expect("example runs");
    let summary: Value = serde_json::from_str(ok(out, "map_echo.py").trim()).expect("JSON summary");
    assert_eq!(
        (summary["tasks"].as_u64(), summary["correct"].as_u64()),
        (Some(100), Some(100)),
        "{summary}"
    );
}
