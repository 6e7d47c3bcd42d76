//! Helpers for tests that start the real carpool binaries on ephemeral loopback ports.
//!
//! - [`Coordinator`]: a `carpool-coordinator` process on `127.0.0.1:0`; its bound address
//!   is read from its stdout; the process is killed when the guard drops (also when the
//!   test panics).
//! - [`FakeWorker`]: a worker stream driven by the test itself, to script samples and
//!   results exactly.
//! - [`Proc`]: every other process a test starts (workers, emulators), stopped on drop.
//! - [`TcpProxy`]: a loopback proxy a test can cut, to break streams on purpose.
//! - [`eventually`]: waits for a condition with a deadline and says what it waited for.
//! - [`emulators`]: AWS emulators run for real (moto, cargo-lambda, the RIE, the image).
//! - [`raw`]: hand-made gRPC frames, for bytes no client would send.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod emulators;
mod fake_worker;
pub mod postgres;
mod proxy;
pub mod raw;

pub use fake_worker::FakeWorker;
pub use proxy::TcpProxy;

use carpool_proto::Bearer;
use carpool_proto::pb::workers_client::WorkersClient;
use carpool_proto::pb::{self, coordinator_message::Kind as Down, worker_message::Kind as Up};
use tokio::sync::mpsc as tmpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub use carpool_client::Client;

/// How long any single wait in a test may take before it fails with a message.
pub const WAIT: Duration = Duration::from_secs(30);

/// A binary of this workspace, next to the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which the test command does)",
        path.display()
    );
    path
}

/// A running `carpool-coordinator` (a [`Proc`], killed on drop). Its log goes to a file,
/// printed if the test fails.
pub struct Coordinator {
    proc: Proc,
    /// `http://127.0.0.1:PORT` (for a coordinator serving TLS, swap in `https://`).
    pub url: String,
}

impl Coordinator {
    /// Starts a coordinator with `args` (on top of `--listen 127.0.0.1:0`) and waits until
    /// it has printed its address.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Coordinator::start`] with extra environment variables (e.g. AWS settings).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_at("127.0.0.1:0", args, env)
    }

    /// [`Coordinator::start_with_env`] listening on `listen` (a restart on the address an
    /// earlier coordinator had, for workers that reconnect to it).
    pub fn start_at(listen: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin("carpool-coordinator"));
        cmd.args(["--listen", listen])
            .args(args)
            .envs(env.iter().copied());
        let mut proc = Proc::spawn("coordinator", cmd, Stdio::piped(), Stop::Kill);
        let stdout = proc.child.stdout.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            if let Some(out) = stdout {
                let mut line = String::new();
                let _ = BufReader::new(out).read_line(&mut line);
                let _ = tx.send(line);
            }
        });
        let mut guard = Self {
            proc,
            url: String::new(),
        };
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("carpool-coordinator did not print its address within {WAIT:?}"));
        let addr = carpool_proto::listening_address(&line)
            .unwrap_or_else(|| panic!("unexpected first line from carpool-coordinator: {line:?}"));
        guard.url = format!("http://{addr}");
        guard
    }

    /// Its `host:port`.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Runs a coordinator with `args` that must refuse to start: returns its exit code and
    /// what it wrote on stderr.
    pub fn refused(args: &[&str]) -> (Option<i32>, String) {
        let mut child = Command::new(bin("carpool-coordinator"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start carpool-coordinator: {e}"));
        let status = wait_for_exit(&mut child, "a coordinator that should refuse to start");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (status.code(), err)
    }

    /// What the coordinator has logged so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// A client of this coordinator.
    pub async fn client(&self) -> Client {
        Client::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }

    /// A raw channel to this coordinator.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone())
            .unwrap_or_else(|e| panic!("bad url {}: {e}", self.url))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }

    /// Sends it `signal` (SIGSTOP to pause it, SIGCONT to go on).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        self.proc.signal(signal);
    }

    /// Its exit status once it has exited on its own, waiting at most [`WAIT`].
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.proc.wait_exit()
    }

    /// SIGKILLs it (no drain, no flush) and waits for it to be gone.
    pub fn kill9(mut self) {
        self.proc.kill9();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.proc.signal(nix::sys::signal::Signal::SIGTERM);
        self.proc.wait_exit()
    }
}

/// `child`'s exit status once it has exited; panics naming `what` after [`WAIT`].
fn wait_for_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() >= deadline {
            // Stopped by its handle before the test fails.
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A test tool installed by the test command, named by an environment variable; panics
/// with what to do if it is missing (a test never skips silently).
pub fn tool(var: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: it names {what}, which `./scripts/test` installs; run the suite through it")
    });
    assert!(
        path.is_file(),
        "{var}={} does not exist ({what}); `./scripts/test` installs it",
        path.display()
    );
    path
}

/// A program of a Debian package the test command installs, found on PATH; panics saying
/// so if it is missing (a test never skips silently).
pub fn installed(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is missing: `./scripts/test` installs Debian's {package} package"))
}

/// A free loopback port, for tools that cannot report the port they bound. The OS picks
/// it; it is released just before the tool binds it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot pick a loopback port: {e}"))
}

/// Every process a test starts (the coordinator, a worker, an emulator), with its output in
/// a log file that is printed if the test fails. It is stopped on drop, by its handle:
/// SIGINT then SIGKILL after 5 s ([`Proc::start`]), or SIGKILL at once (the coordinator
/// and workers, whose tests end them abruptly on purpose).
pub struct Proc {
    child: Child,
    log: PathBuf,
    name: String,
    stop: Stop,
}

