//! Section `postgres` (with `--state-url`): what keeping state in PostgreSQL costs, and how
//! soon a standby takes over, through the real binaries.
//!
//! - Map and unary Submit through one real `carpool-worker` with default flags (2 vCPUs,
//!   spawned by the coordinator), in memory, with `--state-dir` and with `--state-url`, one
//!   after another in the same run.
//! - Takeover: two coordinators share the database; two real workers dial both, one for a
//!   backlog of 50 ms `sleep` tasks that is running and waiting when the active coordinator
//!   is killed with SIGKILL, one for `echo`; a client submits an `echo` task to the standby
//!   until one runs there: the time from the kill to that first dispatch's result (the
//!   standby taking the lease, restoring the backlog, its pause for reconnecting workers, the
//!   worker's reconnect). The killed one comes back on its address as the next standby.
//! - The same with the active coordinator paused (SIGSTOP) instead of killed: its sockets stay
//!   open and silent, so the standby takes over only when the lease runs out, and the workers
//!   notice the silence by their own keepalive. It is resumed once the standby has run a task
//!   (it then finds its lease lost and exits) and restarted as the next standby.

use super::*;

/// The target: Map through PostgreSQL, tasks/s.
const MAP_TARGET: f64 = 20_000.0;
/// The target: a kill -9 of the active coordinator to the standby's first dispatch.
const TAKEOVER_TARGET_MS: f64 = 3_000.0;
/// The target for a paused active coordinator: the default lease (2 s) plus 1 s.
const PAUSE_TARGET_MS: f64 = 3_000.0;

pub(super) async fn postgres(opts: &BenchOptions, server: &str) -> Result<Vec<Row>, String> {
    // A database of the run's own on that server, dropped at the end: every figure starts
    // from an empty journal (a takeover reads every retained task; see docs/standby.md).
    let scratch = Scratch::create(server, "throughput").await?;
    let mut rows = throughput(opts, &scratch.url).await;
    scratch.drop_it().await;
    let mut takeovers = Vec::new();
    for how in [Stop::Kill, Stop::Pause] {
        let scratch = Scratch::create(server, "takeover").await?;
        let taken = takeover(&scratch.url, opts.reps.max(3), how).await;
        scratch.drop_it().await;
        takeovers.push((how, taken?));
    }
    let rows_ok = rows.as_mut().map_err(|e| e.clone())?;
    for (how, times) in takeovers {
        let (key, what, target) = match how {
            Stop::Kill => ("takeover", "kill -9 of", TAKEOVER_TARGET_MS),
            Stop::Pause => ("pause_takeover", "SIGSTOP of", PAUSE_TARGET_MS),
        };
        rows_ok.push(at_most(
            row(
                &format!("{key}_p50_ms"),
                &format!(
                    "{what} the active coordinator to the standby's first dispatch, median of {}",
                    times.len()
                ),
                median(times.clone()),
                "ms",
            ),
            target,
        ));
        rows_ok.push(row(
            &format!("{key}_max_ms"),
            &format!("{what} the active coordinator to the standby's first dispatch, the slowest"),
            times.iter().copied().fold(0.0, f64::max),
            "ms",
        ));
    }
    rows
}

/// How the active coordinator is stopped in a takeover round.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGKILL: its connections close at once.
    Kill,
    /// SIGSTOP until the standby has run a task, then SIGCONT: its connections stay open and
    /// silent (a stalled VM, a long page-in); once resumed it finds its lease lost and exits.
    Pause,
}

/// A database created for one run.
struct Scratch {
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

impl Scratch {
    async fn create(server: &str, what: &str) -> Result<Self, String> {
        let (admin, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("section postgres: cannot connect to --state-url: {e}"))?;
        tokio::spawn(connection);
        let name = format!(
            "carpool_bench_{what}_{}_{}",
            std::process::id(),
            carpool_proto::unix_ms()
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("section postgres: cannot create a scratch database: {e}"))?;
        let (base, query) = match server.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (server, String::new()),
        };
        // scheme://authority, then this run's database in place of the URL's.
        let authority = base.find("://").map_or(0, |i| i + 3);
        let prefix = match base[authority..].find('/') {
            Some(i) => &base[..authority + i],
            None => base,
        };
        let url = format!("{prefix}/{name}{query}");
        Ok(Self { admin, name, url })
    }

    async fn drop_it(self) {
        let _ = self
            .admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .await;
    }
}

