//! The concurrency levels learned per (function, memory size): where a new worker of that
//! function and size starts. Kept per function, so a lookup never scans other functions.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::scheduler::Learned;

/// What was learned, by function and then by memory size (MB).
#[derive(Debug, Default)]
pub(super) struct Levels {
    by_function: BTreeMap<Arc<str>, BTreeMap<u32, Learned>>,
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

    /// Whether anything was learned for `function` (a function with a level is kept).
    pub(super) fn knows(&self, function: &str) -> bool {
        self.by_function.contains_key(function)
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
    }
}
