//! Spawns: the workers asked of a spawner that have not said hello yet, and those written
//! off as never started. One owner keeps the set and its count per function and size together, so
//! the fleet cap and the free-slot sum never read a count that drifted from the set.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::WorkerId;
use super::tally::Tally;

/// How many written-off spawns are remembered (for one that starts late after all).
const WRITTEN_OFF_MEMORY: usize = 4096;

/// A spawn that has not said hello yet.
#[derive(Debug)]
pub(super) struct Starting {
    pub(super) function: Arc<str>,
    pub(super) since: Instant,
    /// Its memory size (MB).
    pub(super) memory_mb: u32,
    /// Where the spawner started it (a pid, a request id), once it says.
    pub(super) instance: String,
}

/// The spawns in flight and those written off.
#[derive(Debug)]
pub(super) struct Spawns {
    starting: HashMap<WorkerId, Starting>,
    /// How many of [`Spawns::starting`] are of each function and size.
    tally: Tally,
    next: u64,
    /// Written off as never started (bounded, oldest forgotten first), in that order.
    written_off: HashSet<WorkerId>,
    written_off_order: VecDeque<WorkerId>,
}

impl Default for Spawns {
    fn default() -> Self {
        Self {
            starting: HashMap::new(),
            tally: Tally::default(),
            next: 1,
            written_off: HashSet::new(),
            written_off_order: VecDeque::new(),
        }
    }
}

impl Spawns {
    /// Asks for one more worker of `function`: its new id.
    pub(super) fn start(&mut self, function: &Arc<str>, memory_mb: u32, now: Instant) -> WorkerId {
        let id = WorkerId(Arc::from(format!("w{}-{}", self.next, function)));
        self.next += 1;
        self.starting.insert(
            id.clone(),
            Starting {
                function: function.clone(),
                since: now,
                memory_mb,
                instance: String::new(),
            },
        );
        self.tally.add(function, memory_mb);
        id
    }

    /// Takes spawn `id` out of the set: it said hello, failed or exited. `None` when it is
    /// not starting.
    pub(super) fn end(&mut self, id: &WorkerId) -> Option<Starting> {
        let s = self.starting.remove(id)?;
        self.tally.remove(&s.function, s.memory_mb);
        Some(s)
    }

    /// The spawner says where spawn `id` runs; false when it is not starting.
    pub(super) fn started(&mut self, id: &WorkerId, instance: String) -> bool {
        match self.starting.get_mut(id) {
            Some(s) => {
                s.instance = instance;
                true
            }
            None => false,
        }
    }

    /// Whether `id` is starting.
    pub(super) fn contains(&self, id: &WorkerId) -> bool {
        self.starting.contains_key(id)
    }

    /// How many spawns of `function` are starting.
    pub(super) fn of(&self, function: &str) -> u32 {
        self.tally.of(function)
    }

    /// How many spawns of `function` at `memory_mb` are starting.
    pub(super) fn of_size(&self, function: &str, memory_mb: u32) -> u32 {
        self.tally.of_size(function, memory_mb)
    }

    /// How many spawns are starting in all.
    pub(super) fn len(&self) -> usize {
        self.starting.len()
    }

    /// The spawns starting, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&WorkerId, &Starting)> {
        self.starting.iter()
    }

    /// Spawns started more than `timeout` before `now`, in id order.
    pub(super) fn overdue(&self, now: Instant, timeout: std::time::Duration) -> Vec<WorkerId> {
        let mut ids: Vec<WorkerId> = self
            .starting
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.since) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Remembers `id` as written off (it may still start: Lambda queues an asynchronous
    /// invoke it cannot run yet). The caller ends the spawn itself.
    pub(super) fn write_off(&mut self, id: &WorkerId) {
        if self.written_off.len() >= WRITTEN_OFF_MEMORY
            && let Some(oldest) = self.written_off_order.pop_front()
        {
            self.written_off.remove(&oldest);
        }
        if self.written_off.insert(id.clone()) {
            self.written_off_order.push_back(id.clone());
        }
    }

    /// A worker says hello: true (and forgotten) when it was written off as never started.
    pub(super) fn arrived_late(&mut self, id: &WorkerId) -> bool {
        if !self.written_off.remove(id) {
            return false;
        }
        self.written_off_order.retain(|w| w != id);
        true
    }

    /// The counts agree with the set (the unit tests' check).
    #[cfg(test)]
    pub(super) fn check(&self) {
        let mut counted = Tally::default();
        for s in self.starting.values() {
            counted.add(&s.function, s.memory_mb);
        }
        assert_eq!(counted, self.tally, "spawn counts drifted from the set");
        assert_eq!(self.written_off.len(), self.written_off_order.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn f(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn counts_follow_the_set_per_function() {
        let now = Instant::now();
        let mut s = Spawns::default();
        let a1 = s.start(&f("a"), 2048, now);
        let a2 = s.start(&f("a"), 2048, now);
        let b1 = s.start(&f("b"), 2048, now);
        assert_ne!(a1, a2);
        assert_eq!((s.of("a"), s.of("b"), s.of("c"), s.len()), (2, 1, 0, 3));
        s.check();
        assert_eq!(s.end(&a1).map(|x| x.function), Some(f("a")));
        assert!(s.end(&a1).is_none(), "a spawn ends once");
        assert_eq!((s.of("a"), s.len()), (1, 2));
        s.end(&b1);
        s.end(&a2);
        assert_eq!((s.of("a"), s.of("b"), s.len()), (0, 0, 0));
        s.check();
    }

    #[test]
    fn started_records_where_only_while_starting() {
        let now = Instant::now();
        let mut s = Spawns::default();
        let id = s.start(&f("a"), 2048, now);
        assert!(s.started(&id, "pid 7".into()));
        assert_eq!(s.iter().next().map(|(_, x)| x.instance.as_str()), Some("pid 7"));
        s.end(&id);
        assert!(!s.started(&id, "pid 8".into()));
    }

    #[test]
    fn overdue_are_those_past_the_timeout_in_id_order() {
        let t0 = Instant::now();
        let mut s = Spawns::default();
        let early = [s.start(&f("a"), 2048, t0), s.start(&f("b"), 2048, t0)];
        let late = s.start(&f("a"), 2048, t0 + Duration::from_secs(5));
        let at = t0 + Duration::from_secs(8);
        let mut want = early.to_vec();
        want.sort();
        assert_eq!(s.overdue(at, Duration::from_secs(4)), want);
        assert!(!s.overdue(at, Duration::from_secs(4)).contains(&late));
    }

    #[test]
    fn written_off_memory_is_bounded_and_a_late_arrival_is_known_once() {
        let now = Instant::now();
        let mut s = Spawns::default();
        let first = s.start(&f("a"), 2048, now);
        s.write_off(&first);
        s.end(&first);
        for _ in 0..WRITTEN_OFF_MEMORY {
            let id = s.start(&f("a"), 2048, now);
            s.write_off(&id);
            s.end(&id);
        }
        s.check();
        assert!(!s.arrived_late(&first), "the oldest is forgotten past the bound");
        let last = WorkerId::new(&format!("w{}-a", WRITTEN_OFF_MEMORY + 1));
        assert!(s.arrived_late(&last));
        assert!(!s.arrived_late(&last), "known once");
        s.check();
    }
}
