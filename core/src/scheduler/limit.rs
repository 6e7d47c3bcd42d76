//! One worker's concurrency limit: how many tasks it may run at once, moved by what the
//! worker measures of itself. A small pure controller: [`Limit::observe`] takes a sample
//! and the time, [`Limit::completed`] a task's duration, and the limit comes out.
//!
//! How it moves (prior art: TCP slow start, Netflix's Gradient2 and AIMD limits, Azure
//! Functions' dynamic concurrency, Temporal's resource-based slot supplier;
//! docs/adaptive-concurrency.md says what was taken from each):
//! - **Probing** (a new worker with nothing learned): the limit doubles on every sample that
//!   covers its current level (taken while the worker ran at its limit, once the newest task
//!   has run [`LimitParams::settle`] or a whole generation of tasks has finished) while CPU
//!   and memory stay under target (it quadruples, [`LimitParams::fast_growth`], where the
//!   sample's headroom holds twice what that adds); once a whole generation has finished
//!   at the level, it jumps toward the level their CPU and memory imply, up to
//!   [`LimitParams::max_jump`] times. Each rise is also capped by the headroom the sample
//!   predicts: memory and CPU per task times the added tasks must stay under the targets,
//!   so memory is always seen before more tasks are let in. The last rise may fill the CPU:
//!   a level under the CPU target where one more task would cross it rounds up to the fewest
//!   tasks that fill it, judged on what the level asked for over a task's life (the CPU a
//!   level leaves idle is a tenth or more of every task's bill).
//! - **Steady** (after the first pressure, at the cap, or started from a learned level):
//!   the limit rises by a tenth at most once per window of completions, only while the last
//!   rise paid off in completions per second (a quarter of what it could gain: the share of
//!   tasks it added, or the CPU the level left idle where that is less); a rise that did not
//!   is undone. Windows are judged only while the coordinator fills the worker
//!   ([`Limit::unfilled`]: a worker whose admissions ended drains, and that is not its level).
//! - **Falls** are multiplicative: memory at its target cuts the limit to what fits; task
//!   durations inflated past the baseline (what they were at lower levels) for two windows
//!   in a row, while completions per second did not rise with the level as a paying rise
//!   must, cut it by half the ratio of the two (smoothed, as Gradient2 does). Durations that
//!   stretch while completions rise are tasks sharing what the level fills, not a queue.
//!   Inflation is the signal that still works where CPU
//!   figures lie (Lambda lets a worker burst past its allotment). CPU at its target stops
//!   the climb but is no fault: every allotted vCPU busy is the goal for CPU-bound work.
//!   CPU here is what the tasks asked for: the CPU they used plus the time they waited for
//!   one (the kernel's run delay), so a worker whose cores are shared or fewer than its
//!   allotment stops climbing when its tasks queue for a CPU, not when it reaches a share it
//!   can never reach. Tasks that wait for a CPU for a whole task's time cut the limit to
//!   the fewest tasks that still fill the CPU (running tasks over what they asked for,
//!   rounded up). Tasks with a timeout of their own that a level stretched past half of it
//!   while the CPU stood at its target cut it by a quarter: a user's bound on a task is
//!   not a price the level may charge.
//! - **Pinned** (`--slots`): never moves.

use std::time::{Duration, Instant};

