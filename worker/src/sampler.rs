//! Resource samples of the worker itself, never of the machine it shares: a busy neighbour
//! is not the worker's load.
//!
//! - **Process tree** (the default): CPU is this process's CPU time, plus that of the
//!   children it has waited for (`getrusage(RUSAGE_CHILDREN)`), plus that of the children
//!   it started and still runs ([`crate::children`]) and their descendants; memory is the
//!   resident memory of the same tree. No scan of every process on the host: the children
//!   are the ones it registered.
//! - **Cgroup** (cgroup v2, the worker's own): `cpu.stat`'s `usage_usec`, `memory.current`,
//!   `memory.max` and `memory.peak`. Chosen by `--measure auto` when the worker is the init
//!   process of a container at the root of its cgroup namespace, where that cgroup is the
//!   container's alone.
//!
//! CPU is a fraction of the worker's vCPU allotment (its `--vcpus`; on Lambda the share its
//! memory size buys, 1769 MB per vCPU, whatever cores the micro-VM shows), so it may exceed
//! 1.0 on an instance that lets it burst. It covers the span since the running tasks last
//! grew (so a rise of the coordinator's limit is judged by the tasks it let in, not diluted by
//! the quiet before them), or since the previous sample.
//!
//! CPU wait is measured over the same span: the time the tree's threads were ready to run
//! but waited for a CPU (the kernel's run delay, `/proc/PID/task/TID/schedstat`, summed over
//! the threads of this process and of its registered children), or, for a cgroup, its CPU
//! pressure (`cpu.pressure`, the time some of its tasks waited). A worker whose tasks wait
//! runs more of them than the CPU it can actually have, whatever its CPU share shows (a host
//! whose cores it shares, or fewer cores than its allotment).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carpool_proto::pb::ResourceSample;
use nix::sys::resource::{UsageWho, getrusage};
use nix::time::{ClockId, clock_gettime};

/// How a worker measures itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Measure {
    /// The cgroup when the worker is a container's init process at the root of its cgroup
    /// namespace (the cgroup is then the container's alone), else the process tree.
    #[default]
    Auto,
    /// Its own process tree: this process and the children it started.
    Process,
    /// Its cgroup (v2): everything in it counts as the worker's.
    Cgroup,
}

/// Where figures come from, once decided.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    Tree,
    Cgroup(PathBuf),
}

/// Shortest span a CPU figure is computed over; a sample sooner repeats the last figure.
const MIN_CPU_SPAN: Duration = Duration::from_millis(10);
/// Most descendants of one registered child that are followed.
const MAX_DESCENDANTS: usize = 256;
/// Memory that moved by this share of the limit since the last sample is material.
const MATERIAL_MEMORY: f64 = 0.01;
/// CPU that moved by this much (of the allotment) since the last sample is material.
const MATERIAL_CPU: f64 = 0.1;

/// Takes the worker's samples; keeps the start of the current CPU span.
#[derive(Debug)]
pub struct Sampler {
    source: Source,
    /// vCPUs the CPU figure is a fraction of.
    allotment: f64,
    /// The memory limit: the configured size, or the cgroup's if lower.
    memory_limit: u64,
    /// When the current CPU span started and the CPU time then.
    span: Option<(Instant, Duration)>,
    /// The CPU wait when the span started.
    wait_span: Option<Duration>,
    /// Whether the running tasks grew since the last sample (the span then restarted).
    marked: bool,
    last_cpu: f64,
    last_wait: f64,
    last_memory: u64,
    peak: u64,
}

