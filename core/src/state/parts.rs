//! What the state is made of besides its owners: a connected worker, and the pool and
//! counters of each function.

use super::*;

/// A connected worker.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) function: Arc<str>,
    /// Which connection of this id (timers carry it).
    pub(super) conn: u64,
    pub(super) vcpus: u32,
    pub(super) memory_mb: u32,
    /// Its concurrency limit: how many tasks it may run at once, adapted to its samples.
    pub(super) limit: Limit,
    /// How its limit moves (the rule's, capped by the worker's own maximum).
    pub(super) limit_params: LimitParams,
    pub(super) timeout: Duration,
    pub(super) connected_at: Instant,
    /// Where its bill starts: its spawn (a process's start, a Lambda invocation's, init
    /// included, as Lambda bills it), or its hello for a worker this coordinator did not
    /// start.
    pub(super) billed_from: Instant,
    pub(super) instance: String,
    /// Spawn to hello, in ms; 0 if this coordinator did not spawn it.
    pub(super) cold_start_ms: u64,
    pub(super) sample: Option<pb::ResourceSample>,
    pub(super) cpu: f64,
    pub(super) mem: f64,
    /// Running tasks with the attempt each runs.
    pub(super) running: Running,
    pub(super) assigned_total: u64,
    pub(super) done: u64,
    /// It has run as many tasks at once as its limit, on ready runtime copies (its level
    /// reached from cold).
    pub(super) reached: bool,
    /// It started at a known level (a settled one learned for its function and size, or a
    /// pinned one), not climbing from its vCPUs: what it cost is what its size costs.
    pub(super) at_known_level: bool,
    pub(super) idle_since: Instant,
    /// Told to shut down: gets nothing new.
    pub(super) stopping: bool,
    /// Whether its stream is up; `false` while it is broken and the worker may reconnect.
    pub(super) attached: bool,
    /// When its stream broke (it keeps its tasks until the grace period ends).
    pub(super) detached_since: Option<Instant>,
    /// When it last sent anything (the liveness lease).
    pub(super) last_seen: Instant,
    /// When the keep-alive recheck already scheduled for it fires, so that samples (which
    /// re-evaluate it every interval) do not pile up timers.
    pub(super) recheck_at: Option<Instant>,
    /// Tasks taken away from it (cancelled, timed out): a late result for one is ignored,
    /// not a protocol error. Bounded.
    pub(super) released: VecDeque<TaskId>,
    /// Its key in its function's index of eligible workers, while it is in it.
    pub(super) indexed: Option<IndexKey>,
    /// While a dispatch is under way: which of its batches of assignments is this
    /// worker's (reset when the batches are sent).
    pub(super) batch: Option<usize>,
    /// The highest memory use it has reported, as a fraction of its limit.
    pub(super) peak_mem: f64,
    /// Its admissions ended while tasks waited, and that was counted.
    pub(super) refused_for_time: bool,
    /// Its admissions have ended for time and its limit was told it is no longer filled.
    pub(super) drained: bool,
    /// Its function was relearned since it said hello: it may run the handler that was
    /// replaced, so its level and its cost are not learned.
    pub(super) before_relearn: bool,
}

impl Worker {
    /// A worker that just said `hello`, with its first limit and how it moves.
    pub(super) fn new(
        function: Arc<str>,
        conn: u64,
        hello: &pb::Hello,
        (limit, limit_params): (Limit, LimitParams),
        timeout: Duration,
        arrival: super::workers::Arrival,
        now: Instant,
    ) -> Self {
        let at_known_level = limit.phase() != crate::scheduler::limit::Phase::Probing;
        Self {
            function,
            conn,
            vcpus: hello.vcpus,
            memory_mb: hello.memory_mb,
            limit,
            limit_params,
            timeout,
            connected_at: now,
            billed_from: arrival.billed_from,
            instance: arrival.instance,
            cold_start_ms: arrival.cold_start_ms,
            sample: None,
            cpu: 0.0,
            mem: 0.0,
            running: Running::new(arrival.expected),
            assigned_total: 0,
            done: 0,
            reached: false,
            at_known_level,
            idle_since: now,
            stopping: false,
            attached: true,
            detached_since: None,
            last_seen: now,
            recheck_at: None,
            released: VecDeque::new(),
            indexed: None,
            batch: None,
            peak_mem: 0.0,
            refused_for_time: false,
            drained: false,
            before_relearn: false,
        }
    }

