//! Which memory size a new worker of a function gets, from what each size has cost.
//!
//! A size's cost is measured on the workers of that size that ended: their billed GB-ms
//! (from spawn to end, cold start and idle tail included) over the tasks they finished. A
//! waiting task holds its level as well at a small size as at a large one, so the small
//! size costs less per task; a CPU-bound task costs about the same per task at every size
//! once the vCPUs are full, and the larger size finishes sooner. So: every size is tried
//! first (one worker at a time per size not yet measured: exploring is bounded by the
//! number of sizes offered), then the least cost per task wins, and costs within
//! [`TIE`] of each other go to the larger size. A size measured on fewer tasks than the
//! chosen one (and fewer than [`SETTLED_TASKS`]) whose cost is within [`REVISIT`] of the
//! least is measured again, one worker at a time: a first measure rests on a worker or two,
//! whose cold start and end can read a size dearer than it is, and one unlucky reading
//! would otherwise keep the work off its cheapest size for good.

/// What the ended workers of one (function, size) cost.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SizeCost {
    /// Workers that ended.
    pub workers: u64,
    /// Tasks they finished.
    pub tasks: u64,
    /// Their billed GB-ms.
    pub billed_gb_ms: f64,
    /// Measured only on workers that started before their level was known (climbing from
    /// their vCPUs): dearer than the size costs once its level is known. The first worker
    /// of the size that starts at a known level replaces it. Not persisted: a cost restored
    /// from a journal counts as measured at a known level.
    pub provisional: bool,
}

impl SizeCost {
    /// Counts one ended worker's bill and tasks; `at_known_level`: it started at its size's
    /// known level. The first such worker replaces a measure taken only while the level was
    /// being learned; a worker still learning adds to a measure that has one (or starts a
    /// provisional one).
    pub fn record(&mut self, billed_gb_ms: f64, tasks: u64, at_known_level: bool) {
        if at_known_level && self.provisional {
            *self = SizeCost::default();
        } else if !at_known_level && self.workers == 0 {
            self.provisional = true;
        }
        self.workers += 1;
        self.tasks += tasks;
        self.billed_gb_ms += billed_gb_ms;
    }

    /// Billed GB-ms per finished task, once a worker of this size finished one.
    pub fn per_task(&self) -> Option<f64> {
        (self.tasks > 0).then(|| self.billed_gb_ms / self.tasks as f64)
    }
}

/// Costs per task within this fraction of the least count as equal (the larger size wins:
/// it finishes sooner).
pub const TIE: f64 = 0.05;

/// A size whose cost per task is within this fraction of the least, measured on fewer tasks
/// than the chosen size, is measured again ([`SizeReason::Revisiting`]).
pub const REVISIT: f64 = 0.10;

/// Finished tasks past which a size's cost is taken as measured: no more revisits.
pub const SETTLED_TASKS: u64 = 50;

/// Workers past which a provisional cost (its level never known when they started) is taken
/// as what the size costs: no more revisits for it.
pub const PROVISIONAL_WORKERS: u64 = 3;

/// Why a size was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeReason {
    /// One size is offered.
    Only,
    /// Not yet measured, and no worker of it is trying it.
    Exploring,
    /// Measured on fewer tasks than the chosen size, and close enough to the least to be
    /// the cheapest: measured again, one worker at a time.
    Revisiting,
    /// The least billed GB-ms per task measured (ties to the larger size).
    Cheapest,
    /// Nothing measured yet and every unmeasured size is being tried: the default size.
    Unmeasured,
    /// A deadline is waiting that the cheapest size would miss: the cheapest size that
    /// meets it by what is measured (or, with none, the one that finishes soonest).
    Deadline,
}

impl SizeReason {
    /// As Stats says it.
    pub fn as_str(self) -> &'static str {
        match self {
            SizeReason::Only => "only",
            SizeReason::Exploring => "exploring",
            SizeReason::Revisiting => "revisiting",
            SizeReason::Cheapest => "cheapest",
            SizeReason::Unmeasured => "unmeasured",
            SizeReason::Deadline => "deadline",
        }
    }
}

