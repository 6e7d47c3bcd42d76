//! A count of an owner's members per function and memory size, kept by the owner beside
//! its map (the roster's workers, the spawns in flight), so the fleet cap, the scale-out
//! bound and the choice of a size read counts and never scan the map.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Members per function, then per memory size (MB); no entry for none.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Tally(BTreeMap<Arc<str>, BTreeMap<u32, u32>>);

impl Tally {
    /// One more member of `function` at `memory_mb`.
    pub(super) fn add(&mut self, function: &Arc<str>, memory_mb: u32) {
        *self
            .0
            .entry(function.clone())
            .or_default()
            .entry(memory_mb)
            .or_default() += 1;
    }

    /// One member of `function` at `memory_mb` fewer.
    pub(super) fn remove(&mut self, function: &str, memory_mb: u32) {
        let Some(sizes) = self.0.get_mut(function) else {
            return;
        };
        if let Some(n) = sizes.get_mut(&memory_mb) {
            *n -= 1;
            if *n == 0 {
                sizes.remove(&memory_mb);
            }
        }
        if sizes.is_empty() {
            self.0.remove(function);
        }
    }

    /// Members of `function`, every size.
    pub(super) fn of(&self, function: &str) -> u32 {
        self.0.get(function).map_or(0, |sizes| sizes.values().sum())
    }

    /// Members of `function` at `memory_mb`.
    pub(super) fn of_size(&self, function: &str, memory_mb: u32) -> u32 {
        self.0
            .get(function)
            .and_then(|sizes| sizes.get(&memory_mb))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_function_and_size_and_forgets_empty_entries() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut t = Tally::default();
        t.add(&a, 1024);
        t.add(&a, 1024);
        t.add(&a, 4096);
        t.add(&b, 1024);
        assert_eq!(
            (
                t.of("a"),
                t.of_size("a", 1024),
                t.of_size("a", 4096),
                t.of("b"),
                t.of("c")
            ),
            (3, 2, 1, 1, 0)
        );
        t.remove("a", 1024);
        t.remove("a", 1024);
        t.remove("a", 4096);
        t.remove("b", 1024);
        t.remove("c", 1024);
        assert_eq!(t, Tally::default(), "nothing left, no entry left");
    }
}
