//! Resource samples of the worker's instance, read from /proc (and cgroup limits where
//! present).
//!
//! CPU is the busy share of the CPUs the worker may run on (its affinity set, which the
//! local spawner pins to its vCPU count; on Lambda that is the whole micro-VM). Memory is,
//! in order of preference: the cgroup's use against its limit (containers), the whole
//! instance's use (Lambda, where the VM is the instance), or this process and its children
//! against the configured memory size (a local process sharing a bigger machine).

use std::time::{Duration, Instant};

use carpool_proto::pb::ResourceSample;
use procfs::{Current, CurrentSI};

/// Where memory figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemorySource {
    /// The whole instance (/proc/meminfo): right when the machine is the instance (Lambda).
    Instance,
    /// This process and its direct children against the configured size.
    Process,
}

/// Shortest span a CPU figure is computed over; samples sent sooner (right after a task
/// starts or ends) repeat the last figure instead of measuring noise.
const MIN_CPU_SPAN: Duration = Duration::from_millis(100);

/// Takes samples; keeps the previous CPU reading to compute utilisation over the span.
#[derive(Debug)]
pub struct Sampler {
    cpus: Vec<usize>,
    memory_limit: u64,
    source: MemorySource,
    prev: Option<(Instant, CpuTicks)>,
    last_cpu: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct CpuTicks {
    busy: u64,
    total: u64,
}

impl Sampler {
    /// A sampler over `cpus` (empty: all), with `memory_mb` as the limit unless a cgroup
    /// says otherwise.
    pub fn new(cpus: Vec<usize>, memory_mb: u32, source: MemorySource) -> Self {
        Self {
            cpus,
            memory_limit: u64::from(memory_mb) * 1024 * 1024,
            source,
            prev: None,
            last_cpu: 0.0,
        }
    }

    /// A sample now; `running` is the number of tasks in flight.
    pub fn sample(&mut self, running: u32) -> ResourceSample {
        let (memory_used_bytes, memory_limit_bytes) = self.memory();
        ResourceSample {
            cpu: self.cpu(),
            memory_used_bytes,
            memory_limit_bytes,
            running_tasks: running,
        }
    }

    fn cpu(&mut self) -> f64 {
        let now = Instant::now();
        if self
            .prev
            .is_some_and(|(at, _)| now.duration_since(at) < MIN_CPU_SPAN)
        {
            return self.last_cpu;
        }
        let Some(ticks) = self.ticks() else {
            return self.last_cpu;
        };
        if let Some((_, prev)) = self.prev {
            let total = ticks.total.saturating_sub(prev.total);
            if total > 0 {
                self.last_cpu = (ticks.busy.saturating_sub(prev.busy) as f64 / total as f64).clamp(0.0, 1.0);
            }
        }
        self.prev = Some((now, ticks));
        self.last_cpu
    }

    fn ticks(&self) -> Option<CpuTicks> {
        let stats = procfs::KernelStats::current().ok()?;
        let mut sum = CpuTicks::default();
        let mut add = |t: &procfs::CpuTime| {
            let idle = t.idle + t.iowait.unwrap_or(0);
            let total = t.user
                + t.nice
                + t.system
                + t.idle
                + t.iowait.unwrap_or(0)
                + t.irq.unwrap_or(0)
                + t.softirq.unwrap_or(0)
                + t.steal.unwrap_or(0);
            sum.busy += total.saturating_sub(idle);
            sum.total += total;
        };
        if self.cpus.is_empty() {
            add(&stats.total);
        } else {
            for cpu in &self.cpus {
                if let Some(t) = stats.cpu_time.get(*cpu) {
                    add(t);
                }
            }
        }
        Some(sum)
    }

    fn memory(&self) -> (u64, u64) {
        if let Some(cgroup) = cgroup_memory() {
            return cgroup;
        }
        match self.source {
            MemorySource::Instance => match procfs::Meminfo::current() {
                Ok(m) => {
                    let available = m.mem_available.unwrap_or(m.mem_free);
                    (m.mem_total.saturating_sub(available), m.mem_total)
                }
                Err(_) => (0, self.memory_limit),
            },
            MemorySource::Process => (process_tree_rss(), self.memory_limit),
        }
    }
}

/// (used, limit) from cgroup v2 when a limit is set.
fn cgroup_memory() -> Option<(u64, u64)> {
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    let limit: u64 = limit.trim().parse().ok()?; // "max" means no limit: not ours to report
    let used: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((used, limit))
}

/// Resident memory of this process and its direct children (`--exec` commands).
fn process_tree_rss() -> u64 {
    let me = match procfs::process::Process::myself() {
        Ok(p) => p,
        Err(_) => return 0,
    };
    let page = procfs::page_size();
    let mut rss = me.stat().map_or(0, |s| s.rss * page);
    if let Ok(all) = procfs::process::all_processes() {
        for p in all.flatten() {
            if let Ok(stat) = p.stat()
                && stat.ppid == me.pid
            {
                rss += stat.rss * page;
            }
        }
    }
    rss
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_within_bounds() {
        let mut s = Sampler::new(Vec::new(), 2048, MemorySource::Process);
        let a = s.sample(0);
        std::thread::sleep(MIN_CPU_SPAN);
        let b = s.sample(1);
        for x in [a, b] {
            assert!((0.0..=1.0).contains(&x.cpu), "{x:?}");
            assert!(x.memory_used_bytes > 0 && x.memory_limit_bytes > 0, "{x:?}");
        }
        assert_eq!(b.running_tasks, 1);
    }
}
