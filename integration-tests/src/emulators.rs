//! Emulators of AWS services that tests run for real, each stopped by its handle:
//! - moto in server mode (S3, and Lambda with Docker off: [`LambdaMoto`]);
//! - cargo-lambda's Lambda Invoke and Runtime APIs ([`cargo_lambda`], [`lambda_worker`]);
//! - AWS's Runtime Interface Emulator running the worker ([`Rie`]);
//! - the worker image under podman ([`Container`]).
//!
//! Installed by `./scripts/test` and named by CARPOOL_MOTO_SERVER, CARPOOL_CARGO_LAMBDA,
//! CARPOOL_LAMBDA_RIE, CARPOOL_PODMAN and CARPOOL_PYTHON.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Coordinator, Proc, WAIT, bin, free_port, tool};

/// The function name the emulators serve the worker as.
pub const FUNCTION: &str = "carpool-worker";

/// moto's AWS emulator in server mode on a port it picks, recording every request to a file
/// of its own; stopped (and the recording removed) on drop.
pub struct Moto {
    _proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Where its recorder writes (the Lambda tests read it).
    pub recording: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.recording);
    }
}

impl Moto {
    /// Starts moto and waits until it serves.
    pub fn start() -> Self {
        let mut cmd = Command::new(tool("CARPOOL_MOTO_SERVER", "moto's moto_server"));
        // moto's recorder writes to a file, by default in the working directory.
        let recording =
            std::env::temp_dir().join(format!("carpool-moto-{}-{}.rec", std::process::id(), free_port()));
        cmd.args(["-H", "127.0.0.1", "-p", "0"])
            .env("NO_COLOR", "1")
            .env("MOTO_RECORDER_FILEPATH", &recording);
        let proc = Proc::start("moto", cmd);
        proc.wait_for_log("Running on http://127.0.0.1:");
        let log = proc.log();
        let url = log
            .lines()
            .find_map(|l| l.split("Running on ").nth(1))
            .map(|u| u.trim().to_owned())
            .unwrap_or_else(|| panic!("no URL in moto's log: {log}"));
        Self {
            _proc: proc,
            url,
            recording,
        }
    }

