//! A worker's life: which tasks it may still take, by what they are expected to take, and
//! when its successor is started.
//!
//! A worker lives at most its execution timeout. A task it takes must end before that, with
//! a margin, or it is killed at the deadline and runs again (paid twice). The figure a task
//! is expected to take is built on the longest of its function's last [`RECENT_DURATIONS`] attempts
//! at the worker's memory size, and of its last as many attempts of tasks without a timeout
//! of their own ([`Durations`]), stretched past the longest by how the longest few spread
//! ([`Tail`]), with the long ones of the last [`LONG_REMEMBERED`] attempts counted where
//! they have left the window. Not the p95: a task is not known to be long
//! or short until it ends, so a bound below the longest admits the long tail late and kills
//! it. In the simulator, with one task in 25 taking 40 % of the life, the p95 (the short
//! tasks' figure) killed 21 attempts where the fixed 0.8 rule killed 7; the p99 killed one,
//! the longest none. The cost of the cautious bound is paid in the predecessor's drain,
//! which a successor started ahead of time makes a short one; the window of recent attempts
//! lets the figure fall again when a handler's long tail goes. A task with its own timeout
//! is bounded by it instead, or by what tasks bounded like it take where that is less
//! ([`bounded_need`]). A function with nothing measured yet falls back on
//! `--deadline-fraction`.
//!
//! A task not yet ended is known to take at least what it has run: the longest-running
//! attempt of the function at that size ([`Figure::read`]) counts as if it ended
//! now ([`Tail::running`]), so a long task's first appearance ends late admissions while it
//! runs, not once it has ended (when the workers that took its like late are already
//! doomed).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

pub use crate::config::Admission;

/// The expected duration is stretched by this before it is fitted into what is left. The
/// figure is already where the recent attempts' tail is expected to end, not a typical
/// task: the margin covers one slower than any of them (a CPU shared by more, a slower
/// answer), the slack below the trip. Every second of margin is a second of the worker's
/// life that admits nothing and is billed: with tasks of 2 s in a 5 s life (one in two,
/// the rest 50 ms) a quarter (until 2026-12-07) ended admissions 2.75 s before the end and
/// billed 1.46 times the fixed 0.8 rule, a tenth 2.45 s and 1.22 times; the simulation's
/// long tasks, waiting or computing, were killed at a deadline under neither.
pub const ADMISSION_MARGIN: f64 = 1.1;

/// And this is added: a sample interval's lateness, the assignment's trip, the result's way
/// back before the worker's own deadline.
pub const ADMISSION_SLACK: Duration = Duration::from_millis(250);

/// How many recent attempts a function's duration figure needs before it is used.
pub const MIN_DURATIONS: usize = 8;

/// How many recent attempts per (function, size) the figure is taken over.
pub const RECENT_DURATIONS: usize = 256;

/// The figure is recounted over the window after this many new attempts.
const RECOMPUTE_EVERY: usize = 16;

/// The recent attempts' durations of one function at one memory size, and their tail,
/// shared with every worker of that function and size, which reads it when it is
/// assessed.
#[derive(Debug, Default)]
pub struct Durations {
    /// Microseconds, oldest first, at most [`RECENT_DURATIONS`]; an attempt of a task with
    /// a timeout of its own has [`BOUNDED_BIT`] set.
    recent: VecDeque<u64>,
    /// How many of [`Durations::recent`] are of tasks without a timeout of their own: the
    /// newest as many of [`Durations::open`].
    open_in_recent: usize,
    /// The same of the attempts of tasks without a timeout of their own, which the figure
    /// bounds: where most tasks carry their own bound, a rare long task without one stays
    /// in the figure for its own last [`RECENT_DURATIONS`], not only for everyone's.
    open: VecDeque<u64>,
    /// The same of the attempts of tasks with a timeout of their own: what such a task is
    /// expected to take, below its timeout ([`bounded_need`]).
    closed: VecDeque<u64>,
    /// The long attempts of [`Durations::open`] and [`Durations::closed`], kept for longer
    /// than their windows.
    open_long: LongKeep,
    closed_long: LongKeep,
    /// Attempts since the figure was last computed.
    since: usize,
    /// The tails, and the attempts running now, shared with the workers.
    figure: Arc<Figure>,
    /// The longest recent attempt, as last recounted: a longer one recounts at once.
    longest_seen: u64,
    /// The same of attempts of tasks with a timeout of their own.
    longest_bounded_seen: u64,
    /// The median, recounted with the longest (the tail's figure: see
    /// [`super::tail`]); `None` while fewer than [`MIN_DURATIONS`] are known.
    typical: Option<Duration>,
}

