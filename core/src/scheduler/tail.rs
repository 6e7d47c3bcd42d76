//! The tail of a batch: its last few tasks packed onto workers that run anyway.
//!
//! A worker bills until its last task ends. Once the pool holds no more tasks than are
//! running, a task given to a worker whose own tasks are about to end keeps that worker
//! (and its bill) alive for one more task's duration, while a worker that has just taken a
//! task runs that long anyway: a slot of it that frees in a moment costs nothing more. A
//! batch started on all its workers at once shows it plainly: 8 workers of 3 slots finish
//! 96 of 100 tasks in four rounds together, and the last 4 went one to each of 4 workers (4
//! fifth rounds) where 2 workers could run them (2 fifth rounds): the learned batch of a
//! CPU-bound handler cost 1.027 times its first, whose staggered starts happened to spread
//! the tail better.
//!
//! So at the tail, a task that would extend the chosen worker by more than half a task is
//! held back when slots expected to free within a hold (half a task, [`HOLD_SHARE`]) of
//! now, on workers it would extend by no more than a hold, are enough for every task still
//! pending; and it goes at once to such a worker with a slot free now. Every figure is the
//! function's typical (median) attempt at the worker's size, from each running attempt's
//! start. Attempts that started together end together, about when the median says, before
//! or after: an attempt up to half a hold past its expected end is still counted on, one
//! later is not (it may run long), so a task is never held for an attempt that runs long:
//! each hold looks again when its soonest slot is due (or stops being counted on), and a
//! slot that frees hands the task to its worker at once. In the batch above the learned batch then cost what the first did
//! (102.10 GB-s) and ended 0.2 s later (3.70 s against 3.50). A deadline (scale out at
//! once) and `--placement spread` (latency first) never hold, nor does a worker of one
//! slot absorb anything (Lambda as it bills is unchanged).

use std::time::{Duration, Instant};

/// How far ahead a slot about to free is waited for, as a share of the function's typical
/// task (a slot overdue by up to half of it is still counted on): what the batch's
/// completion may grow by, against more than half a task of a worker's life saved. A
/// quarter missed the batch above: a worker's three attempts, started a few at a time
/// with its copies, end up to a third of a task apart.
pub const HOLD_SHARE: f64 = 0.5;

/// A worker's running attempts and what a task takes at its size, as the tail sees them.
#[derive(Clone, Copy, Debug)]
pub struct Busy<'a> {
    /// When each running attempt started.
    pub started: &'a [Instant],
    /// The function's typical (median) attempt at the worker's size.
    pub typical: Duration,
}

impl Busy<'_> {
    /// When its work is expected to end: the latest of its attempts' expected ends, or
    /// `now` when it runs nothing.
    pub fn committed(&self, now: Instant) -> Instant {
        self.started
            .iter()
            .map(|&s| s + self.typical)
            .max()
            .map_or(now, |end| end.max(now))
    }

    /// How much longer it would bill with one more task started `at`.
    pub fn extension(&self, at: Instant, now: Instant) -> Duration {
        self.beyond(at, self.committed(now))
    }

    /// How far a task started `at` would end past `committed` (its [`Busy::committed`]).
    fn beyond(&self, at: Instant, committed: Instant) -> Duration {
        (at + self.typical).saturating_duration_since(committed)
    }

    /// The longest a task waits for one of its slots.
    pub fn hold(&self) -> Duration {
        self.typical.mul_f64(HOLD_SHARE)
    }

    /// Whether a task given to it now extends it by more than half a task (so a slot about
    /// to free elsewhere is worth waiting for).
    pub fn would_extend(&self, now: Instant) -> bool {
        self.extension(now, now) > self.typical / 2
    }

    /// Whether a task given to it at `at` extends it by at most a hold.
    pub fn absorbs_at(&self, at: Instant, now: Instant) -> bool {
        self.extension(at, now) <= self.hold()
    }

    /// Its slots expected to free within a hold of `now` (before or after: attempts that
    /// started together end together, and the typical attempt is a median), each of which
    /// could take a task without extending it by more than a hold; and the soonest time one
    /// of them is worth looking at again: its expected end, or for one already past it, when
    /// it stops being counted on (a hold past its end).
    pub fn soon_slots(&self, now: Instant) -> (u32, Option<Instant>) {
        let hold = self.hold();
        let committed = self.committed(now);
        let mut count = 0;
        let mut next: Option<Instant> = None;
        for &s in self.started {
            let end = s + self.typical;
            if end + hold / 2 > now && end <= now + hold && self.beyond(end.max(now), committed) <= hold {
                count += 1;
                let look = if end > now { end } else { end + hold / 2 };
                next = Some(next.map_or(look, |e| e.min(look)));
            }
        }
        (count, next)
    }
}

