//! The scheduling rule (the paper's Algorithm 1, event-driven) as pure code.
//!
//! State in, decision out: no I/O, no clock reads (ages are arguments). The state module
//! calls these functions on every event and turns their answers into messages and spawns.
//!
//! - `mod.rs`: eligibility, placement, the idle rule and scale-out.
//! - [`limit`]: each worker's adaptive concurrency limit.

pub(crate) mod limit;

use std::time::Duration;

use crate::config::{Config, Placement};
pub(crate) use limit::{Learned, Limit, LimitParams, Observation};

/// The thresholds and policies the rule applies, taken from [`Config`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    /// CPU fraction (of a worker's allotment) above which a worker takes nothing new.
    pub cpu_threshold: f64,
    /// Memory fraction at or above which a worker takes nothing new.
    pub mem_threshold: f64,
    /// Fraction of the execution timeout after which a worker drains.
    pub deadline_fraction: f64,
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
}

impl From<&Config> for Rules {
    fn from(c: &Config) -> Self {
        Self {
            cpu_threshold: c.cpu_threshold,
            mem_threshold: c.mem_threshold,
            deadline_fraction: c.deadline_fraction,
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
        }
    }
}

/// The concurrency limit a new worker starts with: pinned by `--slots` or by the worker
/// itself (`hello_slots`), else the level learned for its function and memory size, else
/// its vCPUs, probing upwards. `worker_max` is the worker's own cap (0: none).
pub(crate) fn initial_limit(
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
pub(crate) fn worker_limits(rules: &Rules, worker_max: u32) -> LimitParams {
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
pub(crate) fn new_worker_capacity(rules: &Rules, learned: Option<Learned>) -> u32 {
    let settled = learned.filter(|l| l.settled).map(|l| l.level);
    let slots = rules.pinned_slots.or(settled).unwrap_or(rules.limits.max).max(1);
    let quota = rules
        .max_tasks_per_worker
        .map_or(u32::MAX, |q| q.min(u64::from(u32::MAX)) as u32);
    slots.min(quota).max(1)
}

/// Tasks a live worker can still take, for scale-out: up to its limit, or, while it is
/// still probing upwards, up to the cap it may grow to.
pub(crate) fn free_capacity(limit: &Limit, cap: u32, running: u32) -> u32 {
    let room = if limit.settled() {
        limit.value()
    } else {
        cap.max(limit.value())
    };
    room.saturating_sub(running)
}

/// What the rule needs to know about one live worker.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WorkerView {
    /// Time since the worker connected.
    pub age: Duration,
    /// Its execution timeout (how long it may live in total).
    pub timeout: Duration,
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
pub(crate) enum Verdict {
    /// It may take one more task.
    Eligible,
    /// It has been told to shut down: no new task ever.
    Stopping,
    /// Its stream is down (it may reconnect): no new task until it does.
    Detached,
    /// Past the deadline fraction: no new task ever; shut down once idle.
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
    pub(crate) fn is_final(self) -> bool {
        matches!(
            self,
            Verdict::Stopping | Verdict::Draining | Verdict::QuotaReached
        )
    }

    /// Whether the slots it has standing free count against new spawns: a worker that will
    /// take work again once a sample or a result frees it, not one that never will or one
    /// whose stream is down.
    pub(crate) fn counts_as_capacity(self) -> bool {
        !self.is_final() && self != Verdict::Detached
    }
}

/// Assesses one worker against every condition of the rule (the pool's emptiness is the
/// caller's: it only asks when there is a task to place).
pub(crate) fn assess(rules: &Rules, w: &WorkerView) -> Verdict {
    if w.stopping {
        Verdict::Stopping
    } else if !w.attached {
        Verdict::Detached
    } else if past_deadline(rules, w) {
        Verdict::Draining
    } else if rules
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

/// Whether the worker's age has reached the deadline fraction of its timeout.
pub(crate) fn past_deadline(rules: &Rules, w: &WorkerView) -> bool {
    w.age.as_secs_f64() >= rules.deadline_fraction * w.timeout.as_secs_f64()
}

/// Time until the worker reaches its deadline fraction (zero if it has).
pub(crate) fn until_deadline(rules: &Rules, w: &WorkerView) -> Duration {
    w.timeout.mul_f64(rules.deadline_fraction).saturating_sub(w.age)
}

/// The CPU to judge a worker by now. A sample taken while `sampled_running` tasks ran
/// overstates the load once some of them have ended (and would wrongly make a worker that
/// just finished look busy), so it is scaled by the share still running. A sample taken
/// with no task running is load that is not ours, and is kept as it is.
pub(crate) fn cpu_estimate(sampled: f64, sampled_running: u32, running_now: u32) -> f64 {
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
pub(crate) fn rank(placement: Placement, running: u32, slots: u32) -> u64 {
    let fill = (f64::from(running) / f64::from(slots.max(1))).to_bits();
    match placement {
        Placement::Pack => !fill,
        Placement::Spread => fill,
    }
}

/// Why an idle worker is told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// Nothing to do past the keep-alive.
    Idle,
    /// Past the deadline fraction.
    Deadline,
    /// Work is waiting but the worker may not take it (CPU, memory, quota).
    Ineligible,
}

/// What to do with a worker that runs nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdleAction {
    /// Keep it (it is busy, or eligible for the waiting work).
    Keep,
    /// Tell it to shut down.
    Stop(StopReason),
    /// Look again after this long (the keep-alive has not run out yet).
    RecheckAfter(Duration),
}

/// The rule for a worker that may be idle: `pool_empty` says whether its function has
/// work waiting.
pub(crate) fn idle_action(rules: &Rules, w: &WorkerView, pool_empty: bool) -> IdleAction {
    if w.running > 0 {
        return IdleAction::Keep;
    }
    match assess(rules, w) {
        // Already told to go, or away: nothing to decide until it is back.
        Verdict::Stopping | Verdict::Detached => IdleAction::Keep,
        Verdict::Draining => IdleAction::Stop(StopReason::Deadline),
        Verdict::QuotaReached => IdleAction::Stop(StopReason::Ineligible),
        // Too busy for the waiting work: make room for a fresh worker, when one can be
        // started; workers started by hand are kept (their load may pass, and nothing would
        // take their place).
        Verdict::CpuBusy | Verdict::MemoryBusy if !pool_empty && rules.spawns => {
            IdleAction::Stop(StopReason::Ineligible)
        }
        _ if !pool_empty => IdleAction::Keep,
        _ if w.idle_for >= rules.keep_alive => IdleAction::Stop(StopReason::Idle),
        _ => IdleAction::RecheckAfter(rules.keep_alive - w.idle_for),
    }
}

/// How many workers to start for one function: enough new slots to cover the pending
/// tasks that the free slots of live and starting workers do not, within the fleet cap.
pub(crate) fn workers_to_spawn(
    pending: usize,
    free_slots: usize,
    fleet: u32,
    max_workers: u32,
    slots_per_new_worker: u32,
) -> u32 {
    let uncovered = pending.saturating_sub(free_slots);
    if uncovered == 0 {
        return 0;
    }
    let wanted = uncovered.div_ceil(slots_per_new_worker.max(1) as usize);
    let room = max_workers.saturating_sub(fleet) as usize;
    wanted.min(room) as u32
}

/// Whether the free slots of a function's live workers could change how many workers to
/// start. When the pending tasks outnumber even every slot that could stand free
/// (`free_bound`) plus what the `room` left under the caps would add, the answer is the room,
/// and the fleet need not be scanned (a deep pool, e.g. conventional FaaS refilling its
/// fleet).
pub(crate) fn free_slots_matter(
    pending: usize,
    free_bound: usize,
    room: usize,
    slots_per_new_worker: u32,
) -> bool {
    pending < free_bound + room * slots_per_new_worker as usize
}

/// The first wait after a failed spawn; doubled for each failure in a row.
pub(crate) const SPAWN_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest wait between spawns of a function whose spawns keep failing.
pub(crate) const MAX_SPAWN_BACKOFF: Duration = Duration::from_secs(10);

/// How long a function waits before its next spawn after `failures_in_a_row` failed ones.
/// No jitter: a function's spawns go out in one place, not from a fleet in step.
pub(crate) fn spawn_backoff(failures_in_a_row: u32) -> Duration {
    SPAWN_BACKOFF_BASE
        .saturating_mul(1 << failures_in_a_row.min(10))
        .min(MAX_SPAWN_BACKOFF)
}

/// Whether a function's spawns have failed often enough in a row (`--max-spawn-failures`)
/// for its pending tasks to fail with the cause rather than wait for ever.
pub(crate) fn give_up_spawning(failures_in_a_row: u32, max_spawn_failures: u32) -> bool {
    failures_in_a_row >= max_spawn_failures
}

/// What becomes of a task whose attempt ended without a result (its worker was lost, it
/// timed out, it was running when the coordinator restarted and nobody claimed it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterLostAttempt {
    /// Back to the front of its pool, for another attempt.
    Retry,
    /// Failed with the cause: it has had `--max-attempts` attempts.
    Fail,
}

/// Retry or fail a task that has had `attempts` attempts of `max_attempts`.
pub(crate) fn after_lost_attempt(attempts: u32, max_attempts: u32) -> AfterLostAttempt {
    if attempts >= max_attempts {
        AfterLostAttempt::Fail
    } else {
        AfterLostAttempt::Retry
    }
}

/// How many more workers may start: the room under `--max-workers` for the function and
/// under `--max-fleet` for every function together (workers live or starting).
pub(crate) fn fleet_room(of_function: usize, total: usize, max_workers: u32, max_fleet: u32) -> usize {
    (max_workers as usize)
        .saturating_sub(of_function)
        .min((max_fleet as usize).saturating_sub(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::from(&Config::default())
    }

    fn worker() -> WorkerView {
        WorkerView {
            age: Duration::from_secs(10),
            timeout: Duration::from_secs(100),
            cpu: 0.1,
            mem: 0.1,
            running: 0,
            slots: 2,
            assigned_total: 0,
            idle_for: Duration::ZERO,
            stopping: false,
            attached: true,
        }
    }

    #[test]
    fn fresh_idle_worker_is_eligible() {
        assert_eq!(assess(&rules(), &worker()), Verdict::Eligible);
    }

    #[test]
    fn deadline_fraction_stops_assignment() {
        let w = WorkerView {
            age: Duration::from_secs(80),
            ..worker()
        };
        assert_eq!(assess(&rules(), &w), Verdict::Draining);
        let w = WorkerView {
            age: Duration::from_millis(79_999),
            ..worker()
        };
        assert_eq!(assess(&rules(), &w), Verdict::Eligible);
        assert_eq!(until_deadline(&rules(), &w), Duration::from_millis(1));
    }

    #[test]
    fn cpu_above_threshold_is_busy_and_at_or_below_is_eligible() {
        let busy = WorkerView {
            cpu: 0.91,
            ..worker()
        };
        assert_eq!(assess(&rules(), &busy), Verdict::CpuBusy);
        let at = WorkerView { cpu: 0.9, ..worker() };
        assert_eq!(assess(&rules(), &at), Verdict::Eligible);
        // A threshold of 1 never holds back a worker that uses all its vCPUs but no more.
        let r = Rules {
            cpu_threshold: 1.0,
            ..rules()
        };
        let full = WorkerView { cpu: 1.0, ..worker() };
        assert_eq!(assess(&r, &full), Verdict::Eligible);
    }

    #[test]
    fn memory_at_threshold_is_busy() {
        let w = WorkerView {
            mem: 0.95,
            ..worker()
        };
        assert_eq!(assess(&rules(), &w), Verdict::MemoryBusy);
    }

    #[test]
    fn slots_cap_running_tasks() {
        let w = WorkerView {
            running: 2,
            ..worker()
        };
        assert_eq!(assess(&rules(), &w), Verdict::Full);
        let w = WorkerView {
            running: 1,
            ..worker()
        };
        assert_eq!(assess(&rules(), &w), Verdict::Eligible);
    }

    #[test]
    fn quota_makes_conventional_faas() {
        let r = Rules {
            max_tasks_per_worker: Some(1),
            ..rules()
        };
        let w = WorkerView {
            assigned_total: 1,
            ..worker()
        };
        assert_eq!(assess(&r, &w), Verdict::QuotaReached);
        assert_eq!(
            idle_action(&r, &w, false),
            IdleAction::Stop(StopReason::Ineligible)
        );
    }

    #[test]
    fn cpu_of_finished_tasks_does_not_count_against_a_worker() {
        // Sampled at 100% with two tasks running; both ended since.
        assert_eq!(cpu_estimate(1.0, 2, 0), 0.0);
        assert_eq!(cpu_estimate(1.0, 2, 1), 0.5);
        // Load seen while nothing of ours ran is someone else's: it stays.
        assert_eq!(cpu_estimate(0.95, 0, 0), 0.95);
        // More running than sampled: the sample is the best we know.
        assert_eq!(cpu_estimate(0.4, 1, 2), 0.4);
    }

    /// The candidate an index sorted by rank yields first (ties: the earlier one).
    fn best<'a>(placement: Placement, candidates: &[(&'a str, u32, u32)]) -> Option<&'a str> {
        candidates
            .iter()
            .min_by_key(|(_, running, slots)| rank(placement, *running, *slots))
            .map(|(k, _, _)| *k)
    }

    #[test]
    fn pack_prefers_fullest_and_spread_emptiest() {
        let c = [("a", 0, 2), ("b", 1, 2), ("c", 1, 4)];
        assert_eq!(best(Placement::Pack, &c), Some("b"));
        assert_eq!(best(Placement::Spread, &c), Some("a"));
        assert_eq!(best(Placement::Pack, &[]), None);
        assert_eq!(
            best(Placement::Pack, &[("a", 0, 4), ("b", 3, 4), ("c", 2, 4)]),
            Some("b")
        );
        assert_eq!(
            best(Placement::Spread, &[("a", 2, 4), ("b", 0, 4), ("c", 0, 4)]),
            Some("b")
        );
    }

    #[test]
    fn pack_with_mixed_sizes_still_finds_the_fullest() {
        // A one-slot idle worker is not the fullest when a 3-of-4 one exists.
        assert_eq!(
            best(Placement::Pack, &[("small", 0, 1), ("big", 3, 4)]),
            Some("big")
        );
        assert_eq!(
            best(Placement::Pack, &[("small", 0, 1), ("half", 2, 4)]),
            Some("half")
        );
        // Equal fills rank equal whatever the sizes: the index breaks the tie.
        assert_eq!(rank(Placement::Pack, 1, 2), rank(Placement::Pack, 2, 4));
        assert_eq!(rank(Placement::Spread, 0, 1), rank(Placement::Spread, 0, 8));
    }

    #[test]
    fn idle_worker_with_empty_pool_stops_after_keep_alive() {
        let r = Rules {
            keep_alive: Duration::from_secs(5),
            ..rules()
        };
        let w = WorkerView {
            idle_for: Duration::from_secs(2),
            ..worker()
        };
        assert_eq!(
            idle_action(&r, &w, true),
            IdleAction::RecheckAfter(Duration::from_secs(3))
        );
        let w = WorkerView {
            idle_for: Duration::from_secs(5),
            ..worker()
        };
        assert_eq!(idle_action(&r, &w, true), IdleAction::Stop(StopReason::Idle));
    }

    #[test]
    fn zero_keep_alive_stops_an_idle_worker_at_once() {
        assert_eq!(
            idle_action(&rules(), &worker(), true),
            IdleAction::Stop(StopReason::Idle)
        );
    }

    #[test]
    fn idle_worker_with_work_waiting_is_kept_if_eligible() {
        assert_eq!(idle_action(&rules(), &worker(), false), IdleAction::Keep);
    }

    #[test]
    fn idle_ineligible_worker_with_work_waiting_stops() {
        let w = WorkerView {
            cpu: 0.99,
            ..worker()
        };
        assert_eq!(
            idle_action(&rules(), &w, false),
            IdleAction::Stop(StopReason::Ineligible)
        );
        // Under the external spawner nothing would replace it: it is kept for its load to pass.
        let external = Rules {
            spawns: false,
            ..rules()
        };
        assert_eq!(idle_action(&external, &w, false), IdleAction::Keep);
        // With nothing waiting the same worker just idles out.
        assert_eq!(
            idle_action(&rules(), &w, true),
            IdleAction::Stop(StopReason::Idle)
        );
    }

    #[test]
    fn draining_worker_stops_when_idle_but_not_while_busy() {
        let w = WorkerView {
            age: Duration::from_secs(90),
            ..worker()
        };
        assert_eq!(
            idle_action(&rules(), &w, false),
            IdleAction::Stop(StopReason::Deadline)
        );
        let busy = WorkerView { running: 1, ..w };
        assert_eq!(idle_action(&rules(), &busy, false), IdleAction::Keep);
    }

    #[test]
    fn a_level_only_risen_to_starts_a_worker_there_still_probing() {
        let r = rules();
        let risen = Learned {
            level: 32,
            settled: false,
        };
        let l = initial_limit(&r, 0, 0, Some(risen), 2);
        assert_eq!((l.value(), l.settled()), (32, false));
        assert_eq!(
            new_worker_capacity(&r, Some(risen)),
            256,
            "its level is not known yet"
        );
    }

    fn settled(level: u32) -> Learned {
        Learned { level, settled: true }
    }

    #[test]
    fn a_new_workers_limit_is_pinned_learned_or_probing_from_its_vcpus() {
        let r = rules();
        assert_eq!(initial_limit(&r, 0, 0, None, 2).value(), 2);
        assert!(!initial_limit(&r, 0, 0, None, 2).settled());
        assert_eq!(initial_limit(&r, 0, 0, Some(settled(40)), 2).value(), 40);
        assert!(initial_limit(&r, 0, 0, Some(settled(40)), 2).settled());
        // The worker's own cap bounds the learned level.
        assert_eq!(initial_limit(&r, 0, 16, Some(settled(40)), 2).value(), 16);
        // --slots on the coordinator, or the worker's own --slots, pins it.
        assert_eq!(
            initial_limit(&r, 3, 0, Some(settled(40)), 2).phase(),
            limit::Phase::Pinned
        );
        let pinned = Rules {
            pinned_slots: Some(5),
            ..r
        };
        assert_eq!(initial_limit(&pinned, 3, 0, Some(settled(40)), 2).value(), 5);
    }

    #[test]
    fn scale_out_counts_an_unlearned_worker_as_able_to_grow() {
        let r = rules();
        assert_eq!(new_worker_capacity(&r, None), 256);
        assert_eq!(new_worker_capacity(&r, Some(settled(12))), 12);
        let conventional = Rules {
            max_tasks_per_worker: Some(1),
            ..r
        };
        assert_eq!(new_worker_capacity(&conventional, None), 1);
        let probing = initial_limit(&r, 0, 0, None, 2);
        assert_eq!(free_capacity(&probing, 256, 2), 254);
        let learned = initial_limit(&r, 0, 0, Some(settled(12)), 2);
        assert_eq!(free_capacity(&learned, 256, 2), 10);
    }

    #[test]
    fn spawn_covers_uncovered_pending_within_cap() {
        // 10 pending, 3 free slots, 2 slots per new worker: 4 workers wanted.
        assert_eq!(workers_to_spawn(10, 3, 0, 8, 2), 4);
        // Cap of 8 with 6 already in the fleet leaves room for 2.
        assert_eq!(workers_to_spawn(10, 3, 6, 8, 2), 2);
        // Starting workers' slots count as free: nothing more to start.
        assert_eq!(workers_to_spawn(4, 4, 2, 8, 2), 0);
        assert_eq!(workers_to_spawn(0, 0, 0, 8, 2), 0);
    }

    #[test]
    fn spawn_backoff_doubles_per_failure_up_to_its_cap() {
        assert_eq!(spawn_backoff(0), Duration::from_millis(100));
        assert_eq!(spawn_backoff(1), Duration::from_millis(200));
        assert_eq!(spawn_backoff(3), Duration::from_millis(800));
        assert_eq!(spawn_backoff(7), MAX_SPAWN_BACKOFF);
        assert_eq!(spawn_backoff(u32::MAX), MAX_SPAWN_BACKOFF);
    }

    #[test]
    fn spawning_is_given_up_after_the_failures_allowed_in_a_row() {
        assert!(!give_up_spawning(4, 5));
        assert!(give_up_spawning(5, 5));
        assert!(give_up_spawning(1, 1));
    }

    #[test]
    fn a_lost_attempt_is_retried_until_the_attempts_are_spent() {
        assert_eq!(after_lost_attempt(1, 3), AfterLostAttempt::Retry);
        assert_eq!(after_lost_attempt(2, 3), AfterLostAttempt::Retry);
        assert_eq!(after_lost_attempt(3, 3), AfterLostAttempt::Fail);
        assert_eq!(after_lost_attempt(1, 1), AfterLostAttempt::Fail);
    }

    #[test]
    fn fleet_room_is_the_tighter_of_the_function_cap_and_the_fleet_cap() {
        assert_eq!(fleet_room(2, 2, 8, 100), 6);
        assert_eq!(fleet_room(2, 98, 8, 100), 2);
        assert_eq!(fleet_room(8, 8, 8, 100), 0);
        assert_eq!(fleet_room(9, 120, 8, 100), 0);
    }

    #[test]
    fn free_slots_matter_only_while_the_pool_is_shallower_than_every_slot_that_could_open() {
        // 2 live workers of up to 8 slots, room for 3 more of 4 slots: 16 + 12 = 28.
        assert!(free_slots_matter(27, 16, 3, 4));
        assert!(!free_slots_matter(28, 16, 3, 4));
        assert!(!free_slots_matter(1000, 16, 3, 4));
    }

    #[test]
    fn a_stopping_or_detached_worker_takes_nothing_and_only_a_detached_one_may_come_back() {
        let r = rules();
        let stopping = WorkerView {
            stopping: true,
            ..worker()
        };
        assert_eq!(assess(&r, &stopping), Verdict::Stopping);
        assert!(assess(&r, &stopping).is_final());
        assert!(!assess(&r, &stopping).counts_as_capacity());
        let detached = WorkerView {
            attached: false,
            ..worker()
        };
        assert_eq!(assess(&r, &detached), Verdict::Detached);
        assert!(!assess(&r, &detached).is_final());
        assert!(!assess(&r, &detached).counts_as_capacity());
        let busy = WorkerView { cpu: 2.0, ..worker() };
        assert!(assess(&r, &busy).counts_as_capacity());
    }

    #[test]
    fn the_idle_rule_leaves_a_stopping_or_detached_worker_alone() {
        let r = rules();
        let idle = Duration::from_secs(3600);
        let stopping = WorkerView {
            stopping: true,
            idle_for: idle,
            ..worker()
        };
        assert_eq!(idle_action(&r, &stopping, true), IdleAction::Keep);
        let detached = WorkerView {
            attached: false,
            idle_for: idle,
            ..worker()
        };
        assert_eq!(idle_action(&r, &detached, true), IdleAction::Keep);
    }
}