/// How a [`Proc`] is stopped on drop.
#[derive(Clone, Copy)]
enum Stop {
    /// SIGINT, then SIGKILL if it has not exited within 5 s.
    Interrupt,
    /// SIGKILL at once.
    Kill,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr going to a log file; SIGINT on drop.
    pub fn start(name: &str, cmd: Command) -> Self {
        let log = log_path(name);
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        Self::spawn_logged(name, cmd, Stdio::from(out), log, Stop::Interrupt)
    }

    /// Starts `carpool-worker` with `args`; SIGKILL on drop.
    pub fn worker(args: &[&str]) -> Self {
        let mut cmd = Command::new(bin("carpool-worker"));
        cmd.args(args);
        Self::spawn("worker", cmd, Stdio::null(), Stop::Kill)
    }

    /// Starts `cmd` with stderr (and stdout, unless given) going to a log file, and
    /// `RUST_LOG` passed on (default `warn`) unless `cmd` sets it.
    fn spawn(name: &str, mut cmd: Command, stdout: Stdio, stop: Stop) -> Self {
        let log = log_path(name);
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        }
        Self::spawn_logged(name, cmd, stdout, log, stop)
    }

    fn spawn_logged(name: &str, mut cmd: Command, stdout: Stdio, log: PathBuf, stop: Stop) -> Self {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            child,
            log,
            name: name.to_owned(),
            stop,
        }
    }

    /// SIGKILLs it and waits for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Its exit status once it has exited, waiting at most [`WAIT`].
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_for_exit(&mut self.child, &self.name)
    }

    /// Waits until its log contains `text` (at most [`WAIT`]).
    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{} did not log {text:?} within {WAIT:?}; its log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let (Stop::Interrupt, Ok(None)) = (self.stop, self.child.try_wait()) {
            self.signal(nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A fresh log file path for a process the test starts.
fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "carpool-{name}-{}-{}.log",
        std::process::id(),
        NEXT_LOG.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ))
}

static NEXT_LOG: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits until `check` returns `Some`, polling every 20 ms, or panics after [`WAIT`] saying
/// what it waited for.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A hello for a fake worker of `function` with `slots`.
pub fn hello(id: &str, function: &str, slots: u32) -> pb::Hello {
    pb::Hello {
        worker_id: id.into(),
        function: function.into(),
        vcpus: slots,
        memory_mb: 2048,
        slots,
        timeout_ms: 0,
        instance: "test".into(),
        ..Default::default()
    }
}

/// Total counters from Stats.
pub async fn totals(client: &Client) -> pb::FunctionStats {
    client
        .stats()
        .await
        .unwrap_or_else(|e| panic!("stats: {e}"))
        .total
        .unwrap_or_default()
}

/// The Stats of `function` (panics if it has none).
pub async fn function_stats(client: &Client, function: &str) -> pb::FunctionStats {
    client
        .stats()
        .await
        .unwrap_or_else(|e| panic!("stats: {e}"))
        .functions
        .into_iter()
        .find(|f| f.function == function)
        .unwrap_or_else(|| panic!("no stats for {function}"))
}

/// Waits until every worker has left (their bills are closed, their costs recorded).
pub async fn fleet_gone(client: &Client) {
    eventually("every worker to leave", || async {
        let t = client.stats().await.ok()?.total?;
        (t.workers_live == 0 && t.workers_starting == 0).then_some(())
    })
    .await;
}

/// Sends `request` (a whole HTTP/1.1 request: its head and the blank line) to `addr` on a
/// fresh connection and reads the answer's head (and what of its body came with it): the
/// status (0 if none came) and the text. For requests no client library would send.
pub fn http_raw(addr: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    conn.write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// GETs `path` (with its query, already encoded) from `http://{addr}` over HTTP/1.1;
/// returns the status and the body. `accept`, if given, is sent as the Accept header.
pub async fn http_get(addr: &str, path: &str, accept: Option<&str>) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(connection);
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, addr);
    if let Some(a) = accept {
        request = request.header(hyper::header::ACCEPT, a);
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {addr}{path}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {addr}{path}: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A file each run of a task appends its payload to, so that runs are counted outside
/// carpool (exactly-once checks).
pub struct RunLog(tempfile::NamedTempFile);

impl Default for RunLog {
    fn default() -> Self {
        Self(tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("a runs file: {e}")))
    }
}

impl RunLog {
    /// An `--exec` command that reads its payload line, works for 0.3 s, appends the line
    /// to the file and answers it.
    pub fn exec(&self) -> String {
        let path = self.0.path().display();
        format!("read p; sleep 0.3; echo \"$p\" >> {path}; echo \"$p\"")
    }

    /// What ran so far, a payload a line.
    pub fn ran(&self) -> String {
        std::fs::read_to_string(self.0.path()).unwrap_or_default()
    }

    /// Asserts that `expected` payloads ran, each exactly once.
    pub fn assert_each_ran_once(&self, expected: usize) {
        let ran = std::fs::read_to_string(self.0.path()).unwrap_or_default();
        let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for line in ran.lines() {
            *counts.entry(line.trim()).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "ran more than once: {twice:?}");
        assert_eq!(counts.len(), expected, "some acknowledged task never ran");
    }
}