impl Durations {
    /// An attempt took `took`; `bounded`: its task had a timeout of its own.
    pub fn push(&mut self, took: Duration, bounded: bool) {
        let us = took.as_micros().clamp(1, u128::from(MAX_MICROS)) as u64;
        if self.recent.len() >= RECENT_DURATIONS
            && let Some(old) = self.recent.pop_front()
            && old & BOUNDED_BIT == 0
        {
            self.open_in_recent -= 1;
        }
        self.recent.push_back(if bounded { us | BOUNDED_BIT } else { us });
        if !bounded {
            self.open_in_recent += 1;
        }
        let (kind, long, seen) = match bounded {
            true => (&mut self.closed, &mut self.closed_long, self.longest_bounded_seen),
            false => (&mut self.open, &mut self.open_long, self.longest_seen),
        };
        if kind.len() >= RECENT_DURATIONS {
            kind.pop_front();
        }
        kind.push_back(us);
        long.push(us, seen);
        self.since += 1;
        // A longer attempt moves the tail at once; one leaving the window lowers it only at
        // the next recount (every few attempts: a scan of the window on every result would
        // cost more than the rest of a result's handling).
        if self.recent.len() < MIN_DURATIONS {
            return;
        }
        let longer = if bounded {
            us > self.longest_bounded_seen && self.closed.len() >= MIN_DURATIONS
        } else {
            us > self.longest_seen
        };
        if self.since >= RECOMPUTE_EVERY
            || self.recent.len() == MIN_DURATIONS
            || (bounded && self.closed.len() == MIN_DURATIONS)
            || longer
        {
            self.recount();
        }
    }

    /// Recounts the tails and the median over the windows.
    fn recount(&mut self) {
        self.since = 0;
        // Every recent attempt, the older ones of tasks without a timeout of their own, and
        // the long ones of those kept from before.
        let older_open = self.open.len().saturating_sub(self.open_in_recent);
        let all = self
            .recent
            .iter()
            .map(|&us| us & !BOUNDED_BIT)
            .chain(self.open.iter().take(older_open).copied())
            .chain(self.open_long.before(self.open.len()));
        let open = Tail::of(all);
        self.longest_seen = open.longest();
        self.figure.open.store(open);
        let bounded = match self.closed.len() >= MIN_DURATIONS {
            true => Tail::of(
                self.closed
                    .iter()
                    .copied()
                    .chain(self.closed_long.before(self.closed.len())),
            ),
            false => Tail::default(),
        };
        self.longest_bounded_seen = bounded.longest();
        self.figure.bounded.store(bounded);
        self.typical =
            super::lower_median(self.recent.iter().map(|&us| us & !BOUNDED_BIT)).map(Duration::from_micros);
    }

    /// What a task is expected to take at most: where the recent attempts' tail ends
    /// ([`Tail`]), once enough are known.
    pub fn longest(&self) -> Option<Duration> {
        self.figure.longest()
    }

    /// Forgets every attempt that has ended (a handler that changed takes what it takes
    /// now); the attempts running now stay followed.
    pub fn forget(&mut self) {
        let figure = self.figure.clone();
        figure.open.store(Tail::default());
        figure.bounded.store(Tail::default());
        *self = Durations {
            figure,
            ..Durations::default()
        };
    }

    /// The median (lower middle) of the recent attempts as last recounted (every few
    /// attempts), once enough are known: for decisions taken on every dispatch.
    pub fn typical(&self) -> Option<Duration> {
        self.typical
    }

    /// The median (lower middle) of the recent attempts, once enough are known: a sort of
    /// the window, for decisions taken rarely (a size chosen for a deadline).
    pub fn median(&self) -> Option<Duration> {
        if self.recent.len() < MIN_DURATIONS {
            return None;
        }
        super::lower_median(self.recent.iter().map(|&us| us & !BOUNDED_BIT)).map(Duration::from_micros)
    }

    /// What an assessment at `now` reads of the figure ([`Figure::read`]).
    pub fn read(&self, now: Instant) -> Reading {
        self.figure.read(now)
    }

    /// The figure, for a worker of this function and size to read and to note its running
    /// attempts in.
    pub fn handle(&self) -> Arc<Figure> {
        self.figure.clone()
    }
}

/// What the workers of one function at one size share of its durations: the tails of the
/// recent attempts (written by [`Durations`]), and when each attempt running now started
/// (noted by the workers running them).
#[derive(Debug, Default)]
pub struct Figure {
    /// The tail of the recent attempts; nothing while fewer than [`MIN_DURATIONS`] are
    /// known.
    open: TailCell,
    /// The tail of the recent attempts of tasks with a timeout of their own; nothing while
    /// fewer than [`MIN_DURATIONS`] such attempts are known.
    bounded: TailCell,
    /// The instant start times are counted from (the first attempt's start).
    base: OnceLock<Instant>,
    /// The running attempts' starts.
    starts: Mutex<Starts>,
    /// The earliest of them plus one; 0 while none runs (read without the lock).
    earliest: AtomicU64,
    /// The same of the running attempts of tasks with a timeout of their own.
    bounded_starts: Mutex<Starts>,
    bounded_earliest: AtomicU64,
}

