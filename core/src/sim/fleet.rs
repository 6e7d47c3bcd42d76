//! The simulated workers: their running tasks, CPU shares and samples.

use super::*;

/// A task running on a simulated worker.
#[derive(Debug)]
pub(super) struct SimTask {
    pub(super) task: u64,
    pub(super) attempt: u32,
    pub(super) started: Duration,
    /// CPU seconds it still needs; 0 once it waits.
    pub(super) cpu_left: f64,
    /// The wait after its CPU.
    pub(super) wait: Duration,
    /// Whether it runs (on a ready runtime copy, when copies are modelled); a task waiting
    /// for a copy uses no CPU and is not reported as running.
    pub(super) on_copy: bool,
}

pub(super) struct SimWorker {
    pub(super) id: WorkerId,
    pub(super) conn: Conn,
    pub(super) tasks: Vec<SimTask>,
    /// Bumped whenever the CPU share changes, so that a stale CpuDone is ignored.
    pub(super) version: u64,
    /// Up to when CPU progress has been accounted.
    pub(super) advanced: Duration,
    /// Busy share of the vCPUs integrated over time (vCPU-seconds / vCPUs).
    pub(super) busy: f64,
    /// Where the next sample's CPU span starts: (time, busy integral then).
    pub(super) span: (Duration, f64),
    /// A sample is already queued for the last change.
    pub(super) sample_queued: bool,
    /// When its running tasks last rose past the most since its last sample.
    pub(super) newest: Duration,
    /// The most tasks it ran at once since its last sample (more restarts the CPU span, as
    /// the real worker's does).
    pub(super) most: usize,
    /// Runtime copies in their init: CPU seconds each still needs, and when it started.
    pub(super) inits: Vec<(f64, Duration)>,
    /// Copies that finished their init, and their inits' wall time added up (seconds).
    pub(super) inited: (u32, f64),
    /// Ready copies with no task.
    pub(super) idle: usize,
    /// Its concurrency limit, as the coordinator last set it.
    pub(super) limit: usize,
    /// Whether a task has finished on it (its working memory is known).
    pub(super) completed: bool,
    /// Its memory size (MB), as its spawn asked, and the vCPUs that size has.
    pub(super) memory_mb: u32,
    pub(super) vcpus: f64,
}

impl SimWorker {
    /// What shares its vCPUs now: tasks in their CPU phase and copies in their init.
    pub(super) fn in_cpu(&self) -> usize {
        self.running().filter(|t| t.cpu_left > 0.0).count() + self.inits.len()
    }

    /// The tasks that run (not waiting for a copy).
    pub(super) fn running(&self) -> impl Iterator<Item = &SimTask> {
        self.tasks.iter().filter(|t| t.on_copy)
    }

    /// Runtime copies alive: starting, idle and busy.
    pub(super) fn copies(&self) -> usize {
        self.inits.len() + self.idle + self.running().count()
    }

    /// Accounts CPU progress up to `now` at the share that held since the last change.
    pub(super) fn advance(&mut self, now: Duration, vcpus: f64) {
        let dt = now.saturating_sub(self.advanced).as_secs_f64();
        self.advanced = now;
        if dt <= 0.0 {
            return;
        }
        let n = self.in_cpu() as f64;
        if n == 0.0 {
            return;
        }
        let rate = (vcpus / n).min(1.0);
        let phases = self
            .tasks
            .iter_mut()
            .filter(|t| t.on_copy && t.cpu_left > 0.0)
            .map(|t| &mut t.cpu_left)
            .chain(self.inits.iter_mut().map(|(left, _)| left));
        for left in phases {
            *left = (*left - dt * rate).max(0.0);
            // Under a microsecond left is done (the clock has nanoseconds; rounding must not
            // leave a phase that ends at the same instant for ever).
            if *left < 1e-6 {
                *left = 0.0;
            }
        }
        self.busy += dt * n.min(vcpus) / vcpus;
    }

    /// When the earliest CPU phase ends at the current share, if any runs.
    pub(super) fn next_cpu_end(&self, now: Duration, vcpus: f64) -> Option<Duration> {
        let n = self.in_cpu() as f64;
        let left = self
            .running()
            .filter(|t| t.cpu_left > 0.0)
            .map(|t| t.cpu_left)
            .chain(self.inits.iter().map(|&(left, _)| left))
            .fold(f64::INFINITY, f64::min);
        (n > 0.0 && left.is_finite()).then(|| now + Duration::from_secs_f64(left / (vcpus / n).min(1.0)))
    }
}

/// The live workers: a slab, plus their slots by id (the state names workers by id).
#[derive(Default)]
pub(super) struct Fleet {
    pub(super) slots: Vec<Option<SimWorker>>,
    pub(super) free: Vec<u32>,
    pub(super) by_id: HashMap<WorkerId, u32>,
    /// Slots by the connection the state gave each worker (its messages name that).
    pub(super) by_conn: HashMap<Conn, u32>,
}

impl Fleet {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn insert(&mut self, w: SimWorker) -> u32 {
        let (id, conn) = (w.id.clone(), w.conn);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(w);
                slot
            }
            None => {
                self.slots.push(Some(w));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(id, slot);
        self.by_conn.insert(conn, slot);
        slot
    }

    pub(super) fn get(&self, slot: u32, conn: u64) -> Option<&SimWorker> {
        self.slots.get(slot as usize)?.as_ref().filter(|w| w.conn == conn)
    }

    /// Whether connection `conn` of worker `id` is live.
    pub(super) fn live(&self, id: &WorkerId, conn: u64) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|&slot| self.get(slot, conn).is_some())
    }

    pub(super) fn get_mut(&mut self, slot: u32, conn: u64) -> Option<&mut SimWorker> {
        self.slots
            .get_mut(slot as usize)?
            .as_mut()
            .filter(|w| w.conn == conn)
    }

    pub(super) fn remove(&mut self, slot: u32, conn: u64) -> Option<SimWorker> {
        self.get_mut(slot, conn)?;
        let w = self.slots[slot as usize].take()?;
        self.by_id.remove(&w.id);
        self.by_conn.remove(&w.conn);
        self.free.push(slot);
        Some(w)
    }
}
