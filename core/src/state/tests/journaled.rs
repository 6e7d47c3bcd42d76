//! With a journal: submissions being written, restarts.

use super::*;

/// A state with a journal, workers started by hand.
fn journaled_state() -> (State, Instant) {
    state(Config {
        journaled: true,
        ..external()
    })
}

/// A stored task of function `f` with `payload`, as a journal keeps it.
fn stored(payload: &'static [u8]) -> StoredTask {
    StoredTask {
        function: "f".into(),
        payload: Bytes::from_static(payload),
        ..Default::default()
    }
}

/// With a journal, a submission waits outside the pool for its write. A worker freed while
/// the pool is empty (the next submission still being written) must still get that
/// submission once it is written.
#[test]
fn a_submission_written_after_the_pool_ran_dry_is_still_placed() {
    let (mut s, now) = state(Config {
        journaled: true,
        fleet: Fleet {
            slots: Some(1),
            ..external().fleet.clone()
        },
        ..external()
    });
    let mut effects = Effects::default();
    let conn = connect(&mut s, &mut effects, "a", 1, now);
    let first = s
        .submit(Submission::new("f", Bytes::new()), None, now, &mut effects)
        .expect("submit");
    let second = s
        .submit(Submission::new("f", Bytes::new()), None, now, &mut effects)
        .expect("submit");
    assert!(matches!(first, Submitted::Write(..)) && matches!(second, Submitted::Write(..)));
    assert_eq!(
        s.stats(now).total.expect("total").pending,
        2,
        "both count as pending"
    );
    s.accepted(first.id(), now, &mut effects);
    assert_eq!(assigned(&mut effects, conn), vec![first.id()]);
    // The worker finishes with the pool empty: the second is still being written.
    s.results(
        &WorkerId::new("a"),
        vec![result(first.id(), 1)],
        now,
        &mut effects,
    )
    .expect("results");
    assert_eq!(s.stats(now).total.expect("total").pending, 1);
    s.accepted(second.id(), now, &mut effects);
    assert_eq!(assigned(&mut effects, conn), vec![second.id()]);
    assert_eq!(s.stats(now).total.expect("total").pending, 0);
}

/// A submission cancelled while its record is written is not placed once written, and
/// counts once.
#[test]
fn a_submission_cancelled_while_written_is_not_placed() {
    let (mut s, now) = journaled_state();
    let mut effects = Effects::default();
    let conn = connect(&mut s, &mut effects, "a", 2, now);
    let t = s
        .submit(Submission::new("f", Bytes::new()), None, now, &mut effects)
        .expect("submit");
    assert_eq!(
        s.cancel(t.id(), now, &mut effects).expect("cancel"),
        TaskState::Cancelled
    );
    s.accepted(t.id(), now, &mut effects);
    assert!(assigned(&mut effects, conn).is_empty());
    let total = s.stats(now).total.expect("total");
    assert_eq!((total.pending, total.cancelled), (0, 1));
}

/// After a restart, nothing is placed for a short pause: a worker that was running a task
/// whose start never reached the journal claims it before another worker is given it.
#[test]
fn after_a_restart_placement_waits_for_running_workers_to_claim_their_tasks() {
    let (mut s, now) = journaled_state();
    let mut effects = Effects::default();
    s.restore(
        Recovered {
            tasks: vec![(1, stored(b"a"), 0), (2, stored(b"b"), 0)],
            next_id: 3,
            reserved_until: 0,
            learned: Vec::new(),
            costs: Vec::new(),
            unix_ms: 0,
        },
        now,
        &mut effects,
    );
    let pause = effects
        .timers
        .iter()
        .find(|(_, t)| matches!(t, Timer::Settled))
        .map(|(d, _)| *d)
        .expect("a pause is armed");
    assert!(pause <= RESTART_SETTLE);
    // Another worker connects first: it is given nothing yet.
    let other = connect(&mut s, &mut effects, "other", 4, now);
    assert!(assigned(&mut effects, other).is_empty());
    // The worker that was running task 1 comes back and claims it.
    let mut back = hello("runner", 4);
    back.running_task_ids = vec![1];
    back.running_attempts = vec![1];
    let runner = s.connect(back, now, &mut effects).expect("connect");
    assert!(assigned(&mut effects, runner).is_empty());
    assert_eq!(s.get(1).expect("task 1").state(), TaskState::Running);
    // Once the pause is over, the rest is placed, and task 1 is not given out again.
    s.on_timer(Timer::Settled, now + pause, &mut effects);
    let given: Vec<u64> = assigned(&mut effects, other)
        .into_iter()
        .chain(assigned(&mut effects, runner))
        .collect();
    assert_eq!(given, vec![2]);
}

