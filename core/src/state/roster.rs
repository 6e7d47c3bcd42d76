//! The roster: the workers that said hello (connected, or detached within the grace), with
//! their number per function and size kept by the same owner, so the fleet cap and the
//! scale-out bound never read a count that drifted from the map.

use std::collections::HashMap;
use std::time::Instant;

use super::WorkerId;
use super::parts::Worker;
use super::tally::Tally;
use crate::scheduler::{self, Rules};

/// The live workers.
#[derive(Debug, Default)]
pub(super) struct Roster {
    workers: HashMap<WorkerId, Worker>,
    /// How many of [`Roster::workers`] are of each function and size.
    tally: Tally,
}

impl Roster {
    /// Adds worker `id` (replacing none: the caller has checked it is new).
    pub(super) fn insert(&mut self, id: WorkerId, worker: Worker) {
        self.tally.add(&worker.function, worker.memory_mb);
        if let Some(old) = self.workers.insert(id, worker) {
            self.tally.remove(&old.function, old.memory_mb);
        }
    }

    /// Takes worker `id` off the roster.
    pub(super) fn remove(&mut self, id: &WorkerId) -> Option<Worker> {
        let w = self.workers.remove(id)?;
        self.tally.remove(&w.function, w.memory_mb);
        Some(w)
    }

    /// How many workers of `function` are on the roster.
    pub(super) fn of(&self, function: &str) -> usize {
        self.tally.of(function) as usize
    }

    /// How many workers of `function` at `memory_mb` are on the roster.
    pub(super) fn of_size(&self, function: &str, memory_mb: u32) -> usize {
        self.tally.of_size(function, memory_mb) as usize
    }

    /// Whether some worker of `function` still admits tasks at `now` under `rules` (its
    /// admissions not ended, not stopping). Scans the roster up to the first such worker.
    pub(super) fn any_admitting(&self, function: &str, rules: &Rules, now: Instant) -> bool {
        self.workers
            .values()
            .filter(|w| w.function.as_ref() == function)
            .any(|w| !scheduler::assess(rules, &w.view(now)).is_final())
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

    /// The counts agree with the map (the unit tests' check).
    #[cfg(test)]
    pub(super) fn check(&self) {
        let mut counted = Tally::default();
        for w in self.workers.values() {
            counted.add(&w.function, w.memory_mb);
        }
        assert_eq!(counted, self.tally, "worker counts drifted from the roster");
    }
}
