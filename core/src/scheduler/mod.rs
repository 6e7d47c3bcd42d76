//! The scheduling rule (the paper's Algorithm 1, event-driven) as pure code.
//!
//! State in, decision out: no I/O, no clock reads (ages are arguments). The state module
//! calls these functions on every event and turns their answers into messages and spawns.
//!
//! - `mod.rs`: eligibility, placement, the idle rule and scale-out.
//! - [`limit`]: each worker's adaptive concurrency limit.
//! - [`life`]: which tasks a worker may still take in its life, and when its successor starts.
//! - [`tail`]: the last tasks of a batch, packed onto workers that run anyway.

pub mod life;
pub mod limit;
pub mod sizes;
pub mod tail;

use std::time::Duration;

use crate::config::{Config, Placement};
pub use life::Admission;
pub use limit::{Learned, Limit, LimitParams, Observation};
pub use sizes::{SizeCost, SizeReason, choose_size};

/// The thresholds and policies the rule applies, taken from [`Config`].
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// CPU fraction (of a worker's allotment) above which a worker takes nothing new.
    pub cpu_threshold: f64,
    /// Memory fraction at or above which a worker takes nothing new.
    pub mem_threshold: f64,
    /// Fraction of the execution timeout after which a worker drains (with
    /// [`Admission::Duration`], only for a function with nothing measured yet).
    pub deadline_fraction: f64,
    /// How a worker's admissions end (see [`life`]).
    pub admission: Admission,
    /// How long an idle worker with an empty pool is kept.
    pub keep_alive: Duration,
    /// Ranking of eligible workers.
    pub placement: Placement,
    /// Tasks a worker may run over its life (`None`: unlimited).
    pub max_tasks_per_worker: Option<u64>,
    /// How concurrency limits move.
    pub limits: LimitParams,
    /// `--slots`: every worker's limit pinned at this.
    pub pinned_slots: Option<u32>,
    /// Whether the coordinator starts workers itself (local, Lambda): only then may a
    /// worker too busy for the waiting work be sent away, since another can take its place.
    pub spawns: bool,
    /// When another worker is started for uncovered tasks.
    pub scale_out: crate::config::ScaleOut,
}

impl From<&Config> for Rules {
    fn from(config: &Config) -> Self {
        let c = &config.fleet;
        Self {
            cpu_threshold: c.cpu_threshold,
            mem_threshold: c.mem_threshold,
            deadline_fraction: c.deadline_fraction,
            admission: c.admission,
            keep_alive: c.keep_alive,
            placement: c.placement,
            max_tasks_per_worker: c.max_tasks_per_worker,
            limits: LimitParams {
                max: c.max_slots.max(1),
                cpu_target: c.cpu_threshold,
                mem_target: c.mem_threshold,
                ..LimitParams::default()
            },
            pinned_slots: c.slots,
            spawns: c.spawner != crate::config::SpawnerKind::External,
            scale_out: c.scale_out,
        }
    }
}

/// The concurrency limit a new worker starts with: pinned by `--slots` or by the worker
/// itself (`hello_slots`), else the level learned for its function and memory size, else
/// its vCPUs, probing upwards. `worker_max` is the worker's own cap (0: none).
pub fn initial_limit(
    rules: &Rules,
    hello_slots: u32,
    worker_max: u32,
    learned: Option<Learned>,
    vcpus: u32,
) -> Limit {
    let mut params = rules.limits;
    if worker_max > 0 {
        params.max = params.max.min(worker_max);
    }
    match (rules.pinned_slots, hello_slots) {
        (Some(n), _) => Limit::pinned(n),
        (None, n) if n > 0 => Limit::pinned(n),
        (None, _) => match learned {
            Some(l) => Limit::learned(&params, l, vcpus),
            None => Limit::probing(&params, vcpus),
        },
    }
}

/// The limit parameters of one worker: the rule's, capped by the worker's own maximum.
pub fn worker_limits(rules: &Rules, worker_max: u32) -> LimitParams {
    let mut params = rules.limits;
    if worker_max > 0 {
        params.max = params.max.min(worker_max);
    }
    params
}