/// What to do with the next pending task at the tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Give it to the worker the placement chose.
    Assign,
    /// Give it to the other worker at this index of those offered, which has a slot free
    /// now and runs long enough anyway.
    Instead(usize),
    /// Keep it (and every task still pending) in the pool; look again after this long.
    Hold(Duration),
}

/// The plan for the tail's next task: `chosen` is the worker the placement picked,
/// `others` the function's other workers that may take tasks (with whether each has a slot
/// free now), `pending` the tasks in the pool.
pub fn plan(chosen: &Busy<'_>, others: &[(Busy<'_>, bool)], pending: u64, now: Instant) -> Plan {
    if !chosen.would_extend(now) {
        return Plan::Assign;
    }
    let mut soon = 0u64;
    let mut earliest: Option<Instant> = None;
    for (i, (b, free_now)) in others.iter().enumerate() {
        if *free_now && !b.started.is_empty() && b.absorbs_at(now, now) {
            return Plan::Instead(i);
        }
        let (n, e) = b.soon_slots(now);
        soon += u64::from(n);
        if let Some(e) = e {
            earliest = Some(earliest.map_or(e, |x| x.min(e)));
        }
    }
    match earliest {
        Some(e) if pending <= soon => {
            Plan::Hold(e.saturating_duration_since(now).max(Duration::from_millis(1)))
        }
        _ => Plan::Assign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_last_tasks_of_rounds_ended_together_go_to_the_fewest_workers() {
        // Three workers of 3 slots whose round of 650 ms tasks ends in 10 to 30 ms; 4 tasks
        // left. The first slot to free (on `a`) takes one: nobody runs long anyway.
        let t0 = Instant::now();
        let now = t0 + ms(640);
        let d = ms(650);
        let round = [t0, t0 + ms(5), t0 + ms(10)];
        let a_left = [t0 + ms(5), t0 + ms(10)];
        let b = Busy {
            started: &round,
            typical: d,
        };
        let c = Busy {
            started: &round,
            typical: d,
        };
        let a = Busy {
            started: &a_left,
            typical: d,
        };
        assert_eq!(plan(&a, &[(b, false), (c, false)], 4, now), Plan::Assign);
        // Now `a` runs one new task: its two other slots free in 10 to 20 ms at no cost, so
        // `b`, whose slot freed next, does not take a fifth round for 3 tasks...
        let a_new = [t0 + ms(5), t0 + ms(10), now];
        let a = Busy {
            started: &a_new,
            typical: d,
        };
        let b_left = [t0 + ms(5), t0 + ms(10)];
        let b = Busy {
            started: &b_left,
            typical: d,
        };
        assert_eq!(plan(&b, &[(a, false), (c, false)], 3, now), Plan::Assign);
        // ...but does for 2 of them (a's two slots take both, the earliest in 15 ms).
        assert_eq!(plan(&b, &[(a, false), (c, false)], 2, now), Plan::Hold(ms(15)));
        // A worker with a slot free now that runs long anyway takes it at once.
        let a_two = [t0 + ms(10), now];
        let a = Busy {
            started: &a_two,
            typical: d,
        };
        assert_eq!(plan(&b, &[(c, false), (a, true)], 2, now), Plan::Instead(1));
    }

    #[test]
    fn a_hold_never_waits_on_an_attempt_past_its_expected_end_nor_past_a_share_of_a_task() {
        let t0 = Instant::now();
        let d = ms(1000);
        let idle = Busy {
            started: &[],
            typical: d,
        };
        // `a` has just taken a task; its other attempt ends 700 ms from now: past a hold.
        let now = t0 + ms(300);
        let late = [t0, now];
        let a = Busy {
            started: &late,
            typical: d,
        };
        assert_eq!(plan(&idle, &[(a, false)], 1, now), Plan::Assign);
        // Its other attempt is overdue by more than half a hold (it may run long): not
        // counted on.
        let now = t0 + ms(1300);
        let overdue = [t0, now];
        let a = Busy {
            started: &overdue,
            typical: d,
        };
        assert_eq!(plan(&idle, &[(a, false)], 1, now), Plan::Assign);
        // Within a hold, and `a` runs long anyway: held, at most half a task.
        let now = t0 + ms(900);
        let soon = [t0, now];
        let a = Busy {
            started: &soon,
            typical: d,
        };
        match plan(&idle, &[(a, false)], 1, now) {
            Plan::Hold(wait) => assert!(wait <= idle.hold(), "{wait:?}"),
            other => panic!("{other:?}"),
        }
        // A worker that is itself committed for most of a task takes the task at once.
        let busy = [now - ms(100)];
        let b = Busy {
            started: &busy,
            typical: d,
        };
        assert_eq!(plan(&b, &[(a, false)], 1, now), Plan::Assign);
    }
}