/// The pause after a restart holds only the functions that had work restored: another
/// function's new work is placed at once (a takeover does not delay it by the pause).
#[test]
fn after_a_restart_a_function_with_nothing_restored_is_placed_at_once() {
    let (mut s, now) = journaled_state();
    let mut effects = Effects::default();
    s.restore(
        Recovered {
            tasks: vec![(1, stored(b"a"), 0)],
            next_id: 2,
            reserved_until: 0,
            learned: Vec::new(),
            costs: Vec::new(),
            unix_ms: 0,
        },
        now,
        &mut effects,
    );
    let f_worker = connect(&mut s, &mut effects, "f-worker", 2, now);
    let g_worker = s
        .connect(
            pb::Hello {
                function: "g".into(),
                ..hello("g-worker", 2)
            },
            now,
            &mut effects,
        )
        .expect("connect");
    let g = s
        .submit(Submission::new("g", Bytes::new()), None, now, &mut effects)
        .expect("submit");
    s.accepted(g.id(), now, &mut effects);
    assert_eq!(assigned(&mut effects, g_worker), vec![g.id()]);
    // f's restored task still waits for the pause.
    assert!(assigned(&mut effects, f_worker).is_empty());
    s.on_timer(Timer::Settled, now + RESTART_SETTLE, &mut effects);
    assert_eq!(assigned(&mut effects, f_worker), vec![1]);
}