/// The running attempts' starts, microseconds after the figure's base, oldest first, with
/// how many started then: attempts start in time order, so a start is pushed at the back
/// and an end found by a binary search. Ended ones leave from the front, and the ones
/// between are swept out once they outnumber the running (an attempt running for hours
/// among millions of short ones holds no more than twice the running).
#[derive(Debug, Default)]
struct Starts {
    keys: VecDeque<(u64, u32)>,
    running: usize,
}

impl Figure {
    /// What a task is expected to take at most: the end of the recent attempts' tail
    /// ([`Tail`]), once enough are known.
    pub fn longest(&self) -> Option<Duration> {
        self.open.load().figure()
    }

    /// The same of the recent attempts of tasks with a timeout of their own, once enough
    /// of them are known (assessments read it with the rest: [`Figure::read`]).
    #[cfg(test)]
    fn longest_bounded(&self) -> Option<Duration> {
        self.bounded.load().figure()
    }

    /// How long the longest-running attempt running now has run.
    fn running_for(&self, now: Instant) -> Option<Duration> {
        self.since(&self.earliest, now)
    }

    /// How long the longest-running attempt of a task with a timeout of its own, running
    /// now, has run.
    fn bounded_running_for(&self, now: Instant) -> Option<Duration> {
        self.since(&self.bounded_earliest, now)
    }

    /// What an assessment of a worker at `now` reads of the figure, each tail read once
    /// (every dispatch reads it for every worker it looks at).
    pub fn read(&self, now: Instant) -> Reading {
        let (open, bounded) = (self.open.load(), self.bounded.load());
        let running_for = self.running_for(now);
        Reading {
            expected: open.figure(),
            running_for,
            running_expected: running_for.map(|r| open.running(r)),
            expected_bounded: bounded.figure(),
            bounded_running_expected: self.bounded_running_for(now).map(|r| bounded.running(r).now),
        }
    }

    fn since(&self, earliest: &AtomicU64, now: Instant) -> Option<Duration> {
        let base = self.base.get()?;
        match earliest.load(Ordering::Relaxed) {
            0 => None,
            key => Some(now.saturating_duration_since(*base + Duration::from_micros(key - 1))),
        }
    }

    /// The key an attempt started at `at` would have: attempts with a smaller key started
    /// before it. `None` before any attempt started.
    pub fn key_at(&self, at: Instant) -> Option<u64> {
        Some(key_of(*self.base.get()?, at))
    }

    /// An attempt started at `now` (`bounded`: its task has a timeout of its own): returns
    /// its key, for [`Figure::ended`].
    pub fn started(&self, now: Instant, bounded: bool) -> u64 {
        let key = key_of(*self.base.get_or_init(|| now), now);
        Starts::start(&self.starts, &self.earliest, key);
        if bounded {
            Starts::start(&self.bounded_starts, &self.bounded_earliest, key);
        }
        key
    }

    /// The attempt that started at `key` ended (or left its worker); `bounded` as it
    /// started.
    pub fn ended(&self, key: u64, bounded: bool) {
        Starts::end(&self.starts, &self.earliest, key);
        if bounded {
            Starts::end(&self.bounded_starts, &self.bounded_earliest, key);
        }
    }
}

impl Starts {
    /// An attempt started at `key`; `earliest` is republished if it is the earliest.
    fn start(starts: &Mutex<Starts>, earliest: &AtomicU64, key: u64) {
        let mut starts = starts.lock().unwrap_or_else(PoisonError::into_inner);
        let keys = &mut starts.keys;
        match keys.back_mut() {
            Some((k, n)) if *k == key => *n += 1,
            Some((k, _)) if *k > key => {
                // Out of order (never expected: starts come in time order): kept sorted.
                let at = keys.partition_point(|&(k, _)| k < key);
                match keys.get_mut(at) {
                    Some((k, n)) if *k == key => *n += 1,
                    _ => keys.insert(at, (key, 1)),
                }
            }
            _ => keys.push_back((key, 1)),
        }
        starts.running += 1;
        if starts.keys.front().is_some_and(|&(k, _)| k == key) {
            Self::publish(&starts.keys, earliest);
        }
    }

    /// The attempt that started at `key` ended.
    fn end(starts: &Mutex<Starts>, earliest: &AtomicU64, key: u64) {
        let mut starts = starts.lock().unwrap_or_else(PoisonError::into_inner);
        let keys = &mut starts.keys;
        let at = keys.partition_point(|&(k, _)| k < key);
        let Some((k, n)) = keys.get_mut(at) else {
            return;
        };
        if *k != key || *n == 0 {
            return;
        }
        *n -= 1;
        if at == 0 {
            while keys.front().is_some_and(|&(_, n)| n == 0) {
                keys.pop_front();
            }
            Self::publish(keys, earliest);
        }
        starts.running -= 1;
        if starts.keys.len() > 2 * starts.running + 64 {
            starts.keys.retain(|&(_, n)| n > 0);
        }
    }