/// How limits move. Built from the coordinator's settings; the defaults are what the
/// docs/configuration.md documents.
#[derive(Clone, Copy, Debug)]
pub struct LimitParams {
    /// The fewest tasks a worker is ever limited to.
    pub min: u32,
    /// The most (`--max-slots`).
    pub max: u32,
    /// CPU, as a fraction of the worker's allotment, at which the limit stops rising; a rise
    /// may not be predicted to cross it.
    pub cpu_target: f64,
    /// Memory, as a fraction of the worker's limit, at which the limit falls to what fits; a
    /// rise may not be predicted to cross it.
    pub mem_target: f64,
    /// How long the newest running task must have run before a sample counts as showing its
    /// memory (a task that has just started may not have allocated yet).
    pub settle: Duration,
    /// A window's mean task duration this many times the baseline is inflated.
    pub inflation: f64,
    /// ... and only if it is also at least this much longer, so that microsecond noise in
    /// tasks that take microseconds is never read as inflation.
    pub inflation_floor: Duration,
    /// Completions a window needs before its durations and throughput are judged.
    pub window: u32,
    /// Largest factor one rise multiplies the limit by (probing doubles).
    pub max_growth: f64,
    /// ... or, probing, where the sample's headroom holds twice the tasks such a rise adds
    /// (tasks that wait, with little memory or CPU each: the level they imply is far off),
    /// this factor.
    pub fast_growth: f64,
    /// ... and once a whole generation of tasks has finished at the level (their whole
    /// lives seen: CPU against wall time, memory at its peak), the largest factor a probing
    /// rise may jump by toward the level they imply.
    pub max_jump: f64,
    /// Smallest factor one fall multiplies it by (at most halving on inflation).
    pub max_backoff: f64,
    /// A steady rise adds this share of the limit (at least one task).
    pub steady_step: f64,
    /// After a fall or an undone rise, no rise for this long.
    pub quiet: Duration,
    /// CPU at its target this long, and for as long as a task typically runs, ends probing:
    /// CPU-bound work keeps it there for a task's whole life, while a task's start-up burst
    /// (loading, touching its memory) only holds the climb.
    pub cpu_settle: Duration,
    /// CPU wait (threads ready to run, waiting for a CPU), as a fraction of the allotment,
    /// at which the worker runs more tasks than its CPU can: held for a whole task, the limit
    /// falls to what the CPU runs.
    pub cpu_wait_fall: f64,
}

impl LimitParams {
    /// `level` within the fewest and the most tasks a worker may be limited to.
    fn bound(&self, level: u32) -> u32 {
        level.clamp(self.min, self.max.max(self.min))
    }
}

impl Default for LimitParams {
    fn default() -> Self {
        Self {
            min: 1,
            max: 256,
            cpu_target: 0.9,
            mem_target: 0.9,
            settle: Duration::from_millis(25),
            inflation: 1.5,
            inflation_floor: Duration::from_millis(2),
            window: 4,
            max_growth: 2.0,
            fast_growth: 4.0,
            max_jump: 16.0,
            max_backoff: 0.5,
            steady_step: 0.1,
            quiet: Duration::from_secs(1),
            cpu_settle: Duration::from_millis(100),
            cpu_wait_fall: 0.25,
        }
    }
}

/// The share of a task's own timeout past which the level is taken to stretch it too far
/// (see [`Limit::near_bound`]).
pub const BOUND_SHARE: f64 = 0.5;

/// What a level is multiplied by when a task came near its own timeout.
const BOUND_FALL: f64 = 0.75;

/// What was learned of a function's concurrency at one memory size: where a new worker of
/// it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learned {
    /// The level.
    pub level: u32,
    /// Whether a worker found its level there (it starts steady at it); otherwise a worker
    /// only rose that far without pressure (it starts there and goes on probing).
    pub settled: bool,
}

/// How a limit is moving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Rising quickly while nothing presses on it.
    Probing,
    /// Found its level: rises slowly while rises pay off, falls on pressure.
    Steady,
    /// Set by `--slots`: never moves.
    Pinned,
}

impl Phase {
    /// Its name in ListWorkers.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Probing => "probing",
            Phase::Steady => "steady",
            Phase::Pinned => "pinned",
        }
    }
}

/// What a worker's sample says about it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observation {
    /// CPU over its allotment (1.0: every allotted vCPU busy).
    pub cpu: f64,
    /// Time its threads waited for a CPU, over its allotment (the CPU it could not have
    /// shows here, not in `cpu`); see [`Observation::demand`].
    pub wait: f64,
    /// Memory over its limit.
    pub mem: f64,
    /// Tasks running when it was taken.
    pub running: u32,
    /// How long the newest of them had run.
    pub youngest: Duration,
    /// The most memory the worker has held (the kernel's high-water mark), over its limit:
    /// a rise is judged from the peak, so a burst between two samples is not missed.
    pub peak: f64,
}