    /// The environment an AWS SDK client needs to reach this moto: `endpoint_var`
    /// (e.g. `AWS_ENDPOINT_URL_S3`, or `AWS_ENDPOINT_URL` for every service), a region and
    /// throwaway credentials.
    pub fn aws_env(&self, endpoint_var: &'static str) -> Vec<(&'static str, String)> {
        vec![
            (endpoint_var, self.url.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }

    /// An S3 client of this moto (path-style, throwaway credentials).
    pub fn s3(&self) -> aws_sdk_s3::Client {
        let credentials = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "test");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(credentials)
            .force_path_style(true)
            .http_client(carpool_proto::aws_https_client())
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

/// The AWS settings a coordinator needs to reach an emulator at `endpoint`, named by
/// `endpoint_var` (AWS_ENDPOINT_URL_LAMBDA, or AWS_ENDPOINT_URL for every service).
pub fn aws_env(endpoint_var: &'static str, endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        (endpoint_var, endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// A coordinator whose Lambda client calls the emulator at `endpoint`.
pub fn start_coordinator(endpoint: &str, args: &[&str]) -> Coordinator {
    start_coordinator_via("AWS_ENDPOINT_URL_LAMBDA", endpoint, args)
}

/// A coordinator whose AWS clients reach `endpoint` through `endpoint_var`.
pub fn start_coordinator_via(endpoint_var: &'static str, endpoint: &str, args: &[&str]) -> Coordinator {
    let env = aws_env(endpoint_var, endpoint);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Coordinator::start_with_env(args, &env)
}

/// `--spawner lambda --lambda-function FUNCTION --max-workers N` and `extra`.
pub fn lambda_args<'a>(function: &'a str, max_workers: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--spawner",
        "lambda",
        "--lambda-function",
        function,
        "--max-workers",
        max_workers,
    ];
    args.extend_from_slice(extra);
    args
}

/// cargo-lambda serving the Lambda APIs only, on a loopback port; returns it and its URL.
pub fn cargo_lambda() -> (Proc, String) {
    let port = free_port();
    let mut cmd = Command::new(tool("CARPOOL_CARGO_LAMBDA", "cargo-lambda"));
    cmd.args([
        "lambda",
        "watch",
        "--only-lambda-apis",
        "--invoke-address",
        "127.0.0.1",
    ])
    .args(["--invoke-port", &port.to_string()])
    .env("NO_COLOR", "1");
    let emulator = Proc::start("cargo-lambda", cmd);
    emulator.wait_for_log("starting Runtime server");
    (emulator, format!("http://127.0.0.1:{port}"))
}

/// A `carpool-worker` process in Lambda mode, polling `emulator`'s Runtime API.
pub fn lambda_worker(emulator: &str, extra_env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(bin("carpool-worker"));
    cmd.env("AWS_LAMBDA_RUNTIME_API", format!("{emulator}/.rt/{FUNCTION}"))
        .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(extra_env.iter().copied());
    let worker = Proc::start("lambda-worker", cmd);
    worker.wait_for_log("serving Lambda invocations");
    worker
}

/// AWS's Runtime Interface Emulator running the worker binary, with a function timeout.
pub struct Rie {
    _proc: Proc,
    client: aws_sdk_lambda::Client,
}

impl Rie {
    /// Starts the emulator with a function timeout of `timeout_s` seconds.
    pub fn start(timeout_s: u32) -> Self {
        let (invoke_port, runtime_port) = (free_port(), free_port());
        let mut cmd = Command::new(tool("CARPOOL_LAMBDA_RIE", "AWS's aws-lambda-rie"));
        cmd.arg("--runtime-interface-emulator-address")
            .arg(format!("127.0.0.1:{invoke_port}"))
            .arg("--runtime-api-address")
            .arg(format!("127.0.0.1:{runtime_port}"))
            .arg(bin("carpool-worker"))
            .env("AWS_LAMBDA_FUNCTION_TIMEOUT", timeout_s.to_string())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let proc = Proc::start("aws-lambda-rie", cmd);
        let config = aws_sdk_lambda::Config::builder()
            .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
            .region(aws_sdk_lambda::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_lambda::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .endpoint_url(format!("http://127.0.0.1:{invoke_port}"))
            .http_client(carpool_proto::aws_https_client())
            .build();
        Self {
            _proc: proc,
            client: aws_sdk_lambda::Client::from_conf(config),
        }
    }

    /// Invokes synchronously (the emulator's only mode) and returns the response payload.
    pub async fn invoke(&self, event: Value) -> (String, Duration) {
        let started = Instant::now();
        let deadline = started + WAIT;
        loop {
            // The emulator may not be listening yet.
            let sent = self
                .client
                .invoke()
                .function_name("function")
                .payload(aws_sdk_lambda::primitives::Blob::new(event.to_string()))
                .send()
                .await;
            match sent {
                Ok(out) => {
                    let body = out
                        .payload()
                        .map(|p| String::from_utf8_lossy(p.as_ref()).into_owned());
                    return (body.unwrap_or_default(), started.elapsed());
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("invoke: {}", aws_sdk_lambda::error::DisplayErrorContext(&e)),
            }
        }
    }
}

/// moto with the Lambda helper script: records every request, turns Docker off.
pub struct LambdaMoto(pub Moto);

impl LambdaMoto {
    /// Starts moto and its request recorder.
    pub fn start() -> Self {
        let moto = Self(Moto::start());
        moto.helper(&["record", &moto.0.url]);
        moto
    }

    /// Turns Docker off and creates `FUNCTION`: from then on moto accepts every Invoke and
    /// runs nothing.
    pub fn create_function(&self) {
        self.helper(&["setup", &self.0.url, FUNCTION]);
    }

    /// Runs the helper script with `args`; returns what it printed.
    pub fn helper(&self, args: &[&str]) -> String {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/moto_lambda.py");
        let out = Command::new(tool("CARPOOL_PYTHON", "the test venv's python"))
            .arg(script)
            .args(args)
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("run {script}: {e}"));
        assert!(
            out.status.success(),
            "{script} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every Invoke moto has seen, in order.
    pub fn invocations(&self) -> Vec<Value> {
        json_lines(&self.helper(&["invocations", &self.0.url]))
    }

    /// `FUNCTION`'s versions, `$LATEST` first: `{"version", "memory", "description"}` each.
    pub fn versions(&self) -> Vec<Value> {
        json_lines(&self.helper(&["versions", &self.0.url, FUNCTION]))
    }
}

/// The JSON objects of `text`, one a line.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A container of the worker image, removed (`podman rm -f`) when dropped.
pub struct Container {
    proc: Option<Proc>,
    name: String,
    podman: std::path::PathBuf,
}

impl Container {
    /// `podman run` of the image built from worker/Dockerfile, on the host's network (the
    /// coordinator and the emulator listen on loopback), with `env` and `args`.
    pub fn run(name: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        let podman = tool("CARPOOL_PODMAN", "podman");
        let image = std::env::var("CARPOOL_WORKER_IMAGE").unwrap_or_else(|_| {
            panic!(
                "CARPOOL_WORKER_IMAGE is not set: `./scripts/test` builds the image with scripts/worker-image"
            )
        });
        let name = format!("{name}-{}", std::process::id());
        let mut cmd = Command::new(&podman);
        cmd.args([
            "--runtime",
            "runc",
            "run",
            "--rm",
            "--name",
            &name,
            "--network=host",
        ])
        .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]);
        for (k, v) in env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg(&image).args(args);
        Self {
            proc: Some(Proc::start("container", cmd)),
            name,
            podman,
        }
    }

    /// What the container has written so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(&self.podman)
            .args(["rm", "--force", "--time", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        drop(self.proc.take());
    }
}