/// Tasks a new worker counts for in scale-out: its pinned limit, or the level its function
/// settled at; a worker of a function whose level is not known yet counts as able to grow to
/// the cap (so a first burst starts few workers and lets them find their level, instead of
/// starting the whole fleet at the vCPU count); never more than its quota of tasks.
pub fn new_worker_capacity(rules: &Rules, learned: Option<Learned>) -> u32 {
    let settled = learned.filter(|l| l.settled).map(|l| l.level);
    let slots = rules.pinned_slots.or(settled).unwrap_or(rules.limits.max).max(1);
    let quota = rules
        .max_tasks_per_worker
        .map_or(u32::MAX, |q| q.min(u64::from(u32::MAX)) as u32);
    slots.min(quota).max(1)
}

/// Tasks a live worker can still take, for scale-out: up to its limit, or, while it is
/// still probing upwards, up to the cap it may grow to.
pub fn free_capacity(limit: &Limit, cap: u32, running: u32) -> u32 {
    let room = if limit.settled() {
        limit.value()
    } else {
        cap.max(limit.value())
    };
    room.saturating_sub(running)
}

/// What the rule needs to know about one live worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerView {
    /// Time since the worker connected.
    pub age: Duration,
    /// Its execution timeout (how long it may live in total).
    pub timeout: Duration,
    /// What a task of its function is expected to take at its size (the longest of its
    /// recent attempts), once known: when its admissions end.
    pub expected: Option<Duration>,
    /// How long the longest-running attempt of its function at its size, running now, has
    /// run: a task at least that long, before it has ended.
    pub running_for: Option<Duration>,
    /// What that attempt is expected to take at least, growing as it runs
    /// ([`life::Tail::running`]).
    pub running_expected: Option<life::Growing>,
    /// What a task with a timeout of its own is expected to take at its size (the longest
    /// of its function's recent such attempts), once known.
    pub expected_bounded: Option<Duration>,
    /// What the longest-running attempt of such a task, running now, is expected to take
    /// at least ([`life::Tail::running`]).
    pub bounded_running_expected: Option<Duration>,
    /// Last sampled CPU utilisation, 0.0 to 1.0 (0 before the first sample).
    pub cpu: f64,
    /// Last sampled memory use as a fraction of its limit (0 before the first sample).
    pub mem: f64,
    /// Tasks running on it now.
    pub running: u32,
    /// Tasks it may run at once: its concurrency limit now.
    pub slots: u32,
    /// Tasks assigned to it over its life.
    pub assigned_total: u64,
    /// How long it has been idle (zero while it runs anything).
    pub idle_for: Duration,
    /// It has been told to shut down (it finishes what it runs, and takes nothing new).
    pub stopping: bool,
    /// Its stream is up; a worker reconnecting after a break is not sent work meanwhile.
    pub attached: bool,
}

/// Whether a worker may take one more task, and if not, why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It may take one more task.
    Eligible,
    /// It has been told to shut down: no new task ever.
    Stopping,
    /// Its stream is down (it may reconnect): no new task until it does.
    Detached,
    /// Its admissions have ended (what a task takes no longer fits in what is left of its
    /// life, or past the deadline fraction): no new task ever; shut down once idle.
    Draining,
    /// It has run its quota of tasks (conventional FaaS mode): no new task ever.
    QuotaReached,
    /// Its CPU is above the threshold: no new task until a lower sample.
    CpuBusy,
    /// Its memory is at or above the threshold: no new task until a lower sample.
    MemoryBusy,
    /// All its slots are taken.
    Full,
}

impl Verdict {
    /// Whether the worker can never take a task again, whatever it reports.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Verdict::Stopping | Verdict::Draining | Verdict::QuotaReached
        )
    }

    /// Whether the slots it has standing free count against new spawns: a worker that will
    /// take work again once a sample or a result frees it, not one that never will or one
    /// whose stream is down.
    pub fn counts_as_capacity(self) -> bool {
        !self.is_final() && self != Verdict::Detached
    }
}