/// The size for a new worker among `sizes` (smallest first): `cost(size)` is what that
/// size has cost, `trying(size)` how many workers of it are live or starting now, and
/// `default` the size used while nothing is measured. `revisit`: whether a size measured on
/// thin evidence may be measured again now (not while a deadline waits).
pub fn choose_size(
    sizes: &[u32],
    cost: impl Fn(u32) -> SizeCost,
    trying: impl Fn(u32) -> u32,
    default: u32,
    revisit: bool,
) -> (u32, SizeReason) {
    if let [only] = sizes {
        return (*only, SizeReason::Only);
    }
    // Each size's cost, looked up once, and its cost per task where one is measured.
    let costs: Vec<(u32, SizeCost, Option<f64>)> = sizes
        .iter()
        .map(|&s| {
            let c = cost(s);
            (s, c, c.per_task())
        })
        .collect();
    if let Some(&(s, ..)) = costs
        .iter()
        .find(|&&(s, _, per_task)| per_task.is_none() && trying(s) == 0)
    {
        return (s, SizeReason::Exploring);
    }
    let measured: Vec<(u32, SizeCost, f64)> = costs
        .iter()
        .filter_map(|&(s, c, per_task)| per_task.map(|p| (s, c, p)))
        .collect();
    let Some(least) = measured.iter().map(|&(.., p)| p).reduce(f64::min) else {
        return (default, SizeReason::Unmeasured);
    };
    let Some(&(chosen, chosen_cost, _)) = measured
        .iter()
        .filter(|&&(.., p)| p <= least * (1.0 + TIE))
        .max_by_key(|&&(s, ..)| s)
    else {
        return (default, SizeReason::Unmeasured);
    };
    let evidence = chosen_cost.tasks.min(SETTLED_TASKS);
    let thin = measured
        .iter()
        .filter(|&&(s, c, p)| {
            revisit
                && s != chosen
                && p <= least * (1.0 + REVISIT)
                && (c.tasks < evidence || (c.provisional && c.workers < PROVISIONAL_WORKERS))
                && trying(s) == 0
        })
        .min_by(|a, b| a.2.total_cmp(&b.2));
    match thin {
        Some(&(s, ..)) => (s, SizeReason::Revisiting),
        None => (chosen, SizeReason::Cheapest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs(table: &[(u32, u64, f64)]) -> impl Fn(u32) -> SizeCost + '_ {
        move |size| {
            table
                .iter()
                .find(|(s, _, _)| *s == size)
                .map_or_else(SizeCost::default, |&(_, tasks, gb_ms)| SizeCost {
                    workers: 1,
                    tasks,
                    billed_gb_ms: gb_ms,
                    provisional: false,
                })
        }
    }

    #[test]
    fn one_size_is_the_only_choice() {
        assert_eq!(
            choose_size(&[2048], costs(&[]), |_| 0, 2048, true),
            (2048, SizeReason::Only)
        );
    }

    #[test]
    fn unmeasured_sizes_are_tried_one_worker_at_a_time_smallest_first() {
        let sizes = [1024, 2048, 4096];
        assert_eq!(
            choose_size(&sizes, costs(&[]), |_| 0, 2048, true),
            (1024, SizeReason::Exploring)
        );
        let trying = |s| u32::from(s == 1024);
        assert_eq!(
            choose_size(&sizes, costs(&[]), trying, 2048, true),
            (2048, SizeReason::Exploring)
        );
        let all = |_| 1;
        assert_eq!(
            choose_size(&sizes, costs(&[]), all, 2048, true),
            (2048, SizeReason::Unmeasured)
        );
    }

    #[test]
    fn a_waiting_task_goes_to_the_small_size_and_a_cpu_task_to_the_large_one() {
        let sizes = [1024, 4096];
        // Waiting: the same level at either size, four times the memory: four times the cost.
        let waiting = costs(&[(1024, 100, 10_000.0), (4096, 100, 40_000.0)]);
        assert_eq!(
            choose_size(&sizes, waiting, |_| 1, 1024, true),
            (1024, SizeReason::Cheapest)
        );
        // CPU-bound: about the same per task (within the tie): the larger finishes sooner.
        let cpu = costs(&[(1024, 100, 10_000.0), (4096, 100, 10_300.0)]);
        assert_eq!(
            choose_size(&sizes, cpu, |_| 1, 1024, true),
            (4096, SizeReason::Cheapest)
        );
    }

    #[test]
    fn a_size_measured_with_no_task_finished_is_still_unmeasured() {
        let c = |s| SizeCost {
            workers: 1,
            tasks: u64::from(s == 4096),
            billed_gb_ms: 5.0,
            provisional: false,
        };
        assert_eq!(c(1024).per_task(), None);
        assert_eq!(
            choose_size(&[1024, 4096], c, |_| 0, 4096, true),
            (1024, SizeReason::Exploring)
        );
        assert_eq!(
            choose_size(&[1024, 4096], c, |_| 1, 4096, true),
            (4096, SizeReason::Cheapest)
        );
    }

    #[test]
    fn a_close_size_measured_on_fewer_tasks_than_the_chosen_is_measured_again() {
        let sizes = [128, 1024];
        // 128 MB read 4 % dearer on 24 tasks (its first workers' starts), 1024 MB on 52:
        // within the tie, so 1024 MB would win for good. 128 MB is measured again.
        let thin = costs(&[(128, 24, 24.0 * 43.9), (1024, 52, 52.0 * 45.6)]);
        assert_eq!(
            choose_size(&sizes, &thin, |_| 0, 128, true),
            (128, SizeReason::Revisiting)
        );
        // One worker at a time; and not when revisiting is not allowed (a deadline waits).
        assert_eq!(
            choose_size(&sizes, &thin, |s| u32::from(s == 128), 128, true),
            (1024, SizeReason::Cheapest)
        );
        assert_eq!(
            choose_size(&sizes, &thin, |_| 0, 128, false),
            (1024, SizeReason::Cheapest)
        );
        // Measured on as many tasks as settle it: no more revisits.
        let settled = costs(&[
            (128, SETTLED_TASKS, SETTLED_TASKS as f64 * 43.9),
            (1024, 500, 500.0 * 45.6),
        ]);
        assert_eq!(
            choose_size(&sizes, settled, |_| 0, 128, true),
            (1024, SizeReason::Cheapest)
        );
        // Dearer than the least by more than REVISIT: left alone.
        let far = costs(&[(128, 24, 24.0 * 60.0), (1024, 52, 52.0 * 45.6)]);
        assert_eq!(
            choose_size(&sizes, far, |_| 0, 128, true),
            (1024, SizeReason::Cheapest)
        );
    }

    #[test]
    fn a_close_size_measured_only_while_its_level_was_learned_is_measured_again() {
        // One invocation at a time: 128 MB's first worker climbed from its vCPU and read
        // 36.7 GB-ms a task on 100 tasks, as 512 MB's did: a tie, to 512 MB. At its learned
        // level 128 MB costs 33.4.
        let sizes = [128, 512];
        // Both at 36.7 a task on 100 tasks; 128 MB's on `workers` workers, `provisional` or not.
        let both = |workers: u64, provisional: bool| {
            move |s: u32| SizeCost {
                workers: if s == 128 { workers } else { 1 },
                tasks: 100,
                billed_gb_ms: 3_670.0,
                provisional: provisional && s == 128,
            }
        };
        assert_eq!(
            choose_size(&sizes, both(1, true), |_| 0, 128, true),
            (128, SizeReason::Revisiting)
        );
        // Still provisional after as many workers as settle it (its level never known when
        // one started): taken as measured.
        assert_eq!(
            choose_size(&sizes, both(PROVISIONAL_WORKERS, true), |_| 0, 128, true),
            (512, SizeReason::Cheapest)
        );
        // Measured at its known level: no more revisits.
        assert_eq!(
            choose_size(&sizes, both(1, false), |_| 0, 128, true),
            (512, SizeReason::Cheapest)
        );
    }
}
