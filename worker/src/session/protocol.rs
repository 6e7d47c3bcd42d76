//! A session's protocol state, pure: what the worker knows of its conversation with the
//! coordinator (the tasks it runs, the results it may have to repeat, the limit it was
//! given, whether it was told to shut down, when a sample is due), changed only by events
//! (a welcome, a message from the coordinator, tasks joined, a look at itself), each of
//! which returns the [`Action`]s to carry out. It reads no clock (the time is an argument),
//! holds no channel and runs nothing: the session's I/O loop (`session/mod.rs`) does, and
//! these rules are unit-tested on scripted sequences, as the coordinator's state is.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use carpool_proto::pb::{
    self, coordinator_message::Kind as Down, worker_message::Kind as Up, worker_task_result::Outcome,
};
use tracing::{debug, info, warn};

use crate::handler::Outcome as HandlerOutcome;

/// How long after its running tasks change the worker reports (the coordinator raises a
/// limit only on a sample whose newest task has run this long, so its memory shows).
pub const SETTLE: Duration = Duration::from_millis(25);
/// How often a worker with tasks running looks at its memory and CPU for a material move.
pub const PROBE: Duration = Duration::from_millis(50);
/// How long a sent result is remembered, to repeat after a break, counted while the
/// coordinator is heard from: it records a result within milliseconds of receiving it, so
/// one sent this long before the coordinator last spoke is on record. A coordinator that
/// went silent (paused, dead, cut off) may never have read what was sent to it: those
/// results are repeated however long the break and its successor take (within
/// [`RESEND_BYTES`] and [`RESEND_COUNT`]).
pub const RESEND_WINDOW: Duration = Duration::from_secs(5);
/// The most bytes of outputs remembered (and the coordinator's output limit, if lower), so
/// that a hello that repeats them stays within the message limit.
pub const RESEND_BYTES: usize = 4 << 20;
/// The most results remembered.
pub const RESEND_COUNT: usize = 4096;

/// What the I/O loop is to do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Start this task with the handler.
    Start(pb::TaskAssignment),
    /// Abort this running task (the coordinator cancelled it).
    Abort(u64),
    /// Tell the handler its concurrency limit.
    Limit(u32),
    /// Restart the sampler's CPU span: more tasks run than at any time since the last
    /// sample, so the next CPU figure covers them alone.
    MarkSampler,
    /// Send this up the stream.
    Send(Up),
}

/// A task future the I/O loop joined.
#[derive(Debug)]
pub(crate) enum Joined {
    /// It ran to its end.
    Finished(Finished),
    /// It was aborted (cancelled) before its end.
    Aborted,
}

/// A task that ran to its end, as the I/O loop saw it.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The task.
    pub task: u64,
    /// Its attempt.
    pub attempt: u32,
    /// When it started, Unix milliseconds.
    pub started_unix_ms: u64,
    /// When it ended, Unix milliseconds.
    pub finished_unix_ms: u64,
    /// How long it ran.
    pub took: Duration,
    /// What the handler returned.
    pub outcome: HandlerOutcome,
}

/// The protocol state of one worker's session: it outlives each stream (a reconnect keeps
/// the running tasks and repeats the recent results).
#[derive(Debug)]
pub(crate) struct Protocol {
    /// The worker's id, for logs.
    id: String,
    /// Tasks assigned and not yet ended or cancelled: their attempts.
    running: HashMap<u64, u32>,
    /// Task futures started and not yet joined (a cancelled one until its abort is joined).
    spawned: usize,
    /// Results sent up to [`RESEND_WINDOW`] before the coordinator last spoke, repeated in
    /// the next hello if the stream breaks (they may not have been recorded).
    recent: VecDeque<(Instant, pb::WorkerTaskResult)>,
    /// Their outputs' and errors' bytes, added up.
    recent_bytes: usize,
    /// The largest output the coordinator accepts (its Welcome); 0 before one.
    max_output: u64,
    /// The concurrency limit the coordinator last announced.
    limit: u32,
    /// The coordinator said Shutdown, for this reason.
    shutdown: Option<pb::ShutdownReason>,
    /// When the running tasks last reached a count higher than any since the last sample
    /// (a task started in place of one that ended adds nothing new to show, and is not
    /// the newest).
    newest: Option<Instant>,
    /// When the running tasks first changed since the last sample (a sample is due
    /// [`SETTLE`] later).
    changed: Option<Instant>,
    /// The most tasks that ran at once since the last sample.
    most_since_sample: u32,
    /// When the worker last looked at itself for a material move.
    last_probe: Instant,
    /// Tasks that ended (with an output or an error).
    tasks_run: u64,
    /// When the coordinator last spoke on this session (a Welcome or a message).
    heard: Instant,
}