    /// Whether it may take one more task now.
    pub(super) fn eligible(&self, rules: &Rules, now: Instant) -> bool {
        scheduler::assess(rules, &self.view(now)) == Verdict::Eligible
    }

    /// Its key in the index of eligible workers, or `None` if it may take nothing now.
    pub(super) fn index_key(&self, rules: &Rules, now: Instant) -> Option<IndexKey> {
        self.eligible(rules, now).then(|| {
            (
                scheduler::rank(rules.placement, self.running.len() as u32, self.limit.value()),
                self.conn,
            )
        })
    }

    pub(super) fn view(&self, now: Instant) -> WorkerView {
        let read = self.running.figure.read(now);
        WorkerView {
            age: now.saturating_duration_since(self.connected_at),
            timeout: self.timeout,
            expected: read.expected,
            running_for: read.running_for,
            running_expected: read.running_expected,
            expected_bounded: read.expected_bounded,
            bounded_running_expected: read.bounded_running_expected,
            cpu: scheduler::cpu_estimate(
                self.cpu,
                self.sample.map_or(0, |s| s.running_tasks),
                self.running.len() as u32,
            ),
            mem: self.mem,
            running: self.running.len() as u32,
            slots: self.limit.value(),
            assigned_total: self.assigned_total,
            idle_for: if self.running.is_empty() {
                now.saturating_duration_since(self.idle_since)
            } else {
                Duration::ZERO
            },
            stopping: self.stopping,
            attached: self.attached,
        }
    }

    /// Sends `kind` down its stream, if it is up.
    pub(super) fn send(&self, kind: Kind, effects: &mut Effects) {
        if self.attached {
            effects.message(self.conn, kind);
        }
    }

    /// Takes a task away from this worker, remembering it so a late result is ignored.
    pub(super) fn release(&mut self, task: TaskId, now: Instant) {
        self.running.remove(task);
        if self.running.is_empty() {
            self.idle_since = now;
        }
        if self.released.len() >= RELEASED_MEMORY {
            self.released.pop_front();
        }
        self.released.push_back(task);
    }
}

/// A worker's running tasks with the attempt each runs, each noted while it runs in the
/// figure its function's [`scheduler::life::Durations`] keeps for the worker's size (what
/// the longest-running one has run bounds what a task may take). Dropped with its worker:
/// what it still holds leaves the figure then.
#[derive(Debug)]
pub(super) struct Running {
    tasks: Vec<(TaskId, u32)>,
    /// Each task's key in the figure, and whether it has a timeout of its own, in the same
    /// order.
    starts: Vec<(u64, bool)>,
    figure: Arc<scheduler::life::Figure>,
}

impl Running {
    fn new(figure: Arc<scheduler::life::Figure>) -> Self {
        Self {
            tasks: Vec::new(),
            starts: Vec::new(),
            figure,
        }
    }

    /// Attempt `attempt` of `task` starts on the worker at `now`; `bounded`: the task has
    /// a timeout of its own.
    pub(super) fn push(&mut self, (task, attempt): (TaskId, u32), now: Instant, bounded: bool) {
        self.tasks.push((task, attempt));
        self.starts.push((self.figure.started(now, bounded), bounded));
    }

    /// Takes the running task at `pos` off (the last takes its place).
    pub(super) fn swap_remove(&mut self, pos: usize) -> (TaskId, u32) {
        let (key, bounded) = self.starts.swap_remove(pos);
        self.figure.ended(key, bounded);
        self.tasks.swap_remove(pos)
    }

    /// How many of its tasks have run since before `at`.
    pub(super) fn started_before(&self, at: Instant) -> u32 {
        match self.figure.key_at(at) {
            Some(key) => self.starts.iter().filter(|&&(k, _)| k < key).count() as u32,
            None => 0,
        }
    }

    /// Takes every running task off, returning them.
    pub(super) fn clear(&mut self) -> Vec<(TaskId, u32)> {
        for (key, bounded) in self.starts.drain(..) {
            self.figure.ended(key, bounded);
        }
        std::mem::take(&mut self.tasks)
    }

    /// Takes `task` off, if it runs here.
    pub(super) fn remove(&mut self, task: TaskId) {
        if let Some(pos) = self.tasks.iter().position(|(t, _)| *t == task) {
            self.swap_remove(pos);
        }
    }
}

