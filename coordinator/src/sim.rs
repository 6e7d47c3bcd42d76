//! A simulator that drives the real scheduling state ([`State`]) with a virtual clock.
//!
//! Workers are modelled, not run: a spawn becomes a hello after a cold start; an assigned
//! task ends after its modelled duration (stretched when a worker runs more single-threaded
//! tasks than it has vCPUs); workers sample after every start and end; a Shutdown ends the
//! worker at once (it is idle by then). Everything else is the coordinator's own code: the
//! rule, scale-out, keep-alive, billing. So a batch of a million tasks on a thousand workers
//! is simulated in seconds on one core (a few seconds per mode), and its figures can be
//! checked against a measured run.

use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_proto::Bytes;
use carpool_proto::pb::{self, coordinator_message::Kind};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::config::Config;
use crate::state::{Effects, State, StreamEnd, Submission, Timer, WorkerId, WorkerTx};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The coordinator's settings (memory size, vCPUs, slots, fleet cap, quota, ...).
    pub config: Config,
    /// The function the tasks are submitted to.
    pub function: String,
    /// Tasks, all submitted at time zero.
    pub tasks: usize,
    /// How long one task runs on one vCPU of its own.
    pub task_duration: Duration,
    /// From spawn to hello.
    pub cold_start: Duration,
    /// From Shutdown to the end of the worker's stream (billed: the invocation is alive).
    pub exit_delay: Duration,
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Worker invocations (each one billed).
    pub invocations: u64,
    /// From the submission to the last result.
    pub completion: Duration,
    /// Billed GB-seconds.
    pub billed_gb_s: f64,
    /// The bill in USD.
    pub cost_usd: f64,
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Most workers live at once.
    pub peak_workers: usize,
}

/// What happens at an instant. Workers are named by their slot in the simulator's table
/// and their connection number (a slot is reused once its worker is gone).
#[derive(Debug)]
enum Event {
    Connect(WorkerId),
    Done {
        slot: u32,
        conn: u64,
        task: u64,
        attempt: u32,
    },
    Timer(Timer),
    Exit {
        slot: u32,
        conn: u64,
    },
}

/// An event in the queue, ordered by time and then by when it was queued (so the order
/// of simultaneous events is fixed): `key` is the time in nanoseconds in the high half
/// and the queue's counter in the low half (one comparison).
#[derive(Debug)]
struct Queued {
    key: u128,
    event: Event,
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
struct Queue {
    heap: BinaryHeap<Queued>,
    seq: u64,
    /// At this length, events that can no longer matter are dropped.
    purge_at: usize,
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
const PURGE_MIN: usize = 1 << 12;

impl Queue {
    fn push(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        let nanos = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        let key = (u128::from(nanos) << 64) | u128::from(self.seq);
        self.heap.push(Queued { key, event });
    }

    /// The earliest event and its time.
    fn pop(&mut self) -> Option<(Duration, Event)> {
        let q = self.heap.pop()?;
        let nanos = u64::try_from(q.key >> 64).unwrap_or(u64::MAX);
        Some((Duration::from_nanos(nanos), q.event))
    }

    /// Drops the events of workers that have gone, once the queue has doubled since the
    /// last purge: every worker leaves a timer for its deadline far ahead, and with one
    /// worker per task (conventional FaaS) those would grow the heap to a million
    /// entries that do nothing when they fire (the state ignores a timer of a connection
    /// that has ended). Amortized, a purge costs O(1) per event.
    fn purge(&mut self, fleet: &Fleet) {
        if self.heap.len() < self.purge_at {
            return;
        }
        self.heap.retain(|q| match &q.event {
            Event::Timer(Timer::Worker(id, conn)) => fleet.live(id, *conn),
            Event::Done { slot, conn, .. } | Event::Exit { slot, conn } => fleet.get(*slot, *conn).is_some(),
            Event::Connect(_) | Event::Timer(_) => true,
        });
        self.purge_at = (2 * self.heap.len()).max(PURGE_MIN);
    }
}

type Stream = (
    WorkerTx,
    UnboundedReceiver<Result<pb::CoordinatorMessage, tonic::Status>>,
);

struct SimWorker {
    id: WorkerId,
    stream: Stream,
    conn: u64,
    running: u32,
}

/// The live workers: a slab, plus their slots by id (the state names workers by id).
#[derive(Default)]
struct Fleet {
    slots: Vec<Option<SimWorker>>,
    free: Vec<u32>,
    by_id: HashMap<WorkerId, u32>,
    /// Streams of workers that have gone, emptied, for the next ones (the simulator keeps
    /// a sender of each, so they stay open).
    streams: Vec<Stream>,
}

impl Fleet {
    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn stream(&mut self) -> Stream {
        self.streams.pop().unwrap_or_else(unbounded_channel)
    }

