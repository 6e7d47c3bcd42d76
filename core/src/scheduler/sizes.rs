//! Which memory size a new worker of a function gets, from what each size has cost.
//!
//! A size's cost is measured on the workers of that size that ended: their billed GB-ms
//! (from spawn to end, cold start and idle tail included) over the tasks they finished. A
//! waiting task holds its level as well at a small size as at a large one, so the small
//! size costs less per task; a CPU-bound task costs about the same per task at every size
//! once the vCPUs are full, and the larger size finishes sooner. So: every size is tried
//! first (one worker at a time per size not yet measured: exploring is bounded by the
//! number of sizes offered), then the least cost per task wins, and costs within
//! [`TIE`] of each other go to the larger size.

/// What the ended workers of one (function, size) cost.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SizeCost {
    /// Workers that ended.
    pub workers: u64,
    /// Tasks they finished.
    pub tasks: u64,
    /// Their billed GB-ms.
    pub billed_gb_ms: f64,
}

impl SizeCost {
    /// Adds one ended worker's bill and tasks.
    pub fn add(&mut self, billed_gb_ms: f64, tasks: u64) {
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

/// Why a size was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeReason {
    /// One size is offered.
    Only,
    /// Not yet measured, and no worker of it is trying it.
    Exploring,
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
            SizeReason::Cheapest => "cheapest",
            SizeReason::Unmeasured => "unmeasured",
            SizeReason::Deadline => "deadline",
        }
    }
}

/// The size for a new worker among `sizes` (smallest first): `cost(size)` is what that
/// size has cost, `trying(size)` how many workers of it are live or starting now, and
/// `default` the size used while nothing is measured.
pub fn choose_size(
    sizes: &[u32],
    cost: impl Fn(u32) -> SizeCost,
    trying: impl Fn(u32) -> u32,
    default: u32,
) -> (u32, SizeReason) {
    if let [only] = sizes {
        return (*only, SizeReason::Only);
    }
    let measured: Vec<(u32, f64)> = sizes
        .iter()
        .filter_map(|&s| cost(s).per_task().map(|c| (s, c)))
        .collect();
    if let Some(&s) = sizes
        .iter()
        .find(|&&s| cost(s).per_task().is_none() && trying(s) == 0)
    {
        return (s, SizeReason::Exploring);
    }
    let Some(least) = measured.iter().map(|&(_, c)| c).reduce(f64::min) else {
        return (default, SizeReason::Unmeasured);
    };
    let chosen = measured
        .iter()
        .filter(|&&(_, c)| c <= least * (1.0 + TIE))
        .map(|&(s, _)| s)
        .max()
        .unwrap_or(default);
    (chosen, SizeReason::Cheapest)
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
                })
        }
    }

    #[test]
    fn one_size_is_the_only_choice() {
        assert_eq!(
            choose_size(&[2048], costs(&[]), |_| 0, 2048),
            (2048, SizeReason::Only)
        );
    }

    #[test]
    fn unmeasured_sizes_are_tried_one_worker_at_a_time_smallest_first() {
        let sizes = [1024, 2048, 4096];
        assert_eq!(
            choose_size(&sizes, costs(&[]), |_| 0, 2048),
            (1024, SizeReason::Exploring)
        );
        let trying = |s| u32::from(s == 1024);
        assert_eq!(
            choose_size(&sizes, costs(&[]), trying, 2048),
            (2048, SizeReason::Exploring)
        );
        let all = |_| 1;
        assert_eq!(
            choose_size(&sizes, costs(&[]), all, 2048),
            (2048, SizeReason::Unmeasured)
        );
    }

    #[test]
    fn a_waiting_task_goes_to_the_small_size_and_a_cpu_task_to_the_large_one() {
        let sizes = [1024, 4096];
        // Waiting: the same level at either size, four times the memory: four times the cost.
        let waiting = costs(&[(1024, 100, 10_000.0), (4096, 100, 40_000.0)]);
        assert_eq!(
            choose_size(&sizes, waiting, |_| 1, 1024),
            (1024, SizeReason::Cheapest)
        );
        // CPU-bound: about the same per task (within the tie): the larger finishes sooner.
        let cpu = costs(&[(1024, 100, 10_000.0), (4096, 100, 10_300.0)]);
        assert_eq!(
            choose_size(&sizes, cpu, |_| 1, 1024),
            (4096, SizeReason::Cheapest)
        );
    }

    #[test]
    fn a_size_measured_with_no_task_finished_is_still_unmeasured() {
        let c = |s| SizeCost {
            workers: 1,
            tasks: u64::from(s == 4096),
            billed_gb_ms: 5.0,
        };
        assert_eq!(c(1024).per_task(), None);
        assert_eq!(
            choose_size(&[1024, 4096], c, |_| 0, 4096),
            (1024, SizeReason::Exploring)
        );
        assert_eq!(
            choose_size(&[1024, 4096], c, |_| 1, 4096),
            (4096, SizeReason::Cheapest)
        );
    }
}
