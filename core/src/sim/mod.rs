//! A simulator that drives the real scheduling state ([`State`]) with a virtual clock.
//!
//! Workers are modelled, not run. A spawn becomes a hello after a cold start. A task
//! ([`TaskModel`]) first needs some CPU time, which it shares with the worker's other tasks
//! in their CPU phase (processor sharing over the worker's vCPUs: CPU-bound tasks slow each
//! other once there are more of them than vCPUs), then waits (a wait contends with nothing),
//! and holds its memory for its whole life (memory adds up). A worker reports a sample as
//! the real one does: on its interval, and [`SimConfig::settle`] after its running tasks
//! change; CPU over the span since then, memory as its base plus its tasks'. A Shutdown ends
//! the worker after its exit delay. Everything else is the coordinator's own code: the rule,
//! the adaptive limits, scale-out, keep-alive, billing. So a batch of a million tasks on a
//! thousand workers is simulated in seconds, and its figures can be checked against a
//! measured run.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pace;
use carpool_messages::Bytes;
use carpool_messages::pb::{self, coordinator_message::Kind};

use crate::config::Config;
use crate::state::{self, Conn, Effects, Outbound, State, StreamEnd, Submission, Timer, WorkerId};

mod fleet;
mod model;
mod queue;

use model::Draws;
pub use model::{
    CopyModel, LAMBDA_COLD_START_SIGMA, MAX_SPREAD, SimConfig, SimReport, TaskMix, TaskModel, World, varied,
};

use fleet::{Fleet, SimTask, SimWorker};
use queue::{Event, Queue};

/// The simulation's moving parts.
struct Sim<'a> {
    sim: &'a SimConfig,
    state: State,
    queue: Queue,
    fleet: Fleet,
    effects: Effects,
    base: Instant,
    report: SimReport,
    /// Results delivered.
    done: u64,
    /// When the current batch was submitted.
    batch_start: Duration,
    /// Every how long a worker samples itself.
    interval: Duration,
    /// Spawns on their way to their hello.
    connecting: usize,
    /// The Lambda-like world's cold-start draws.
    draws: Draws,
    /// When the current batch's first worker said hello.
    first_hello: Option<Duration>,
    /// Tasks submitted so far, over every batch.
    submitted: u64,
    /// The tasks of [`SimConfig::mix`]'s long kind.
    long: HashSet<u64>,
    /// Each task of the current batch's place in it (its variation's key: every batch of
    /// every way runs the same tasks, as it meets the same cold starts).
    place: HashMap<u64, u64>,
}