/// Assesses one worker against every condition of the rule (the pool's emptiness is the
/// caller's: it only asks when there is a task to place).
pub fn assess(rules: &Rules, w: &WorkerView) -> Verdict {
    if w.stopping {
        Verdict::Stopping
    } else if !w.attached {
        Verdict::Detached
    } else if past_deadline(rules, w) {
        Verdict::Draining
    } else {
        room(rules, w)
    }
}

/// Whether a worker whose admissions have ended for time may still take a task bounded by
/// its own `timeout`: by duration (the fraction rule is the paper's, and ends them all),
/// with that much life left (with the slack), and room as for any task (quota, CPU,
/// memory, slots). Its admissions ended because the longest task of its function would no
/// longer fit; a task known to end sooner still does.
pub fn takes_bounded(rules: &Rules, w: &WorkerView, timeout: Duration) -> bool {
    rules.admission == Admission::Duration
        && assess(rules, w) == Verdict::Draining
        && room(rules, w) == Verdict::Eligible
        && fits_bounded(w, timeout)
}

/// Whether a task bounded by its own `timeout` fits in what is left of `w`'s life, by what
/// such tasks take ([`life::bounded_need`]).
pub fn fits_bounded(w: &WorkerView, timeout: Duration) -> bool {
    life::bounded_need(timeout, w.expected_bounded, w.bounded_running_expected) <= life_left(w)
}

/// The conditions of the rule after the worker's state and its time: its quota, CPU,
/// memory and slots.
fn room(rules: &Rules, w: &WorkerView) -> Verdict {
    if rules
        .max_tasks_per_worker
        .is_some_and(|quota| w.assigned_total >= quota)
    {
        Verdict::QuotaReached
    } else if w.cpu > rules.cpu_threshold {
        Verdict::CpuBusy
    } else if w.mem >= rules.mem_threshold {
        Verdict::MemoryBusy
    } else if w.running >= w.slots {
        Verdict::Full
    } else {
        Verdict::Eligible
    }
}

/// The age at which the worker takes its last task (see [`life::admission_end`]).
pub fn admission_end(rules: &Rules, w: &WorkerView) -> Duration {
    life::admission_end(
        rules.admission,
        rules.deadline_fraction,
        w.timeout,
        w.expected,
        w.running_for,
        w.running_expected,
    )
}

/// How fast the worker's admissions' end comes nearer, in seconds a second: 1, or, while an
/// attempt of its function still running is expected to take longer than the figure (and
/// so sets the end), 1 plus the margin for each second the expectation grows in a second
/// ([`life::Tail::running`]).
pub fn end_nearing(w: &WorkerView) -> f64 {
    let (running, pace) = match (w.running_expected, w.running_for) {
        (Some(e), _) => (e.now, e.pace),
        (None, Some(r)) => (r, 1.0),
        (None, None) => return 1.0,
    };
    match w.expected {
        Some(e) if running <= e => 1.0,
        _ => 1.0 + life::ADMISSION_MARGIN * pace,
    }
}

/// Whether the worker's admissions have ended.
pub fn past_deadline(rules: &Rules, w: &WorkerView) -> bool {
    w.age >= admission_end(rules, w)
}

/// Time until the worker's admissions end (zero if they have).
pub fn until_deadline(rules: &Rules, w: &WorkerView) -> Duration {
    admission_end(rules, w).saturating_sub(w.age)
}

/// What is left of the worker's life.
pub fn life_left(w: &WorkerView) -> Duration {
    w.timeout.saturating_sub(w.age)
}

/// The CPU to judge a worker by now. A sample taken while `sampled_running` tasks ran
/// overstates the load once some of them have ended (and would wrongly make a worker that
/// just finished look busy), so it is scaled by the share still running. A sample taken
/// with no task running is load that is not ours, and is kept as it is.
pub fn cpu_estimate(sampled: f64, sampled_running: u32, running_now: u32) -> f64 {
    if sampled_running == 0 || running_now >= sampled_running {
        sampled
    } else {
        sampled * f64::from(running_now) / f64::from(sampled_running)
    }
}