impl Protocol {
    /// A fresh session's state at `now`.
    pub(crate) fn new(id: &str, now: Instant) -> Self {
        Self {
            id: id.to_owned(),
            running: HashMap::new(),
            spawned: 0,
            recent: VecDeque::new(),
            recent_bytes: 0,
            max_output: 0,
            limit: 0,
            shutdown: None,
            newest: None,
            changed: None,
            most_since_sample: 0,
            last_probe: now,
            tasks_run: 0,
            heard: now,
        }
    }

    /// What a hello says of the session so far: the running tasks with their attempts, and
    /// the results it may have to repeat.
    pub(crate) fn resume(&self) -> (Vec<u64>, Vec<u32>, Vec<pb::WorkerTaskResult>) {
        let (ids, attempts) = self.running.iter().map(|(&t, &a)| (t, a)).unzip();
        let recent = self.recent.iter().map(|(_, r)| r.clone()).collect();
        (ids, attempts, recent)
    }

    /// The coordinator's Welcome on a new stream: it has the repeated results now.
    pub(crate) fn welcomed(&mut self, welcome: &pb::Welcome, now: Instant) -> Vec<Action> {
        self.limit = welcome.slots;
        self.max_output = welcome.max_output_bytes;
        self.recent.clear();
        self.recent_bytes = 0;
        self.last_probe = now;
        self.heard = now;
        vec![Action::Limit(welcome.slots)]
    }

    /// A message from the coordinator.
    pub(crate) fn message(&mut self, kind: Down, now: Instant) -> Vec<Action> {
        self.heard = now;
        self.forget_recent();
        let id = &self.id;
        match kind {
            Down::Assign(assign) => {
                let mut actions = Vec::with_capacity(assign.tasks.len() + 1);
                for a in assign.tasks {
                    debug!(worker = %id, task = a.task_id, attempt = a.attempt, "task started");
                    self.running.insert(a.task_id, a.attempt);
                    self.spawned += 1;
                    actions.push(Action::Start(a));
                }
                // More tasks than at any time since the last sample (the coordinator raised
                // the limit): the next CPU figure covers them alone. A refill to the same
                // level keeps the span, so a task's start-up burst is averaged with the
                // others' quiet.
                let spawned = self.spawned as u32;
                if spawned > self.most_since_sample {
                    self.most_since_sample = spawned;
                    self.newest = Some(now);
                    actions.push(Action::MarkSampler);
                } else if spawned > 0 {
                    self.newest.get_or_insert(now);
                }
                self.changed.get_or_insert(now);
                actions
            }
            Down::Limit(l) => {
                debug!(worker = %id, slots = l.slots, "concurrency limit moved");
                self.limit = l.slots;
                vec![Action::Limit(l.slots)]
            }
            Down::Cancel(cancel) => cancel
                .task_ids
                .into_iter()
                .filter(|task| self.running.remove(task).is_some())
                .map(|task| {
                    info!(worker = %id, task, "task cancelled");
                    Action::Abort(task)
                })
                .collect(),
            Down::Shutdown(s) => {
                let reason = s.reason();
                info!(worker = %id, reason = reason.as_str_name(), running = self.spawned, "shutdown received");
                self.shutdown = Some(reason);
                Vec::new()
            }
            other => {
                warn!(worker = %id, ?other, "unexpected message ignored");
                Vec::new()
            }
        }
    }

    /// Task futures joined at `now`: their results go up, in messages within the
    /// coordinator's output limit, and are remembered for a resend.
    pub(crate) fn joined(&mut self, joined: Vec<Joined>, now: Instant) -> Vec<Action> {
        let mut results = Vec::new();
        for j in joined {
            self.spawned = self.spawned.saturating_sub(1);
            if self.spawned == 0 {
                self.newest = None;
            }
            if let Joined::Finished(f) = j {
                self.running.remove(&f.task);
                self.tasks_run += 1;
                results.push(result(f, self.max_output));
            }
        }
        self.changed.get_or_insert(now);
        if results.is_empty() {
            return Vec::new();
        }
        self.recent_bytes += results.iter().map(result_bytes).sum::<usize>();
        self.recent.extend(results.iter().map(|r| (now, r.clone())));
        self.forget_recent();
        // Messages whose outputs and errors add up to at most the limit each.
        carpool_proto::split_by_size(
            results,
            usize::try_from(self.max_output).unwrap_or(usize::MAX),
            result_bytes,
        )
        .into_iter()
        .map(|results| Action::Send(Up::Results(pb::TaskResults { results })))
        .collect()
    }