impl Sim<'_> {
    fn at(&self, now: Duration) -> Instant {
        self.base + now
    }

    /// Queues a sample `settle` from now for worker `slot`, unless one is queued already.
    fn queue_sample(&mut self, slot: u32, now: Duration) {
        let settle = self.sim.settle;
        if let Some(Some(w)) = self.fleet.slots.get_mut(slot as usize)
            && !w.sample_queued
        {
            w.sample_queued = true;
            let conn = w.conn;
            self.queue.push(
                now + settle,
                Event::Sample {
                    slot,
                    conn,
                    periodic: false,
                },
            );
        }
    }

    /// Re-plans the next CPU-phase end of worker `slot` after a change.
    fn replan(&mut self, slot: u32, now: Duration) {
        if let Some(Some(w)) = self.fleet.slots.get_mut(slot as usize) {
            w.version += 1;
            if let Some(at) = w.next_cpu_end(now, w.vcpus) {
                let (conn, version) = (w.conn, w.version);
                self.queue.push(at, Event::CpuDone { slot, conn, version });
            }
        }
    }

    /// Delivers what the state sent to the workers: assignments start tasks, a Shutdown
    /// (or the end of a stream) schedules the exit; results for clients and journal writes
    /// go nowhere. Returns whether anything was delivered to a worker.
    fn deliver(&mut self, now: Duration) -> bool {
        let mut delivered = false;
        self.effects.journal.clear();
        let (task, copies) = (self.sim.task, self.sim.copy);
        let mut started = Vec::new();
        let mut exits = Vec::new();
        for out in std::mem::take(&mut self.effects.out) {
            let (conn, kind) = match out {
                Outbound::Message { conn, message } => (conn, message.kind),
                Outbound::End { conn, .. } => (conn, Some(Kind::Shutdown(pb::Shutdown::default()))),
                Outbound::Complete { .. } | Outbound::Load { .. } => continue,
            };
            let Some(&slot) = self.fleet.by_conn.get(&conn) else {
                continue;
            };
            let Some(Some(w)) = self.fleet.slots.get_mut(slot as usize) else {
                continue;
            };
            delivered = true;
            match kind {
                Some(Kind::Assign(a)) => {
                    w.advance(now, w.vcpus);
                    for t in a.tasks {
                        let model = match self.sim.mix {
                            Some(m) if self.long.contains(&t.task_id) => m.long,
                            _ => task,
                        };
                        let place = self.place.get(&t.task_id).copied().unwrap_or(t.task_id);
                        w.tasks.push(SimTask {
                            task: t.task_id,
                            attempt: t.attempt,
                            started: now,
                            cpu_left: model.cpu.as_secs_f64() * varied(self.sim.spread, place, 0),
                            wait: model.wait.mul_f64(varied(self.sim.spread, place, 1)),
                            on_copy: copies.is_none(),
                        });
                    }
                    if copies.is_none() {
                        Self::ran(w, &mut self.report, now);
                    }
                    if !started.contains(&slot) {
                        started.push(slot);
                    }
                }
                Some(Kind::Welcome(welcome)) => w.limit = welcome.slots as usize,
                Some(Kind::Limit(limit)) => {
                    w.limit = limit.slots as usize;
                    if !started.contains(&slot) {
                        started.push(slot);
                    }
                }
                Some(Kind::Shutdown(_)) if !exits.contains(&(slot, conn)) => exits.push((slot, conn)),
                _ => {}
            }
        }
        for slot in started {
            self.queue_sample(slot, now);
            self.progress(slot, now);
        }
        for (slot, conn) in exits {
            self.queue
                .push(now + self.sim.exit_delay, Event::Exit { slot, conn });
        }
        delivered
    }

    /// Accounts worker `slot`'s CPU up to `now`: tasks whose CPU phase is over start their
    /// wait (or finish, with none), and the next CPU-phase end is planned.
    fn progress(&mut self, slot: u32, now: Duration) {
        let mut ended = Vec::new();
        if let Some(Some(w)) = self.fleet.slots.get_mut(slot as usize) {
            w.advance(now, w.vcpus);
        }
        self.place(slot, now);
        if let Some(Some(w)) = self.fleet.slots.get_mut(slot as usize) {
            let conn = w.conn;
            for t in w.tasks.iter_mut().filter(|t| t.on_copy && t.cpu_left == 0.0) {
                // Marked as waiting (below zero), so its end is queued once.
                t.cpu_left = -1.0;
                let (task, attempt, wait) = (t.task, t.attempt, t.wait);
                if wait.is_zero() {
                    ended.push((task, attempt));
                } else {
                    self.queue.push(
                        now + wait,
                        Event::Done {
                            slot,
                            conn,
                            task,
                            attempt,
                        },
                    );
                }
            }
        }
        for (task, attempt) in ended {
            self.finish(slot, task, attempt, now);
        }
        self.replan(slot, now);
    }

    /// A task runs on worker `w` from `now`: the most it ran at once since its last sample,
    /// and, as the real worker reports it, the newest task is the one that raised that (or
    /// runs alone): one started in place of one that ended adds nothing new to show.
    fn ran(w: &mut SimWorker, report: &mut SimReport, now: Duration) {
        let n = w.running().count();
        if n > w.most || n == 1 {
            w.newest = now;
        }
        if n > w.most {
            w.most = n;
            w.span = (now, w.busy);
        }
        report.peak_concurrency = report.peak_concurrency.max(n as u32);
    }

    /// With runtime copies modelled, on worker `slot`: copies done with their init are
    /// ready, ready copies take the tasks waiting for one, idle copies past the limit
    /// retire, and new copies start as the pacing rule allows.
    fn place(&mut self, slot: u32, now: Duration) {
        let Some(copy) = self.sim.copy else {
            return;
        };
        let (task_mb, base_mb) = (self.sim.task.mem_mb, self.sim.worker_base_mb);
        let Some(Some(w)) = self.fleet.slots.get_mut(slot as usize) else {
            return;
        };
        let memory_mb = f64::from(w.memory_mb);
        let ramp = (w.vcpus.floor() as usize).max(1);
        let before = w.inits.len();
        for &(_, since) in w.inits.iter().filter(|(left, _)| *left <= 0.0) {
            w.inited.0 += 1;
            w.inited.1 += now.saturating_sub(since).as_secs_f64();
        }
        w.inits.retain(|(left, _)| *left > 0.0);
        w.idle += before - w.inits.len();
        let mut took = false;
        for t in w.tasks.iter_mut().filter(|t| !t.on_copy) {
            if w.idle == 0 {
                break;
            }
            w.idle -= 1;
            t.on_copy = true;
            took = true;
        }
        if took {
            Self::ran(w, &mut self.report, now);
        }
        let excess = w.copies().saturating_sub(w.limit.max(1)).min(w.idle);
        w.idle -= excess;
        let busy = w.running().count();
        let live = w.copies();
        let copy_peak = if w.completed {
            copy.mem_mb + task_mb
        } else if busy + w.idle > 0 {
            copy.mem_mb
        } else {
            0.0
        };
        let bytes = |mb: f64| (mb * 1024.0 * 1024.0) as u64;
        let census = pace::Census {
            limit: w.limit,
            live,
            starting: w.inits.len(),
            busy,
            queued: w.tasks.len() - busy,
            ramp,
            completed: w.completed,
            own_bytes: bytes(base_mb),
            copy_peak: bytes(copy_peak),
            peaks_sum: bytes(copy.mem_mb * live as f64 + task_mb * busy as f64),
            budget: bytes(memory_mb * pace::COPY_MEMORY_SHARE),
        };
        let (n, _) = pace::to_start(&census);
        let init = copy.init_cpu.as_secs_f64().max(1e-6);
        w.inits.extend(std::iter::repeat_n((init, now), n));
    }

    /// A task ends: its result goes to the state and the worker will report (the caller
    /// re-plans its CPU).
    fn finish(&mut self, slot: u32, task: u64, attempt: u32, now: Duration) {
        let Some(Some(w)) = self.fleet.slots.get_mut(slot as usize) else {
            return;
        };
        w.advance(now, w.vcpus);
        let Some(pos) = w
            .tasks
            .iter()
            .position(|t| t.task == task && t.attempt == attempt)
        else {
            return;
        };
        let t = w.tasks.remove(pos);
        if self.sim.copy.is_some() {
            // Its copy is free for the next task, and a task's working memory is known.
            w.idle += 1;
            w.completed = true;
        }
        let id = w.id.clone();
        let result = pb::WorkerTaskResult {
            task_id: task,
            attempt,
            outcome: Some(pb::worker_task_result::Outcome::Output(Bytes::new())),
            duration_us: now.saturating_sub(t.started).as_micros().max(1) as u64,
            ..Default::default()
        };
        let at = self.at(now);
        let results = state::Event::Results {
            worker: id,
            results: vec![result],
        };
        let _ = self.state.handle(at, results, &mut self.effects);
        self.done += 1;
        self.report.completion = self.report.completion.max(now.saturating_sub(self.batch_start));
        self.queue_sample(slot, now);
    }

    /// Worker `slot` reports a sample.
    fn sample(&mut self, slot: u32, now: Duration) {
        let sim = self.sim;
        let Some(Some(w)) = self.fleet.slots.get_mut(slot as usize) else {
            return;
        };
        let memory_mb = f64::from(w.memory_mb);
        w.advance(now, w.vcpus);
        let span = now.saturating_sub(w.span.0).as_secs_f64();
        let cpu = if span > 0.0 {
            (w.busy - w.span.1) / span
        } else {
            0.0
        };
        w.span = (now, w.busy);
        let running = w.running().count();
        w.most = running;
        let copies_mb = sim.copy.map_or(0.0, |c| c.mem_mb * w.copies() as f64);
        let mem_mb = sim.worker_base_mb + copies_mb + sim.task.mem_mb * running as f64;
        self.report.peak_memory_fraction = self.report.peak_memory_fraction.max(mem_mb / memory_mb);
        let youngest = if running == 0 {
            0
        } else {
            now.saturating_sub(w.newest).as_millis() as u32
        };
        let mb = 1024.0 * 1024.0;
        let s = pb::ResourceSample {
            cpu: cpu.clamp(0.0, 1.0),
            memory_used_bytes: (mem_mb * mb) as u64,
            memory_limit_bytes: (memory_mb * mb) as u64,
            running_tasks: running as u32,
            memory_peak_bytes: 0,
            youngest_task_ms: youngest,
            // The simulated cores are never oversubscribed (processor sharing within the
            // allotment): nothing waits.
            cpu_wait: 0.0,
            copy_init_ms: match w.inited {
                (0, _) => 0,
                (n, secs) => (secs * 1000.0 / f64::from(n)).round().max(1.0) as u32,
            },
        };
        let id = w.id.clone();
        let at = self.at(now);
        let _ = self.state.handle(
            at,
            state::Event::Sample {
                worker: id,
                sample: s,
            },
            &mut self.effects,
        );
    }
}

