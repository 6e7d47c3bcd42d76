//! What operators read: ListWorkers and Stats.

use std::collections::BTreeMap;
use std::time::Instant;

use carpool_messages::pb;

use super::{FunctionPool, State};
use crate::billing;

impl State {
    /// Connected and starting workers, optionally of one function, ordered by id.
    pub fn list_workers(&self, function: &str, now: Instant) -> Vec<pb::WorkerInfo> {
        let mut out: Vec<pb::WorkerInfo> = self
            .workers
            .iter()
            .filter(|(_, w)| function.is_empty() || w.function.as_ref() == function)
            .map(|(id, w)| {
                let state = if w.stopping || !w.attached {
                    pb::WorkerState::Stopping
                } else if crate::scheduler::past_deadline(&self.rules, &w.view(now)) {
                    pb::WorkerState::Draining
                } else {
                    pb::WorkerState::Active
                };
                pb::WorkerInfo {
                    worker_id: id.to_string(),
                    function: w.function.to_string(),
                    state: state as i32,
                    running_tasks: w.running.len() as u32,
                    slots: w.limit.value(),
                    slots_max: w.limit_params.max,
                    slots_pinned: w.limit.phase() == crate::scheduler::limit::Phase::Pinned,
                    slots_phase: w.limit.phase().as_str().to_owned(),
                    vcpus: w.vcpus,
                    memory_mb: w.memory_mb,
                    last_sample: w.sample,
                    age_ms: now.saturating_duration_since(w.connected_at).as_millis() as u64,
                    tasks_done: w.done,
                    instance: w.instance.clone(),
                    cold_start_ms: w.cold_start_ms,
                    life_left_ms: crate::scheduler::life_left(&w.view(now)).as_millis() as u64,
                }
            })
            .collect();
        out.extend(
            self.spawns
                .iter()
                .filter(|(_, s)| function.is_empty() || s.function.as_ref() == function)
                .map(|(id, s)| pb::WorkerInfo {
                    worker_id: id.to_string(),
                    function: s.function.to_string(),
                    state: pb::WorkerState::Starting as i32,
                    age_ms: now.saturating_duration_since(s.since).as_millis() as u64,
                    instance: s.instance.clone(),
                    memory_mb: s.memory_mb,
                    vcpus: self.config.fleet.vcpus_at(s.memory_mb),
                    slots: self
                        .learned_limit(&s.function, s.memory_mb)
                        .map_or_else(|| self.config.fleet.worker_slots(), |l| l.level),
                    ..Default::default()
                }),
        );
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        out
    }

    /// The CPU and memory fractions of its allotment a worker's concurrency limit steers
    /// toward.
    pub fn limit_targets(&self) -> (f64, f64) {
        (self.rules.limits.cpu_target, self.rules.limits.mem_target)
    }

    /// Counters per function and in total, with the bill so far (live workers billed up
    /// to `now`).
    pub fn stats(&self, now: Instant) -> pb::StatsResponse {
        let mut total = pb::FunctionStats::default();
        let mut functions = Vec::with_capacity(self.functions.len());
        // Live workers billed so far, their limits, and those only waiting to reconnect,
        // per function, in one pass.
        let mut live: BTreeMap<&str, (f64, f64, u32, u32)> = BTreeMap::new();
        for w in self.workers.values() {
            let e = live.entry(w.function.as_ref()).or_default();
            e.0 += billing::billed_gb_ms(now.saturating_duration_since(w.billed_from), w.memory_mb);
            if w.attached {
                e.1 += f64::from(w.limit.value());
                e.2 += 1;
            } else {
                e.3 += 1;
            }
        }
        for (name, f) in &self.functions {
            let (live_gb_ms, limits, n, reconnecting) = live.get(name.as_ref()).copied().unwrap_or_default();
            let mut s = function_stats(name, f, live_gb_ms);
            s.workers_live = n;
            s.workers_reconnecting = reconnecting;
            s.workers_starting = self.spawns.of(name);
            let (memory_mb, why) = self.choose_size(name, now);
            s.memory_mb = memory_mb;
            s.memory_reason = why.as_str().to_owned();
            s.slots_learned = self.learned_limit(name, memory_mb).map_or(0, |l| l.level);
            s.sizes = self
                .sizes
                .iter()
                .map(|&size| {
                    let c = self.learned.cost(name, size);
                    pb::SizeCost {
                        memory_mb: size,
                        workers: c.workers,
                        tasks: c.tasks,
                        billed_gb_s: c.billed_gb_ms / 1000.0,
                        gb_s_per_task: c.per_task().map_or(0.0, |ms| ms / 1000.0),
                    }
                })
                .collect();
            // At the size new workers get; with none measured there (workers that said
            // hello with a size of their own), the longest at any size.
            let bound = f.expected(memory_mb, now).or_else(|| {
                f.durations
                    .values()
                    .filter_map(crate::scheduler::life::Durations::longest)
                    .max()
            });
            s.duration_bound_ms = bound.map_or(0, |d| d.as_millis().max(1) as u64);
            let life = f.life.unwrap_or(self.config.fleet.execution_timeout);
            let (share, wanted) = crate::scheduler::life::admitting_share(
                self.rules.admission,
                self.rules.deadline_fraction,
                life,
                bound,
            );
            s.admitting_share = share;
            s.life_wanted_ms = wanted.map_or(0, |w| w.as_millis() as u64);
            s.slots_mean = if n > 0 { limits / f64::from(n) } else { 0.0 };
            add(&mut total, &s);
            functions.push(s);
        }
        total.cost_usd = billing::cost_usd(total.billed_gb_ms, total.workers_started);
        total.cold_start_p50_ms = median(
            self.functions
                .values()
                .flat_map(|f| f.recent_cold_starts.recent()),
        );
        if let Some(f) = self
            .functions
            .values()
            .filter(|f| f.last_spawn_error_at.is_some())
            .max_by_key(|f| f.last_spawn_error_at)
        {
            total.last_spawn_error.clone_from(&f.last_spawn_error);
        }
        pb::StatsResponse {
            total: Some(total),
            functions,
            uptime_ms: now.saturating_duration_since(self.started_at).as_millis() as u64,
        }
    }
}