impl Observation {
    /// What the worker's tasks asked for of the CPU: what they used, plus what they waited
    /// for, counted up to what they used. Waiting far beyond its own use is a busy host's
    /// doing (neighbours taking the cores while the worker's threads barely run: an I/O-bound
    /// worker next to a busy coordinator), not its level's, and is not the worker's load.
    pub fn demand(&self) -> f64 {
        self.cpu + self.wait.min(self.cpu)
    }
}

/// Why a limit moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// Nothing pressed on it.
    Rise,
    /// Memory reached its target: down to what fits.
    MemoryFall,
    /// Its tasks waited for a CPU for a whole task: down to what the CPU runs.
    CpuFall,
    /// Task durations inflated past the baseline.
    InflationFall,
    /// The last rise did not raise completions per second: undone.
    NoGain,
    /// A task took more than [`BOUND_SHARE`] of its own timeout: a quarter less.
    BoundFall,
}

/// Completions at the current level since it was filled.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    /// When the worker first ran at this level; `None` until then.
    since: Option<Instant>,
    completions: u32,
    /// Sum of their durations, in seconds.
    total: f64,
}

impl Window {
    fn mean(&self, at_least: u32) -> Option<f64> {
        (self.completions >= at_least.max(1)).then(|| self.total / f64::from(self.completions))
    }

    fn rate(&self, now: Instant) -> Option<f64> {
        let span = now.saturating_duration_since(self.since?).as_secs_f64();
        (span > 0.0).then(|| f64::from(self.completions) / span)
    }
}

/// The lowest level a limit has judged a window at: what its tasks took there.
#[derive(Clone, Copy, Debug)]
struct Baseline {
    level: u32,
    /// Mean task duration, seconds.
    mean: f64,
    /// Completions per second, once measured.
    rate: Option<f64>,
    /// The CPU the level asked for (averaged over its samples), once known: more tasks can
    /// raise completions per second by no more than the share it left idle.
    demand: Option<f64>,
}

impl Baseline {
    /// The most completions per second can rise from the baseline's level to `level`, as a
    /// share: as the level, or as the CPU the baseline left idle where that is less.
    fn most_gain(&self, level: u32) -> f64 {
        let by_level = f64::from(level.saturating_sub(self.level)) / f64::from(self.level.max(1));
        by_level.min(idle_gain(self.demand))
    }
}

/// The most completions per second can rise, as a share, at a level whose tasks ask for
/// `demand` of the CPU: the share it leaves idle, over what it uses (no bound while unknown).
fn idle_gain(demand: Option<f64>) -> f64 {
    match demand {
        Some(d) if d > 0.0 => 1.0 / d - 1.0,
        _ => f64::INFINITY,
    }
}