/// Runs the simulation to the end (every task finished and every worker gone).
pub fn simulate(sim: &SimConfig) -> SimReport {
    simulate_batches(sim, 1).pop().unwrap_or_default()
}

/// [`simulate_batches`] under `draws` different cold-start draws (seeds counted up from
/// the world's), each batch's report the [`SimReport::mean`] of its draws. In the local
/// world (no draws) or with `draws` at most 1, one run. A figure judged against the best of
/// many ways needs it: one draw of a batch whose bill is a few cold starts is mostly luck,
/// and the cheapest of a dozen lucky draws is lower than any way can expect.
pub fn simulate_batches_over_draws(sim: &SimConfig, batches: usize, draws: u32) -> Vec<SimReport> {
    let (sigma, seed) = match sim.world {
        World::Lambda { sigma, seed } if draws > 1 => (sigma, seed),
        _ => return simulate_batches(sim, batches),
    };
    let runs: Vec<Vec<SimReport>> = (0..u64::from(draws))
        .map(|i| {
            let drawn = SimConfig {
                world: World::Lambda {
                    sigma,
                    seed: seed.wrapping_add(i),
                },
                ..sim.clone()
            };
            simulate_batches(&drawn, batches)
        })
        .collect();
    (0..batches)
        .map(|b| {
            let of_batch: Vec<SimReport> = runs.iter().filter_map(|r| r.get(b).cloned()).collect();
            SimReport::mean(&of_batch)
        })
        .collect()
}