    fn publish(starts: &VecDeque<(u64, u32)>, earliest: &AtomicU64) {
        let first = starts.front().map_or(0, |&(k, _)| k + 1);
        earliest.store(first, Ordering::Relaxed);
    }
}

/// The largest duration kept, in microseconds (the top bit marks a bounded attempt in
/// [`Durations::recent`]).
const MAX_MICROS: u64 = BOUNDED_BIT - 1;
const BOUNDED_BIT: u64 = 1 << 63;

/// How many gaps between the longest attempts a [`Tail`] averages.
const TAIL_GAPS: usize = 4;

/// Where the tail of a function's recent durations ends, in microseconds: the longest
/// attempt, plus the mean gap between the longest few within half of it (at most four
/// gaps). One draw in n + 1 passes the longest of n: where the long
/// attempts lie close together, the next long one is rarely much longer; where they are
/// spread, it may well be; where one long attempt stands alone among short ones, it is
/// the figure (counted half again, alike 2 s waits in the simulator cost up to 4 % more,
/// and the figure leapt when the first long one ended: a queue waited 224 ms for a
/// successor). In the simulator, long waits of 1 to 3 s in a 5 s life were killed at a
/// deadline where the figure was the longest alone: 11 attempts in 32 batches of 1000 at
/// one in 100 and 7 at one in 5, where this tail (with long ones kept for
/// [`LONG_REMEMBERED`] attempts) killed 3 and 3.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// The longest few within half of the longest, longest first (0: none).
    top: [u64; TAIL_GAPS + 1],
    /// How many attempts are within half of the longest.
    near: usize,
}

impl Tail {
    /// The tail of `durations` (microseconds).
    pub fn of(durations: impl Iterator<Item = u64> + Clone) -> Tail {
        let longest = durations.clone().max().unwrap_or(0);
        let mut t = Tail::default();
        for d in durations.filter(|&d| d >= longest / 2 && d > 0) {
            t.near += 1;
            t.insert(d);
        }
        t
    }

    fn insert(&mut self, d: u64) {
        if d > self.top[TAIL_GAPS] {
            let at = self.top.partition_point(|&t| t >= d);
            self.top.copy_within(at..TAIL_GAPS, at + 1);
            self.top[at] = d;
        }
    }

    /// The longest attempt (0: none known).
    pub fn longest(&self) -> u64 {
        self.top[0]
    }

    /// Where the tail is expected to end (0: nothing known).
    pub fn end(&self) -> u64 {
        let longest = self.top[0];
        match self.near {
            0 => 0,
            1 => longest,
            n => {
                let gaps = (n - 1).min(TAIL_GAPS);
                longest + (longest - self.top[gaps]) / gaps as u64
            }
        }
    }

    /// The end, once anything is known.
    pub fn figure(&self) -> Option<Duration> {
        match self.end() {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// The tail were an attempt of `us`, longer than any, among them: those below half of
    /// it leave the tail (where all the kept ones stay, enough are near for the most gaps
    /// counted).
    fn with_longest(&self, us: u64) -> Tail {
        let mut t = *self;
        t.insert(us);
        let kept = t.top.iter().filter(|&&d| d > 0 && d >= us / 2).count();
        t.near = if kept == t.top.len() { t.near + 1 } else { kept };
        t.top.iter_mut().filter(|d| **d < us / 2).for_each(|d| *d = 0);
        t
    }

    /// What an attempt that has run `running` and still runs is expected to take at least:
    /// where it has run past the longest ended one, the figure as it would be were it to
    /// end now, so that the figure does not leap when it ends (a successor started by the
    /// figure before would arrive late); and how many seconds that grows for each second it
    /// runs on. In the simulator, the second long task of a batch went to a worker while
    /// the first still ran, the short ones' tail saying nothing about it. One still running
    /// below the longest is not counted: with 2 s waits one in 5, a tail widened by those
    /// running cost 3 % more and killed no fewer where the long ones varied.
    pub fn running(&self, running: Duration) -> Growing {
        let us = running.as_micros().min(u128::from(MAX_MICROS)) as u64;
        if us <= self.top[0] {
            return Growing {
                now: Duration::from_micros(self.end()).max(running),
                pace: 1.0,
            };
        }
        let then = self.with_longest(us);
        // The end grows with the attempt: by one and the part of the mean gap it makes.
        let pace = match then.near {
            0 | 1 => 1.0,
            n => 1.0 + 1.0 / (n - 1).min(TAIL_GAPS) as f64,
        };
        Growing {
            now: Duration::from_micros(then.end()).max(running),
            pace,
        }
    }
}

/// How many long attempts a [`LongKeep`] holds.
const LONG_KEPT: usize = 16;

/// How many attempts of its kind a long attempt stays in the figure for: four windows.
pub const LONG_REMEMBERED: u64 = 4 * RECENT_DURATIONS as u64;

/// The long attempts of one kind (tasks with or without a timeout of their own), kept for
/// [`LONG_REMEMBERED`] attempts of that kind: where one task in a hundred is long, a window
/// of 256 holds two or three of them and none one time in twelve, and a [`Tail`] over
/// one long attempt (or none) ends far from where the long ones do (twice the one, or the
/// short ones' end). An attempt is long if it took at least half the longest known when
/// it ended; the newest [`LONG_KEPT`] are held (256 bytes).
#[derive(Debug, Default)]
struct LongKeep {
    /// Attempts of the kind so far.
    count: u64,
    /// (its number among them, microseconds), oldest first.
    kept: VecDeque<(u64, u64)>,
}

impl LongKeep {
    /// An attempt took `us`; `longest` was the longest known.
    fn push(&mut self, us: u64, longest: u64) {
        self.count += 1;
        while self
            .kept
            .front()
            .is_some_and(|&(n, _)| n + LONG_REMEMBERED < self.count)
        {
            self.kept.pop_front();
        }
        if us >= longest / 2 {
            if self.kept.len() >= LONG_KEPT {
                self.kept.pop_front();
            }
            self.kept.push_back((self.count, us));
        }
    }

    /// The kept attempts older than the newest `window` of their kind (those are in the
    /// window already); [`LongKeep::push`] has let the ones past remembering go.
    fn before(&self, window: usize) -> impl Iterator<Item = u64> + Clone + '_ {
        let from = self.count.saturating_sub(window as u64);
        self.kept
            .iter()
            .filter(move |&&(n, _)| n <= from)
            .map(|&(_, us)| us)
    }
}

/// A [`Tail`] shared with the workers (written by its owner at a recount).
#[derive(Debug, Default)]
struct TailCell(Mutex<Tail>);

impl TailCell {
    fn store(&self, t: Tail) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }

    fn load(&self) -> Tail {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An instant's key in a [`Figure`]: microseconds after its base.
fn key_of(base: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(base)
        .as_micros()
        .min(u128::from(u64::MAX - 1)) as u64
}

/// How much of a worker's life a task expected to take `expected` needs: the expected
/// duration with its margin and slack.
pub fn needed(expected: Duration) -> Duration {
    expected.mul_f64(ADMISSION_MARGIN) + ADMISSION_SLACK
}

/// The age at which a worker with `timeout` of life takes its last task. By duration with
/// a figure that fits in a whole life: the life less what a task needs. Otherwise (the
/// fraction rule, nothing measured, or tasks that would not fit even a fresh worker, where
/// the figure cannot plan anything): `fraction` of the life. By duration, an attempt
/// `running` that long already is a task at least that long, expected to take at least
/// what `running_expected` says ([`Tail::running`]): no later than what that needs, or what
/// its run so far needs where the expectation would not fit a whole life (and the
/// fraction, if even that would not).
pub fn admission_end(
    admission: Admission,
    fraction: f64,
    timeout: Duration,
    expected: Option<Duration>,
    running: Option<Duration>,
    running_expected: Option<Growing>,
) -> Duration {
    let fraction_end = timeout.mul_f64(fraction);
    if admission != Admission::Duration {
        return fraction_end;
    }
    let by = |d: Duration| {
        if needed(d) < timeout {
            timeout - needed(d)
        } else {
            fraction_end
        }
    };
    let planned = expected.map_or(fraction_end, by);
    let running = running_expected
        .map(|e| e.now)
        .filter(|&e| needed(e) < timeout)
        .or(running);
    running.map_or(planned, |r| planned.min(by(r)))
}

/// The share of a fresh worker's `life` in which it takes tasks without a timeout of their
/// own, tasks being `expected` to take that long ([`admission_end`] over the life), and the
/// life that would not be short for them ([`life_wanted`]).
pub fn admitting_share(
    admission: Admission,
    fraction: f64,
    life: Duration,
    expected: Option<Duration>,
) -> (f64, Option<Duration>) {
    if life.is_zero() {
        return (0.0, None);
    }
    let end = admission_end(admission, fraction, life, expected, None, None);
    (
        end.as_secs_f64() / life.as_secs_f64(),
        life_wanted(end, life, fraction),
    )
}

/// Where a worker with `life` takes its last task at `end`, earlier than `fraction` of it
/// (the fixed rule's end): the shortest life in which what that last task needs of it
/// (`life - end`) leaves `fraction` of the life to admit in, as the fixed rule's workers
/// have. `None` where admissions end no earlier than the fixed rule's.
pub fn life_wanted(end: Duration, life: Duration, fraction: f64) -> Option<Duration> {
    (end < life.mul_f64(fraction)).then(|| {
        life.saturating_sub(end)
            .div_f64((1.0 - fraction).max(f64::EPSILON))
    })
}

/// What a worker's assessment reads of a [`Figure`] ([`Figure::read`]): see the fields of
/// the same names of [`super::WorkerView`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// Where the recent attempts' tail ends.
    pub expected: Option<Duration>,
    /// How long the longest-running attempt has run.
    pub running_for: Option<Duration>,
    /// What it is expected to take at least ([`Tail::running`]).
    pub running_expected: Option<Growing>,
    /// Where the tail of the recent attempts of tasks with a timeout of their own ends.
    pub expected_bounded: Option<Duration>,
    /// What the longest-running of those is expected to take at least.
    pub bounded_running_expected: Option<Duration>,
}

/// An expectation that grows while its attempt runs: what it is now, and how many seconds
/// it grows in a second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Growing {
    /// What it is now.
    pub now: Duration,
    /// Seconds it grows in a second of the attempt's run.
    pub pace: f64,
}