fn function_stats(name: &str, f: &FunctionPool, live_gb_ms: f64) -> pb::FunctionStats {
    let billed_gb_ms = f.billed_gb_ms + live_gb_ms;
    pb::FunctionStats {
        function: name.to_owned(),
        pending: f.tasks.pending() + f.tasks.accepting(),
        running: f.tasks.running(),
        succeeded: f.tasks.succeeded(),
        failed: f.tasks.failed(),
        cancelled: f.tasks.cancelled(),
        workers_started: f.workers_started,
        spawn_failures: f.spawn_failures,
        billed_gb_ms,
        cost_usd: billing::cost_usd(billed_gb_ms, f.workers_started),
        retried: f.retried,
        timed_out: f.timed_out,
        cold_starts: f.cold_starts,
        cold_start_p50_ms: median(f.recent_cold_starts.recent()),
        cold_start_max_ms: f.recent_cold_starts.recent().max().unwrap_or(0),
        last_spawn_error: f.last_spawn_error.clone(),
        memory_peak_fraction: f.peak_mem,
        request_billed_gb_ms: f.request_gb_ms,
        requests: f.requests,
        refused_for_time: f.refused_for_time,
        successors_started: f.successors,
        successor_lead_ms: f.successor_lead_ms,
        killed_at_deadline: f.killed_at_deadline,
        taken_late: f.taken_late,
        handover_wait_ms: f.handover_wait.as_millis() as u64,
        handover_wait_longest_ms: f.handover_longest.as_millis() as u64,
        ..Default::default()
    }
}

/// The median (lower middle) of `values`; 0 for none.
fn median(values: impl Iterator<Item = u64>) -> u64 {
    crate::scheduler::lower_median(values).unwrap_or(0)
}

fn add(total: &mut pb::FunctionStats, s: &pb::FunctionStats) {
    total.pending += s.pending;
    total.running += s.running;
    total.succeeded += s.succeeded;
    total.failed += s.failed;
    total.cancelled += s.cancelled;
    total.workers_live += s.workers_live;
    total.workers_reconnecting += s.workers_reconnecting;
    total.workers_starting += s.workers_starting;
    total.workers_started += s.workers_started;
    total.spawn_failures += s.spawn_failures;
    total.billed_gb_ms += s.billed_gb_ms;
    total.request_billed_gb_ms += s.request_billed_gb_ms;
    total.requests += s.requests;
    total.retried += s.retried;
    total.timed_out += s.timed_out;
    total.refused_for_time += s.refused_for_time;
    total.successors_started += s.successors_started;
    total.killed_at_deadline += s.killed_at_deadline;
    total.taken_late += s.taken_late;
    total.handover_wait_ms += s.handover_wait_ms;
    total.handover_wait_longest_ms = total.handover_wait_longest_ms.max(s.handover_wait_longest_ms);
    total.cold_starts += s.cold_starts;
    total.cold_start_max_ms = total.cold_start_max_ms.max(s.cold_start_max_ms);
    total.memory_peak_fraction = total.memory_peak_fraction.max(s.memory_peak_fraction);
}