impl Sampler {
    /// A sampler measuring as `measure` says, with CPU over `allotment` vCPUs and
    /// `memory_mb` as the memory limit (unless the cgroup's is lower).
    pub fn new(measure: Measure, allotment: f64, memory_mb: u32) -> Self {
        let source = match measure {
            Measure::Process => Source::Tree,
            Measure::Cgroup => {
                Source::Cgroup(own_cgroup().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")))
            }
            Measure::Auto => match own_cgroup() {
                Some(dir) if std::process::id() == 1 => Source::Cgroup(dir),
                _ => Source::Tree,
            },
        };
        let mut memory_limit = u64::from(memory_mb) * 1024 * 1024;
        if let Source::Cgroup(dir) = &source
            && let Some(max) = read_u64(&dir.join("memory.max"))
        {
            memory_limit = memory_limit.min(max);
        }
        let mut s = Self {
            source,
            allotment: if allotment > 0.0 { allotment } else { 1.0 },
            memory_limit: memory_limit.max(1),
            span: None,
            wait_span: None,
            marked: false,
            last_cpu: 0.0,
            last_wait: 0.0,
            last_memory: 0,
            peak: 0,
        };
        s.restart_span();
        s
    }

    /// The CPU span starts now.
    fn restart_span(&mut self) {
        let (cpu, wait) = self.cpu_and_wait();
        self.span = cpu.map(|t| (Instant::now(), t));
        self.wait_span = wait;
    }

    /// `"process tree"` or `"cgroup DIR"`, for the log.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Tree => "process tree".to_owned(),
            Source::Cgroup(dir) => format!("cgroup {}", dir.display()),
        }
    }

    /// The running tasks grew: the next CPU figure covers only the time from now (once per
    /// sample: later growth before the sample keeps the span).
    pub fn mark(&mut self) {
        if !self.marked {
            self.marked = true;
            self.restart_span();
        }
    }

    /// A sample now; `running` tasks are in flight, the newest of them for `youngest`.
    pub fn sample(&mut self, running: u32, youngest: Duration) -> ResourceSample {
        let now = Instant::now();
        let (cpu_now, wait_now) = self.cpu_and_wait();
        if let (Some((at, before)), Some(t)) = (self.span, cpu_now) {
            let span = now.saturating_duration_since(at);
            if span >= MIN_CPU_SPAN {
                let per_allotment = span.as_secs_f64() * self.allotment;
                self.last_cpu = t.saturating_sub(before).as_secs_f64() / per_allotment;
                self.last_wait = match (self.wait_span, wait_now) {
                    (Some(before), Some(w)) => w.saturating_sub(before).as_secs_f64() / per_allotment,
                    _ => 0.0,
                };
            }
        }
        self.span = cpu_now.map(|t| (now, t));
        self.wait_span = wait_now;
        self.marked = false;
        let used = self.memory_used();
        // Memory still rising by a material step: the newest tasks (or runtime copies) have
        // not shown what they hold yet, so none counts as settled (youngest 0) and the
        // coordinator neither raises the limit nor learns a task's size from this sample.
        let rising = used > self.last_memory + (MATERIAL_MEMORY * self.memory_limit as f64) as u64;
        let youngest = if rising { Duration::ZERO } else { youngest };
        self.last_memory = used;
        self.peak = self.peak.max(used).max(self.memory_peak());
        ResourceSample {
            cpu: self.last_cpu,
            memory_used_bytes: used,
            memory_limit_bytes: self.memory_limit,
            running_tasks: running,
            memory_peak_bytes: self.peak,
            youngest_task_ms: if running == 0 {
                0
            } else {
                youngest.as_millis().min(u128::from(u32::MAX)) as u32
            },
            cpu_wait: self.last_wait,
            copy_init_ms: 0,
        }
    }

    /// Whether memory or CPU moved materially since the last sample (a cheap look: no
    /// message unless it did).
    pub fn moved(&mut self) -> bool {
        let used = self.memory_used();
        self.peak = self.peak.max(used);
        if used.abs_diff(self.last_memory) as f64 >= MATERIAL_MEMORY * self.memory_limit as f64 {
            return true;
        }
        let (Some((at, before)), Some(t)) = (self.span, self.cpu_time()) else {
            return false;
        };
        let span = at.elapsed();
        span >= MIN_CPU_SPAN * 2 && {
            let cpu = t.saturating_sub(before).as_secs_f64() / span.as_secs_f64() / self.allotment;
            (cpu - self.last_cpu).abs() >= MATERIAL_CPU
        }
    }

    /// CPU time of the tree (or cgroup) so far.
    fn cpu_time(&self) -> Option<Duration> {
        match &self.source {
            Source::Cgroup(dir) => cgroup_usage(dir),
            Source::Tree => tree_cpu(&descendants()),
        }
    }

    /// CPU time so far, and the time the tree's threads waited for a CPU so far (the
    /// cgroup's: the time some of its tasks did; `None` where the kernel does not say),
    /// from one walk of the tree.
    fn cpu_and_wait(&self) -> (Option<Duration>, Option<Duration>) {
        match &self.source {
            Source::Cgroup(dir) => (cgroup_usage(dir), cgroup_pressure(dir)),
            Source::Tree => {
                let tree = descendants();
                let wait = procfs::process::Process::myself()
                    .ok()
                    .and_then(|me| run_delay(&me))
                    .map(|own| Duration::from_nanos(own + tree.iter().filter_map(run_delay).sum::<u64>()));
                (tree_cpu(&tree), wait)
            }
        }
    }

    /// Memory the tree (or cgroup) uses now.
    fn memory_used(&self) -> u64 {
        match &self.source {
            Source::Cgroup(dir) => read_u64(&dir.join("memory.current")).unwrap_or(0),
            Source::Tree => {
                let page = procfs::page_size();
                let own = procfs::process::Process::myself()
                    .and_then(|p| p.statm())
                    .map_or(0, |m| m.resident * page);
                let children: u64 = descendants()
                    .iter()
                    .filter_map(|p| p.stat().ok())
                    .map(|s| s.rss * page)
                    .sum();
                own + children
            }
        }
    }

    /// The kernel's high-water mark of the memory used: the cgroup's `memory.peak`, or this
    /// process's own peak (`ru_maxrss`) plus each live child's own peak (`VmHWM`). Added
    /// up, the peaks of processes that peaked at different moments overstate the tree's
    /// true peak, never understate it: a peak under the size is a peak under the size.
    fn memory_peak(&self) -> u64 {
        match &self.source {
            Source::Cgroup(dir) => read_u64(&dir.join("memory.peak")).unwrap_or(0),
            Source::Tree => {
                let own = getrusage(UsageWho::RUSAGE_SELF).map_or(0, |u| u.max_rss().max(0) as u64 * 1024);
                let children: u64 = descendants()
                    .iter()
                    .filter_map(|p| p.status().ok())
                    .map(|s| s.vmhwm.unwrap_or(0) * 1024)
                    .sum();
                own + children
            }
        }
    }
}