async fn throughput(opts: &BenchOptions, url: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let state_dir = dir.path().to_string_lossy().into_owned();
    let stores: [(&str, &str, Vec<&str>); 3] = [
        ("memory", "in memory", vec![]),
        ("state_dir", "--state-dir", vec!["--state-dir", &state_dir]),
        ("state_url", "--state-url (PostgreSQL)", vec!["--state-url", url]),
    ];
    for (key, label, flags) in stores {
        let mut args = REAL_WORKER.to_vec();
        args.extend(flags);
        let (coord, url) = proc::coordinator(&args)?;
        let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
        client
            .run("echo", Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        let map = repeat(opts.reps, || {
            map_throughput(&client, "echo", opts.throughput_tasks)
        })
        .await?;
        let unary = repeat(opts.reps, || {
            submit_throughput_of(&client, "echo", opts.throughput_tasks / 4, 64)
        })
        .await?;
        let map_row = row(
            &format!("real_map_tasks_per_s_{key}"),
            &format!("one real carpool-worker, {label}: no-op tasks/s through Map"),
            map,
            "tasks/s",
        );
        rows.push(if key == "state_url" {
            at_least(map_row, MAP_TARGET)
        } else {
            map_row
        });
        rows.push(row(
            &format!("real_submit_tasks_per_s_{key}"),
            &format!("one real carpool-worker, {label}: unary Submit tasks/s, 64 in flight"),
            unary,
            "tasks/s",
        ));
        drop(coord);
    }
    Ok(rows)
}

/// Whether the coordinator at `url` answers as active.
async fn is_active(url: &str) -> bool {
    match Client::connect(url).await {
        Ok(c) => c.stats().await.is_ok(),
        Err(_) => false,
    }
}

async fn until_active(url: &str) -> Result<(), String> {
    for _ in 0..1500 {
        if is_active(url).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{url} did not become active"))
}

async fn takeover(state_url: &str, rounds: usize, how: Stop) -> Result<Vec<f64>, String> {
    let args = [
        "--spawner",
        "external",
        "--state-url",
        state_url,
        "--keep-alive",
        "1h",
    ];
    let (a, a_url) = proc::coordinator(&args)?;
    until_active(&a_url).await?;
    let (b, b_url) = proc::coordinator(&args)?;
    let mut nodes = vec![(a, a_url), (b, b_url)];
    let urls = format!("{},{}", nodes[0].1, nodes[1].1);
    let mut workers = Vec::new();
    for function in ["sleep", "echo"] {
        let worker = std::process::Command::new(proc::sibling("carpool-worker")?)
            .args(["--coordinator", &urls, "--function", function])
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting carpool-worker: {e}"))?;
        workers.push(proc::Guard(worker));
    }
    let mut times = Vec::new();
    let mut active = 0;
    for _ in 0..rounds {
        let standby = 1 - active;
        let client = Client::connect(&nodes[active].1)
            .await
            .map_err(|e| e.to_string())?;
        // Keep the worker busy: tasks are running and waiting when the active one dies.
        let load = {
            let client = client.clone();
            tokio::spawn(async move {
                let inputs = futures::stream::iter((0..2000).map(|_| Bytes::from_static(b"50")));
                if let Ok(mut results) = client.map("sleep", inputs).await {
                    while let Some(Ok(_)) = results.next().await {}
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let addr = nodes[active].1.trim_start_matches("http://").to_owned();
        let killed = Instant::now();
        let mut old = nodes.remove(active).0;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(old.0.id()).map_err(|e| e.to_string())?);
        match how {
            Stop::Kill => {
                let _ = old.0.kill();
                let _ = old.0.wait();
            }
            Stop::Pause => {
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)
                    .map_err(|e| format!("SIGSTOP: {e}"))?;
            }
        }
        load.abort();
        let standby_url = nodes[if standby > active { standby - 1 } else { standby }]
            .1
            .clone();
        loop {
            if killed.elapsed() > Duration::from_secs(60) {
                return Err("the standby did not run a task within 60 s of the kill".into());
            }
            if let Ok(c) = Client::connect(&standby_url).await
                && let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(10), c.run("echo", "1")).await
                && r.state() == carpool_client::TaskState::Succeeded
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        times.push(killed.elapsed().as_secs_f64() * 1000.0);
        if let Stop::Pause = how {
            // Resumed, it finds its lease taken and exits; it is killed if it has not within 30 s.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let resumed = Instant::now();
            while resumed.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = old.0.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        drop(old);
        // The killed one comes back on its address, as the standby.
        let back = proc::coordinator_at(&addr, &args)?;
        nodes.insert(active, back);
        active = standby;
    }
    Ok(times)
}