/// One worker's concurrency limit.
#[derive(Clone, Debug)]
pub struct Limit {
    value: u32,
    phase: Phase,
    /// Memory with nothing running (the worker's own base), the lowest seen.
    idle_mem: Option<f64>,
    /// Memory one task adds, the highest recent estimate (decays slowly).
    per_task_mem: Option<f64>,
    /// The lowest level judged so far: durations and completions per second at higher
    /// levels are compared with it.
    baseline: Option<Baseline>,
    window: Window,
    /// Completions since the current level was filled (windows come and go within a level).
    at_level: u32,
    /// The level and completions per second before the last steady rise, to check it paid,
    /// and the most that rise could raise them by (the CPU the level left idle).
    before_rise: Option<(u32, f64, f64)>,
    /// The CPU the tasks asked for at this level, averaged over the samples taken while it
    /// ran its whole level: (demand times seconds, seconds). A sample covers the span since
    /// the last one, which for tasks that compute and then wait may be all computing or all
    /// waiting; their average over a task's life is what the level asks for.
    level_demand: (f64, f64),
    /// When the last sample arrived.
    last_sample: Option<Instant>,
    /// When it last fell (or a rise was undone): rises wait [`LimitParams::quiet`].
    last_fall: Option<Instant>,
    /// Since when covered samples have shown CPU at its target.
    cpu_busy_since: Option<Instant>,
    /// Since when samples have shown its tasks waiting for a CPU.
    cpu_waiting_since: Option<Instant>,
    /// Whether it ever fell: a limit that only rose has proven every level it reached.
    fell: bool,
    /// Whether it ever rose.
    rose: bool,
    /// How long a task typically runs, in seconds (a moving average of every completion).
    typical: Option<f64>,
    /// Whether the last judged window was inflated (a fall needs two in a row).
    inflated_before: bool,
    /// A task that started at this level (after the last fall) took more than
    /// [`BOUND_SHARE`] of its own timeout, or ran past it, since the last sample.
    near_bound: bool,
    /// The worker's vCPUs: CPU contention alone never takes the limit below one task per
    /// vCPU (see [`Limit::cpu_fall`]).
    cpu_floor: u32,
}

impl Limit {
    /// A limit pinned at `slots`.
    pub fn pinned(slots: u32) -> Self {
        Self::new(slots.max(1), Phase::Pinned, 1)
    }

    /// A new worker's limit with nothing learned: it starts at `start` (its vCPUs) and probes.
    pub fn probing(p: &LimitParams, start: u32) -> Self {
        Self::probing_from(p, start, start)
    }

    /// A new worker's limit at a learned level: steady where a worker settled, probing on
    /// from a level a worker only rose to (never below `vcpus`).
    pub fn learned(p: &LimitParams, learned: Learned, vcpus: u32) -> Self {
        if learned.settled {
            Self::new(p.bound(learned.level), Phase::Steady, p.bound(vcpus))
        } else {
            Self::probing_from(p, learned.level.max(vcpus), vcpus)
        }
    }

    /// Probing from `start` on a worker of `vcpus` (the CPU fall's floor).
    fn probing_from(p: &LimitParams, start: u32, vcpus: u32) -> Self {
        let value = p.bound(start);
        let phase = if value >= p.max {
            Phase::Steady
        } else {
            Phase::Probing
        };
        Self::new(value, phase, p.bound(vcpus))
    }

    fn new(value: u32, phase: Phase, cpu_floor: u32) -> Self {
        Self {
            value,
            phase,
            idle_mem: None,
            per_task_mem: None,
            baseline: None,
            window: Window::default(),
            at_level: 0,
            before_rise: None,
            level_demand: (0.0, 0.0),
            last_sample: None,
            last_fall: None,
            cpu_busy_since: None,
            cpu_waiting_since: None,
            fell: false,
            rose: false,
            typical: None,
            inflated_before: false,
            near_bound: false,
            cpu_floor,
        }
    }

    /// Tasks the worker may run at once now.
    pub fn value(&self) -> u32 {
        self.value
    }

    /// How it is moving.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether it has found its level (scale-out counts a probing worker as able to grow).
    pub fn settled(&self) -> bool {
        self.phase != Phase::Probing
    }

    /// What this limit has shown about its function: the level it settled at, or, for one
    /// that only ever rose, the highest it reached (unsettled). `None` for a pinned limit, or
    /// one that never rose from where it started.
    pub fn proven(&self) -> Option<Learned> {
        match self.phase {
            Phase::Pinned => None,
            Phase::Steady => Some(Learned {
                level: self.value,
                settled: true,
            }),
            Phase::Probing => (!self.fell && self.rose).then_some(Learned {
                level: self.value,
                settled: false,
            }),
        }
    }

    /// The coordinator has filled the worker to its limit: the window of this level starts.
    pub fn filled(&mut self, now: Instant) {
        self.window.since.get_or_insert(now);
    }

