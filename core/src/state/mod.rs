//! The one owner of scheduling state: pools, tasks and workers.
//!
//! Every event (submit, sample, result, connect, disconnect, spawn outcome, timer, …) is
//! a variant of [`Event`], applied by [`State::handle`] with the time as an argument: it
//! applies the rule from [`crate::scheduler`] and returns everything it decided as
//! [`Effects`]: messages for workers and clients, journal writes, spawns and timers, for the
//! caller to carry out after it has let go of the lock. It sends nothing itself and holds
//! no channel.
//!
//! - `event.rs`: every event, and [`State::handle`], the one way in.
//! - `mod.rs`: the types, dispatch and the idle/deadline evaluation of a worker.
//! - `bounded.rs`: starting a task on a worker; tasks bounded by their own timeout on
//!   workers whose admissions have ended for time.
//! - `effects.rs`: what an event returns.
//! - `book.rs`: the task book: tasks by id, keys, ids, held bytes, retention, held-back tasks.
//! - `counts.rs`: each function's task counts, moved only as its tasks change phase.
//! - `roster.rs`: the workers that said hello, counted per function by the same owner.
//! - `spawns.rs`: the spawns not yet connected (counted per function) and those written off.
//! - `tally.rs`: a count per function and memory size, kept by the roster and the spawns.
//! - `levels.rs`: the concurrency levels learned per (function, memory size).
//! - `tasks.rs`: client events (submit, cancel, get, watch).
//! - `workers.rs`: worker events (connect, resume, claim, sample, results, disconnect).
//! - `fleet.rs`: timeouts, the liveness sweep, held-back tasks, spawn outcomes.
//! - `report.rs`: ListWorkers and Stats.

mod book;
mod bounded;
mod counts;
mod effects;
mod event;
mod fleet;
mod levels;
mod parts;
mod progress;
mod records;
mod report;
mod roster;
mod spawns;
mod table;
mod tail;
mod tally;
mod tasks;
mod workers;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_messages::pb::{self, TaskState, coordinator_message::Kind};
use tracing::{debug, info, warn};

use crate::config::{Config, SpawnerKind};
use crate::scheduler::{
    self, IdleAction, Learned, Limit, LimitParams, Rules, StopReason, Verdict, WorkerView,
};

use book::Task;
use counts::TaskCounts;
pub use effects::{
    Conn, Effects, JournalOp, Observation, Outbound, SpawnOutcome, SpawnRequest, Timer, Waiter, WaiterId,
};
pub use event::{Event, Reply};
use parts::{FunctionPool, IndexKey, Worker};
pub use records::{Recovered, StoredTask};
pub use tasks::{Submission, Submitted};
pub use workers::StreamEnd;

/// A worker's id, unique among the workers of one coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(Arc<str>);