/// Where an eligible worker running `running` of its `slots` stands in the placement order:
/// the lowest rank is picked first. `pack` ranks the fullest first, `spread` the emptiest.
/// The fill is compared exactly (the bits of a non-negative `f64` order as its value does),
/// so a worker's rank is a key an index of eligible workers can be sorted by.
pub fn rank(placement: Placement, running: u32, slots: u32) -> u64 {
    let fill = (f64::from(running) / f64::from(slots.max(1))).to_bits();
    match placement {
        Placement::Pack => !fill,
        Placement::Spread => fill,
    }
}

/// Why an idle worker is told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Nothing to do past the keep-alive.
    Idle,
    /// Past the deadline fraction.
    Deadline,
    /// Work is waiting but the worker may not take it (CPU, memory, quota).
    Ineligible,
}

/// What to do with a worker that runs nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleAction {
    /// Keep it (it is busy, or eligible for the waiting work).
    Keep,
    /// Tell it to shut down.
    Stop(StopReason),
    /// Look again after this long (the keep-alive has not run out yet).
    RecheckAfter(Duration),
}

/// The rule for a worker that may be idle: `pool_empty` says whether its function has
/// work waiting.
pub fn idle_action(rules: &Rules, w: &WorkerView, pool_empty: bool) -> IdleAction {
    if w.running > 0 {
        return IdleAction::Keep;
    }
    match assess(rules, w) {
        // Already told to go, or away: nothing to decide until it is back.
        Verdict::Stopping | Verdict::Detached => IdleAction::Keep,
        Verdict::Draining => IdleAction::Stop(StopReason::Deadline),
        Verdict::QuotaReached => IdleAction::Stop(StopReason::Ineligible),
        // Memory held with nothing running does not pass: make room for a fresh worker,
        // when one can be started; workers started by hand are kept (nothing would take
        // their place). CPU busy with nothing running is the worker's own and passes (it
        // measures its own process tree: a runtime copy still starting, its last task's
        // tail): it is kept, and the next sample frees it. Stopped, a warm worker was
        // replaced by a cold one whose copy's start made it busy in turn: a 512 MB worker
        // (0.29 of a vCPU) whose copy takes 150 ms of CPU to start ran one task per worker.
        Verdict::MemoryBusy if !pool_empty && rules.spawns => IdleAction::Stop(StopReason::Ineligible),
        _ if !pool_empty => IdleAction::Keep,
        _ if w.idle_for >= rules.keep_alive => IdleAction::Stop(StopReason::Idle),
        _ => IdleAction::RecheckAfter(rules.keep_alive - w.idle_for),
    }
}

/// What it costs a function to bring a new worker into use, against what its tasks take:
/// moving averages of how long its workers took from their spawn to their first result (a
/// cold start, a runtime copy's init, one task) and to running their whole level (every
/// copy's init, at the worker's pace), and the median of its recent attempts'
/// durations (a median, because the first task on each runtime copy also waits for the
/// copy's init: a minority that would drag a mean up).
#[derive(Clone, Debug, Default)]
pub struct Reach {
    /// Spawn to first result, seconds.
    first: Option<f64>,
    /// What that first result's task itself took, seconds.
    first_task: Option<f64>,
    /// Spawn to the first sample with as many tasks running (on ready copies) as the
    /// worker's limit, seconds.
    level: Option<f64>,
    /// The latest attempts' durations, seconds, oldest first (at most [`RECENT_DURATIONS`]).
    recent: std::collections::VecDeque<f64>,
    /// A runtime copy's init, seconds, as workers report it (none for workers that run
    /// their tasks in their own process).
    copy_init: Option<f64>,
    /// How many copies the reporting worker started at once (its vCPUs: its ramp).
    ramp: u32,
}