/// Ids are handed out only below what the journal holds reserved: the next block is asked
/// for once half is used, and while it is not durable, a submission past the reserved ids
/// is refused (UNAVAILABLE) rather than given an id the next coordinator could give again.
#[test]
fn task_ids_are_handed_out_only_below_a_durable_reservation() {
    let (mut s, now) = journaled_state();
    let mut effects = Effects::default();
    let block = crate::state::ID_BLOCK;
    // Opened with ids 1..=5 used and a block reserved above them.
    s.restore(
        Recovered {
            next_id: 6,
            reserved_until: 6 + block,
            ..Default::default()
        },
        now,
        &mut effects,
    );
    let submit = |s: &mut State, effects: &mut Effects| {
        s.submit(Submission::new("f", Bytes::new()), None, now, effects)
            .map(|t| t.id())
    };
    assert_eq!(submit(&mut s, &mut effects).expect("submit"), 6);
    assert!(
        !effects
            .journal
            .iter()
            .any(|op| matches!(op, JournalOp::Reserve(_)))
    );
    // Half the block used: the next is asked for, once.
    s.book.restore_ids(6 + block / 2, 0);
    effects.journal.clear();
    submit(&mut s, &mut effects).expect("submit");
    submit(&mut s, &mut effects).expect("submit");
    let asked: Vec<_> = effects
        .journal
        .iter()
        .filter_map(|op| match op {
            JournalOp::Reserve(until) => Some(*until),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![6 + 2 * block]);
    // The block used up before the journal holds the next: refused, nothing changed.
    s.book.restore_ids(6 + block, 0);
    let refused = submit(&mut s, &mut effects);
    assert!(
        matches!(refused, Err(crate::error::Error::IdsNotReserved)),
        "{refused:?}"
    );
    assert_eq!(s.book.peek_id(), 6 + block);
    // Durable now: ids go on where they stopped.
    s.ids_reserved(6 + 2 * block);
    assert_eq!(submit(&mut s, &mut effects).expect("submit"), 6 + block);
}

/// An attempt a restart cost a task (it was running, and no worker claimed it within the
/// grace) is not counted against `--max-attempts`: a task on its last attempt runs again.
#[test]
fn an_attempt_lost_to_a_restart_is_not_counted() {
    let (mut s, now) = state(Config {
        journaled: true,
        limits: Limits {
            max_attempts: 2,
            ..external().limits.clone()
        },
        ..external()
    });
    let mut effects = Effects::default();
    let running = stored(b"x");
    // Task 1 was on its second and last attempt when the coordinator died.
    s.restore(
        Recovered {
            tasks: vec![(1, running, 2)],
            next_id: 2,
            ..Default::default()
        },
        now,
        &mut effects,
    );
    effects.journal.clear();
    s.on_timer(Timer::Orphans, now + s.config.fleet.reconnect_grace, &mut effects);
    let info = s.get(1).expect("task 1");
    assert_eq!(
        (info.state(), info.attempts),
        (TaskState::Pending, 1),
        "back to work, its lost attempt given back"
    );
    assert!(
        effects
            .journal
            .iter()
            .any(|op| matches!(op, JournalOp::Started(1, 1))),
        "the journal is told: {:?}",
        effects.journal
    );
    // A worker takes it once the restart's pause is over: attempt 2, its last, runs.
    s.on_timer(Timer::Settled, now + s.config.fleet.reconnect_grace, &mut effects);
    let conn = connect(&mut s, &mut effects, "a", 1, now);
    assert_eq!(assigned(&mut effects, conn), vec![1]);
    assert_eq!(s.get(1).expect("task 1").attempts, 2);
}

/// A task held back at a restart for its worker counts as nothing pending; cancelling it
/// must not take a pending task's place in the counts (the counts follow the tasks). Before
/// they did, the cancel lowered the pending count of the function, and its one pending task
/// was never placed.
#[test]
fn cancelling_a_task_held_back_at_a_restart_leaves_the_pending_work_placeable() {
    let (mut s, now) = journaled_state();
    let mut effects = Effects::default();
    // Task 1 was running (held back for its worker); task 2 was pending.
    s.restore(
        Recovered {
            tasks: vec![(1, stored(b"a"), 1), (2, stored(b"b"), 0)],
            next_id: 3,
            ..Default::default()
        },
        now,
        &mut effects,
    );
    assert_eq!(
        s.cancel(1, now, &mut effects).expect("cancel"),
        TaskState::Cancelled
    );
    s.on_timer(Timer::Settled, now + RESTART_SETTLE, &mut effects);
    let conn = connect(&mut s, &mut effects, "a", 1, now);
    assert_eq!(assigned(&mut effects, conn), vec![2]);
    let stats = s.stats(now);
    let f = stats.functions.iter().find(|f| f.function == "f").expect("f");
    assert_eq!((f.pending, f.running, f.cancelled), (0, 1, 1));
}

/// A deadline is journaled with its task and hurries its function again after a restart
/// while it is still ahead; one that passed during the restart does not.
#[test]
fn a_deadline_still_ahead_survives_a_restart() {
    let (mut s, now) = journaled_state();
    let mut effects = Effects::default();
    let sub = Submission {
        deadline: Some(Duration::from_secs(60)),
        submitted_unix_ms: 1_000_000,
        ..Submission::new("f", Bytes::from_static(b"x"))
    };
    let id = match s.submit(sub, None, now, &mut effects).expect("submit") {
        Submitted::Write(id, record) => {
            assert_eq!(record.deadline_unix_ms, 1_060_000, "journaled with its task");
            id
        }
        other => panic!("{other:?}"),
    };
    // Restored `at` (Unix ms) from a journal that kept the task with its deadline.
    let restored = |at: u64| {
        let (mut after, now) = journaled_state();
        let task = StoredTask {
            deadline_unix_ms: 1_060_000,
            ..stored(b"x")
        };
        after.restore(
            Recovered {
                tasks: vec![(id, task, 0)],
                next_id: id + 1,
                unix_ms: at,
                ..Recovered::default()
            },
            now,
            &mut Effects::default(),
        );
        let f = after.functions.get("f").expect("the function");
        (f.urgent_until.map(|t| t - now), f.due.map(|t| t - now))
    };
    // Restored 20 s after its submission: 40 s are left, and the function hurries.
    let left = Some(Duration::from_secs(40));
    assert_eq!(restored(1_020_000), (left, left));
    // Restored after it passed: nothing to hurry for.
    assert_eq!(restored(1_070_000), (None, None));
}