impl WorkerId {
    /// Wraps an id.
    pub fn new(id: &str) -> Self {
        Self(Arc::from(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task's id, unique per coordinator.
pub type TaskId = u64;

/// The scheduling state.
#[derive(Debug)]
pub struct State {
    config: Arc<Config>,
    rules: Rules,
    /// The tasks, their keys, ids, held bytes and retention.
    book: book::Book,
    /// The workers that said hello, counted per function.
    workers: roster::Roster,
    /// The workers asked of a spawner that have not said hello, and those written off.
    spawns: spawns::Spawns,
    functions: BTreeMap<Arc<str>, FunctionPool>,
    next_conn: u64,
    started_at: Instant,
    draining: bool,
    /// Whether events ask for journal writes (with `--state-dir`).
    journaled: bool,
    /// Just restarted on a journal with unfinished tasks: the functions that had some place
    /// nothing yet, so that workers that ran tasks whose start was not yet on disk reconnect
    /// and claim them before anyone else is given them (see [`RESTART_SETTLE`]). Functions
    /// with nothing restored are placed at once.
    settling: std::collections::HashSet<Arc<str>>,
    /// When the liveness sweep last ran: a much longer gap is this coordinator's own pause.
    last_sweep: Option<Instant>,
    /// The concurrency limit learned per (function, memory size): where new workers start.
    learned: levels::Levels,
    /// The memory sizes a worker may have, smallest first (`--memory-sizes`).
    sizes: Vec<u32>,
    /// Recount the tasks after every dispatch (the state's unit tests).
    #[cfg(test)]
    recount: bool,
}

impl State {
    /// Empty state under `config`, started at `now`.
    pub fn new(config: Arc<Config>, now: Instant) -> Self {
        let journaled = config.journaled;
        let sizes = config.fleet.sizes();
        Self {
            rules: Rules::from(config.as_ref()),
            book: book::Book::new(config.limits.max_result_bytes),
            config,
            workers: roster::Roster::default(),
            spawns: spawns::Spawns::default(),
            functions: BTreeMap::new(),
            next_conn: 1,
            started_at: now,
            draining: false,
            journaled,
            settling: std::collections::HashSet::new(),
            last_sweep: None,
            learned: levels::Levels::default(),
            sizes,
            #[cfg(test)]
            recount: false,
        }
    }

    /// The level learned for `function` at `memory_mb`, if any.
    fn learned_limit(&self, function: &str, memory_mb: u32) -> Option<Learned> {
        self.learned.get(function, memory_mb)
    }

    /// Forgets what was learned of `function` (its levels and what each size cost), and asks
    /// the journal to: its next workers start as a first batch's do, and every size is tried
    /// again. For a handler that changed; a function this coordinator does not serve is
    /// refused, one it serves with nothing learned forgets nothing. Returns how many sizes'
    /// levels and costs were forgotten.
    fn relearn(&mut self, function: &str, effects: &mut Effects) -> crate::Result<(usize, usize)> {
        Self::check_named(function)?;
        self.check_served(function)?;
        let (levels, costs) = self.learned.forget(function);
        // What its attempts took, too: the duration figure a worker's admissions end by, and
        // what scale-out weighs a new worker's start against (the median task, a worker's
        // spawn to its first result and to its level, its runtime copies' init). The cold
        // start (spawn to hello) is the platform's and the worker's, not the handler's: kept.
        if let Some(f) = self.functions.get_mut(function) {
            f.durations
                .values_mut()
                .for_each(scheduler::life::Durations::forget);
            f.reach = scheduler::Reach::default();
        }
        // Its live workers may run the handler that was replaced: what they show is not
        // learned when they settle or end (it would undo what was just forgotten).
        self.workers
            .values_mut()
            .filter(|w| w.function.as_ref() == function)
            .for_each(|w| w.before_relearn = true);
        info!(function, levels, costs, "forgot what was learned of the function");
        if self.journaled {
            effects.journal.push(JournalOp::Unlearn(Arc::from(function)));
        }
        Ok((levels, costs))
    }

    /// Records `learned` for `function` at `memory_mb` (and asks the journal to).
    fn learn(&mut self, function: &Arc<str>, memory_mb: u32, learned: Learned, effects: &mut Effects) {
        if !self.learned.learn(function, memory_mb, learned) {
            return;
        }
        debug!(function = %function, memory_mb, level = learned.level, settled = learned.settled, "learned a concurrency level");
        if self.journaled {
            effects
                .journal
                .push(JournalOp::Learn(function.clone(), memory_mb, learned));
        }
    }

    /// The map's own key for `name`, creating the function's entry on first use.
    fn function_key(&mut self, name: &str) -> Arc<str> {
        if let Some((key, _)) = self.functions.get_key_value(name) {
            return key.clone();
        }
        let key: Arc<str> = Arc::from(name);
        self.functions.insert(key.clone(), FunctionPool::default());
        key
    }

    /// The memory size a new worker of `function` gets, and why (see
    /// [`scheduler::choose_size`]).
    fn choose_size(&self, function: &str, now: Instant) -> (u32, scheduler::SizeReason) {
        let fleet = &self.config.fleet;
        // Not while a deadline waits: its work goes where it is met.
        let revisit = self
            .functions
            .get(function)
            .is_none_or(|f| f.due.is_none_or(|d| d <= now));
        let (size, why) = scheduler::choose_size(
            &self.sizes,
            |size| self.learned.cost(function, size),
            |size| self.workers.of_size(function, size) as u32 + self.spawns.of_size(function, size),
            fleet.memory_mb,
            revisit,
        );
        if why != scheduler::SizeReason::Cheapest {
            return (size, why);
        }
        match self.size_for_deadline(function, size, now) {
            Some(s) if s != size => (s, scheduler::SizeReason::Deadline),
            _ => (size, why),
        }
    }

    /// The soonest `ahead` tasks of `function` (`f`) and one more can finish with new
    /// workers at `size`, each task taking `task` seconds ([`scheduler::soonest_finish`],
    /// with that size's workers live and the room under the fleet caps).
    fn soonest_at(&self, f: &FunctionPool, function: &str, size: u32, task: f64, ahead: u64) -> Option<f64> {
        let per_worker = scheduler::new_worker_capacity(&self.rules, self.learned_limit(function, size));
        let live =
            (self.workers.of_size(function, size) + self.spawns.of_size(function, size) as usize) as u64;
        let room = self.fleet_room(function) as u64;
        scheduler::soonest_finish(
            task,
            f.reach.to_first_result(),
            ahead,
            live,
            live + room,
            per_worker,
        )
    }

    /// With a deadline of `function` waiting, the size its new workers need instead of
    /// `cheapest`: among the sizes measured (their cost per task and their attempts'
    /// median), the cheapest whose soonest finish of the pending tasks (as
    /// [`scheduler::soonest_finish`] reckons it, at that size's level and with its workers
    /// live) meets the earliest deadline; with none, the one that finishes soonest. `None`:
    /// no deadline waiting, or nothing measured to judge by.
    fn size_for_deadline(&self, function: &str, cheapest: u32, now: Instant) -> Option<u32> {
        let f = self.functions.get(function)?;
        let left = f
            .due
            .filter(|&d| d > now)?
            .saturating_duration_since(now)
            .as_secs_f64();
        // Nothing waiting (the deadline's tasks are all placed), or no new worker can start
        // now: no size to choose for it.
        if f.tasks.pending() + f.tasks.accepting() == 0 || self.fleet_room(function) == 0 {
            return None;
        }
        // While a batch is still arriving, as much work as the last busy spell had.
        let ahead = (f.tasks.pending() + f.tasks.accepting()).max(f.last_peak);
        let mut measured: Vec<(u32, f64, f64)> = self
            .sizes
            .iter()
            .filter_map(|&size| {
                let cost = self.learned.cost(function, size).per_task()?;
                let task = f.durations.get(&size)?.median()?.as_secs_f64();
                Some((size, cost, self.soonest_at(f, function, size, task, ahead)?))
            })
            .collect();
        // Cheapest first (ties to the larger size, as without a deadline).
        measured.sort_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        if measured
            .iter()
            .any(|&(s, _, finish)| s == cheapest && finish <= left)
        {
            return Some(cheapest);
        }
        measured
            .iter()
            .find(|&&(_, _, finish)| finish <= left)
            .or_else(|| measured.iter().min_by(|a, b| a.2.total_cmp(&b.2)))
            .map(|&(s, _, _)| s)
    }

    /// Makes sure a function entry for `name` can exist: past `--max-functions` entries an
    /// idle one (nothing pending, running or live, nothing learned) makes room, and with none
    /// idle the function is refused. Changes nothing when `name` has an entry.
    fn make_room(&mut self, name: &str) -> crate::Result<()> {
        if self.functions.contains_key(name) || self.functions.len() < self.config.limits.max_functions {
            return Ok(());
        }
        match self.evictable() {
            Some(k) => {
                self.functions.remove(&k);
                Ok(())
            }
            None => Err(crate::Error::TooManyFunctions(self.config.limits.max_functions)),
        }
    }

    /// Whether [`State::make_room`] would let `name` have an entry (without changing anything).
    fn has_room_for(&self, name: &str) -> bool {
        self.functions.contains_key(name)
            || self.functions.len() < self.config.limits.max_functions
            || self.evictable().is_some()
    }

    /// An idle function entry (nothing pending, running or live, nothing learned).
    fn evictable(&self) -> Option<Arc<str>> {
        self.functions
            .iter()
            .find(|(k, f)| {
                f.is_idle() && self.workers.of(k) == 0 && self.spawns.of(k) == 0 && !self.learned.knows(k)
            })
            .map(|(k, _)| k.clone())
    }

    /// Places whatever pending tasks of `function` eligible workers can take, sends the
    /// assignments, and spawns workers for what is left.
    fn dispatch(&mut self, function: &str, now: Instant, effects: &mut Effects) {
        self.dispatch_after_change(function, None, now, effects);
    }

    /// [`State::dispatch`] after an event of worker `changed`, which is re-keyed in the
    /// index of eligible workers first.
    fn dispatch_after_change(
        &mut self,
        function: &str,
        changed: Option<&WorkerId>,
        now: Instant,
        effects: &mut Effects,
    ) {
        if let Some(id) = changed {
            self.reindex(id, now);
        }
        if self.settling.contains(function) {
            return;
        }
        let rules = self.rules;
        let Some(f) = self.functions.get_mut(function) else {
            return;
        };
        // Tasks whose own timeout fits no live worker's remaining life: back to the front
        // of the pool after this pass, for a fresh worker.
        let mut unfit: Vec<TaskId> = Vec::new();
        let mut hold: Option<Duration> = None;
        // Workers of the function whose admissions have ended for time, with room: looked
        // up once, when a task bounded by its own timeout needs them.
        let mut draining: Option<Vec<WorkerId>> = None;
        let mut no_eligible = false;
        let mut pass = bounded::Pass {
            rules: &rules,
            now,
            journaled: self.journaled,
            task_timeout: self.config.limits.task_timeout,
            batches: Vec::new(),
        };
        while f.tasks.pending() > 0 {
            let Some((&key, worker_id)) = f.eligible.first_key_value() else {
                no_eligible = true;
                break;
            };
            let worker_id = worker_id.clone();
            match self.workers.get_mut(&worker_id) {
                Some(w) if w.eligible(&rules, now) => {}
                stale => {
                    // Gone, or its admissions ended since it was keyed.
                    f.eligible.remove(&key);
                    if let Some(w) = stale {
                        w.indexed = None;
                        count_refusal(f, &worker_id, w, &rules, now);
                    }
                    continue;
                }
            }
            // At a batch's tail, a task may go to a worker that runs anyway, or wait a
            // moment for one of its slots.
            let worker_id = match tail::plan(&rules, f, &self.workers, &self.book, &worker_id, now) {
                tail::TailPlan::Assign => worker_id,
                tail::TailPlan::Instead(id) => id,
                tail::TailPlan::Hold(wait) => {
                    hold = Some(wait);
                    break;
                }
            };
            let Some(task_id) = pop_pending(&mut f.pool, &self.book) else {
                if !unfit.is_empty() {
                    break;
                }
                // The counts say pending, the pool has none: a defect (the counts follow
                // the tasks), never worth looping over.
                warn!(
                    function,
                    pending = f.tasks.pending(),
                    "pending tasks counted but none in the pool"
                );
                break;
            };
            let Some(task) = self.book.get_mut(task_id) else {
                continue;
            };
            // A task with its own timeout goes to an eligible worker with that much life
            // left (the best ranked that has it), else to one whose admissions have ended
            // for time but that still has it, or waits for a fresh one.
            let (worker_id, late) = match task.timeout {
                Some(t) => match fitting_worker(&f.eligible, &self.workers, &worker_id, t, &rules, now)
                    .map(|id| (id, false))
                    .or_else(|| {
                        let ending = draining
                            .get_or_insert_with(|| bounded::candidates(&self.workers, function, &rules, now));
                        bounded::fitting(ending, &self.workers, t, &rules, now).map(|id| (id, true))
                    }) {
                    Some(chosen) => chosen,
                    None => {
                        f.refused_for_time += 1;
                        debug!(
                            task = task_id,
                            function,
                            timeout_ms = t.as_millis() as u64,
                            "no live worker has the life left for this task"
                        );
                        unfit.push(task_id);
                        if unfit.len() >= MAX_UNFIT_PER_PASS {
                            break;
                        }
                        continue;
                    }
                },
                None => (worker_id, false),
            };
            let Some(w) = self.workers.get_mut(&worker_id) else {
                continue;
            };
            pass.start(f, (task_id, task), (worker_id, w), late, effects);
        }
        // No live worker admits any task now: tasks bounded by their own timeout may still
        // go to a worker whose admissions ended for time, where they fit what is left of it.
        if no_eligible
            && f.bounded
            && f.tasks.pending() > 0
            && rules.admission == scheduler::Admission::Duration
        {
            let ending =
                draining.get_or_insert_with(|| bounded::candidates(&self.workers, function, &rules, now));
            bounded::place(f, ending, &mut self.workers, &mut self.book, &mut pass, effects);
        }
        for &id in unfit.iter().rev() {
            f.pool.push_front(id);
        }
        f.unfit = unfit.len() as u32;
        f.held = if hold.is_some() {
            u32::try_from(f.tasks.pending()).unwrap_or(u32::MAX)
        } else {
            0
        };
        let hold_ended = hold.is_none() && std::mem::take(&mut f.holding);
        for (id, tasks) in pass.batches {
            if let Some(w) = self.workers.get_mut(&id) {
                w.batch = None;
                w.send(Kind::Assign(pb::Assign { tasks }), effects);
            }
        }
        if let Some(wait) = hold {
            self.hold_tail(function, wait, now, effects);
        } else if hold_ended {
            // Workers kept idle while tasks were held: stopped now if nothing waits.
            self.evaluate_idle(function, now, effects);
        }
        self.spawn_for(function, now, effects);
        // Every event ends here: in the state's unit tests, the counts must agree with the
        // tasks (the simulator's, with thousands of events, skip the recount).
        #[cfg(test)]
        if self.recount {
            self.check_counts();
        }
    }

    /// Tasks of `function`'s tail are held for slots about to free ([`scheduler::tail`]):
    /// look again in `wait` (one timer at a time).
    fn hold_tail(&mut self, function: &str, wait: Duration, now: Instant, effects: &mut Effects) {
        let key = self.function_key(function);
        let Some(f) = self.functions.get_mut(function) else {
            return;
        };
        f.holding = true;
        let at = now + wait;
        debug!(
            function,
            held = f.held,
            wait_ms = wait.as_millis() as u64,
            "tail held for slots about to free"
        );
        if f.hold_timer.is_none_or(|t| t <= now || t > at) {
            f.hold_timer = Some(at);
            effects.timers.push((wait, Timer::Function(key)));
        }
    }

    /// Applies the idle rule to every idle worker of `function`.
    fn evaluate_idle(&mut self, function: &str, now: Instant, effects: &mut Effects) {
        let idle: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.running.is_empty() && w.function.as_ref() == function)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &idle {
            self.evaluate(id, now, effects);
        }
    }

    /// Takes worker `id` out of its function's index of eligible workers.
    fn unindex(&mut self, id: &WorkerId) {
        if let Some(w) = self.workers.get_mut(id)
            && let Some(k) = w.indexed.take()
            && let Some(f) = self.functions.get_mut(&w.function)
        {
            f.eligible.remove(&k);
        }
    }

    /// Puts worker `id` where it belongs in its function's index of eligible workers (or
    /// takes it out) after it changed.
    fn reindex(&mut self, id: &WorkerId, now: Instant) {
        if let Some(w) = self.workers.get_mut(id)
            && let Some(f) = self.functions.get_mut(&w.function)
        {
            rekey(f, id, w, &self.rules, now);
        }
    }

    /// Starts workers for `function` when its pending tasks outgrow the free slots of its
    /// live and starting workers. A worker whose admissions end before a new one could be
    /// ready counts only for what it can still start, and does not count against
    /// `--max-workers` (its successor takes its place; `--max-fleet` still holds), nor does
    /// one whose admissions have ended for time and only finishes what it runs.
    fn spawn_for(&mut self, function: &str, now: Instant, effects: &mut Effects) {
        if self.config.fleet.spawner == SpawnerKind::External || self.draining {
            return;
        }
        let rules = self.rules;
        let cap = rules.limits.max;
        let room = self.fleet_room(function);
        let total_room = scheduler::fleet_room(
            0,
            self.workers.len() + self.spawns.len(),
            u32::MAX,
            self.config.fleet.max_fleet,
        );
        let Some(f) = self.functions.get(function) else {
            return;
        };
        // Tasks of the tail held for slots about to free are not work for a new worker.
        let unheld = f.tasks.pending().saturating_sub(u64::from(f.held));
        if unheld == 0 || f.spawn_blocked_until.is_some_and(|t| now < t) {
            return;
        }
        // Hand-overs matter only where workers end by time (not by a quota of tasks).
        // `--admission fraction` is the paper's rule as it was: no hand-overs.
        let hand_overs = rules.admission == scheduler::Admission::Duration
            && rules.max_tasks_per_worker.is_none()
            && total_room > 0;
        // At the cap there is nothing to decide, unless a worker there is handing over.
        let look_for_ending = hand_overs && f.ending_scan_at.is_none_or(|t| now >= t);
        if room == 0 && !look_for_ending {
            return;
        }
        // A deadline waiting: no turns weighed, a worker per uncovered task at once.
        let urgent = f.urgent_until.is_some_and(|t| now < t);
        // A pass over a large fleet costs a look at every worker, and every result asks for
        // one: within a moment of a pass that started nothing, with no more tasks pending
        // and no fewer workers, its verdict stands (a fall of a limit waits that moment).
        let of_function_now = self.workers.of(function) + self.spawns.of(function) as usize;
        let large = self.workers.of(function) > LARGE_FLEET;
        if large
            && !urgent
            && !look_for_ending
            && f.idle_pass.is_some_and(|(at, pending, count)| {
                now < at + LARGE_FLEET_PASS_EVERY && unheld <= pending && of_function_now >= count
            })
        {
            return;
        }
        let (size, _) = self.choose_size(function, now);
        let learned = self.learned_limit(function, size);
        let slots_raw = scheduler::new_worker_capacity(&rules, learned);
        // Nothing known of the function yet (no level learned): its first worker settles
        // before any other starts.
        if !urgent && self.first_finds_out(function, learned, now) {
            return;
        }
        let Some(f) = self.functions.get(function) else {
            return;
        };
        // The recent durations' median, sorted once for the turns and the successor's lead.
        let typical = f.reach.typical();
        // A new worker starts its copies for the level it starts at: a pinned or settled one
        // (one not yet known is climbed to from the first round, a few copies at a time).
        let start_level = rules
            .pinned_slots
            .or(learned.filter(|l| l.settled).map(|l| l.level));
        let (turns, lead_turns) = if urgent {
            (0, 0)
        } else {
            let level = start_level.unwrap_or(1);
            (
                f.reach.turns_given(typical, level),
                f.reach.lead_turns_given(typical, level),
            )
        };
        let task = typical.map(Duration::from_secs_f64);
        let lead = lead_of(f, size, task);
        // Attempts started before this are long ones: their slots do not turn over with the
        // median task (a worker whose slots all hold long tasks finishes nothing for their
        // time, whatever its median).
        let overdue_from = task.and_then(|t| now.checked_sub(f.reach.overdue_after(t)));
        let turning = |w: &Worker| {
            let overdue = overdue_from.map_or(0, |at| w.running.started_before(at));
            w.limit.value().saturating_sub(overdue)
        };
        let (slots_per_new, ahead) = scheduler::coverage(&rules, slots_raw, turns);
        let mut free = self.spawns.of(function) as usize * slots_per_new as usize;
        // What the function's workers (and those starting) finish before a successor started
        // now could take over: a successor replaces a worker, so its start is not weighed
        // as a new worker's is.
        let mut free_by_then = self.spawns.of(function) as usize * slots_raw as usize;
        let free_bound =
            free + self.workers.of(function) * f.max_slots.max(cap) as usize * (1 + ahead as usize);
        let fleet_cannot_matter =
            !scheduler::free_slots_matter(unheld as usize, free_bound, room, slots_per_new);
        // The soonest end among workers within their successor's lead of it; workers that
        // are ending or retiring (admissions over); workers that will still admit after a
        // successor could be ready; when a worker next comes within its lead of its end.
        let mut ending: Option<Duration> = None;
        let mut retiring = 0usize;
        let mut lasting = self.spawns.of(function) as usize;
        let mut next_scan = now + self.config.fleet.sample_interval;
        if fleet_cannot_matter && !look_for_ending {
            free = free_bound;
        } else if let Some((key, _)) = self.functions.get_key_value(function) {
            // One pass over the workers, compared by function pointer: no lookups per worker.
            for w in self.workers.values().filter(|w| Arc::ptr_eq(&w.function, key)) {
                let v = w.view(now);
                let verdict = scheduler::assess(&rules, &v);
                if !verdict.counts_as_capacity() {
                    // Draining: its admissions ended for time and it only finishes what it
                    // runs (a worker told to stop is gone in a moment, and still counts).
                    if hand_overs && verdict == Verdict::Draining {
                        retiring += 1;
                        ending = Some(Duration::ZERO);
                    }
                    continue;
                }
                let left = scheduler::until_deadline(&rules, &v);
                if hand_overs && left <= lead {
                    let free_now = w.limit.value().saturating_sub(v.running);
                    let slots = turning(w);
                    let covers = |turns: u32| {
                        scheduler::life::covers_before_end(free_now, slots, left, task, turns.max(1)) as usize
                    };
                    free += covers(ahead);
                    free_by_then += covers(lead_turns);
                    ending = Some(ending.map_or(left, |e| e.min(left)));
                    retiring += 1;
                    continue;
                }
                next_scan =
                    next_scan.min(now + left.saturating_sub(lead).div_f64(scheduler::end_nearing(&v)));
                lasting += 1;
                let free_now = scheduler::free_capacity(&w.limit, w.limit_params.max, v.running) as usize;
                // What its busy slots finish before a new worker could (weighed), and before
                // a successor could.
                let slots = turning(w) as usize;
                free += free_now + slots * ahead as usize;
                free_by_then += free_now + slots * lead_turns as usize;
            }
        }
        let scanned = !fleet_cannot_matter || look_for_ending;
        let Some(f) = self.functions.get_mut(function) else {
            return;
        };
        if scanned && hand_overs {
            f.ending_scan_at = Some(next_scan);
        }
        // Retiring workers leave their places under --max-workers to their successors.
        let of_function =
            (self.workers.of(function) + self.spawns.of(function) as usize).saturating_sub(retiring);
        let room = (self.config.fleet.max_workers as usize)
            .saturating_sub(of_function)
            .min(total_room);
        let pending = unheld as usize;
        let mut n = scheduler::workers_to_spawn(
            pending,
            free,
            of_function as u32,
            self.config.fleet.max_workers,
            slots_per_new,
            // Whole workers only of a known level: one not yet known counts as the cap.
            ahead > 0 && start_level.is_some(),
        )
        .min(room as u32);
        // Work left over once every worker's admissions have ended: a successor, even for
        // less than a whole worker's worth. Tasks that fit no live worker's remaining life:
        // a fresh worker.
        let orphaned = ending.is_some() && lasting == 0 && pending > free;
        let unfit = f.unfit > 0 && self.spawns.of(function) == 0;
        if n == 0 && (orphaned || unfit) && room > 0 {
            n = 1;
        }
        // A worker whose admissions end is replaced while there is work its successor will
        // find when it is ready: one per retiring worker at most, one per worker's slots of
        // that work.
        if ending.is_some() && retiring > 0 {
            let left_over = pending.saturating_sub(free_by_then);
            let successors = left_over
                .div_ceil(slots_raw.max(1) as usize)
                .min(retiring)
                .min(room) as u32;
            n = n.max(successors);
        }
        f.idle_pass = (large && scanned && n == 0).then_some((now, unheld, of_function_now));
        if let Some(left) = ending.filter(|_| n > 0) {
            f.successors += u64::from(n);
            f.successor_lead_ms = left.as_millis() as u64;
            info!(
                function,
                successors = n,
                ends_in_ms = left.as_millis() as u64,
                lead_ms = lead.as_millis() as u64,
                "starting successors for workers whose admissions end"
            );
        }
        let key = self.function_key(function);
        for _ in 0..n {
            let (memory_mb, why) = self.choose_size(function, now);
            let id = self.spawns.start(&key, memory_mb, now);
            info!(worker = %id, function, memory_mb, why = why.as_str(), "spawning");
            effects.spawns.push(SpawnRequest {
                id,
                function: key.clone(),
                memory_mb,
            });
        }
    }

    /// Whether `function`'s scale-out waits for its first worker to settle: no level is
    /// learned at the size a new worker would get, its limit is not pinned, and the one
    /// worker it has ever started (live or starting) is still probing. A batch larger than
    /// one worker's cap started as many workers at once as it filled at the cap (4 for 1000
    /// sleeps of 100 ms, where one worker runs them in 0.4 s: 3.7 to 3.95 times the
    /// cheapest fixed setting, measured), each climbing from its vCPUs with its slots
    /// mostly empty. Settled (CPU or memory binds, or it reaches the cap), the first worker
    /// shows the level the others start at. Only paced scale-out waits so, not
    /// `--scale-out eager` (Lambda's way), a quota of tasks per worker (conventional FaaS)
    /// or a pinned `--slots`; and only for the function's first worker in the
    /// coordinator's life. Nor once that worker's admissions are about to end (within a
    /// successor's lead): it finds out nothing more, and its successor is due. A first
    /// worker of a Python handler whose slots all held long tasks (one in ten a 2.4 s wait)
    /// was still probing when its admissions ended, and its queue waited a second for a
    /// successor started only then.
    fn first_finds_out(&self, function: &str, learned: Option<Learned>, now: Instant) -> bool {
        let rules = &self.rules;
        let Some(f) = self.functions.get(function) else {
            return false;
        };
        let first = rules.scale_out == crate::config::ScaleOut::Paced
            && rules.max_tasks_per_worker.is_none()
            && rules.pinned_slots.is_none()
            && learned.is_none()
            // Its first worker, live or starting, and no other ever.
            && f.workers_started + u64::from(self.spawns.of(function)) <= 1
            && self.workers.of(function) + self.spawns.of(function) as usize == 1;
        if !first {
            return false;
        }
        // Only now (every result asks): the lead, from the sorted recent durations.
        let hand_overs = rules.admission == scheduler::Admission::Duration;
        let lead = lead_of(
            f,
            self.choose_size(function, now).0,
            f.reach.typical().map(Duration::from_secs_f64),
        );
        let ending = |w: &Worker| hand_overs && scheduler::until_deadline(rules, &w.view(now)) <= lead;
        !self
            .workers
            .values()
            .any(|w| w.function.as_ref() == function && (w.limit.settled() || ending(w)))
    }

    /// How long before a worker's admissions end its successor is started: what a new
    /// worker of `function`, at the size new workers get now, has been measured to take to
    /// be of use (0 with nothing measured).
    fn successor_lead(&self, function: &str, now: Instant) -> Duration {
        self.functions.get(function).map_or(Duration::ZERO, |f| {
            lead_of(
                f,
                self.choose_size(function, now).0,
                f.reach.typical().map(Duration::from_secs_f64),
            )
        })
    }

    /// Applies the idle rule to one worker: shutdown, keep, or look again later.
    /// (The event that led here has re-keyed the worker already, in `dispatch_after_change`.)
    fn evaluate(&mut self, id: &WorkerId, now: Instant, effects: &mut Effects) {
        let Some(w) = self.workers.get(id) else {
            return;
        };
        let pool_empty = self
            .functions
            .get(&w.function)
            .is_none_or(|f| f.tasks.pending() == 0);
        match scheduler::idle_action(&self.rules, &w.view(now), pool_empty) {
            IdleAction::Keep => {}
            IdleAction::RecheckAfter(d) => {
                let at = now + d;
                if w.recheck_at.is_none_or(|armed| armed > at) {
                    let conn = w.conn;
                    if let Some(w) = self.workers.get_mut(id) {
                        w.recheck_at = Some(at);
                    }
                    effects.timers.push((d, Timer::Worker(id.clone(), conn)));
                }
            }
            IdleAction::Stop(reason) => {
                let reason = match reason {
                    StopReason::Idle => pb::ShutdownReason::Idle,
                    StopReason::Deadline => pb::ShutdownReason::Deadline,
                    StopReason::Ineligible => pb::ShutdownReason::Ineligible,
                };
                self.stop(id, reason, effects);
            }
        }
    }

    fn stop(&mut self, id: &WorkerId, reason: pb::ShutdownReason, effects: &mut Effects) {
        if let Some(w) = self.workers.get_mut(id) {
            info!(worker = %id, reason = reason.as_str_name(), "shutdown");
            w.stopping = true;
            effects.observed.push(Observation::Shutdown(reason));
            w.send(
                Kind::Shutdown(pb::Shutdown {
                    reason: reason as i32,
                }),
                effects,
            );
            self.unindex(id);
        }
    }

    /// A timer fired.
    pub(super) fn on_timer(&mut self, timer: Timer, now: Instant, effects: &mut Effects) {
        match timer {
            Timer::Worker(id, conn) => {
                if let Some(w) = self.workers.get_mut(&id).filter(|w| w.conn == conn) {
                    if w.recheck_at.is_some_and(|at| at <= now) {
                        w.recheck_at = None;
                    }
                    self.evaluate(&id, now, effects);
                }
            }
            Timer::Function(name) => self.dispatch(&name, now, effects),
            Timer::Task(id, attempt) => self.time_out(id, attempt, now, effects),
            Timer::Orphans => self.release_orphans(now, effects),
            Timer::Settled => {
                let functions: Vec<Arc<str>> = self.settling.drain().collect();
                for f in functions {
                    self.dispatch(&f, now, effects);
                }
            }
        }
    }

    /// The coordinator is shutting down: nothing new is accepted or spawned, and every
    /// worker is told to finish and leave. Returns how many workers were told.
    pub(super) fn drain(&mut self, effects: &mut Effects) -> usize {
        self.draining = true;
        let ids: Vec<WorkerId> = self.workers.keys().cloned().collect();
        for id in &ids {
            self.stop(id, pb::ShutdownReason::Drain, effects);
        }
        ids.len()
    }

    /// Tallies each function's hand-over wait after an event at `now`: tasks waiting while
    /// the function has workers and none of them admits any more (every one's admissions
    /// ended, or it is stopping), until a worker admits again or none waits. Not the first
    /// worker's cold start (no worker yet), nor a wait while a live worker may still take
    /// work (its slots full, its CPU busy), nor conventional FaaS (one task a worker: every
    /// worker is spent once it has one). A worker whose admissions end between two events
    /// is seen at the next one (a sample within its interval, at most).
    pub(super) fn watch_handovers(&mut self, now: Instant) {
        if self.rules.max_tasks_per_worker.is_some() {
            return;
        }
        for (name, f) in self.functions.iter_mut() {
            let waiting = f.tasks.pending() > 0;
            if !waiting && f.handover_since.is_none() {
                continue;
            }
            let handing_over = waiting
                && f.eligible.is_empty()
                && (f.handover_since.is_some() || self.workers.of(name) > 0)
                && !self.workers.any_admitting(name, &self.rules, now);
            if handing_over {
                f.handover_since.get_or_insert(now);
            } else if let Some(since) = f.handover_since.take() {
                let waited = now.saturating_duration_since(since);
                f.handover_wait += waited;
                f.handover_longest = f.handover_longest.max(waited);
                debug!(function = %name, waited_ms = waited.as_millis() as u64, "tasks waited across a hand-over");
            }
        }
    }

    /// Whether tasks of `function` wait while none of its live workers admits any more
    /// (every one's admissions ended or it is stopping): a gap a successor should have
    /// closed. Scans the function's workers (the simulator's hand-over tally).
    pub fn waits_without_admission(&self, function: &str, now: Instant) -> bool {
        self.functions
            .get(function)
            .is_some_and(|f| f.tasks.pending() > 0)
            && !self.workers.any_admitting(function, &self.rules, now)
    }

    /// Workers connected now.
    pub fn live_workers(&self) -> usize {
        self.workers.len()
    }
}

/// Moves worker `id` (`w`) to where it belongs now in its function's (`f`) index of
/// eligible workers, or out of it; a worker leaving it because its admissions ended while
/// tasks wait counts once as refused for time.
fn rekey(f: &mut FunctionPool, id: &WorkerId, w: &mut Worker, rules: &Rules, now: Instant) {
    let key = w.index_key(rules, now);
    if key.is_none() && f.tasks.pending() > 0 {
        count_refusal(f, id, w, rules, now);
    }
    if key == w.indexed {
        return;
    }
    if let Some(old) = std::mem::replace(&mut w.indexed, key) {
        f.eligible.remove(&old);
    }
    if let Some(k) = key {
        f.eligible.insert(k, id.clone());
    }
}

/// The successor's lead of function `f` (see [`scheduler::life::successor_lead`]) for a new
/// worker of `size`, its tasks' typical duration being `task`: by the cold starts measured
/// at that size, or at any where none is.
fn lead_of(f: &FunctionPool, size: u32, task: Option<Duration>) -> Duration {
    let cold = f
        .cold_starts_at
        .get(&size)
        .and_then(workers::ColdStarts::slow)
        .or_else(|| f.recent_cold_starts.slow());
    scheduler::life::successor_lead(cold, f.reach.to_first_result().map(Duration::from_secs_f64), task)
}

/// Counts worker `w` (`id`) once as refused for time, if its admissions have ended; the
/// first such worker whose admissions ended before the fixed rule's would have is logged
/// once for its function, with the life that would avoid it.
fn count_refusal(f: &mut FunctionPool, id: &WorkerId, w: &mut Worker, rules: &Rules, now: Instant) {
    if w.refused_for_time {
        return;
    }
    let view = w.view(now);
    if scheduler::assess(rules, &view) != Verdict::Draining {
        return;
    }
    w.refused_for_time = true;
    f.refused_for_time += 1;
    if f.told_short_life || rules.admission != scheduler::Admission::Duration {
        return;
    }
    let end = scheduler::admission_end(rules, &view);
    let Some(wanted) = scheduler::life::life_wanted(end, w.timeout, rules.deadline_fraction) else {
        return;
    };
    f.told_short_life = true;
    warn!(
        function = %w.function,
        worker = %id,
        life_ms = w.timeout.as_millis() as u64,
        admissions_end_ms = end.as_millis() as u64,
        life_wanted_ms = wanted.as_millis() as u64,
        "a worker stopped taking tasks without a timeout of their own earlier in its life than \
         --deadline-fraction: its life is short for the function's longest tasks, and each \
         worker drains for one while taking no such task; a life of life_wanted_ms (Lambda's \
         function timeout, --execution-timeout locally), or a timeout of their own on the \
         short tasks, bills less (Stats' admitting_share; logged once per function)"
    );
}

/// How many task ids a coordinator reserves in its journal at a time (a block at its start,
/// another once half of the last is used): ids never repeat for the life of the journal,
/// even those handed out in memory and never written, and a takeover skips at most a block.
pub const ID_BLOCK: u64 = 1 << 20;

/// How long placement of a function waits after a restart on a journal with unfinished tasks
/// of it (at most the reconnect grace; work of other functions is placed at once). A task's start is journaled without waiting, so a crash can lose it:
/// the task then looks as if it never started, and would go to whichever worker reconnects
/// first while the one running it is still on its way back. Workers wait at most 1 s
/// between reconnects (500 ms, jittered), trying every coordinator URL they have at each,
/// so this pause lets them claim their tasks.
pub const RESTART_SETTLE: Duration = Duration::from_secs(1);

/// How many released task ids a worker remembers.
const RELEASED_MEMORY: usize = 1024;

/// How many tasks with their own timeout one dispatch pass sets aside for a fresh worker
/// before it stops (the rest wait for the next pass).
const MAX_UNFIT_PER_PASS: usize = 256;
/// A function with more live workers than this is a large fleet: a scale-out pass that
/// started nothing stands for [`LARGE_FLEET_PASS_EVERY`] while no more tasks are pending
/// and no worker is gone (every result asked for a pass over every worker: a million
/// simulated sleeps on 1000 workers took 77 s, most of it in those passes).
const LARGE_FLEET: usize = 64;
/// See [`LARGE_FLEET`].
const LARGE_FLEET_PASS_EVERY: Duration = Duration::from_millis(50);

/// How many eligible workers a task with its own timeout is tried on, best ranked first.
const FITTING_CANDIDATES: usize = 16;

/// The worker a task bounded by `timeout` goes to: `first` (the best ranked eligible
/// worker) if it has that much life left, else the best ranked of the next few eligible
/// workers that has; `None` if none has.
fn fitting_worker(
    eligible: &BTreeMap<IndexKey, WorkerId>,
    workers: &roster::Roster,
    first: &WorkerId,
    timeout: Duration,
    rules: &Rules,
    now: Instant,
) -> Option<WorkerId> {
    let fits = |id: &WorkerId| {
        workers.get(id).is_some_and(|w| {
            let v = w.view(now);
            scheduler::assess(rules, &v) == Verdict::Eligible && scheduler::fits_bounded(&v, timeout)
        })
    };
    if fits(first) {
        return Some(first.clone());
    }
    eligible
        .values()
        .take(FITTING_CANDIDATES)
        .find(|id| fits(id))
        .cloned()
}

/// Pops the next task of a pool that is still pending (skipping cancelled ones).
fn pop_pending(pool: &mut VecDeque<TaskId>, tasks: &book::Book) -> Option<TaskId> {
    while let Some(id) = pool.pop_front() {
        if tasks.get(id).is_some_and(|t| t.state == TaskState::Pending) {
            return Some(id);
        }
    }
    None
}

#[cfg(test)]
mod tests;