fn timeval(t: nix::sys::time::TimeVal) -> Duration {
    Duration::from_secs(t.tv_sec().max(0) as u64) + Duration::from_micros(t.tv_usec().max(0) as u64)
}

/// The registered children and their descendants that are still alive.
fn descendants() -> Vec<procfs::process::Process> {
    let mut out = Vec::new();
    let mut todo: Vec<u32> = crate::children::registered();
    while let Some(pid) = todo.pop() {
        if out.len() >= MAX_DESCENDANTS {
            break;
        }
        let Ok(p) = procfs::process::Process::new(pid as i32) else {
            continue;
        };
        if let Ok(kids) = p.task_main_thread().and_then(|t| t.children()) {
            todo.extend(kids);
        }
        out.push(p);
    }
    out
}

/// This process's cgroup v2 directory, if it is at the root of its cgroup namespace
/// (`0::/`) with the unified hierarchy mounted at /sys/fs/cgroup.
fn own_cgroup() -> Option<PathBuf> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let at_root = membership.lines().any(|l| l.trim() == "0::/");
    let dir = PathBuf::from("/sys/fs/cgroup");
    (at_root && dir.join("cgroup.controllers").is_file() && dir.join("cpu.stat").is_file()).then_some(dir)
}

fn cgroup_usage(dir: &Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_micros)
}

/// CPU time of this process, of the children it has waited for, and of `tree` (its live
/// registered children and their descendants).
fn tree_cpu(tree: &[procfs::process::Process]) -> Option<Duration> {
    let own = Duration::from(clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).ok()?);
    let waited = getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| timeval(u.user_time()) + timeval(u.system_time()))
        .unwrap_or_default();
    let ticks = procfs::ticks_per_second() as f64;
    let live: u64 = tree
        .iter()
        .filter_map(|p| p.stat().ok())
        .map(|s| s.utime + s.stime + s.cutime.max(0) as u64 + s.cstime.max(0) as u64)
        .sum();
    Some(own + waited + Duration::from_secs_f64(live as f64 / ticks))
}

/// The run delay of every thread of `p`, in ns (threads that have exited no longer count:
/// the figure is read as a difference over a short span).
fn run_delay(p: &procfs::process::Process) -> Option<u64> {
    let total = p
        .tasks()
        .ok()?
        .filter_map(|t| t.ok()?.schedstat().ok())
        .map(|s| s.run_delay)
        .sum();
    Some(total)
}

/// The time some of the cgroup's tasks waited for a CPU (`cpu.pressure`'s `some total`).
fn cgroup_pressure(dir: &Path) -> Option<Duration> {
    let pressure = std::fs::read_to_string(dir.join("cpu.pressure")).ok()?;
    pressure
        .lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))
        .and_then(|v| v.parse().ok())
        .map(Duration::from_micros)
}