/// Whether a task bounded by its own `timeout` fits in `left` of a worker's life, whatever
/// it takes below its timeout (the timeout ends it).
pub fn fits(left: Duration, timeout: Duration) -> bool {
    timeout + ADMISSION_SLACK <= left
}

/// How much of a worker's life a task bounded by its own `timeout` needs: the timeout and
/// the slack, or less where the function's recent bounded attempts at the worker's size
/// (`measured`, their longest) say less, as an unbounded task's figure does ([`needed`]);
/// such an attempt `running` longer than that raises it, as a running attempt raises
/// [`admission_end`]. A timeout is a bound, not an estimate: users set it generously (ten
/// times what a task takes is common), and a worker planned on it stops taking such tasks
/// long before it must.
pub fn bounded_need(timeout: Duration, measured: Option<Duration>, running: Option<Duration>) -> Duration {
    let whole = timeout + ADMISSION_SLACK;
    match measured {
        Some(m) => whole.min(needed(m.max(running.unwrap_or_default()))),
        None => whole,
    }
}

/// How long before a worker's admissions end its successor is started: what a new worker
/// of its function takes to be of use (its measured cold start, at the slow end of the
/// recent ones, or spawn to first result less a task where that is longer).
pub fn successor_lead(
    cold_start_slow: Option<Duration>,
    first_result: Option<Duration>,
    task: Option<Duration>,
) -> Duration {
    let ready = match (first_result, task) {
        (Some(f), Some(t)) => Some(f.saturating_sub(t)),
        _ => None,
    };
    cold_start_slow.max(ready).unwrap_or_default()
}