impl std::ops::Deref for Running {
    type Target = [(TaskId, u32)];

    fn deref(&self) -> &Self::Target {
        &self.tasks
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A worker's place in its function's index of eligible workers: its placement rank, then
/// its connection number (older connections first among equals).
pub(super) type IndexKey = (u64, u64);

/// Per-function pool and counters.
#[derive(Debug, Default)]
pub(super) struct FunctionPool {
    /// Pending task ids in order; may hold ids cancelled since (skipped when popped).
    pub(super) pool: VecDeque<TaskId>,
    /// Until then it scales out at once (a worker per uncovered task): a task submitted
    /// with a deadline is waiting.
    pub(super) urgent_until: Option<Instant>,
    /// The earliest deadline of its tasks submitted with one in the current busy spell (since
    /// it last had nothing pending), while it has not passed: new workers get a size that
    /// meets it (see `State::choose_size`).
    pub(super) due: Option<Instant>,
    /// The most of its tasks pending at once since it last had none pending, and the same
    /// figure of the busy spell before: how much work a deadline's size must reckon with
    /// while a batch is still arriving.
    pub(super) peak_pending: u64,
    pub(super) last_peak: u64,
    /// How many of its tasks are in each phase (changed only as its tasks change: see
    /// `counts.rs`).
    pub(super) tasks: TaskCounts,
    /// Attempts given back to the pool (lost worker, timeout, restart) for another try.
    pub(super) retried: u64,
    /// Attempts that ran past their timeout.
    pub(super) timed_out: u64,
    /// The highest pinned limit any worker of this function has had (never lowered: with
    /// the cap on adaptive limits it bounds every live worker's free slots, for scale-out).
    pub(super) max_slots: u32,
    /// The workers that may take a task, best first by the placement policy: dispatch
    /// takes the first, never scans the fleet. A worker is re-keyed ([`State::reindex`])
    /// whenever it changes (connect, resume, sample, result, assignment, cancel, timeout,
    /// shutdown, lost stream). Time alone only makes a worker ineligible (its deadline
    /// fraction), so one found past it is dropped when dispatch meets it.
    pub(super) eligible: BTreeMap<IndexKey, WorkerId>,
    /// Workers that said hello, over the coordinator's life.
    pub(super) workers_started: u64,
    /// Spawns that failed, over the coordinator's life.
    pub(super) spawn_failures: u64,
    /// Spawns failed since the last that succeeded: sets the backoff and, at
    /// `--max-spawn-failures`, fails the pending tasks.
    pub(super) consecutive_spawn_failures: u32,
    /// No spawn for this function before then (the backoff after a failure).
    pub(super) spawn_blocked_until: Option<Instant>,
    /// Why the most recent spawn failed, and when.
    pub(super) last_spawn_error: String,
    pub(super) last_spawn_error_at: Option<Instant>,
    /// Spawned workers that said hello, and the cold starts (ms) of the most recent ones.
    pub(super) cold_starts: u64,
    pub(super) recent_cold_starts: super::workers::ColdStarts,
    /// The recent cold starts at each memory size (at most [`MAX_DURATION_SIZES`]): a
    /// successor is started ahead by the slow end of those at the size new workers get
    /// (their 99th percentile, or while few are known their fitted tail: see
    /// `workers::slow_end`), or of those at any size where none is known there.
    pub(super) cold_starts_at: BTreeMap<u32, super::workers::ColdStarts>,
    /// Billed GB-ms of workers that have ended.
    pub(super) billed_gb_ms: f64,
    /// What Lambda bills per request for the same attempts: each attempt's own duration
    /// (rounded up to the ms) and each spawned worker's init (spawn to hello), in GB-ms;
    /// and the attempts that finished on a worker (each one request).
    pub(super) request_gb_ms: f64,
    pub(super) requests: u64,
    /// The highest memory use any of its workers reported, as a fraction of its limit.
    pub(super) peak_mem: f64,
    /// What a new worker costs before it is any use, and what a task takes: how long its
    /// workers took from their spawn to their first result, and its attempts' durations
    /// (moving averages; `None` until seen). Scale-out weighs one against the other.
    pub(super) reach: scheduler::Reach,
    /// Its attempts' durations per memory size, and the longest: when a worker's admissions
    /// end. At most [`MAX_DURATION_SIZES`] sizes (a worker of another size shares the
    /// figure kept under size 0).
    pub(super) durations: BTreeMap<u32, scheduler::life::Durations>,
    /// Times a task was not given to a worker for lack of time left in its life: a worker
    /// whose admissions ended with tasks waiting, or a task whose own timeout fitted no
    /// live worker.
    pub(super) refused_for_time: u64,
    /// Workers started to take over from workers whose admissions were about to end, and
    /// how long before the soonest such end the latest was started, in ms.
    pub(super) successors: u64,
    pub(super) successor_lead_ms: u64,
    /// Attempts lost because their worker reached the end of its life while they ran.
    pub(super) killed_at_deadline: u64,
    /// The life its latest new worker said it had at its hello (a fresh worker's life,
    /// Stats' `admitting_share` reads it; `--execution-timeout` until one has).
    pub(super) life: Option<Duration>,
    /// Whether the log has said that its workers' lives are short for its tasks (once).
    pub(super) told_short_life: bool,
    /// Until then scale-out need not look for workers near the end of their admissions (none
    /// comes within its successor's lead of its end before; looked at again at least every
    /// sample interval, as figures move).
    pub(super) ending_scan_at: Option<Instant>,
    /// The last scale-out pass over a large fleet that started nothing: when, the tasks
    /// pending then, and the function's workers and spawns then (see `State::spawn_for`).
    pub(super) idle_pass: Option<(Instant, u64, usize)>,
    /// Tasks with their own timeout that fitted no live worker at the last dispatch: a
    /// fresh worker is started for them.
    pub(super) unfit: u32,
    /// Tasks bounded by their own timeout that a worker took after its admissions had ended
    /// for time.
    pub(super) taken_late: u64,
    /// The hand-over wait (see [`super::State::watch_handovers`]): since when tasks have
    /// waited with every live worker's admissions ended; the waits, in all; the longest.
    pub(super) handover_since: Option<Instant>,
    pub(super) handover_wait: Duration,
    pub(super) handover_longest: Duration,
    /// Whether a task with its own timeout has entered the pool: only then does a dispatch
    /// look through the pool for tasks a worker whose admissions ended can still take.
    pub(super) bounded: bool,
    /// Tasks of the tail held back at the last dispatch for slots about to free on workers
    /// that run anyway ([`scheduler::tail`]): not work a new worker is started for.
    pub(super) held: u32,
    /// When the look again after a hold is due (one timer at a time).
    pub(super) hold_timer: Option<Instant>,
    /// A hold has kept tasks in the pool since the last dispatch that held none: the idle
    /// workers it kept are looked at again once it ends.
    pub(super) holding: bool,
}

/// The most memory sizes a function keeps duration figures for.
pub(super) const MAX_DURATION_SIZES: usize = 16;

impl FunctionPool {
    /// Queues task `id` at the back of the pool; `bounded`: it has a timeout of its own.
    pub(super) fn queue(&mut self, id: TaskId, bounded: bool) {
        self.pool.push_back(id);
        self.bounded |= bounded;
    }

    /// The duration figure of its workers of `memory_mb` (created on first use, within
    /// [`MAX_DURATION_SIZES`]).
    pub(super) fn durations(&mut self, memory_mb: u32) -> &mut scheduler::life::Durations {
        let key = if self.durations.contains_key(&memory_mb) || self.durations.len() < MAX_DURATION_SIZES {
            memory_mb
        } else {
            0
        };
        self.durations.entry(key).or_default()
    }

    /// Where the tail of its recent attempts at `memory_mb` ends, once enough are known, or
    /// what an attempt running there now is expected to take, if longer (the figure
    /// admissions use).
    pub(super) fn expected(&self, memory_mb: u32, now: Instant) -> Option<Duration> {
        let d = self
            .durations
            .get(&memory_mb)
            .or_else(|| self.durations.get(&0))?;
        let read = d.read(now);
        let running = read.running_expected.map_or(Duration::ZERO, |g| g.now);
        read.expected.map(|l| l.max(running))
    }

    /// No task pending, accepting or running (the caller asks the roster and the spawns for
    /// its workers).
    pub(super) fn is_idle(&self) -> bool {
        self.tasks.pending() == 0 && self.tasks.accepting() == 0 && self.tasks.running() == 0
    }
}
