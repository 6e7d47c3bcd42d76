//! A simulator that drives the real scheduling state ([`State`]) with a virtual clock.
//!
//! Workers are modelled, not run: a spawn becomes a hello after a cold start; an assigned
//! task ends after its modelled duration (stretched when a worker runs more single-threaded
//! tasks than it has vCPUs); workers sample after every start and end; a Shutdown ends the
//! worker at once (it is idle by then). Everything else is the coordinator's own code: the
//! rule, scale-out, keep-alive, billing. So a batch of a million tasks on a thousand workers
//! is simulated in well under a minute on one core, and its figures can be checked against a
//! measured run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carpool_proto::Bytes;
use carpool_proto::pb::{self, coordinator_message::Kind};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::config::Config;
use crate::state::{Effects, State, StreamEnd, Submission, Timer, WorkerId};

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

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Connect(WorkerId),
    Done(WorkerId, u64, u32),
    Timer(u64),
    Exit(WorkerId),
}

struct SimWorker {
    rx: UnboundedReceiver<Result<pb::CoordinatorMessage, tonic::Status>>,
    conn: u64,
    running: u32,
}

/// Runs the simulation to the end (every task finished and every worker gone).
pub fn simulate(sim: &SimConfig) -> SimReport {
    let base = Instant::now();
    let config = Arc::new(sim.config.clone());
    let vcpus = config.worker_vcpus();
    let mut state = State::new(config.clone(), base);
    let mut queue: BinaryHeap<Reverse<(Duration, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut timers: HashMap<u64, Timer> = HashMap::new();
    // Live workers. Only those the state has messaged are read after each step.
    let mut workers: HashMap<WorkerId, SimWorker> = HashMap::new();
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
    loop {
        // Settle: carry out effects and deliver messages until the coordinator is quiet at
        // this instant (samples a worker sends on an assignment can cause more messages).
        loop {
            for s in fx.spawns.drain(..) {
                seq += 1;
                connecting += 1;
                queue.push(Reverse((now + sim.cold_start, seq, Event::Connect(s.id))));
            }
            for (d, t) in fx.timers.drain(..) {
                seq += 1;
                timers.insert(seq, t);
                queue.push(Reverse((now + d, seq, Event::Timer(seq))));
            }
            let mut delivered = false;
            let mut samples = Vec::new();
            for id in state.take_messaged() {
                let Some(w) = workers.get_mut(&id) else {
                    continue;
                };
                while let Ok(Ok(msg)) = w.rx.try_recv() {
                    delivered = true;
                    match msg.kind {
                        Some(Kind::Assign(a)) => {
                            for t in a.tasks {
                                w.running += 1;
                                let stretch = (f64::from(w.running) / f64::from(vcpus)).max(1.0);
                                seq += 1;
                                let at = now + sim.task_duration.mul_f64(stretch);
                                queue.push(Reverse((at, seq, Event::Done(id.clone(), t.task_id, t.attempt))));
                            }
                            samples.push((id.clone(), w.running));
                        }
                        Some(Kind::Shutdown(_)) => {
                            seq += 1;
                            queue.push(Reverse((now + sim.exit_delay, seq, Event::Exit(id.clone()))));
                        }
                        _ => {}
                    }
                }
            }
            for (id, running) in samples {
                let _ = state.sample(&id, sample(running, vcpus), base + now, &mut fx);
            }
            if !delivered && fx.spawns.is_empty() && fx.timers.is_empty() {
                break;
            }
        }
        report.peak_workers = report.peak_workers.max(workers.len());
        if finished >= accepted && workers.is_empty() && connecting == 0 {
            break;
        }
        let Some(Reverse((at, _, event))) = queue.pop() else {
            break;
        };
        now = at;
        let t = base + now;
        match event {
            Event::Connect(id) => {
                connecting -= 1;
                let (tx, rx) = unbounded_channel();
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
                if let Ok(conn) = state.connect(hello, tx, t, &mut fx) {
                    workers.insert(id, SimWorker { rx, conn, running: 0 });
                }
            }
            Event::Done(id, task_id, attempt) => {
                if let Some(w) = workers.get_mut(&id) {
                    w.running = w.running.saturating_sub(1);
                    let running = w.running;
                    let result = pb::WorkerTaskResult {
                        task_id,
                        attempt,
                        outcome: Some(pb::worker_task_result::Outcome::Output(Bytes::new())),
                        started_unix_ms: 0,
                        finished_unix_ms: 0,
                    };
                    let _ = state.results(&id, vec![result], t, &mut fx);
                    let _ = state.sample(&id, sample(running, vcpus), t, &mut fx);
                    finished += 1;
                    report.completion = report.completion.max(now);
                }
            }
            Event::Timer(key) => {
                if let Some(timer) = timers.remove(&key) {
                    state.on_timer(timer, t, &mut fx);
                }
            }
            Event::Exit(id) => {
                if let Some(w) = workers.remove(&id) {
                    state.disconnect(&id, w.conn, StreamEnd::Closed, t, &mut fx);
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

    #[test]
    fn a_large_batch_respects_the_fleet_cap_and_finishes_every_task() {
        let mut s = sim(false, 100);
        s.tasks = 20_000;
        let r = simulate(&s);
        assert_eq!(r.succeeded, 20_000);
        assert!(r.peak_workers <= 100 && r.invocations >= 100, "{r:?}");
    }
}
