//! The session's protocol on scripted sequences: no stream, no clock, no handler.

use bytes::Bytes;

use super::*;

fn assign(tasks: &[(u64, u32)]) -> Down {
    Down::Assign(pb::Assign {
        tasks: tasks
            .iter()
            .map(|&(task_id, attempt)| pb::TaskAssignment {
                task_id,
                attempt,
                function: "f".into(),
                ..Default::default()
            })
            .collect(),
    })
}

fn welcome(slots: u32, max_output_bytes: u64) -> pb::Welcome {
    pb::Welcome {
        slots,
        max_output_bytes,
        sample_interval_ms: 500,
    }
}

fn finished(task: u64, output: &str) -> Joined {
    Joined::Finished(Finished {
        task,
        attempt: 1,
        started_unix_ms: 1,
        finished_unix_ms: 2,
        took: Duration::from_millis(1),
        outcome: Ok(Bytes::from(output.to_owned())),
    })
}

fn sent_results(actions: &[Action]) -> Vec<Vec<u64>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(Up::Results(r)) => Some(r.results.iter().map(|r| r.task_id).collect()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_welcome_sets_the_limit_and_assignments_start_tasks_and_restart_the_cpu_span() {
    let t0 = Instant::now();
    let mut p = Protocol::new("w", t0);
    assert!(matches!(p.welcomed(&welcome(2, 0), t0)[..], [Action::Limit(2)]));
    let actions = p.message(assign(&[(1, 1), (2, 1)]), t0);
    assert!(matches!(
        actions[..],
        [Action::Start(_), Action::Start(_), Action::MarkSampler]
    ));
    assert_eq!(p.spawned(), 2);
    // A sample is due SETTLE after the change.
    assert_eq!(p.probe_at(), Some(t0 + SETTLE));
    // A refill to the level already seen keeps the CPU span.
    p.sampling(t0);
    p.joined(vec![finished(1, "a")], t0);
    let refill = p.message(assign(&[(3, 1)]), t0);
    assert!(matches!(refill[..], [Action::Start(_)]), "{refill:?}");
}

#[test]
fn a_cancel_aborts_only_what_runs_and_shutdown_waits_for_every_task_to_be_joined() {
    let t0 = Instant::now();
    let mut p = Protocol::new("w", t0);
    p.welcomed(&welcome(4, 0), t0);
    p.message(assign(&[(1, 1), (2, 1)]), t0);
    let cancel = p.message(Down::Cancel(pb::Cancel { task_ids: vec![2, 9] }), t0);
    assert!(matches!(cancel[..], [Action::Abort(2)]), "{cancel:?}");
    let shutdown = pb::Shutdown {
        reason: pb::ShutdownReason::Idle as i32,
    };
    assert!(p.message(Down::Shutdown(shutdown), t0).is_empty());
    // Told to go, but two task futures are still to be joined (one aborting).
    assert_eq!(p.done(), None);
    p.joined(vec![Joined::Aborted], t0);
    assert_eq!(p.done(), None);
    let actions = p.joined(vec![finished(1, "out")], t0);
    assert_eq!(sent_results(&actions), vec![vec![1]]);
    assert_eq!(p.done(), Some(pb::ShutdownReason::Idle));
    assert_eq!(p.tasks_run(), 1);
}

#[test]
fn results_are_sent_in_messages_within_the_output_limit_and_an_output_past_it_fails_its_task() {
    let t0 = Instant::now();
    let mut p = Protocol::new("w", t0);
    p.welcomed(&welcome(4, 10), t0);
    p.message(assign(&[(1, 1), (2, 1), (3, 1), (4, 1)]), t0);
    let actions = p.joined(
        vec![
            finished(1, "123456"),
            finished(2, "1234"),
            finished(3, "12345"),
            finished(4, "far more than ten bytes"),
        ],
        t0,
    );
    // 6 + 4 fit one message of 10 bytes; 5 starts the next; the oversize output became an
    // error naming the sizes, sent on its own.
    assert_eq!(sent_results(&actions), vec![vec![1, 2], vec![3], vec![4]]);
    let Some(Action::Send(Up::Results(last))) = actions.last() else {
        panic!("{actions:?}");
    };
    assert!(
        matches!(&last.results[0].outcome, Some(Outcome::Error(e)) if e.contains("23 bytes")),
        "{last:?}"
    );
}

#[test]
fn results_are_repeated_in_the_next_hello_until_a_welcome_or_the_coordinator_spoke_a_window_after() {
    let t0 = Instant::now();
    let mut p = Protocol::new("w", t0);
    p.welcomed(&welcome(2, 0), t0);
    p.message(assign(&[(1, 1), (2, 3)]), t0);
    p.joined(vec![finished(1, "done")], t0);
    // The stream breaks: the hello names the task still running and repeats the result.
    let (ids, attempts, recent) = p.resume();
    assert_eq!((ids, attempts), (vec![2], vec![3]));
    assert_eq!(recent.iter().map(|r| r.task_id).collect::<Vec<_>>(), vec![1]);
    // A coordinator silent since (paused, dead): repeated however late the break.
    p.forget_recent();
    assert_eq!(p.resume().2.len(), 1);
    // Heard from past the window after it was sent: it is on record, not repeated.
    let t1 = t0 + RESEND_WINDOW + Duration::from_millis(1);
    p.message(Down::Limit(pb::Limit { slots: 2 }), t1);
    assert!(p.resume().2.is_empty());
    // A welcome means the coordinator has what the hello repeated.
    p.joined(vec![finished(2, "done")], t1);
    assert_eq!(p.resume().2.len(), 1);
    p.welcomed(&welcome(2, 0), t1);
    assert!(p.resume().2.is_empty());
    assert!(!p.resuming());
}

#[test]
fn the_remembered_results_keep_within_their_byte_budget() {
    let t0 = Instant::now();
    let mut p = Protocol::new("w", t0);
    // The coordinator accepts outputs of up to 8 bytes: so many are remembered at most.
    p.welcomed(&welcome(4, 8), t0);
    p.message(assign(&[(1, 1), (2, 1), (3, 1)]), t0);
    p.joined(
        vec![finished(1, "aaaa"), finished(2, "bbbb"), finished(3, "cccc")],
        t0,
    );
    let kept: Vec<u64> = p.resume().2.iter().map(|r| r.task_id).collect();
    assert_eq!(kept, vec![2, 3], "the oldest goes first");
}

#[test]
fn while_tasks_run_the_worker_looks_at_itself_every_probe_and_samples_only_on_a_move() {
    let t0 = Instant::now();
    let mut p = Protocol::new("w", t0);
    p.welcomed(&welcome(2, 0), t0);
    // Nothing runs: only the sample interval.
    assert_eq!(p.probe_at(), None);
    p.message(assign(&[(1, 1)]), t0);
    assert!(p.probed(t0 + SETTLE, false), "the change is due");
    let (running, newest) = p.sampling(t0 + SETTLE);
    assert_eq!((running, newest), (1, Some(t0)));
    assert_eq!(p.probe_at(), Some(t0 + SETTLE + PROBE));
    assert!(
        !p.probed(t0 + SETTLE + PROBE, false),
        "no change, no move: no sample"
    );
    assert!(
        p.probed(t0 + SETTLE + 2 * PROBE, true),
        "a material move is reported"
    );
    // The task ends: the change is due again, and with nothing running the newest is gone.
    p.joined(vec![finished(1, "x")], t0 + SETTLE + 3 * PROBE);
    assert_eq!(p.probe_at(), Some(t0 + SETTLE + 3 * PROBE + SETTLE));
    assert_eq!(p.sampling(t0 + SETTLE + 3 * PROBE), (0, None));
    assert_eq!(p.probe_at(), None);
}

#[test]
fn a_sample_before_the_newest_tasks_settle_keeps_the_settle_sample_due() {
    let t0 = Instant::now();
    let mut p = Protocol::new("w", t0);
    p.welcomed(&welcome(2, 0), t0);
    p.message(assign(&[(1, 1)]), t0);
    // The interval's first tick lands a millisecond after the task starts: its sample
    // cannot show the task's memory, so the settle sample is still due.
    let early = t0 + Duration::from_millis(1);
    assert_eq!(p.sampling(early), (1, Some(t0)));
    assert_eq!(p.probe_at(), Some(t0 + SETTLE));
    assert!(p.probed(t0 + SETTLE, false));
    assert_eq!(p.sampling(t0 + SETTLE), (1, Some(t0)));
    assert_eq!(p.probe_at(), Some(t0 + SETTLE + PROBE), "settled: no longer due");
}

#[test]
fn a_task_started_in_place_of_one_that_ended_is_not_the_newest() {
    let t0 = Instant::now();
    let mut p = Protocol::new("w", t0);
    p.welcomed(&welcome(2, 0), t0);
    p.message(assign(&[(1, 1), (2, 1)]), t0);
    assert_eq!(p.sampling(t0 + SETTLE), (2, Some(t0)));
    // Task 1 ends and task 3 takes its place: two run, as the last sample showed, so the
    // level's memory is as settled as it was.
    let t1 = t0 + SETTLE + PROBE;
    p.joined(vec![finished(1, "a")], t1);
    p.message(assign(&[(3, 1)]), t1);
    assert_eq!(p.sampling(t1 + SETTLE), (2, Some(t0)));
    // A third at once is a rise: it is the newest.
    let t2 = t1 + SETTLE;
    p.message(assign(&[(4, 1)]), t2);
    assert_eq!(p.sampling(t2 + SETTLE), (3, Some(t2)));
    // Everything ends: nothing is the newest, and the next start is.
    let t3 = t2 + SETTLE + PROBE;
    p.joined(vec![finished(2, "b"), finished(3, "c"), finished(4, "d")], t3);
    p.message(assign(&[(5, 1)]), t3 + PROBE);
    assert_eq!(p.sampling(t3 + PROBE + SETTLE), (1, Some(t3 + PROBE)));
}

#[test]
fn a_limit_message_is_passed_to_the_handler_and_an_unexpected_one_is_ignored() {
    let t0 = Instant::now();
    let mut p = Protocol::new("w", t0);
    let actions = p.message(Down::Limit(pb::Limit { slots: 7 }), t0);
    assert!(matches!(actions[..], [Action::Limit(7)]));
    assert!(p.message(Down::Welcome(welcome(1, 0)), t0).is_empty());
}
