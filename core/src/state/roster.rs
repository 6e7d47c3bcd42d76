//! The roster: the workers that said hello (connected, or detached within the grace), with
//! their number per function kept by the same owner, so the fleet cap and the scale-out
//! bound never read a count that drifted from the map.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::WorkerId;
use super::parts::Worker;

/// The live workers.
#[derive(Debug, Default)]
pub(super) struct Roster {
    workers: HashMap<WorkerId, Worker>,
    /// How many of [`Roster::workers`] are of each function (no entry for none).
    per_function: BTreeMap<Arc<str>, usize>,
}

impl Roster {
    /// Adds worker `id` (replacing none: the caller has checked it is new).
    pub(super) fn insert(&mut self, id: WorkerId, worker: Worker) {
        let function = worker.function.clone();
        if let Some(old) = self.workers.insert(id, worker) {
            self.forget(&old.function);
        }
        *self.per_function.entry(function).or_default() += 1;
    }

    /// Takes worker `id` off the roster.
    pub(super) fn remove(&mut self, id: &WorkerId) -> Option<Worker> {
        let w = self.workers.remove(id)?;
        self.forget(&w.function);
        Some(w)
    }

    fn forget(&mut self, function: &Arc<str>) {
        if let Some(n) = self.per_function.get_mut(function) {
            *n -= 1;
            if *n == 0 {
                self.per_function.remove(function);
            }
        }
    }

    /// How many workers of `function` are on the roster.
    pub(super) fn of(&self, function: &str) -> usize {
        self.per_function.get(function).copied().unwrap_or(0)
    }

    /// How many workers of `function` at `memory_mb` are on the roster.
    pub(super) fn of_size(&self, function: &str, memory_mb: u32) -> usize {
        if self.of(function) == 0 {
            return 0;
        }
        self.workers
            .values()
            .filter(|w| w.memory_mb == memory_mb && w.function.as_ref() == function)
            .count()
    }

    pub(super) fn get(&self, id: &WorkerId) -> Option<&Worker> {
        self.workers.get(id)
    }

    pub(super) fn get_mut(&mut self, id: &WorkerId) -> Option<&mut Worker> {
        self.workers.get_mut(id)
    }

    pub(super) fn contains_key(&self, id: &WorkerId) -> bool {
        self.workers.contains_key(id)
    }

    pub(super) fn len(&self) -> usize {
        self.workers.len()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &WorkerId> {
        self.workers.keys()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        self.workers.values_mut()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&WorkerId, &Worker)> {
        self.workers.iter()
    }

    /// The per-function counts agree with the map (the unit tests' check).
    #[cfg(test)]
    pub(super) fn check(&self) {
        let mut counted: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for w in self.workers.values() {
            *counted.entry(w.function.clone()).or_default() += 1;
        }
        assert_eq!(
            counted, self.per_function,
            "worker counts drifted from the roster"
        );
    }
}