/// A number in a cgroup file; `None` for "max" or an unreadable file.
fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns CPU in a loop until killed.
    fn busy_loop() -> std::process::Command {
        let mut c = std::process::Command::new("sh");
        c.args(["-c", "while :; do :; done"]);
        c
    }

    /// Waits for the CPU span to cover `d` and samples.
    fn sample_after(s: &mut Sampler, d: Duration) -> ResourceSample {
        std::thread::sleep(d);
        s.sample(0, Duration::ZERO)
    }

    #[test]
    fn samples_are_within_bounds() {
        // Children other tests register are this tree's while they live: measure alone.
        let _alone = crate::children::SERIAL.blocking_lock();
        let mut s = Sampler::new(Measure::Process, 1.0, 2048);
        let x = sample_after(&mut s, Duration::from_millis(20));
        assert!((0.0..=1.5).contains(&x.cpu), "{x:?}");
        assert!(
            x.memory_used_bytes > 0 && x.memory_limit_bytes == 2048 << 20,
            "{x:?}"
        );
        assert!(x.memory_peak_bytes >= x.memory_used_bytes, "{x:?}");
    }

    /// More busy children than the cores the worker can run on: some of them always wait
    /// for a CPU, and the sample shows it (the kernel's run delay), whatever the host's load.
    #[test]
    fn children_that_queue_for_a_cpu_show_as_cpu_wait() {
        let _alone = crate::children::SERIAL.blocking_lock();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut s = Sampler::new(Measure::Process, cores as f64, 2048);
        let mut children: Vec<_> = (0..=cores)
            .map(|_| busy_loop().spawn().expect("start a child"))
            .collect();
        let registered: Vec<_> = children
            .iter()
            .map(|c| crate::children::register(c.id()))
            .collect();
        s.sample(0, Duration::ZERO);
        let crowded = sample_after(&mut s, Duration::from_millis(400));
        drop(registered);
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(
            crowded.cpu_wait > 0.0,
            "{cores} cores, {} busy children, no wait: {crowded:?}",
            cores + 1
        );
    }

    #[test]
    fn a_busy_neighbour_is_not_the_workers_load_but_its_own_child_is() {
        let _alone = crate::children::SERIAL.blocking_lock();
        let mut s = Sampler::new(Measure::Process, 1.0, 2048);
        // A neighbour: started by a shell that exits at once, so it is not our child (it is
        // adopted by init) and nothing registers it.
        let out = std::process::Command::new("sh")
            .args(["-c", "sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!"])
            .output()
            .expect("start a neighbour");
        let neighbour: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("its pid");
        let kill = |pid: i32| {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        };
        s.sample(0, Duration::ZERO);
        let quiet = sample_after(&mut s, Duration::from_millis(400));
        kill(neighbour);
        assert!(
            quiet.cpu < 0.25,
            "a neighbour's load counted as the worker's: {quiet:?}"
        );
        // A child the worker started and registered: its load is the worker's. Judged by
        // what the child itself consumed (its CPU time as the kernel counts it), not by a
        // share of wall time, which a loaded host does not give it.
        let mut child = busy_loop().spawn().expect("start a child");
        let registered = crate::children::register(child.id());
        let child_cpu = || {
            let ticks = procfs::ticks_per_second() as f64;
            i32::try_from(child.id())
                .ok()
                .and_then(|pid| procfs::process::Process::new(pid).ok())
                .and_then(|p| p.stat().ok())
                .map_or(0.0, |st| (st.utime + st.stime) as f64 / ticks)
        };
        s.sample(0, Duration::ZERO);
        let (begin, child_before) = (Instant::now(), child_cpu());
        std::thread::sleep(Duration::from_millis(400));
        let child_spent = child_cpu() - child_before;
        let busy = s.sample(0, Duration::ZERO);
        let span = begin.elapsed().as_secs_f64();
        drop(registered);
        let _ = child.kill();
        let _ = child.wait();
        // The sample's CPU time (its share of one vCPU over the span) holds the child's own,
        // within the clock tick the kernel counts in.
        let tick = 1.0 / procfs::ticks_per_second() as f64;
        assert!(child_spent > 0.0, "the child never ran: {busy:?}");
        assert!(
            busy.cpu * span >= child_spent - 2.0 * tick,
            "the worker's own busy child did not count: it spent {child_spent:.3} s, the sample shows {:.3} s: {busy:?}",
            busy.cpu * span
        );
    }
}