/// The tasks a worker whose admissions end in `left` still covers for scale-out: its free
/// slots now, plus its `slots` times the tasks one slot finishes one after another in that
/// time (each taking `task`), at most `ahead` per slot.
pub fn covers_before_end(
    free_now: u32,
    slots: u32,
    left: Duration,
    task: Option<Duration>,
    ahead: u32,
) -> u64 {
    let turns = match task {
        Some(t) if !t.is_zero() => {
            ((left.as_secs_f64() / t.as_secs_f64()).floor() as u64).min(u64::from(ahead))
        }
        _ => 0,
    };
    u64::from(free_now) + u64::from(slots) * turns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_figure_is_the_recent_attempts_tail_once_enough_are_known() {
        let mut d = Durations::default();
        for _ in 0..MIN_DURATIONS - 1 {
            d.push(ms(100), false);
        }
        assert_eq!(d.longest(), None);
        d.push(ms(100), false);
        assert_eq!(d.longest(), Some(ms(100)));
        // One long attempt among short ones raises it at once.
        d.push(ms(2000), false);
        assert_eq!(d.longest(), Some(ms(2000)));
        let handle = d.handle();
        assert_eq!(handle.longest(), Some(ms(2000)));
        // The window is bounded, and the long one is kept past it (one in hundreds stays
        // in the figure); once it is older than that, the figure falls.
        for _ in 0..RECENT_DURATIONS + RECOMPUTE_EVERY {
            d.push(ms(10), false);
        }
        assert_eq!(d.longest(), Some(ms(2000)));
        assert!(d.recent.len() <= RECENT_DURATIONS);
        for _ in 0..LONG_REMEMBERED as usize {
            d.push(ms(10), false);
        }
        assert_eq!(d.longest(), Some(ms(10)));
    }

    #[test]
    fn the_tail_ends_past_the_longest_by_how_the_longest_few_spread() {
        let tail = |v: &[u64]| Tail::of(v.iter().map(|&ms| ms * 1000)).figure();
        assert_eq!(tail(&[]), None);
        // Alike: the longest.
        assert_eq!(tail(&[50, 2000, 2000, 50, 2000]), Some(ms(2000)));
        // One long among short ones: itself.
        assert_eq!(tail(&[50, 60, 2000, 50]), Some(ms(2000)));
        // Two: the longest and the gap between them.
        assert_eq!(tail(&[50, 1500, 2000]), Some(ms(2500)));
        // Many: the mean of the four gaps below the longest, (2000 - 1100) / 4.
        assert_eq!(tail(&[1000, 1200, 1400, 1600, 2000, 1100, 50]), Some(ms(2225)));
        // Short ones below half the longest are not its tail.
        assert_eq!(tail(&[999, 2000, 2000]), Some(ms(2000)));
    }

    #[test]
    fn a_running_attempt_counts_as_if_it_ended_now() {
        let mut d = Durations::default();
        for _ in 0..MIN_DURATIONS {
            d.push(ms(50), false);
        }
        d.push(ms(1500), false);
        let f = d.handle();
        let tail = f.open.load();
        // Shorter than the longest: the tail stands.
        assert_eq!(tail.running(ms(1000)).now, ms(1500));
        assert_eq!(tail.running(ms(1000)).pace, 1.0);
        // Past it: what the tail would be, were it to end now, and no leap when it does.
        let running = tail.running(ms(2000));
        assert_eq!(running.now, ms(2500));
        assert_eq!(running.pace, 2.0);
        d.push(ms(2000), false);
        assert_eq!(d.longest(), Some(running.now));
        // Nothing long known: itself.
        assert_eq!(Tail::default().running(ms(700)).now, ms(700));
    }

    #[test]
    fn a_long_attempt_without_a_bound_stays_in_the_figure_among_bounded_ones() {
        let mut d = Durations::default();
        d.push(ms(2000), false);
        for _ in 0..MIN_DURATIONS {
            d.push(ms(50), true);
        }
        assert_eq!(d.longest(), Some(ms(2000)));
        // Bounded attempts pushing it out of everyone's window do not push it out of the
        // window of attempts without a bound.
        for _ in 0..2 * RECENT_DURATIONS {
            d.push(ms(50), true);
        }
        assert_eq!(d.longest(), Some(ms(2000)));
        assert_eq!(d.median(), Some(ms(50)), "the median is everyone's");
        // Unbounded attempts do push it out, once it is older than the long ones are kept.
        for _ in 0..LONG_REMEMBERED as usize + RECOMPUTE_EVERY {
            d.push(ms(50), false);
        }
        assert_eq!(d.longest(), Some(ms(50)));
        assert!(d.open.len() <= RECENT_DURATIONS);
    }

    #[test]
    fn admissions_end_by_what_a_task_needs_or_by_the_fraction() {
        let life = Duration::from_secs(10);
        // Short tasks: nearly the whole life.
        assert_eq!(
            admission_end(Admission::Duration, 0.8, life, Some(ms(40)), None, None),
            life - needed(ms(40))
        );
        // Long tasks: earlier than the fraction.
        assert_eq!(
            admission_end(Admission::Duration, 0.8, life, Some(ms(4000)), None, None),
            life - needed(ms(4000))
        );
        // Nothing measured, the fraction rule, or a task longer than any life: the fraction.
        assert_eq!(
            admission_end(Admission::Duration, 0.8, life, None, None, None),
            ms(8000)
        );
        assert_eq!(
            admission_end(Admission::Fraction, 0.8, life, Some(ms(40)), Some(ms(9000)), None),
            ms(8000)
        );
        assert_eq!(
            admission_end(Admission::Duration, 0.8, life, Some(ms(9000)), None, None),
            ms(8000)
        );
    }

    #[test]
    fn an_attempt_still_running_ends_admissions_as_if_it_had_ended() {
        let life = Duration::from_secs(10);
        // Short tasks known, one running for 4 s already: as if 4 s were known.
        assert_eq!(
            admission_end(Admission::Duration, 0.8, life, Some(ms(40)), Some(ms(4000)), None),
            life - needed(ms(4000))
        );
        // Nothing known yet: the fraction, or earlier if what runs says so.
        assert_eq!(
            admission_end(Admission::Duration, 0.8, life, None, Some(ms(100)), None),
            ms(8000)
        );
        assert_eq!(
            admission_end(Admission::Duration, 0.8, life, None, Some(ms(4000)), None),
            life - needed(ms(4000))
        );
        // Running shorter than the figure: the figure.
        assert_eq!(
            admission_end(
                Admission::Duration,
                0.8,
                life,
                Some(ms(4000)),
                Some(ms(100)),
                None
            ),
            life - needed(ms(4000))
        );
        // Running longer than any life could fit (a task hung): the fraction, no less.
        assert_eq!(
            admission_end(Admission::Duration, 0.8, life, Some(ms(40)), Some(ms(9500)), None),
            ms(8000)
        );
    }

    #[test]
    fn the_figure_knows_how_long_the_oldest_running_attempt_has_run() {
        let f = Figure::default();
        let t0 = Instant::now();
        assert_eq!(f.running_for(t0), None);
        let a = f.started(t0, false);
        let b = f.started(t0 + ms(300), false);
        let c = f.started(t0 + ms(300), false);
        assert_eq!(f.running_for(t0 + ms(1000)), Some(ms(1000)));
        f.ended(a, false);
        assert_eq!(f.running_for(t0 + ms(1000)), Some(ms(700)));
        f.ended(b, false);
        assert_eq!(f.running_for(t0 + ms(1000)), Some(ms(700)), "two started then");
        f.ended(c, false);
        assert_eq!(f.running_for(t0 + ms(1000)), None);
        // An unknown key changes nothing, nor does a second end of one.
        f.ended(12345, false);
        f.ended(a, false);
        assert_eq!(f.running_for(t0 + ms(1000)), None);
    }

    #[test]
    fn one_attempt_running_long_among_many_short_ones_holds_little() {
        let f = Figure::default();
        let t0 = Instant::now();
        let long = f.started(t0, false);
        for i in 1..=100_000 {
            let k = f.started(t0 + Duration::from_micros(i), false);
            f.ended(k, false);
        }
        assert!(f.starts.lock().unwrap().keys.len() <= 2 + 64);
        assert_eq!(f.running_for(t0 + ms(500)), Some(ms(500)));
        f.ended(long, false);
        assert_eq!(f.running_for(t0 + ms(500)), None);
        assert!(f.starts.lock().unwrap().keys.is_empty());
    }

    #[test]
    fn a_task_with_its_own_timeout_fits_only_with_the_slack() {
        assert!(fits(ms(1000), ms(750)));
        assert!(!fits(ms(1000), ms(751)));
    }

    #[test]
    fn a_bounded_task_needs_what_its_kind_takes_never_more_than_its_timeout() {
        // Nothing measured of bounded tasks: the timeout and the slack.
        assert_eq!(bounded_need(ms(1000), None, None), ms(1000) + ADMISSION_SLACK);
        // 1 s timeouts on tasks that take 40 ms: what 40 ms needs.
        assert_eq!(bounded_need(ms(1000), Some(ms(40)), None), needed(ms(40)));
        // One running longer raises it, the timeout caps it.
        assert_eq!(
            bounded_need(ms(1000), Some(ms(40)), Some(ms(400))),
            needed(ms(400))
        );
        assert_eq!(
            bounded_need(ms(1000), Some(ms(40)), Some(ms(2000))),
            ms(1000) + ADMISSION_SLACK
        );
        // Measured longer than this task's timeout (others have longer ones): the timeout.
        assert_eq!(
            bounded_need(ms(1000), Some(ms(5000)), None),
            ms(1000) + ADMISSION_SLACK
        );
    }

    #[test]
    fn bounded_attempts_have_a_figure_of_their_own() {
        let mut d = Durations::default();
        for _ in 0..MIN_DURATIONS {
            d.push(ms(2000), false);
        }
        let f = d.handle();
        assert_eq!(f.longest_bounded(), None);
        d.push(ms(70), true);
        for _ in 0..MIN_DURATIONS - 2 {
            d.push(ms(50), true);
        }
        assert_eq!(f.longest_bounded(), None, "fewer than enough");
        d.push(ms(50), true);
        // 70 ms and the mean gap of the four below it (20 ms).
        assert_eq!(f.longest_bounded(), Some(ms(75)));
        assert_eq!(
            f.longest(),
            Some(ms(2000)),
            "everyone's figure keeps the long ones"
        );
        // A longer bounded attempt raises it at once; once older than the long ones are
        // kept, it falls.
        d.push(ms(300), true);
        assert_eq!(f.longest_bounded(), Some(ms(300)));
        for _ in 0..LONG_REMEMBERED as usize + RECOMPUTE_EVERY {
            d.push(ms(60), true);
        }
        assert_eq!(f.longest_bounded(), Some(ms(60)));
        assert!(d.closed.len() <= RECENT_DURATIONS);
    }

    #[test]
    fn running_bounded_attempts_are_followed_apart() {
        let f = Figure::default();
        let t0 = Instant::now();
        let open = f.started(t0, false);
        let bounded = f.started(t0 + ms(400), true);
        assert_eq!(f.running_for(t0 + ms(1000)), Some(ms(1000)));
        assert_eq!(f.bounded_running_for(t0 + ms(1000)), Some(ms(600)));
        f.ended(open, false);
        assert_eq!(f.running_for(t0 + ms(1000)), Some(ms(600)));
        f.ended(bounded, true);
        assert_eq!(f.running_for(t0 + ms(1000)), None);
        assert_eq!(f.bounded_running_for(t0 + ms(1000)), None);
    }

    #[test]
    fn a_successor_leads_by_its_slowest_way_to_be_ready() {
        assert_eq!(successor_lead(None, None, None), Duration::ZERO);
        assert_eq!(successor_lead(Some(ms(800)), None, Some(ms(50))), ms(800));
        assert_eq!(
            successor_lead(Some(ms(800)), Some(ms(1500)), Some(ms(100))),
            ms(1400)
        );
    }

    #[test]
    fn a_worker_near_its_end_covers_what_it_can_still_start() {
        // 2 free of 8; 1 s left; 100 ms tasks, at most 3 turns a slot: 2 + 8 x 3.
        assert_eq!(covers_before_end(2, 8, ms(1000), Some(ms(100)), 3), 26);
        // 250 ms left: 2 turns.
        assert_eq!(covers_before_end(2, 8, ms(250), Some(ms(100)), 3), 18);
        // Nothing measured: its free slots only.
        assert_eq!(covers_before_end(2, 8, ms(250), None, 3), 2);
    }
}
