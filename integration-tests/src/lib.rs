//! Helpers for tests that start the real carpool binaries on ephemeral loopback ports.
//!
//! - [`Coordinator`]: a `carpool-coordinator` process on `127.0.0.1:0`; its bound address
//!   is read from its stdout; the process is killed when the guard drops (also when the
//!   test panics).
//! - [`FakeWorker`]: a worker stream driven by the test itself, to script samples and
//!   results exactly.
//! - [`eventually`]: waits for a condition with a deadline and says what it waited for.
//! - [`emulators`]: AWS emulators run for real (moto).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod emulators;
pub mod raw;

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

/// A running `carpool-coordinator`, killed on drop. Its log goes to a file, printed if the
/// test fails.
pub struct Coordinator {
    child: Child,
    log: PathBuf,
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
        let log = log_path("coordinator");
        let log_file =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let mut child = Command::new(bin("carpool-coordinator"))
            .args(["--listen", listen])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start carpool-coordinator: {e}"));
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            if let Some(out) = stdout {
                let mut line = String::new();
                let _ = BufReader::new(out).read_line(&mut line);
                let _ = tx.send(line);
            }
        });
        let mut guard = Self {
            log,
            child,
            url: String::new(),
        };
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("carpool-coordinator did not print its address within {WAIT:?}"));
        let addr = line
            .trim()
            .strip_prefix("carpool-coordinator listening on ")
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
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

    /// SIGKILLs it (no drain, no flush) and waits for it to be gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        wait_for_exit(&mut self.child, "the coordinator (after SIGTERM)")
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- coordinator log ----\n{}", self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `child`'s exit status once it has exited; panics naming `what` after [`WAIT`].
fn wait_for_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} did not exit within {WAIT:?}");
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

/// A free loopback port, for tools that cannot report the port they bound. The OS picks
/// it; it is released just before the tool binds it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot pick a loopback port: {e}"))
}

