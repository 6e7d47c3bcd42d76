//! The tail of a batch as the state sees it: the running attempts' starts and the typical
//! attempt of each worker's size, handed to [`scheduler::tail`]'s rule.

use super::*;
use crate::config::Placement;
use crate::scheduler::tail::{Busy, Plan};

/// What dispatch does with the next pending task (see [`scheduler::tail`]).
pub(super) enum TailPlan {
    /// To the worker the placement chose.
    Assign,
    /// To this other worker, which has a slot free now and runs long enough anyway.
    Instead(WorkerId),
    /// Nothing more this pass; look again after this long.
    Hold(Duration),
}

/// The most slots a worker may have for the tail to be packed: a partial last round of a
/// few slots is what it saves, and a plan's cost grows with the slots it looks at.
const MAX_SLOTS: u32 = 32;

/// The most other workers one plan looks at (fewer only means fewer holds).
const MAX_PEERS: usize = 64;

/// The most workers (of any function) one plan walks past to find them.
const MAX_SCANNED: usize = 1024;

/// The plan for the next pending task of `f`, which the placement would give to `chosen`.
/// Only at a batch's tail (no more pending than running, nor than twice the chosen worker's
/// limit), under `--placement pack`, with no deadline waiting, the function's typical
/// attempt known and the chosen worker's limit at most [`MAX_SLOTS`]: otherwise `Assign`,
/// at the cost of a few comparisons. At the tail it looks at up to [`MAX_PEERS`] of the
/// function's other workers among the first [`MAX_SCANNED`] of the roster: a plan costs at
/// most their running attempts (2,048). Without these bounds, a million simulated sleeps on
/// 1000 workers of 256 slots took 133 s to simulate instead of 74 (a plan per task over
/// every running attempt).
pub(super) fn plan(
    rules: &Rules,
    f: &FunctionPool,
    workers: &roster::Roster,
    book: &book::Book,
    chosen: &WorkerId,
    now: Instant,
) -> TailPlan {
    if rules.placement != Placement::Pack
        || f.urgent_until.is_some_and(|t| now < t)
        || f.tasks.pending() > f.tasks.running()
    {
        return TailPlan::Assign;
    }
    let Some(c) = workers.get(chosen) else {
        return TailPlan::Assign;
    };
    let slots = c.limit.value();
    if slots > MAX_SLOTS || f.tasks.pending() > 2 * u64::from(slots) {
        return TailPlan::Assign;
    }
    let typical = |w: &Worker| {
        f.durations
            .get(&w.memory_mb)
            .or_else(|| f.durations.get(&0))
            .and_then(scheduler::life::Durations::typical)
    };
    let starts = |w: &Worker| -> Vec<Instant> {
        w.running
            .iter()
            .filter_map(|&(id, _)| book.get(id)?.attempt_started)
            .collect()
    };
    let Some(d) = typical(c) else {
        return TailPlan::Assign;
    };
    let chosen_starts = starts(c);
    let chosen_busy = Busy {
        started: &chosen_starts,
        typical: d,
    };
    if !chosen_busy.would_extend(now) {
        return TailPlan::Assign;
    }
    // The function's other workers that will take work again (not stopping, draining or
    // away): their attempts' starts, typical attempt, and whether they may take one now.
    let mut others: Vec<(WorkerId, Vec<Instant>, Duration, bool)> = Vec::new();
    for (id, w) in workers.iter().take(MAX_SCANNED) {
        if others.len() >= MAX_PEERS {
            break;
        }
        if id == chosen || !Arc::ptr_eq(&w.function, &c.function) || w.limit.value() > MAX_SLOTS {
            continue;
        }
        let verdict = scheduler::assess(rules, &w.view(now));
        if !verdict.counts_as_capacity() {
            continue;
        }
        if let Some(t) = typical(w) {
            others.push((id.clone(), starts(w), t, verdict == Verdict::Eligible));
        }
    }
    let busy: Vec<(Busy<'_>, bool)> = others
        .iter()
        .map(|(_, s, t, free)| {
            (
                Busy {
                    started: s,
                    typical: *t,
                },
                *free,
            )
        })
        .collect();
    match scheduler::tail::plan(&chosen_busy, &busy, f.tasks.pending(), now) {
        Plan::Assign => TailPlan::Assign,
        Plan::Instead(i) => others
            .get(i)
            .map_or(TailPlan::Assign, |(id, ..)| TailPlan::Instead(id.clone())),
        Plan::Hold(wait) => TailPlan::Hold(wait),
    }
}