/// How much work, in multiples of its start (its reach, [`Reach::to_level`], less the
/// first task), a new worker must get for paced scale-out to start it: its start (a cold
/// start, its copies' init) is then at most a fifteenth of its bill. The default goal is
/// the least cost, ties to the shorter completion, and a tenth of the batch's bill is what
/// counts as a tie: more workers finish a batch sooner only while they add at most that (a
/// deadline lifts it). A worker costs more than its start: its first task runs before its
/// level does, its last tasks' waits leave what it pays for idle, and a cold start's mean
/// is above the median its reach settles near. Measured on mixed work (20 ms of CPU, an
/// 80 ms wait) at 128 MB in the Lambda-like world, each of 5 workers cost 0.92 s beyond its
/// work, 0.6 s of it its cold start: with the start held to a tenth (9 times it in work) the
/// batch cost 1.13 times the same batch on one worker, and 1.12 and 1.11 times the best fixed
/// pair for mixed and varied work with every size offered; at a fifteenth, 1.09 and 1.08, for
/// mixed work on this machine's model up to 1.8 times as slow (at a twentieth, 1.07 and 1.05,
/// but a hand-over then left tasks waiting more than a tenth of a cold start). At 1, a
/// worker started for a learned level of a runtime with a costly start could spend half its
/// bill starting; at 2, a CPU-bound batch in the Lambda-like world cost 1.3 times the same
/// batch on one worker.
pub const WORK_PER_REACH: f64 = 14.0;

/// How many attempts' durations a function's [`Reach`] keeps.
pub const RECENT_DURATIONS: usize = 64;

impl Reach {
    /// A worker's first result came `after` its spawn, its task having taken `took`.
    pub fn first_result(&mut self, after: Duration, took: Duration) {
        self.first = Some(ewma(self.first, after.as_secs_f64(), 0.3));
        self.first_task = Some(ewma(self.first_task, took.as_secs_f64(), 0.3));
    }

    /// A worker of `vcpus` (which start as many copies at once) reported its runtime
    /// copies' init, `init` each on average.
    pub fn copy_init(&mut self, init: Duration, vcpus: u32) {
        self.copy_init = Some(ewma(self.copy_init, init.as_secs_f64(), 0.3));
        self.ramp = vcpus.max(1);
    }

    /// A worker first ran its whole limit `after` its spawn.
    pub fn level_reached(&mut self, after: Duration) {
        self.level = Some(ewma(self.level, after.as_secs_f64(), 0.3));
    }

    /// An attempt took `took`.
    pub fn task(&mut self, took: Duration) {
        if self.recent.len() >= RECENT_DURATIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(took.as_secs_f64());
    }

    /// Spawn to a worker's first result, seconds (smoothed), once seen.
    pub fn to_first_result(&self) -> Option<f64> {
        self.first
    }

    /// How long an attempt may run before its slot no longer counts as turning over with
    /// the `typical` (median) task: twice that, plus a runtime copy's init (a copy's first
    /// task waits for it). Past it, the attempt is one of the function's long ones, and its
    /// slot stays busy for as long as those take, not for a median's turn.
    pub fn overdue_after(&self, typical: Duration) -> Duration {
        typical * 2 + Duration::from_secs_f64(self.copy_init.unwrap_or(0.0))
    }

    /// The median of the recent attempts' durations, seconds.
    pub fn typical(&self) -> Option<f64> {
        let mut d: Vec<f64> = self.recent.iter().copied().collect();
        d.sort_by(f64::total_cmp);
        d.get(d.len() / 2).copied()
    }

    /// Turns: how many tasks one busy slot finishes, one after another, in
    /// [`WORK_PER_REACH`] times what a new worker spends starting before it runs `level`
    /// tasks at once ([`Reach::to_level`] less one task; 0 while either is unknown, or when
    /// a worker is ready before a task ends).
    pub fn turns(&self, level: u32) -> u32 {
        self.turns_given(self.typical(), level)
    }

    /// Spawn to a new worker running `level` tasks at once, seconds, once seen: the
    /// slowest of its first result, the level a worker was seen to reach, and its first
    /// result plus the rounds of runtime copies that must start after the first round
    /// (each round `ramp` copies at once, a copy's init each). The last is what a learned
    /// level costs from cold: a worker that climbed to it started its copies a few at a
    /// time between its turns, one started there starts them all before it runs the level.
    pub fn to_level(&self, level: u32) -> Option<f64> {
        let copies = match (self.first, self.copy_init) {
            (Some(first), Some(init)) => {
                let rounds = level.max(1).div_ceil(self.ramp.max(1)).saturating_sub(1);
                Some(first + f64::from(rounds) * init)
            }
            _ => None,
        };
        [self.first, self.level, copies]
            .into_iter()
            .flatten()
            .reduce(f64::max)
    }

