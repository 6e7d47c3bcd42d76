//! Unit tests of `mod`.

use super::*;

fn rules() -> Rules {
    Rules::from(&Config::default())
}

fn worker() -> WorkerView {
    WorkerView {
        age: Duration::from_secs(10),
        timeout: Duration::from_secs(100),
        expected: None,
        running_for: None,
        running_expected: None,
        expected_bounded: None,
        bounded_running_expected: None,
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
fn a_measured_duration_moves_the_end_of_admissions_both_ways() {
    // 50 ms tasks: a worker of 100 s takes them up to 100 s less 55 ms and the slack.
    let short = WorkerView {
        age: Duration::from_secs(95),
        expected: Some(Duration::from_millis(50)),
        ..worker()
    };
    assert_eq!(assess(&rules(), &short), Verdict::Eligible);
    // 40 s tasks: not after 100 - 44 - 0.25 s, well before the fraction's 80 s.
    let long = WorkerView {
        age: Duration::from_secs(56),
        expected: Some(Duration::from_secs(40)),
        ..worker()
    };
    assert_eq!(assess(&rules(), &long), Verdict::Draining);
    // The fraction rule keeps 80 s whatever is measured.
    let fraction = Rules {
        admission: Admission::Fraction,
        ..rules()
    };
    assert_eq!(assess(&fraction, &short), Verdict::Draining);
    assert_eq!(assess(&fraction, &long), Verdict::Eligible);
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
        mem: 0.95,
        ..worker()
    };
    assert_eq!(
        idle_action(&rules(), &w, false),
        IdleAction::Stop(StopReason::Ineligible)
    );
    // CPU busy with nothing running is its own (a copy starting) and passes: kept.
    let starting = WorkerView {
        cpu: 0.99,
        ..worker()
    };
    assert_eq!(idle_action(&rules(), &starting, false), IdleAction::Keep);
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
    assert_eq!(workers_to_spawn(10, 3, 0, 8, 2, false), 4);
    // Cap of 8 with 6 already in the fleet leaves room for 2.
    assert_eq!(workers_to_spawn(10, 3, 6, 8, 2, false), 2);
    // Starting workers' slots count as free: nothing more to start.
    assert_eq!(workers_to_spawn(4, 4, 2, 8, 2, false), 0);
    assert_eq!(workers_to_spawn(0, 0, 0, 8, 2, false), 0);
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

#[test]
fn turns_weigh_reaching_a_level_from_cold_against_a_task() {
    let ms = Duration::from_millis;
    let mut r = Reach::default();
    assert_eq!(r.turns(2), 0, "nothing known");
    r.first_result(ms(800), ms(780));
    assert_eq!(r.turns(2), 0, "no task duration yet");
    // The first task on each copy also waited for the copy's init: the median ignores it.
    for d in [780, 80, 80, 80, 80, 790, 80] {
        r.task(ms(d));
    }
    // 800 ms to a first result, 80 ms a task: a start of 720 ms, 9 turns of a slot (what a
    // live slot finishes before a successor takes over); a new worker is worth its start
    // for fourteen times that work (its start a fifteenth of its bill).
    assert_eq!(r.lead_turns_given(r.typical(), 2), 9);
    assert_eq!(r.turns(2), 126);
    // Reaching the whole level (its copies started a few at a time) took longer.
    r.level_reached(ms(1600));
    assert_eq!(r.lead_turns_given(r.typical(), 2), 19);
    assert_eq!(r.turns(2), 266);
    // A worker ready before a task ends: no turns.
    let mut quick = Reach::default();
    quick.first_result(ms(50), ms(50));
    quick.task(ms(200));
    assert_eq!(quick.turns(8), 0);
}

/// A function's reach after a worker's first result `first_ms` after its spawn, its task
/// having taken `took_ms`, and nine attempts of `task_ms` each.
fn reach_seen(first_ms: u64, took_ms: u64, task_ms: u64) -> Reach {
    let ms = Duration::from_millis;
    let mut r = Reach::default();
    r.first_result(ms(first_ms), ms(took_ms));
    for _ in 0..9 {
        r.task(ms(task_ms));
    }
    r
}

#[test]
fn a_first_task_quicker_alone_than_among_its_level_leaves_the_whole_cold_start_counted() {
    // 20 ms of CPU and an 80 ms wait at 128 MB (a fourteenth of a vCPU): 356 ms alone, its
    // first result 848 ms after the spawn; two at once share the CPU, 608 ms each.
    let r = reach_seen(848, 356, 608);
    // A start of 492 ms (not 240, the reach less a typical task), fourteen times over, in
    // tasks of 608 ms.
    assert_eq!(r.turns(2), 11);
    assert_eq!(r.lead_turns_given(r.typical(), 2), 0);
}

#[test]
fn a_learned_level_costs_every_round_of_copies_it_starts() {
    let ms = Duration::from_millis;
    // Recorded from wait.py (boto3, a 300 ms HTTP wait) at 4096 MB: a copy's init 142 ms
    // of CPU, two at once on the worker's two vCPUs; a first result 550 ms after the spawn.
    let mut r = reach_seen(550, 301, 301);
    r.level_reached(ms(600));
    // Before any copy's init is known: its first round only.
    assert_eq!(r.to_level(29), Some(0.6));
    r.copy_init(ms(142), 2);
    // The level a worker climbed to a few copies at a time, started at once from cold:
    // 15 rounds of two copies, 14 after the first.
    let to_29 = r.to_level(29).unwrap_or_default();
    assert!((to_29 - (0.55 + 14.0 * 0.142)).abs() < 1e-9, "{to_29}");
    assert_eq!(
        r.turns(29),
        104,
        "2.24 s of start to 29 against 301 ms a task, fourteen times"
    );
    // The first round costs nothing more than the first result.
    assert_eq!(r.to_level(2), Some(0.6));
    // Workers that run their tasks in their own process report no init: no rounds.
    let mut own = Reach::default();
    own.first_result(ms(120), ms(100));
    own.task(ms(100));
    assert_eq!(own.turns(1000), own.turns(1));
    assert_eq!(own.to_level(1000), Some(0.12));
}

#[test]
fn paced_scale_out_starts_workers_only_for_whole_covers() {
    // 100 pending, nothing live: 80 a worker covers, one worker (the 20 left are the first
    // one's, sooner than a second could pay for its start).
    assert_eq!(workers_to_spawn(100, 0, 0, 8, 80, true), 1);
    assert_eq!(workers_to_spawn(100, 0, 0, 8, 80, false), 2);
    assert_eq!(workers_to_spawn(170, 0, 0, 8, 80, true), 2);
    // One live: a remainder is its own.
    assert_eq!(workers_to_spawn(100, 80, 1, 8, 80, true), 0);
    // None live and a small batch: still one.
    assert_eq!(workers_to_spawn(3, 0, 0, 8, 80, true), 1);
}

#[test]
fn coverage_paces_scale_out_only_where_asked_and_never_past_a_quota() {
    let paced = rules();
    assert_eq!(coverage(&paced, 4, 9), (40, 9), "a new worker must get 10 turns");
    assert_eq!(
        coverage(&paced, 4, 0),
        (4, 0),
        "a cheap start: its slots, as before"
    );
    let eager = Rules {
        scale_out: crate::config::ScaleOut::Eager,
        ..rules()
    };
    assert_eq!(coverage(&eager, 4, 9), (4, 0));
    let conventional = Rules {
        max_tasks_per_worker: Some(1),
        ..rules()
    };
    assert_eq!(coverage(&conventional, 1, 9), (1, 0));
}

#[test]
fn the_soonest_finish_counts_rounds_and_a_cold_start_only_past_the_live_workers() {
    // 1 s tasks, 2 live workers of 10: the 20th task finishes in one round.
    assert_eq!(soonest_finish(1.0, Some(3.0), 19, 2, 8, 10), Some(1.0));
    // The 21st needs a new worker: its cold start to a first result (3 s).
    assert_eq!(soonest_finish(1.0, Some(3.0), 20, 2, 8, 10), Some(3.0));
    // 800 ahead, at most 8 workers of 10: 801 tasks take 11 rounds, the first after a cold start.
    assert_eq!(soonest_finish(1.0, Some(3.0), 800, 2, 8, 10), Some(3.0 + 10.0));
    // No cold start measured yet: a task's time stands for it.
    assert_eq!(soonest_finish(2.0, None, 50, 0, 8, 10), Some(2.0));
    assert_eq!(
        soonest_finish(1.0, None, 5, 0, 0, 10),
        None,
        "no worker can run it"
    );
}