    /// The coordinator no longer fills the worker (its admissions have ended): no window is
    /// judged until it fills it again, so completions that fall off as it drains are not
    /// taken for what its level does. Memory and CPU still move it.
    pub fn unfilled(&mut self) {
        self.window = Window::default();
    }

    /// A task finished after running `duration`.
    pub fn completed(&mut self, duration: Duration) {
        let d = duration.as_secs_f64();
        self.typical = Some(self.typical.map_or(d, |t| t + 0.2 * (d - t)));
        if self.window.since.is_some() {
            self.window.completions += 1;
            self.window.total += duration.as_secs_f64();
            self.at_level = self.at_level.saturating_add(1);
        }
    }

    /// A task with a timeout of its own that started at `started` took more than
    /// [`BOUND_SHARE`] of it (or ran past it): the level stretched it toward the bound its
    /// user set. One that started before the last fall is that fall's, already taken.
    pub fn near_bound(&mut self, started: Instant) {
        if self.phase != Phase::Pinned && self.last_fall.is_none_or(|t| started >= t) {
            self.near_bound = true;
        }
    }

    /// A sample arrived: the limit may move. Returns why it moved, if it did.
    pub fn observe(&mut self, p: &LimitParams, obs: Observation, now: Instant) -> Option<Move> {
        if self.phase == Phase::Pinned {
            return None;
        }
        self.learn_memory(p, &obs);
        self.learn_demand(&obs, now);
        let judged = self.window.completions >= p.window;
        let moved = match self.fall(p, &obs, now) {
            Some(fall) => Some(fall),
            None => self.rise(p, &obs, now),
        };
        // A window is judged once: the next one starts now (a move has started it already).
        if judged && moved.is_none() {
            self.window = Window {
                since: Some(now),
                ..Window::default()
            };
        }
        moved
    }

    /// Adds the sample's CPU demand, over the span since the last sample, to the level's
    /// average while the worker runs its whole level.
    fn learn_demand(&mut self, obs: &Observation, now: Instant) {
        let since = self.last_sample.replace(now);
        let span = since.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        if obs.running >= self.value && self.window.since.is_some() && span > 0.0 {
            self.level_demand.0 += obs.demand() * span;
            self.level_demand.1 += span;
        }
    }

    /// The CPU the tasks asked for at this level, averaged over its samples, once they cover
    /// as long as a task typically runs.
    fn demand_at_level(&self) -> Option<f64> {
        let (sum, span) = self.level_demand;
        let typical = self.typical?;
        (span > 0.0 && span >= typical).then(|| sum / span)
    }

    /// Updates the memory model: the base with nothing running, and what one task adds.
    fn learn_memory(&mut self, p: &LimitParams, obs: &Observation) {
        if obs.running == 0 {
            self.idle_mem = Some(self.idle_mem.map_or(obs.mem, |m| m.min(obs.mem)));
        } else if obs.youngest >= p.settle {
            let base = self.idle_mem.unwrap_or(0.0);
            let estimate = (obs.mem - base).max(0.0) / f64::from(obs.running);
            let decayed = self.per_task_mem.map_or(0.0, |m| m * 0.75);
            self.per_task_mem = Some(estimate.max(decayed));
        }
    }