    /// [`Reach::turns`] with the typical duration already taken ([`Reach::typical`] sorts
    /// the recent durations: a caller that needs it too takes it once).
    pub fn turns_given(&self, typical: Option<f64>, level: u32) -> u32 {
        self.starts_in_turns(typical, level, WORK_PER_REACH)
    }

    /// How many tasks one busy slot finishes, one after another, while a new worker starts
    /// before it runs `level` (its start once, not weighed by [`WORK_PER_REACH`]): what live
    /// workers do before a successor could take over from one whose admissions end.
    pub fn lead_turns_given(&self, typical: Option<f64>, level: u32) -> u32 {
        self.starts_in_turns(typical, level, 1.0)
    }

    /// `times` a new worker's start (its reach to `level` less its first task, which is
    /// work), in tasks of `typical` seconds, rounded down. The first task is counted at
    /// what first tasks took, or the typical task if that is less: a worker's first task
    /// runs alone and is quicker than one among a level of them that share the CPU (a 20 ms
    /// burst at 128 MB: 0.36 s alone, 0.61 s two at once), and counting it at the typical
    /// task read a 500 ms cold start as 240 ms; while a first task on a runtime copy also
    /// waits for the copy's init, which is start, not work.
    fn starts_in_turns(&self, typical: Option<f64>, level: u32, times: f64) -> u32 {
        let reach = self.to_level(level);
        match (reach, typical) {
            (Some(reach), Some(task)) if task > 0.0 => {
                let first = self.first_task.map_or(task, |f| f.min(task));
                (times * (reach - first).max(0.0) / task)
                    .floor()
                    .clamp(0.0, 10_000.0) as u32
            }
            _ => 0,
        }
    }
}

/// The soonest a task submitted now can finish, seconds, on what is measured: `ahead`
/// tasks before it in its function's pool, `task` seconds a task (the recent median),
/// `live` workers up or starting that run `per_worker` at once, and at most `possible`
/// workers in all (the fleet caps). Past what the live workers run, new workers start,
/// and the first round waits for `first` (spawn to a first result). Optimistic on purpose
/// (every worker at its level at once, a level not learned counted as the cap): a deadline
/// is refused only when even this misses it. `None` when no worker can ever run it.
pub fn soonest_finish(
    task: f64,
    first: Option<f64>,
    ahead: u64,
    live: u64,
    possible: u64,
    per_worker: u32,
) -> Option<f64> {
    let per = u64::from(per_worker.max(1));
    if possible == 0 {
        return None;
    }
    let n = ahead + 1;
    let rounds = n.div_ceil(possible.saturating_mul(per)) as f64;
    Some(if n <= live.saturating_mul(per) {
        task * rounds
    } else {
        first.unwrap_or(task).max(task) + task * (rounds - 1.0)
    })
}

/// The median (lower middle) of `values`; `None` for none.
pub fn lower_median(values: impl Iterator<Item = u64>) -> Option<u64> {
    let mut v: Vec<u64> = values.collect();
    if v.is_empty() {
        return None;
    }
    let mid = (v.len() - 1) / 2;
    Some(*v.select_nth_unstable(mid).1)
}

fn ewma(old: Option<f64>, new: f64, weight: f64) -> f64 {
    old.map_or(new, |o| o + weight * (new - o))
}

