//! The processes this worker started (an `--exec` command, a runtime process), so that its
//! samples count their CPU and memory as its own without scanning every process on the
//! host. A handler of your own that starts processes registers them the same way:
//!
//! ```no_run
//! # fn f(child: &std::process::Child) {
//! let _counted = carpool_worker::children::register(child.id());
//! // ... the child's CPU and memory count as the worker's while `_counted` lives.
//! # }
//! ```
//!
//! Their descendants are found from them (`/proc/PID/task/PID/children`), so a shell that
//! starts a pipeline is counted whole.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

static CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
/// Set once [`kill_all`] ran: the children's deaths are the worker's own exit, not news.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tests that start processes, or measure this process's CPU, take turns: the test binary
/// is one process tree.
#[cfg(test)]
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the worker is killing its children on its way out.
pub(crate) fn stopping() -> bool {
    STOPPING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Keeps a child counted while it lives; dropping it stops counting the process.
#[derive(Debug)]
pub struct Registered(u32);

impl Drop for Registered {
    fn drop(&mut self) {
        CHILDREN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// Counts process `pid` (a child this worker started) in the worker's samples.
pub fn register(pid: u32) -> Registered {
    CHILDREN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(pid);
    Registered(pid)
}

/// The registered children now.
pub(crate) fn registered() -> Vec<u32> {
    CHILDREN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .copied()
        .collect()
}

/// SIGKILLs every registered child and its process group, for a worker about to exit
/// without unwinding (its stdin closed, Lambda's SIGTERM): nothing it started outlives it.
pub(crate) fn kill_all() {
    STOPPING.store(true, std::sync::atomic::Ordering::Relaxed);
    for pid in registered() {
        kill_group(pid);
    }
}

/// This process's resident memory now, in bytes (0 if it cannot be read).
pub(crate) fn own_resident_bytes() -> u64 {
    procfs::process::Process::myself()
        .and_then(|p| p.statm())
        .map_or(0, |m| m.resident * procfs::page_size())
}

/// The most memory process `pid` and its children have held, in bytes: each one's
/// high-water mark (`VmHWM`) added up, so never less than their true peak together (0 for
/// a process gone or unreadable).
pub(crate) fn peak_bytes(pid: u32) -> u64 {
    let Ok(raw) = i32::try_from(pid) else {
        return 0;
    };
    let hwm = |p: &procfs::process::Process| p.status().ok().and_then(|s| s.vmhwm).unwrap_or(0) * 1024;
    let Ok(leader) = procfs::process::Process::new(raw) else {
        return 0;
    };
    let children: u64 = leader
        .task_main_thread()
        .ok()
        .and_then(|t| t.children().ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| i32::try_from(c).ok())
        .filter_map(|c| procfs::process::Process::new(c).ok())
        .map(|c| hwm(&c))
        .sum();
    hwm(&leader) + children
}

/// SIGKILL to process `pid` and, if it leads one, its process group (a runtime copy and
/// whatever it started).
pub(crate) fn kill_group(pid: u32) {
    use nix::sys::signal::{Signal, kill, killpg};
    if let Ok(raw) = i32::try_from(pid) {
        let pid = nix::unistd::Pid::from_raw(raw);
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = kill(pid, Signal::SIGKILL);
    }
}
