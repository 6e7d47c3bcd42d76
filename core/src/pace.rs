//! How many runtime copies to start now: a pure rule over a census of the copies, so that
//! it can be tested on scripted sequences (the host gathers the census and carries the
//! answer out).
//!
//! A copy of a Lambda runtime is costly to start: an interpreter and its imports take
//! hundreds of milliseconds to seconds of CPU, and tens to hundreds of megabytes before it
//! runs a single task. Starting one copy per unit of limit (as the host first did) let a
//! worker start a hundred interpreters at once, overshoot its memory size while they
//! imported, and starve its own session of CPU. So a copy starts only when all hold:
//! - **There is work for it.** Copies follow the tasks the worker holds (running plus
//!   queued), never more than the coordinator's limit. Warm copies stay up to the limit.
//! - **The ramp allows it.** At most [`Census::ramp`] copies initialize at once (the CPUs
//!   the worker can run on), so each copy's init is seen before more start (the ramp
//!   throttle of Temporal's resource-based slot supplier); and until a task has finished on
//!   some copy, or run on one for [`WORKING_MEMORY_SHOWN`], no more than `ramp` copies exist
//!   at all, so a task's working memory is seen too. Not only a finished task: where the
//!   first tasks a new worker's copies took were long ones (one in ten a 2.4 s wait, the
//!   rest 50 ms), its other tasks waited behind them for 2.6 s, a successor's first tasks
//!   most of all.
//! - **Memory holds it at its peak.** The worker's own memory, plus every live copy at the
//!   largest peak any ready copy has shown (the kernel's high-water mark, so the peak of a
//!   task between two looks is not missed), plus the new ones, stays under the budget.

/// The share of the worker's memory size its process and its copies may hold together at
/// their peak (the coordinator's memory target, 0.9 by default, sits above it, so copies
/// alone never make the limit fall).
pub const COPY_MEMORY_SHARE: f64 = 0.85;

/// How long a task must have run on a copy for its working memory to count as shown in the
/// copy's peak (the kernel's high-water mark): a task allocates what it works on as it
/// starts (an image decoded, a response read), and one that has run a second has done so.
pub const WORKING_MEMORY_SHOWN: std::time::Duration = std::time::Duration::from_secs(1);

/// What the host sees of its copies when it decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// The coordinator's limit for this worker.
    pub limit: usize,
    /// Copies that take invocations (not retired), starting ones included.
    pub live: usize,
    /// Of those, the ones still in their init (they have not asked for an invocation).
    pub starting: usize,
    /// Of those, the ones running an invocation.
    pub busy: usize,
    /// Invocations waiting for a copy.
    pub queued: usize,
    /// How many copies may initialize at once.
    pub ramp: usize,
    /// Whether a task has finished on some copy, or run on one for
    /// [`WORKING_MEMORY_SHOWN`] (its working memory shows in the peaks).
    pub completed: bool,
    /// The worker's own memory (its process, without the copies), in bytes.
    pub own_bytes: u64,
    /// The largest peak a ready copy has shown, in bytes (0: none ready yet).
    pub copy_peak: u64,
    /// The peaks of the live copies added up (starting ones at what they hold so far).
    pub peaks_sum: u64,
    /// What the worker and its copies may hold together, in bytes.
    pub budget: u64,
}

/// How many copies to start now (0 or more), and why none if none.
pub fn to_start(c: &Census) -> (usize, Hold) {
    let wanted = (c.busy + c.queued).clamp(1, c.limit.max(1));
    if c.live >= wanted {
        return (0, Hold::NoWork);
    }
    let mut n = wanted - c.live;
    let by_ramp = c.ramp.max(1).saturating_sub(c.starting);
    let by_first_task = if c.completed {
        usize::MAX
    } else {
        c.ramp.max(1).saturating_sub(c.live)
    };
    let by_memory = memory_room(c);
    let mut hold = Hold::NoWork;
    for (room, why) in [
        (by_ramp, Hold::Ramp),
        (by_first_task, Hold::FirstTask),
        (by_memory, Hold::Memory),
    ] {
        if room < n {
            n = room;
            hold = why;
        }
    }
    (n, hold)
}

