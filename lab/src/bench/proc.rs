//! Measuring processes: the coordinator child and this process, from /proc.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use procfs::process::Process;

/// CPU time (user + system) and resident memory of a process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Usage {
    /// CPU seconds used so far.
    pub cpu: Duration,
    /// Resident set size in bytes.
    pub rss: u64,
    /// When it was read.
    pub at: Instant,
}

/// Reads `pid`'s usage.
pub(crate) fn usage(pid: u32) -> Option<Usage> {
    let p = Process::new(i32::try_from(pid).ok()?).ok()?;
    let stat = p.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    Some(Usage {
        cpu: Duration::from_secs_f64((stat.utime + stat.stime) as f64 / ticks),
        rss: stat.rss * procfs::page_size(),
        at: Instant::now(),
    })
}

/// Share of one core used between two readings.
pub(crate) fn cpu_share(a: &Usage, b: &Usage) -> f64 {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    if wall <= 0.0 {
        0.0
    } else {
        b.cpu.saturating_sub(a.cpu).as_secs_f64() / wall
    }
}

/// A binary of this installation (next to the running executable).
pub(crate) fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no parent directory")?;
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "{name} not found next to {}: build it with `cargo build --release --bins`",
        exe.display()
    ))
}

/// A child process, killed when dropped.
pub(crate) struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `carpool-coordinator` on a free loopback port with `args`; returns it and its URL.
pub(crate) fn coordinator(args: &[&str]) -> Result<(Guard, String), String> {
    coordinator_at("127.0.0.1:0", args)
}

/// [`coordinator`] listening on `listen` (a restart on an earlier one's address).
pub(crate) fn coordinator_at(listen: &str, args: &[&str]) -> Result<(Guard, String), String> {
    let mut child = Command::new(sibling("carpool-coordinator")?)
        .args(["--listen", listen])
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting carpool-coordinator: {e}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
    }
    let guard = Guard(child);
    let addr = carpool_proto::listening_address(&line)
        .ok_or_else(|| format!("unexpected first line from carpool-coordinator: {line:?}"))?;
    Ok((guard, format!("http://{addr}")))
}

/// Raises this process's open-file limit to its hard limit (a fleet of 10,000 workers is
/// 10,000 sockets on each side); children inherit it.
pub(crate) fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            hard
        }
        Err(_) => 0,
    }
}