    /// Memory at its target, or inflated durations: the limit falls.
    fn fall(&mut self, p: &LimitParams, obs: &Observation, now: Instant) -> Option<Move> {
        if obs.mem >= p.mem_target && obs.running > 0 {
            let base = self.idle_mem.unwrap_or(0.0);
            let fit = match self.per_task_mem {
                Some(t) if t > 0.0 => ((p.mem_target - base) / t).floor().max(0.0) as u32,
                _ => self.value / 2,
            };
            // Down to what fits, and by one more only once the last fall has taken effect
            // (its tasks still hold their memory until they end).
            let new = if obs.running > self.value {
                fit.min(self.value)
            } else {
                fit.min(self.value.saturating_sub(1))
            };
            return self.fall_to(new.max(p.min), Move::MemoryFall, now);
        }
        if std::mem::take(&mut self.near_bound) && obs.demand() >= p.cpu_target {
            // Tasks' own timeouts are bounds their users set on what a task may take: a
            // level that stretches them past half of it, sharing a CPU it keeps at its
            // target, is too many at once, whatever it gains in completions per second
            // (the inflation fall below lets that price stand). A quarter less, as often as
            // it recurs among tasks started since. With the CPU to spare, what stretched
            // them is not the level (a slow API that a tight timeout bounds).
            let new = ((f64::from(self.value) * BOUND_FALL).floor() as u32)
                .min(self.value.saturating_sub(1))
                .max(p.min);
            return self.fall_to(new, Move::BoundFall, now);
        }
        if let Some(fall) = self.cpu_fall(p, obs, now) {
            return Some(fall);
        }
        let mean = self.window.mean(p.window)?;
        let rate = self.window.rate(now);
        let demand = self.demand_at_level();
        let base = match self.baseline {
            // Inflation is judged against a lower level only; at or below the baseline's
            // level, this window is the reference (pulled down at once if faster, drifting
            // up slowly if slower).
            Some(base) if self.value > base.level => base,
            Some(base) if self.value == base.level => {
                let drifted = if mean < base.mean {
                    mean
                } else {
                    base.mean + 0.2 * (mean - base.mean)
                };
                self.baseline = Some(Baseline {
                    mean: drifted,
                    rate: rate.or(base.rate),
                    demand: demand.or(base.demand),
                    ..base
                });
                self.inflated_before = false;
                return None;
            }
            _ => {
                self.baseline = Some(Baseline {
                    level: self.value,
                    mean,
                    rate,
                    demand,
                });
                self.inflated_before = false;
                return None;
            }
        };
        // Durations that stretch while completions per second rise with the level are tasks
        // sharing what the level fills (a CPU it took on purpose, see `rise`): the price of
        // the idle share it took, not a queue. Inflation is a fault where completions do not
        // rise with the level as a paying rise must.
        let paid = match (rate, base.rate) {
            (Some(now), Some(before)) => now >= before * (1.0 + 0.25 * base.most_gain(self.value)),
            _ => false,
        };
        let inflated =
            !paid && mean > base.mean * p.inflation && mean - base.mean > p.inflation_floor.as_secs_f64();
        let base = base.mean;
        if inflated && std::mem::replace(&mut self.inflated_before, true) {
            // Two windows in a row: the limit falls by half the gradient (smoothed, as in
            // Gradient2: one slow window is noise, a queue that builds is not).
            let gradient = (base / mean).max(p.max_backoff);
            let factor = 1.0 - 0.5 * (1.0 - gradient);
            let new = ((f64::from(self.value) * factor).floor() as u32)
                .min(self.value.saturating_sub(1))
                .max(p.min);
            self.inflated_before = false;
            return self.fall_to(new, Move::InflationFall, now);
        }
        self.inflated_before = inflated;
        None
    }