/// Runs `batches` batches one after the other on the same coordinator state (each submitted
/// once the previous one has finished and its workers have gone, so later batches start
/// from what the earlier ones taught it); one report per batch.
pub fn simulate_batches(sim: &SimConfig, batches: usize) -> Vec<SimReport> {
    let base = Instant::now();
    // One function: its own cap is the fleet's.
    let config = Arc::new(Config {
        fleet: crate::config::Fleet {
            max_fleet: sim.config.fleet.max_fleet.max(sim.config.fleet.max_workers),
            ..sim.config.fleet.clone()
        },
        ..sim.config.clone()
    });
    let state = State::new(config.clone(), base);
    // The Lambda-like world's draws start from its seed at every batch (below).
    let seed = match sim.world {
        World::Lambda { seed, .. } => seed,
        World::Local => 0,
    };
    let mut s = Sim {
        sim,
        state,
        queue: Queue::default(),
        fleet: Fleet::default(),
        effects: Effects::default(),
        base,
        report: SimReport::default(),
        done: 0,
        batch_start: Duration::ZERO,
        interval: config.fleet.sample_interval.max(Duration::from_millis(1)),
        connecting: 0,
        draws: Draws::new(seed),
        first_hello: None,
        submitted: 0,
        long: HashSet::new(),
        place: HashMap::new(),
    };
    let mut now = Duration::ZERO;
    let mut accepted = 0u64;
    let mut before = pb::FunctionStats::default();
    let mut reports = Vec::with_capacity(batches);
    for _ in 0..batches {
        // Common draws: every batch meets the same cold starts (its first spawn the same
        // draw, its second the same, ...), in every way and whatever the batches before it
        // spawned, so ways and batches are compared on equal luck.
        s.draws = Draws::new(seed);
        s.report = SimReport::default();
        s.batch_start = now;
        s.first_hello = None;
        s.place.clear();
        for place in 0..sim.tasks as u64 {
            let mut sub = Submission::new(sim.function.clone(), Bytes::new());
            sub.deadline = sim.deadline;
            s.submitted += 1;
            let long = sim
                .mix
                .filter(|m| m.every > 0 && s.submitted.is_multiple_of(m.every));
            if long.is_none() {
                sub.timeout = sim.mix.and_then(|m| m.bounded);
            }
            let submit = state::Event::Submit {
                submission: sub,
                waiter: None,
            };
            if let Ok(reply) = s.state.handle(s.at(now), submit, &mut s.effects) {
                accepted += 1;
                if let state::Reply::Submitted(t) = reply {
                    s.place.insert(t.id(), place);
                    if long.is_some() {
                        s.long.insert(t.id());
                    }
                }
            }
        }
        now = s.run(now, accepted);
        let totals = s.state.stats(s.at(now)).total.unwrap_or_default();
        let mut report = std::mem::take(&mut s.report);
        report.invocations = totals.workers_started - before.workers_started;
        report.billed_gb_s = (totals.billed_gb_ms - before.billed_gb_ms) / 1000.0;
        report.cost_usd = totals.cost_usd - before.cost_usd;
        report.succeeded = totals.succeeded - before.succeeded;
        report.failed = totals.failed - before.failed;
        report.request_billed_gb_s = (totals.request_billed_gb_ms - before.request_billed_gb_ms) / 1000.0;
        report.requests = totals.requests - before.requests;
        report.killed_at_deadline = totals.killed_at_deadline - before.killed_at_deadline;
        report.successors = totals.successors_started - before.successors_started;
        report.handover_longest = Duration::from_millis(totals.handover_wait_longest_ms);
        reports.push(report);
        before = totals;
    }
    reports
}