/// How many more copies memory holds at their peak.
fn memory_room(c: &Census) -> usize {
    if c.copy_peak == 0 {
        // Nothing is known of a copy's size until one is ready: one at a time.
        return usize::from(c.live == 0);
    }
    let held = c.own_bytes + c.peaks_sum.max(c.copy_peak * c.live as u64);
    (c.budget.saturating_sub(held) / c.copy_peak) as usize
}

/// Why fewer copies start than the work asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Every task has a copy (or the limit is reached).
    NoWork,
    /// Enough copies are initializing already.
    Ramp,
    /// No task has finished yet (nor run for [`WORKING_MEMORY_SHOWN`]): its working memory
    /// is not known.
    FirstTask,
    /// Another copy would not fit in memory at its peak.
    Memory,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn census() -> Census {
        Census {
            limit: 64,
            live: 1,
            starting: 0,
            busy: 1,
            queued: 0,
            ramp: 2,
            completed: true,
            own_bytes: 10 * MB,
            copy_peak: 100 * MB,
            peaks_sum: 100 * MB,
            budget: 1800 * MB,
        }
    }

    #[test]
    fn copies_follow_the_work_not_the_limit() {
        let c = census();
        assert_eq!(to_start(&c), (0, Hold::NoWork), "one task, one copy");
        let c = Census {
            queued: 1,
            ..census()
        };
        assert_eq!(to_start(&c).0, 1);
        // 100 queued tasks under a limit of 4: 4 copies at most.
        let c = Census {
            limit: 4,
            queued: 100,
            ramp: 8,
            ..census()
        };
        assert_eq!(to_start(&c).0, 3);
        // The limit fell below the live copies: none start (the host retires the excess).
        let c = Census {
            limit: 1,
            live: 3,
            queued: 5,
            ..census()
        };
        assert_eq!(to_start(&c).0, 0);
    }

    #[test]
    fn at_most_ramp_copies_initialize_at_once() {
        let c = Census {
            queued: 50,
            ..census()
        };
        assert_eq!(to_start(&c), (2, Hold::Ramp));
        let c = Census {
            live: 3,
            starting: 2,
            queued: 50,
            ..census()
        };
        assert_eq!(to_start(&c), (0, Hold::Ramp));
    }

    #[test]
    fn before_any_task_finished_no_more_than_ramp_copies_exist() {
        let c = Census {
            live: 2,
            busy: 2,
            queued: 50,
            completed: false,
            ..census()
        };
        assert_eq!(to_start(&c), (0, Hold::FirstTask));
    }

    #[test]
    fn memory_at_the_peak_bounds_the_copies() {
        // 10 MB of worker, 17 copies of 100 MB at their peak: 1710 MB of 1800. None more.
        let c = Census {
            live: 17,
            busy: 17,
            queued: 40,
            peaks_sum: 17 * 100 * MB,
            ramp: 64,
            ..census()
        };
        assert_eq!(to_start(&c), (0, Hold::Memory));
        // One fewer: exactly one more fits.
        let c = Census {
            live: 16,
            busy: 16,
            peaks_sum: 16 * 100 * MB,
            ..c
        };
        assert_eq!(to_start(&c), (1, Hold::Memory));
        // Starting copies count at the largest peak seen, not at what they hold so far.
        let c = Census {
            live: 16,
            starting: 8,
            busy: 8,
            peaks_sum: 8 * 100 * MB + 8 * 5 * MB,
            ..c
        };
        assert_eq!(to_start(&c), (1, Hold::Memory));
    }

    #[test]
    fn the_first_copy_starts_alone_while_nothing_is_known_of_its_size() {
        let c = Census {
            live: 0,
            busy: 0,
            queued: 10,
            copy_peak: 0,
            peaks_sum: 0,
            completed: false,
            ..census()
        };
        assert_eq!(to_start(&c).0, 1);
        let c = Census {
            live: 1,
            starting: 1,
            ..c
        };
        assert_eq!(to_start(&c).0, 0);
    }
}