    /// When the worker should next look at itself: [`SETTLE`] after a change, or every
    /// [`PROBE`] while tasks run; `None`: only on the sample interval.
    pub(crate) fn probe_at(&self) -> Option<Instant> {
        match self.changed {
            Some(at) => Some(at + SETTLE),
            None if self.spawned > 0 => Some(self.last_probe + PROBE),
            None => None,
        }
    }

    /// The look at `now`: whether a sample is due (the tasks changed, or the sampler saw
    /// a figure move materially: `moved`).
    pub(crate) fn probed(&mut self, now: Instant, moved: bool) -> bool {
        self.last_probe = now;
        self.changed.is_some() || moved
    }

    /// A sample is being taken at `now`: what runs (started and not yet joined) and when
    /// its count last rose. The change is reported with it; but a sample taken before the
    /// newest tasks have run [`SETTLE`] (the interval's tick, a move) does not show their
    /// memory, and the settle sample stays due.
    pub(crate) fn sampling(&mut self, now: Instant) -> (u32, Option<Instant>) {
        self.changed = self
            .newest
            .filter(|&n| self.spawned > 0 && now.saturating_duration_since(n) < SETTLE);
        self.most_since_sample = self.spawned as u32;
        if self.spawned == 0 {
            self.newest = None;
        }
        (self.spawned as u32, self.newest)
    }

    /// Told to shut down and nothing left running: the session is over, for this reason.
    pub(crate) fn done(&self) -> Option<pb::ShutdownReason> {
        self.shutdown.filter(|_| self.spawned == 0)
    }

    /// Drops remembered results sent more than [`RESEND_WINDOW`] before the coordinator was
    /// last heard from, and the oldest past [`RESEND_BYTES`] (or the coordinator's output
    /// limit) or [`RESEND_COUNT`]. Costs what it drops, not what it keeps: it runs on every
    /// message from the coordinator.
    pub(crate) fn forget_recent(&mut self) {
        let heard = self.heard;
        let cap = if self.max_output > 0 {
            (self.max_output as usize).min(RESEND_BYTES)
        } else {
            RESEND_BYTES
        };
        while let Some((at, r)) = self.recent.front() {
            let old = heard.saturating_duration_since(*at) > RESEND_WINDOW;
            if !(old || self.recent_bytes > cap || self.recent.len() > RESEND_COUNT) {
                break;
            }
            self.recent_bytes -= result_bytes(r);
            self.recent.pop_front();
        }
    }

    /// Task futures started and not yet joined.
    pub(crate) fn spawned(&self) -> usize {
        self.spawned
    }

    /// Whether this session resumes tasks from an earlier stream.
    pub(crate) fn resuming(&self) -> bool {
        !self.running.is_empty()
    }

    /// Tasks that ended so far.
    pub(crate) fn tasks_run(&self) -> u64 {
        self.tasks_run
    }
}

/// The bytes of a result's output or error.
fn result_bytes(r: &pb::WorkerTaskResult) -> usize {
    match &r.outcome {
        Some(Outcome::Output(b)) => b.len(),
        Some(Outcome::Error(e)) => e.len(),
        None => 0,
    }
}

/// `outcome`, or an error in its place when its output is larger than `max` bytes (the
/// coordinator's limit, from its Welcome; 0: none known): the task fails with the sizes
/// instead of the whole batch being refused.
fn cap_output(outcome: HandlerOutcome, max: u64) -> HandlerOutcome {
    match outcome {
        Ok(out) if max > 0 && out.len() as u64 > max => Err(format!(
            "output too large: {} bytes, the coordinator accepts at most {max}",
            out.len()
        )),
        Err(e) if max > 0 && e.len() as u64 > max => {
            let mut cut = (max as usize).min(e.len());
            while !e.is_char_boundary(cut) {
                cut -= 1;
            }
            Err(e[..cut].to_owned())
        }
        other => other,
    }
}

/// The wire result of a finished task, its output capped at `max_output`.
fn result(f: Finished, max_output: u64) -> pb::WorkerTaskResult {
    pb::WorkerTaskResult {
        task_id: f.task,
        attempt: f.attempt,
        outcome: Some(match cap_output(f.outcome, max_output) {
            Ok(bytes) => Outcome::Output(bytes),
            Err(e) => Outcome::Error(e),
        }),
        started_unix_ms: f.started_unix_ms,
        finished_unix_ms: f.finished_unix_ms,
        duration_us: f.took.as_micros().clamp(1, u128::from(u64::MAX)) as u64,
    }
}

#[cfg(test)]
mod tests;
