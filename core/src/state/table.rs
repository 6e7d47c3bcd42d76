//! The task table: tasks by id, in chunks of consecutive ids.
//!
//! The coordinator hands task ids out in order, and tasks are mostly dispatched and
//! finished near that order, so a dense table indexed by id keeps neighbouring tasks
//! together in memory (a hash map scatters them: a cache miss per lookup at a million
//! tasks) and costs no hashing. A chunk is freed when its last task is removed, so a
//! long-lived task pins one chunk, not every id after it.

use std::collections::VecDeque;

use super::TaskId;

/// Ids per chunk.
const CHUNK: u64 = 256;

/// Tasks (or anything) by id.
#[derive(Debug)]
pub(super) struct Table<T> {
    /// The id of the first slot of `chunks[0]`; a multiple of [`CHUNK`].
    base: TaskId,
    /// `None`: no id in that chunk is present.
    chunks: VecDeque<Option<Chunk<T>>>,
    /// One emptied chunk kept for the next one needed (a task at a time through a short
    /// retention would otherwise allocate a chunk per task).
    spare: Option<Box<[Option<T>]>>,
}

#[derive(Debug)]
struct Chunk<T> {
    slots: Box<[Option<T>]>,
    live: u32,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            base: 0,
            chunks: VecDeque::new(),
            spare: None,
        }
    }
}

impl<T> Table<T> {
    /// The chunk and slot of `id`, if it lies after the table's start.
    fn locate(&self, id: TaskId) -> Option<(usize, usize)> {
        let rel = id.checked_sub(self.base)?;
        Some((usize::try_from(rel / CHUNK).ok()?, (rel % CHUNK) as usize))
    }

    pub(super) fn get(&self, id: TaskId) -> Option<&T> {
        let (c, s) = self.locate(id)?;
        self.chunks.get(c)?.as_ref()?.slots[s].as_ref()
    }

    pub(super) fn get_mut(&mut self, id: TaskId) -> Option<&mut T> {
        let (c, s) = self.locate(id)?;
        self.chunks.get_mut(c)?.as_mut()?.slots[s].as_mut()
    }

    /// Every value present, in no particular order.
    #[cfg(test)]
    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.chunks
            .iter()
            .flatten()
            .flat_map(|c| c.slots.iter().flatten())
    }

    pub(super) fn contains_key(&self, id: TaskId) -> bool {
        self.get(id).is_some()
    }

    /// Tasks present.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.chunks.iter().flatten().map(|c| c.live as usize).sum()
    }

    /// Puts `value` at `id`, returning what was there.
    pub(super) fn insert(&mut self, id: TaskId, value: T) -> Option<T> {
        let start = id - id % CHUNK;
        if self.chunks.is_empty() {
            self.base = start;
        }
        while start < self.base {
            self.chunks.push_front(None);
            self.base -= CHUNK;
        }
        let c = ((start - self.base) / CHUNK) as usize;
        if self.chunks.len() <= c {
            self.chunks.resize_with(c + 1, || None);
        }
        let spare = &mut self.spare;
        let chunk = self.chunks[c].get_or_insert_with(|| Chunk {
            slots: spare.take().unwrap_or_else(|| (0..CHUNK).map(|_| None).collect()),
            live: 0,
        });
        let old = chunk.slots[(id % CHUNK) as usize].replace(value);
        if old.is_none() {
            chunk.live += 1;
        }
        old
    }

    /// Takes the value at `id` out.
    pub(super) fn remove(&mut self, id: TaskId) -> Option<T> {
        let (c, s) = self.locate(id)?;
        let chunk = self.chunks.get_mut(c)?.as_mut()?;
        let old = chunk.slots[s].take()?;
        chunk.live -= 1;
        if chunk.live == 0 {
            if let Some(emptied) = self.chunks[c].take() {
                self.spare = Some(emptied.slots);
            }
            while let Some(None) = self.chunks.front() {
                self.chunks.pop_front();
                self.base += CHUNK;
            }
            while let Some(None) = self.chunks.back() {
                self.chunks.pop_back();
            }
        }
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_any_order_across_chunks() {
        let mut t = Table::default();
        for id in [700, 3, 256, 255, 1_000_000] {
            assert!(t.insert(id, id * 10).is_none());
        }
        assert_eq!(t.insert(3, 31), Some(30));
        assert_eq!((t.len(), t.get(3), t.get(700)), (5, Some(&31), Some(&7000)));
        assert!(t.get(4).is_none() && t.get(999_999).is_none() && t.get(u64::MAX).is_none());
        if let Some(v) = t.get_mut(256) {
            *v += 1;
        }
        assert_eq!(t.remove(256), Some(2561));
        assert!(t.remove(256).is_none() && !t.contains_key(256));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn emptied_chunks_are_released_and_reused() {
        let mut t = Table::default();
        for id in 1..=1000 {
            t.insert(id, id);
        }
        // A long-lived task keeps its own chunk only.
        for id in (1..=1000).filter(|&id| id != 600) {
            assert_eq!(t.remove(id), Some(id));
        }
        assert_eq!((t.len(), t.chunks.len(), t.get(600)), (1, 1, Some(&600)));
        // An id below the table's start (a reservation inserted late) still fits.
        t.insert(5, 5);
        assert_eq!((t.get(5), t.get(600), t.chunks.len()), (Some(&5), Some(&600), 3));
        t.remove(600);
        t.remove(5);
        assert_eq!((t.len(), t.chunks.len()), (0, 0));
        assert!(t.spare.is_some());
        t.insert(2000, 1);
        assert!(t.spare.is_none() && t.get(2000) == Some(&1));
    }
}