    /// Tasks waiting for a CPU while the worker runs its whole level, for as long as a task
    /// typically runs (a burst of new tasks is shorter): more tasks run than the CPU the worker
    /// can actually have runs at once (its allotment, or less on a host whose cores it
    /// shares). The limit falls to the level whose demand the CPU meets: the tasks running
    /// over what they asked for, in allotments.
    fn cpu_fall(&mut self, p: &LimitParams, obs: &Observation, now: Instant) -> Option<Move> {
        // Only at its level: below it, what waits is not the level's doing (runtime copies
        // starting, say).
        // Tasks shorter than a sample's settle time are not what loads the CPU at a level
        // (their rate is): a worker of microsecond tasks waits on a busy host whatever its
        // level.
        let short = self.typical.is_none_or(|t| t < p.settle.as_secs_f64());
        if obs.wait.min(obs.cpu) < p.cpu_wait_fall || obs.running == 0 || obs.running < self.value || short {
            self.cpu_waiting_since = None;
            return None;
        }
        let since = *self.cpu_waiting_since.get_or_insert(now);
        let waited = now.saturating_duration_since(since);
        let whole_task = self.typical.is_some_and(|t| waited.as_secs_f64() >= t);
        if waited < p.cpu_settle || !whole_task || obs.youngest < p.settle {
            return None;
        }
        self.cpu_waiting_since = None;
        // The fewest tasks whose demand still fills the CPU, rounded up (a level one short
        // leaves part of the CPU idle, one over only leaves a little waiting), and never
        // below one task per vCPU: a runtime's own threads (a Node.js copy's collector and
        // compiler) wait too and read as demand, one sample's wait swinging from nothing to
        // twice the allotment, while a vCPU without a task is certain loss. Memory and
        // inflation still take it lower.
        let demand = obs.demand();
        let fit = ((f64::from(obs.running) / demand).ceil() as u32).max(self.cpu_floor);
        if fit >= self.value {
            return None; // it waits, but fewer tasks would leave the CPU idle
        }
        self.fall_to(fit.max(p.min), Move::CpuFall, now)
    }

    fn fall_to(&mut self, new: u32, why: Move, now: Instant) -> Option<Move> {
        self.phase = Phase::Steady;
        self.fell = true;
        self.last_fall = Some(now);
        self.before_rise = None;
        if new == self.value {
            return None;
        }
        self.set(new);
        Some(why)
    }

