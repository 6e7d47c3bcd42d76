//! The simulator's event queue: events in time order, dead ones purged.

use super::*;

/// What happens at an instant. Workers are named by their slot in the simulator's table
/// and their connection number (a slot is reused once its worker is gone).
#[derive(Debug)]
pub(super) enum Event {
    /// A spawn of this memory size says hello.
    Connect(WorkerId, u32),
    /// The earliest CPU phase of this worker may have ended (stale unless `version` matches).
    CpuDone {
        slot: u32,
        conn: u64,
        version: u64,
    },
    /// A task's wait ended: it is done.
    Done {
        slot: u32,
        conn: u64,
        task: u64,
        attempt: u32,
    },
    /// The worker reports a sample (after a change, or on its interval).
    Sample {
        slot: u32,
        conn: u64,
        periodic: bool,
    },
    Timer(Timer),
    Exit {
        slot: u32,
        conn: u64,
    },
    /// The worker reaches its execution timeout: it ends, whatever it runs.
    Deadline {
        slot: u32,
        conn: u64,
    },
}

/// An event in the queue, ordered by time and then by when it was queued (so the order
/// of simultaneous events is fixed): `key` is the time in nanoseconds in the high half
/// and the queue's counter in the low half (one comparison).
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) key: u128,
    pub(super) event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    /// Reversed: the heap's top is the earliest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.key.cmp(&self.key)
    }
}

/// The event queue of the virtual clock.
pub(super) struct Queue {
    pub(super) heap: BinaryHeap<Queued>,
    pub(super) seq: u64,
    /// At this length, events that can no longer matter are dropped.
    pub(super) purge_at: usize,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
            purge_at: PURGE_MIN,
        }
    }
}

/// The queue length below which it is never purged.
pub(super) const PURGE_MIN: usize = 1 << 12;

impl Queue {
    pub(super) fn push(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        let nanos = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        let key = (u128::from(nanos) << 64) | u128::from(self.seq);
        self.heap.push(Queued { key, event });
    }

    /// The earliest event and its time.
    pub(super) fn pop(&mut self) -> Option<(Duration, Event)> {
        let q = self.heap.pop()?;
        let nanos = u64::try_from(q.key >> 64).unwrap_or(u64::MAX);
        Some((Duration::from_nanos(nanos), q.event))
    }

    /// Drops the events of workers that have gone, once the queue has doubled since the
    /// last purge: every worker leaves a timer for its deadline far ahead, and with one
    /// worker per task (conventional FaaS) those would grow the heap to a million
    /// entries that do nothing when they fire (the state ignores a timer of a connection
    /// that has ended). Amortized, a purge costs O(1) per event.
    pub(super) fn purge(&mut self, fleet: &Fleet) {
        if self.heap.len() < self.purge_at {
            return;
        }
        self.heap.retain(|q| match &q.event {
            Event::Timer(Timer::Worker(id, conn)) => fleet.live(id, *conn),
            Event::CpuDone { slot, conn, .. }
            | Event::Done { slot, conn, .. }
            | Event::Sample { slot, conn, .. }
            | Event::Exit { slot, conn }
            | Event::Deadline { slot, conn } => fleet.get(*slot, *conn).is_some(),
            Event::Connect(..) | Event::Timer(_) => true,
        });
        self.purge_at = (2 * self.heap.len()).max(PURGE_MIN);
    }
}