/// A process a test started (an emulator, a worker), with its output in a log file. On
/// drop it gets SIGINT, then SIGKILL if it has not exited within 5 s; its log is printed if
/// the test failed.
pub struct Proc {
    child: Child,
    log: PathBuf,
    name: String,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr going to a log file.
    pub fn start(name: &str, mut cmd: Command) -> Self {
        let log = log_path(name);
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("clone {}: {e}", log.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            child,
            log,
            name: name.to_owned(),
        }
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
        if let Ok(None) = self.child.try_wait() {
            self.signal(nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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

/// A worker stream driven by the test: it says hello, then sends exactly what the test
/// tells it to.
pub struct FakeWorker {
    out: tmpsc::Sender<pb::WorkerMessage>,
    inbound: tonic::Streaming<pb::CoordinatorMessage>,
    /// The Welcome the coordinator answered with.
    pub welcome: pb::Welcome,
}

impl FakeWorker {
    /// Connects and says `hello`; panics unless a Welcome comes back.
    pub async fn connect(channel: Channel, hello: pb::Hello) -> Self {
        match Self::try_connect(
            channel,
            pb::WorkerMessage {
                kind: Some(Up::Hello(hello)),
            },
        )
        .await
        {
            Ok(w) => w,
            Err(status) => panic!("worker connect refused: {status}"),
        }
    }

    /// Opens the stream with `first` as the first message; the coordinator's refusal comes
    /// back as its status.
    pub async fn try_connect(channel: Channel, first: pb::WorkerMessage) -> Result<Self, tonic::Status> {
        Self::open(channel, Bearer::default(), first).await
    }

    /// Connects with a token and says `hello`.
    pub async fn connect_with(channel: Channel, bearer: Bearer, hello: pb::Hello) -> Self {
        let first = pb::WorkerMessage {
            kind: Some(Up::Hello(hello)),
        };
        match Self::open(channel, bearer, first).await {
            Ok(w) => w,
            Err(status) => panic!("worker connect refused: {status}"),
        }
    }

    async fn open(channel: Channel, bearer: Bearer, first: pb::WorkerMessage) -> Result<Self, tonic::Status> {
        let (out, rx) = tmpsc::channel(64);
        out.send(first)
            .await
            .map_err(|_| tonic::Status::internal("send"))?;
        let mut inbound = WorkersClient::with_interceptor(channel, bearer)
            .connect(ReceiverStream::new(rx))
            .await?
            .into_inner();
        match inbound.message().await? {
            Some(pb::CoordinatorMessage {
                kind: Some(Down::Welcome(welcome)),
            }) => Ok(Self {
                out,
                inbound,
                welcome,
            }),
            other => Err(tonic::Status::internal(format!(
                "expected a welcome, got {other:?}"
            ))),
        }
    }

    /// Sends one message.
    pub async fn send(&self, kind: Up) {
        self.out
            .send(pb::WorkerMessage { kind: Some(kind) })
            .await
            .unwrap_or_else(|_| panic!("fake worker stream closed"));
    }

    /// Sends a sample.
    pub async fn sample(&self, cpu: f64, running: u32) {
        self.send(Up::Sample(pb::ResourceSample {
            cpu,
            memory_used_bytes: 100 << 20,
            memory_limit_bytes: 2048 << 20,
            running_tasks: running,
            ..Default::default()
        }))
        .await;
    }

    /// Reports one task as done with `output`.
    pub async fn finish(&self, task: &pb::TaskAssignment, output: &str) {
        self.send(Up::Results(pb::TaskResults {
            results: vec![pb::WorkerTaskResult {
                task_id: task.task_id,
                attempt: task.attempt,
                outcome: Some(pb::worker_task_result::Outcome::Output(
                    output.as_bytes().to_vec().into(),
                )),
                started_unix_ms: 1,
                finished_unix_ms: 2,
                duration_us: 1000,
            }],
        }))
        .await;
    }

    /// The next message from the coordinator within `within`, or `None` if none came.
    pub async fn next_within(&mut self, within: Duration) -> Option<Down> {
        match tokio::time::timeout(within, self.inbound.message()).await {
            Ok(Ok(Some(m))) => m.kind,
            Ok(Ok(None)) => None,
            Ok(Err(status)) => panic!("coordinator ended the worker stream: {status}"),
            Err(_) => None,
        }
    }

    /// Waits for the coordinator to end this stream with an error status, skipping any
    /// messages before it.
    pub async fn next_status(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(WAIT, self.inbound.message()).await {
                Ok(Err(status)) => return status,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => panic!("the stream ended without an error status"),
                Err(_) => panic!("no error status within {WAIT:?}"),
            }
        }
    }

    /// The next message, which must come within [`WAIT`].
    pub async fn next(&mut self) -> Down {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no message from the coordinator within {WAIT:?}"))
    }

    /// The next message, which must be an assignment; returns its tasks.
    pub async fn expect_assign(&mut self) -> Vec<pb::TaskAssignment> {
        match self.next().await {
            Down::Assign(a) => a.tasks,
            other => panic!("expected an assignment, got {other:?}"),
        }
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

/// A process started by a test (e.g. a `carpool-worker`), killed on drop.
pub struct Process {
    child: Child,
}

impl Process {
    /// Starts `carpool-worker` with `args`.
    pub fn worker(args: &[&str]) -> Self {
        let child = Command::new(bin("carpool-worker"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start carpool-worker: {e}"));
        Self { child }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on 127.0.0.1 that a test can cut: every connection through it is dropped
/// at once, and while it refuses, new ones are closed as soon as they are accepted.
pub struct TcpProxy {
    /// The address to dial instead of the target.
    pub addr: std::net::SocketAddr,
    refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `target` (`http://host:port` or `host:port`).
    pub async fn start(target: &str) -> Self {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let refusing = refuse.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refusing.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let target = target.clone();
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                conns.spawn(async move {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream) => {}
                        _ = cuts.changed() => {} // both sockets drop here
                    }
                });
            }
        });
        Self {
            addr,
            refuse,
            cut,
            task,
        }
    }

    /// `http://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every connection through the proxy now.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// While `true`, new connections are closed as soon as they are accepted.
    pub fn refuse(&self, refuse: bool) {
        self.refuse.store(refuse, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