    fn insert(&mut self, w: SimWorker) -> u32 {
        let id = w.id.clone();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(w);
                slot
            }
            None => {
                self.slots.push(Some(w));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    fn get(&self, slot: u32, conn: u64) -> Option<&SimWorker> {
        self.slots.get(slot as usize)?.as_ref().filter(|w| w.conn == conn)
    }

    /// Whether connection `conn` of worker `id` is live.
    fn live(&self, id: &WorkerId, conn: u64) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|&slot| self.get(slot, conn).is_some())
    }

    fn get_mut(&mut self, slot: u32, conn: u64) -> Option<&mut SimWorker> {
        self.slots
            .get_mut(slot as usize)?
            .as_mut()
            .filter(|w| w.conn == conn)
    }

    fn remove(&mut self, slot: u32, conn: u64) -> Option<SimWorker> {
        self.get_mut(slot, conn)?;
        let mut w = self.slots[slot as usize].take()?;
        self.by_id.remove(&w.id);
        self.free.push(slot);
        while w.stream.1.try_recv().is_ok() {}
        Some(w)
    }
}

/// Runs the simulation to the end (every task finished and every worker gone).
pub fn simulate(sim: &SimConfig) -> SimReport {
    let base = Instant::now();
    let config = Arc::new(sim.config.clone());
    let vcpus = config.worker_vcpus();
    let mut state = State::new(config.clone(), base);
    let mut queue = Queue::default();
    let mut fleet = Fleet::default();
    state.record_messages();
    let mut report = SimReport::default();
    let (mut finished, mut connecting) = (0usize, 0usize);

    let mut fx = Effects::default();
    let mut accepted = 0;
    for _ in 0..sim.tasks {
        let sub = Submission::new(sim.function.clone(), Bytes::new());
        if state.submit(sub, None, base, &mut fx).is_ok() {
            accepted += 1;
        }
    }
    let mut now = Duration::ZERO;
    let mut samples = Vec::new();
    loop {
        // Settle: carry out effects and deliver messages until the coordinator is quiet at
        // this instant (samples a worker sends on an assignment can cause more messages).
        loop {
            for s in fx.spawns.drain(..) {
                connecting += 1;
                queue.push(now + sim.cold_start, Event::Connect(s.id));
            }
            for (d, t) in fx.timers.drain(..) {
                queue.push(now + d, Event::Timer(t));
            }
            queue.purge(&fleet);
            let mut delivered = false;
            for id in state.take_messaged() {
                let Some(&slot) = fleet.by_id.get(&id) else {
                    continue;
                };
                let Some(Some(w)) = fleet.slots.get_mut(slot as usize) else {
                    continue;
                };
                while let Ok(Ok(msg)) = w.stream.1.try_recv() {
                    delivered = true;
                    match msg.kind {
                        Some(Kind::Assign(a)) => {
                            for t in a.tasks {
                                w.running += 1;
                                let stretch = (f64::from(w.running) / f64::from(vcpus)).max(1.0);
                                let done = Event::Done {
                                    slot,
                                    conn: w.conn,
                                    task: t.task_id,
                                    attempt: t.attempt,
                                };
                                queue.push(now + sim.task_duration.mul_f64(stretch), done);
                            }
                            samples.push((id.clone(), w.running));
                        }
                        Some(Kind::Shutdown(_)) => {
                            let exit = Event::Exit { slot, conn: w.conn };
                            queue.push(now + sim.exit_delay, exit);
                        }
                        _ => {}
                    }
                }
            }
            for (id, running) in samples.drain(..) {
                let _ = state.sample(&id, sample(running, vcpus), base + now, &mut fx);
            }
            if !delivered && fx.spawns.is_empty() && fx.timers.is_empty() {
                break;
            }
        }
        report.peak_workers = report.peak_workers.max(fleet.len());
        if finished >= accepted && fleet.len() == 0 && connecting == 0 {
            break;
        }
        let Some((at, event)) = queue.pop() else {
            break;
        };
        now = at;
        let t = base + now;
        match event {
            Event::Connect(id) => {
                connecting -= 1;
                let stream = fleet.stream();
                let hello = pb::Hello {
                    worker_id: id.to_string(),
                    function: sim.function.clone(),
                    vcpus,
                    memory_mb: config.memory_mb,
                    slots: 0,
                    timeout_ms: config.execution_timeout.as_millis() as u64,
                    instance: String::new(),
                    running_task_ids: Vec::new(),
                };
                match state.connect(hello, stream.0.clone(), t, &mut fx) {
                    Ok(conn) => {
                        fleet.insert(SimWorker {
                            id,
                            stream,
                            conn,
                            running: 0,
                        });
                    }
                    Err(_) => fleet.streams.push(stream),
                }
            }
            Event::Done {
                slot,
                conn,
                task,
                attempt,
            } => {
                if let Some(w) = fleet.get_mut(slot, conn) {
                    w.running = w.running.saturating_sub(1);
                    let running = w.running;
                    let result = pb::WorkerTaskResult {
                        task_id: task,
                        attempt,
                        outcome: Some(pb::worker_task_result::Outcome::Output(Bytes::new())),
                        started_unix_ms: 0,
                        finished_unix_ms: 0,
                    };
                    let _ = state.results(&w.id, vec![result], t, &mut fx);
                    let _ = state.sample(&w.id, sample(running, vcpus), t, &mut fx);
                    finished += 1;
                    report.completion = report.completion.max(now);
                }
            }
            Event::Timer(timer) => state.on_timer(timer, t, &mut fx),
            Event::Exit { slot, conn } => {
                if let Some(w) = fleet.remove(slot, conn) {
                    state.disconnect(&w.id, w.conn, StreamEnd::Closed, t, &mut fx);
                    fleet.streams.push(w.stream);
                }
            }
        }
    }
    let totals = state.stats(base + now).total.unwrap_or_default();
    report.invocations = totals.workers_started;
    report.billed_gb_s = totals.billed_gb_ms / 1000.0;
    report.cost_usd = totals.cost_usd;
    report.succeeded = totals.succeeded;
    report
}

/// A worker's sample: single-threaded tasks keep one vCPU each busy.
fn sample(running: u32, vcpus: u32) -> pb::ResourceSample {
    pb::ResourceSample {
        cpu: (f64::from(running) / f64::from(vcpus.max(1))).min(1.0),
        memory_used_bytes: 1,
        memory_limit_bytes: 1 << 30,
        running_tasks: running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(conventional: bool, max_workers: u32) -> SimConfig {
        SimConfig {
            config: Config {
                max_workers,
                memory_mb: 2048,
                slots: conventional.then_some(1),
                max_tasks_per_worker: conventional.then_some(1),
                ..Config::default()
            },
            function: "spin".into(),
            tasks: 40,
            task_duration: Duration::from_millis(200),
            cold_start: Duration::from_millis(50),
            exit_delay: Duration::ZERO,
        }
    }

    #[test]
    fn carpool_fills_both_vcpus_of_one_worker() {
        let r = simulate(&sim(false, 1));
        assert_eq!((r.succeeded, r.invocations), (40, 1));
        // 50 ms cold start, then 20 rounds of two 200 ms tasks side by side.
        assert_eq!(r.completion, Duration::from_millis(50 + 20 * 200));
        // Billed from hello to exit: 20 rounds of 200 ms at 2 GB.
        assert!((r.billed_gb_s - 8.0).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn conventional_faas_is_one_invocation_per_task() {
        let r = simulate(&sim(true, 1));
        assert_eq!((r.succeeded, r.invocations), (40, 40));
        assert_eq!(r.completion, Duration::from_millis(40 * (50 + 200)));
        assert!((r.billed_gb_s - 16.0).abs() < 1e-6, "{r:?}");
    }

    /// The figures of a fixed model, pinned: a change to how the simulator or the state
    /// runs (data structures, event order, dropping dead timers) must not move them. At 5,000
    /// invocations, conventional FaaS also has the queue purge its dead deadline timers
    /// and the fleet reuse its slots.
    #[test]
    fn a_fixed_model_gives_the_same_figures() {
        for (conventional, completion_ms, invocations, gb_s) in
            [(false, 4_681, 50, 920.516), (true, 16_495, 5_000, 2_840.0)]
        {
            let mut s = sim(conventional, 50);
            s.config.memory_mb = 4096;
            s.config.keep_alive = Duration::from_millis(30);
            s.tasks = 5_000;
            s.task_duration = Duration::from_millis(137);
            s.cold_start = Duration::from_millis(23);
            s.exit_delay = Duration::from_millis(5);
            let r = simulate(&s);
            assert_eq!(
                (r.succeeded, r.invocations, r.completion, r.peak_workers),
                (5_000, invocations, Duration::from_millis(completion_ms), 50),
                "conventional: {conventional}"
            );
            assert!((r.billed_gb_s - gb_s).abs() < 1e-6, "{r:?}");
        }
    }

    #[test]
    fn a_large_batch_respects_the_fleet_cap_and_finishes_every_task() {
        let mut s = sim(false, 100);
        s.tasks = 20_000;
        let r = simulate(&s);
        assert_eq!(r.succeeded, 20_000);
        assert!(r.peak_workers <= 100 && r.invocations >= 100, "{r:?}");
    }
}
