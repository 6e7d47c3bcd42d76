//! What is learned per (function, memory size): the concurrency level where a new worker of
//! that function and size starts, and what that size has cost per task (which size a new
//! worker gets). Kept per function, so a lookup never scans other functions.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::scheduler::{Learned, SizeCost};

/// What was learned, by function and then by memory size (MB).
#[derive(Debug, Default)]
pub(super) struct Levels {
    by_function: BTreeMap<Arc<str>, BTreeMap<u32, Learned>>,
    costs: BTreeMap<Arc<str>, BTreeMap<u32, SizeCost>>,
}

impl Levels {
    /// The level learned for `function` at `memory_mb`, if any.
    pub(super) fn get(&self, function: &str, memory_mb: u32) -> Option<Learned> {
        self.by_function.get(function)?.get(&memory_mb).copied()
    }

    /// Records `learned` for `function` at `memory_mb`: false when it was known already.
    pub(super) fn learn(&mut self, function: &Arc<str>, memory_mb: u32, learned: Learned) -> bool {
        let sizes = self.by_function.entry(function.clone()).or_default();
        sizes.insert(memory_mb, learned) != Some(learned)
    }

    /// Whether anything was learned for `function` (a function with a level or a cost is
    /// kept).
    pub(super) fn knows(&self, function: &str) -> bool {
        self.by_function.contains_key(function) || self.costs.contains_key(function)
    }

    /// What `function`'s workers of `memory_mb` have cost (nothing yet: the default).
    pub(super) fn cost(&self, function: &str, memory_mb: u32) -> SizeCost {
        self.costs
            .get(function)
            .and_then(|sizes| sizes.get(&memory_mb))
            .copied()
            .unwrap_or_default()
    }

    /// A worker of `function` at `memory_mb` ended, billed `gb_ms` for `tasks` finished
    /// tasks; `at_known_level`: it started at the size's known level ([`SizeCost::record`]).
    /// The size's cost now.
    pub(super) fn record(
        &mut self,
        function: &Arc<str>,
        memory_mb: u32,
        (gb_ms, tasks): (f64, u64),
        at_known_level: bool,
    ) -> SizeCost {
        let cost = self
            .costs
            .entry(function.clone())
            .or_default()
            .entry(memory_mb)
            .or_default();
        cost.record(gb_ms, tasks, at_known_level);
        *cost
    }

    /// Forgets what was learned for `function`, at every size: how many sizes' levels and
    /// how many sizes' costs were known.
    pub(super) fn forget(&mut self, function: &str) -> (usize, usize) {
        let levels = self.by_function.remove(function).map_or(0, |sizes| sizes.len());
        let costs = self.costs.remove(function).map_or(0, |sizes| sizes.len());
        (levels, costs)
    }

    /// Restores a size's cost from a journal.
    pub(super) fn restore_cost(&mut self, function: &Arc<str>, memory_mb: u32, cost: SizeCost) {
        self.costs
            .entry(function.clone())
            .or_default()
            .insert(memory_mb, cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(level: u32, settled: bool) -> Learned {
        Learned { level, settled }
    }

    #[test]
    fn levels_are_per_function_and_size() {
        let mut l = Levels::default();
        let a: Arc<str> = Arc::from("a");
        assert!(l.learn(&a, 2048, level(4, false)));
        assert!(!l.learn(&a, 2048, level(4, false)), "the same level is no news");
        assert!(l.learn(&a, 2048, level(6, true)));
        assert!(l.learn(&a, 4096, level(9, false)));
        assert_eq!(l.get("a", 2048), Some(level(6, true)));
        assert_eq!(l.get("a", 4096), Some(level(9, false)));
        assert_eq!(l.get("a", 1024), None);
        assert_eq!(l.get("b", 2048), None);
        assert!(l.knows("a") && !l.knows("b"));
        let b: Arc<str> = Arc::from("b");
        assert_eq!(l.cost("b", 1024).per_task(), None);
        l.record(&b, 1024, (300.0, 2), true);
        let c = l.record(&b, 1024, (100.0, 2), true);
        assert_eq!((c.workers, c.tasks, c.per_task()), (2, 4, Some(100.0)));
        assert_eq!(l.cost("b", 1024), c);
        // Measured while its level was being learned: provisional, until a worker that
        // started at the known level replaces it; then workers still learning add to it.
        let p = l.record(&b, 512, (500.0, 2), false);
        assert!(p.provisional);
        assert_eq!(l.record(&b, 512, (300.0, 2), false).per_task(), Some(200.0));
        let known = l.record(&b, 512, (120.0, 2), true);
        assert_eq!(
            (known.workers, known.per_task(), known.provisional),
            (1, Some(60.0), false)
        );
        let more = l.record(&b, 512, (180.0, 2), false);
        assert_eq!(
            (more.workers, more.per_task(), more.provisional),
            (2, Some(75.0), false)
        );
        assert_eq!(l.cost("b", 2048).workers, 0);
        assert!(l.knows("b"), "a function with a cost is kept");
    }
}