/// What scale-out counts toward the pending tasks, by the rule's [`ScaleOut`]: `per_new`,
/// the tasks one new (or starting) worker covers, and `ahead`, the tasks each slot of a live
/// worker will still finish before a new worker could. Eager: one worker's slots, nothing
/// ahead. Paced, with `turns` measured ([`Reach::turns`]): live workers will finish `turns`
/// more tasks per slot before a new worker is of any use, and a new worker is only worth
/// its start (a cold start, its runtime's init) if it gets that many turns of work too.
/// A quota of tasks per worker (conventional FaaS) caps what a new worker covers.
///
/// [`ScaleOut`]: crate::config::ScaleOut
pub fn coverage(rules: &Rules, slots_per_new: u32, turns: u32) -> (u32, u32) {
    let turns = match rules.scale_out {
        crate::config::ScaleOut::Eager => 0,
        crate::config::ScaleOut::Paced if rules.max_tasks_per_worker.is_some() => 0,
        crate::config::ScaleOut::Paced => turns,
    };
    (slots_per_new.saturating_mul(turns + 1), turns)
}

/// How many workers to start for one function: enough new slots to cover the pending
/// tasks that the free slots of live and starting workers do not, within the fleet cap.
/// With `whole` (paced scale-out), a new worker is started only for a whole new worker's
/// worth of uncovered tasks (the live workers take a remainder sooner than a new one could
/// pay for its start), except the first of a function with none.
pub fn workers_to_spawn(
    pending: usize,
    free_slots: usize,
    fleet: u32,
    max_workers: u32,
    slots_per_new_worker: u32,
    whole: bool,
) -> u32 {
    let uncovered = pending.saturating_sub(free_slots);
    if uncovered == 0 {
        return 0;
    }
    let per_new = slots_per_new_worker.max(1) as usize;
    let wanted = if whole {
        (uncovered / per_new).max(usize::from(fleet == 0))
    } else {
        uncovered.div_ceil(per_new)
    };
    let room = max_workers.saturating_sub(fleet) as usize;
    wanted.min(room) as u32
}

/// Whether the free slots of a function's live workers could change how many workers to
/// start. When the pending tasks outnumber even every slot that could stand free
/// (`free_bound`) plus what the `room` left under the caps would add, the answer is the room,
/// and the fleet need not be scanned (a deep pool, e.g. conventional FaaS refilling its
/// fleet).
pub fn free_slots_matter(pending: usize, free_bound: usize, room: usize, slots_per_new_worker: u32) -> bool {
    pending < free_bound + room * slots_per_new_worker as usize
}

/// The first wait after a failed spawn; doubled for each failure in a row.
pub const SPAWN_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest wait between spawns of a function whose spawns keep failing.
pub const MAX_SPAWN_BACKOFF: Duration = Duration::from_secs(10);

/// How long a function waits before its next spawn after `failures_in_a_row` failed ones.
/// No jitter: a function's spawns go out in one place, not from a fleet in step.
pub fn spawn_backoff(failures_in_a_row: u32) -> Duration {
    SPAWN_BACKOFF_BASE
        .saturating_mul(1 << failures_in_a_row.min(10))
        .min(MAX_SPAWN_BACKOFF)
}

/// Whether a function's spawns have failed often enough in a row (`--max-spawn-failures`)
/// for its pending tasks to fail with the cause rather than wait for ever.
pub fn give_up_spawning(failures_in_a_row: u32, max_spawn_failures: u32) -> bool {
    failures_in_a_row >= max_spawn_failures
}

/// What becomes of a task whose attempt ended without a result (its worker was lost, it
/// timed out, it was running when the coordinator restarted and nobody claimed it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterLostAttempt {
    /// Back to the front of its pool, for another attempt.
    Retry,
    /// Failed with the cause: it has had `--max-attempts` attempts.
    Fail,
}

/// Retry or fail a task that has had `attempts` attempts of `max_attempts`.
pub fn after_lost_attempt(attempts: u32, max_attempts: u32) -> AfterLostAttempt {
    if attempts >= max_attempts {
        AfterLostAttempt::Fail
    } else {
        AfterLostAttempt::Retry
    }
}

/// How many more workers may start: the room under `--max-workers` for the function and
/// under `--max-fleet` for every function together (workers live or starting).
pub fn fleet_room(of_function: usize, total: usize, max_workers: u32, max_fleet: u32) -> usize {
    (max_workers as usize)
        .saturating_sub(of_function)
        .min((max_fleet as usize).saturating_sub(total))
}

#[cfg(test)]
mod tests;