    /// Nothing presses on the limit and the sample covers its level: it may rise.
    fn rise(&mut self, p: &LimitParams, obs: &Observation, now: Instant) -> Option<Move> {
        // A whole generation of tasks has finished at this level.
        let generation = self.at_level >= self.value;
        let covered = obs.youngest >= p.settle || generation;
        if obs.running < self.value || !covered || self.window.since.is_none() {
            return None; // not running at its limit, or its newest tasks do not show yet
        }
        if self.value >= p.max {
            self.phase = Phase::Steady;
            return None;
        }
        if self
            .last_fall
            .is_some_and(|t| now.saturating_duration_since(t) < p.quiet)
        {
            return None;
        }
        // Headroom: what the targets leave for more tasks, at what each task costs now (the
        // CPU it asked for, including what it waited for).
        let running = f64::from(obs.running.max(1));
        // Tasks known to be shorter than a sample's settle time are not what loads the CPU
        // at a level (their rate is): a worker of microsecond tasks waits on a busy host
        // whatever its level, so only the CPU it used counts.
        let short = self.typical.is_some_and(|t| t < p.settle.as_secs_f64());
        let demand = if short { obs.cpu } else { obs.demand() };
        let by_cpu = if demand > 0.0 {
            running * p.cpu_target / demand - running
        } else {
            f64::INFINITY
        };
        // What one task adds: as samples have shown it, or, when no sample has caught a task
        // with its memory held yet (a whole generation can finish between two samples on a
        // busy host), the high-water mark over the tasks this level lets run at once (the
        // worker's own base included while its idle memory is not known: more, not less).
        // Without it a finished generation jumped as if memory were free: 1 to 16 tasks of
        // 30 MB on a 512 MB worker, 0.98 of its memory.
        let per_task = self.per_task_mem.or_else(|| {
            let base = self.idle_mem.unwrap_or(0.0);
            (obs.peak > base).then(|| (obs.peak - base) / f64::from(self.value.max(1)))
        });
        let by_mem = match per_task {
            Some(t) if t > 1e-9 => (p.mem_target - obs.mem.max(obs.peak)) / t,
            _ => f64::INFINITY,
        };
        // The last rise may fill the CPU. Under its target, where one more task would cross
        // it, the limit rounds up to the fewest tasks whose demand fills the CPU (the level
        // `cpu_fall` keeps): the CPU the level leaves idle is then a tenth or more of every
        // task's bill, which the default goal (the least cost, ties within a tenth to the
        // shorter completion) does not leave. The tasks then share the CPU and take longer
        // each; the worker finishes more of them per second. A task on a Lambda worker of
        // 128 MB (a fourteenth of a vCPU) that computes for 20 ms and waits 80 ms leaves 22 %
        // of its allotment idle at one task at a time, and none at two. It is judged once a
        // whole generation has run at the level, on what the level asked for of the CPU over
        // its samples (one sample may catch every task computing at once).
        let fill = match self.demand_at_level() {
            Some(d) if generation && d > 0.0 && d < p.cpu_target => Some((running / d).ceil() - running),
            _ => None,
        };
        let by_cpu = match fill {
            Some(fill) if by_cpu < 1.0 => fill,
            _ => by_cpu,
        };
        if (demand >= p.cpu_target && fill.is_none()) || by_cpu < 1.0 {
            // CPU binds. A task's start-up burst only holds the climb; CPU at its target for
            // long ends probing (every allotted vCPU busy: the level for CPU-bound work).
            let since = *self.cpu_busy_since.get_or_insert(now);
            let busy = now.saturating_duration_since(since);
            let whole_task = self.typical.is_some_and(|t| busy.as_secs_f64() >= t);
            if busy >= p.cpu_settle && whole_task {
                self.phase = Phase::Steady;
            }
            return None;
        }
        self.cpu_busy_since = None;
        if by_mem < 1.0 {
            self.phase = Phase::Steady; // memory is what binds now
            return None;
        }
        let headroom = by_cpu.min(by_mem).floor();
        let step = match self.phase {
            Phase::Probing => {
                // Once a whole generation of tasks has finished at this level, what they
                // take is known (the CPU they asked for, the memory of a task at its
                // peak): the limit jumps toward the level that implies (the headroom),
                // at most `max_jump` times. Before that it grows by `fast_growth` where the
                // headroom holds twice what that adds (small tasks that mostly wait: their
                // level is far off), and otherwise doubles.
                let fast = p.fast_growth.max(p.max_growth);
                let growth = if generation {
                    p.max_jump.max(p.max_growth)
                } else if headroom >= 2.0 * f64::from(self.value) * (fast - 1.0) {
                    fast
                } else {
                    p.max_growth
                };
                f64::from(self.value) * (growth - 1.0)
            }
            Phase::Steady => {
                // A steady rise must have paid off: a whole window at this level first.
                let rate = self
                    .window
                    .rate(now)
                    .filter(|_| self.window.completions >= p.window)?;
                if let Some((level, before, most)) = self.before_rise {
                    let gain = (f64::from(self.value - level) / f64::from(level.max(1))).min(most);
                    if rate < before * (1.0 + 0.25 * gain) {
                        self.last_fall = Some(now);
                        self.before_rise = None;
                        self.set(level);
                        return Some(Move::NoGain);
                    }
                }
                // More tasks can raise completions by no more than the CPU the level leaves
                // idle (a CPU-bound level filled by rounding up gains that share, not the
                // share of tasks added).
                let most = idle_gain(self.demand_at_level().or(Some(demand)));
                self.before_rise = Some((self.value, rate, most));
                (f64::from(self.value) * p.steady_step).max(1.0)
            }
            Phase::Pinned => return None,
        };
        let new = (f64::from(self.value) + step.min(headroom)).floor() as u32;
        let new = new.clamp(self.value + 1, p.max);
        self.set(new);
        self.rose = true;
        if new >= p.max {
            self.phase = Phase::Steady;
        }
        Some(Move::Rise)
    }

    fn set(&mut self, value: u32) {
        self.value = value;
        self.level_demand = (0.0, 0.0);
        self.window = Window::default();
        self.at_level = 0;
    }
}

#[cfg(test)]
mod replay;
#[cfg(test)]
mod tests;