impl Sim<'_> {
    /// Runs events from `now` until `accepted` results are in and the fleet has gone;
    /// returns the time then.
    fn run(&mut self, mut now: Duration, accepted: u64) -> Duration {
        loop {
            self.settle(now);
            self.report.peak_workers = self.report.peak_workers.max(self.fleet.len());
            if self.done >= accepted && self.fleet.len() == 0 && self.connecting == 0 {
                break;
            }
            let Some((at, event)) = self.queue.pop() else {
                break;
            };
            if self.sim.watch_handover
                && self.first_hello.is_some()
                && self
                    .state
                    .waits_without_admission(&self.sim.function, self.at(now))
            {
                self.report.handover_wait += at.saturating_sub(now);
            }
            now = at;
            self.step(event, now);
        }
        now
    }

    /// Carries out effects and delivers messages until the coordinator is quiet at `now`.
    fn settle(&mut self, now: Duration) {
        loop {
            for spawn in std::mem::take(&mut self.effects.spawns) {
                self.connecting += 1;
                let cold_start = match self.sim.world {
                    World::Local => self.sim.cold_start,
                    World::Lambda { sigma, .. } => self.draws.log_normal(self.sim.cold_start, sigma),
                };
                self.queue
                    .push(now + cold_start, Event::Connect(spawn.id, spawn.memory_mb));
            }
            for (d, t) in std::mem::take(&mut self.effects.timers) {
                self.queue.push(now + d, Event::Timer(t));
            }
            self.queue.purge(&self.fleet);
            if !self.deliver(now) && self.effects.spawns.is_empty() && self.effects.timers.is_empty() {
                break;
            }
        }
    }

    /// What one event does at `now`.
    fn step(&mut self, event: Event, now: Duration) {
        let t = self.at(now);
        match event {
            Event::Connect(id, memory_mb) => self.connect(id, memory_mb, now),
            Event::CpuDone { slot, conn, version } => {
                if self.fleet.get(slot, conn).is_some_and(|w| w.version == version) {
                    self.progress(slot, now);
                }
            }
            Event::Done {
                slot,
                conn,
                task,
                attempt,
            } => {
                if self.fleet.get(slot, conn).is_some() {
                    self.finish(slot, task, attempt, now);
                    self.progress(slot, now);
                }
            }
            Event::Sample { slot, conn, periodic } => self.sample_due(slot, conn, periodic, now),
            Event::Timer(timer) => {
                let _ = self
                    .state
                    .handle(t, state::Event::Timer(timer), &mut self.effects);
            }
            Event::Exit { slot, conn } | Event::Deadline { slot, conn } => {
                if let Some(w) = self.fleet.remove(slot, conn) {
                    let end = state::Event::Disconnect {
                        worker: w.id,
                        conn: w.conn,
                        end: StreamEnd::Closed,
                    };
                    let _ = self.state.handle(t, end, &mut self.effects);
                }
            }
        }
    }

    /// A spawned worker says hello: on the fleet, with its first sample (nothing running:
    /// its base) and one per interval after.
    fn connect(&mut self, id: WorkerId, memory_mb: u32, now: Duration) {
        self.connecting -= 1;
        let fleet = &self.sim.config.fleet;
        let hello = pb::Hello {
            worker_id: id.to_string(),
            function: self.sim.function.clone(),
            vcpus: fleet.vcpus_at(memory_mb),
            memory_mb,
            timeout_ms: fleet.execution_timeout.as_millis() as u64,
            ..Default::default()
        };
        let Ok(conn) = self
            .state
            .handle(self.at(now), state::Event::Hello(hello), &mut self.effects)
            .and_then(state::Reply::connected)
        else {
            return;
        };
        let slot = self.fleet.insert(SimWorker {
            id,
            conn,
            tasks: Vec::new(),
            version: 0,
            advanced: now,
            busy: 0.0,
            span: (now, 0.0),
            sample_queued: false,
            newest: now,
            most: 0,
            inits: Vec::new(),
            inited: (0, 0.0),
            idle: 0,
            limit: 1,
            completed: false,
            memory_mb,
            vcpus: self
                .sim
                .world
                .cpu_share(memory_mb, self.sim.config.fleet.vcpus_at(memory_mb)),
        });
        self.first_hello.get_or_insert(now);
        self.sample(slot, now);
        let periodic = Event::Sample {
            slot,
            conn,
            periodic: true,
        };
        self.queue.push(now + self.interval, periodic);
        self.queue
            .push(now + fleet.execution_timeout, Event::Deadline { slot, conn });
    }

    /// A sample is due: a periodic one queues the next; one queued after a change clears
    /// its flag.
    fn sample_due(&mut self, slot: u32, conn: Conn, periodic: bool, now: Duration) {
        if self.fleet.get(slot, conn).is_none() {
            return;
        }
        if periodic {
            let next = Event::Sample {
                slot,
                conn,
                periodic: true,
            };
            self.queue.push(now + self.interval, next);
        } else if let Some(w) = self.fleet.get_mut(slot, conn) {
            w.sample_queued = false;
        }
        self.sample(slot, now);
    }
}

#[cfg(test)]
mod tests;
