//! How the CLI prints results, workers and stats.

use carpool_proto::pb::{self, payload::Data};
use serde_json::{Value, json};

/// A payload as JSON: parsed if its text is JSON, a string if it is other text, and
/// `{"base64": …}`-free byte counts for binary (the CLI never dumps raw bytes).
pub(crate) fn payload_json(p: Option<&pb::Payload>) -> Value {
    match p.and_then(|p| p.data.as_ref()) {
        Some(Data::Text(t)) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.clone())),
        Some(Data::Binary(b)) => json!({ "binary_bytes": b.len() }),
        None => Value::Null,
    }
}

/// One task result as a JSON object (one line of `carpool map` output).
pub(crate) fn result_json(r: &pb::TaskResult) -> Value {
    let mut v = json!({
        "task_id": r.task_id,
        "state": state_name(r.state()),
        "worker": r.worker_id,
        "attempts": r.attempts,
        "started_unix_ms": r.started_unix_ms,
        "finished_unix_ms": r.finished_unix_ms,
        "billed_gb_s": r.billed_gb_s,
    });
    if r.state() == pb::TaskState::Succeeded {
        v["output"] = payload_json(r.output.as_ref());
    } else {
        v["error"] = Value::String(r.error.clone());
    }
    v
}

/// A task's info as JSON.
pub(crate) fn info_json(t: &pb::TaskInfo) -> Value {
    json!({
        "task_id": t.task_id,
        "function": t.function,
        "state": state_name(t.state()),
        "attempts": t.attempts,
        "worker": t.worker_id,
        "submitted_unix_ms": t.submitted_unix_ms,
        "result": t.result.as_ref().map(result_json),
    })
}

/// `SUCCEEDED`, `FAILED`, … without the enum prefix.
pub(crate) fn state_name(s: pb::TaskState) -> &'static str {
    s.as_str_name().trim_start_matches("TASK_STATE_")
}

/// Workers as a text table.
pub(crate) fn workers_table(workers: &[pb::WorkerInfo]) -> String {
    let mut out = format!(
        "{:<24} {:<12} {:<9} {:>7} {:>5} {:<8} {:>6} {:>5} {:>8} {:>9}  {}\n",
        "WORKER", "FUNCTION", "STATE", "RUNNING", "LIMIT", "(PHASE)", "CPU", "MEM", "DONE", "AGE", "INSTANCE"
    );
    for w in workers {
        let (cpu, mem) = sample_percents(w.last_sample.as_ref());
        out.push_str(&format!(
            "{:<24} {:<12} {:<9} {:>7} {:>5} {:<8} {:>6} {:>5} {:>8} {:>8.1}s  {}\n",
            w.worker_id,
            w.function,
            w.state().as_str_name().trim_start_matches("WORKER_STATE_"),
            w.running_tasks,
            w.slots,
            if w.slots_phase.is_empty() {
                String::new()
            } else {
                format!("({})", w.slots_phase)
            },
            cpu,
            mem,
            w.tasks_done,
            w.age_ms as f64 / 1000.0,
            w.instance
        ));
    }
    out
}

/// Stats as a text table.
pub(crate) fn stats_table(s: &pb::StatsResponse) -> String {
    let mut out = format!(
        "{:<12} {:>8} {:>8} {:>10} {:>7} {:>9} {:>5} {:>8} {:>8} {:>14} {:>12} {:>6} {:>17} {:>8} {:>8}\n",
        "FUNCTION",
        "PENDING",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "LIVE",
        "STARTED",
        "RETRIED",
        "BILLED GB-s",
        "COST USD",
        "SPAWN!",
        "COLD p50/max ms",
        "LIMIT",
        "LEARNED"
    );
    let rows = s.functions.iter().chain(s.total.as_ref());
    for f in rows {
        let name = if f.function.is_empty() {
            "TOTAL"
        } else {
            f.function.as_str()
        };
        out.push_str(&format!(
            "{:<12} {:>8} {:>8} {:>10} {:>7} {:>9} {:>5} {:>8} {:>8} {:>14.3} {:>12.8} {:>6} {:>17} {:>8} {:>8}\n",
            name,
            f.pending,
            f.running,
            f.succeeded,
            f.failed,
            f.cancelled,
            f.workers_live,
            f.workers_started,
            f.retried,
            f.billed_gb_ms / 1000.0,
            f.cost_usd,
            f.spawn_failures,
            if f.cold_starts == 0 {
                "-".to_owned()
            } else {
                format!("{}/{}", f.cold_start_p50_ms, f.cold_start_max_ms)
            },
            if f.workers_live == 0 || f.function.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}", f.slots_mean)
            },
            if f.slots_learned == 0 {
                "-".to_owned()
            } else {
                f.slots_learned.to_string()
            }
        ));
    }
    for f in &s.functions {
        if f.duration_bound_ms > 0
            || f.successors_started > 0
            || f.killed_at_deadline > 0
            || f.refused_for_time > 0
        {
            out.push_str(&format!(
                "life of {}'s workers: tasks take up to {} ms; a new worker takes them for {:.0} % of its life{}; {} refused for time; {} bounded tasks taken late; {} successors (latest {} ms ahead); tasks waited {} ms across hand-overs (longest {} ms); {} killed at a deadline\n",
                f.function,
                f.duration_bound_ms,
                f.admitting_share * 100.0,
                if f.life_wanted_ms > 0 {
                    format!(
                        " (short for its tasks: a life of {:.1} s would take them as long as the fixed rule does)",
                        f.life_wanted_ms as f64 / 1000.0
                    )
                } else {
                    String::new()
                },
                f.refused_for_time,
                f.taken_late,
                f.successors_started,
                f.successor_lead_ms,
                f.handover_wait_ms,
                f.handover_wait_longest_ms,
                f.killed_at_deadline
            ));
        }
        if !f.last_spawn_error.is_empty() {
            out.push_str(&format!(
                "last failed spawn of {}: {}\n",
                f.function, f.last_spawn_error
            ));
        }
    }
    out
}

/// A worker's last sample as CPU and memory percentages ("-" where unknown).
pub(crate) fn sample_percents(sample: Option<&pb::ResourceSample>) -> (String, String) {
    let Some(s) = sample else {
        return ("-".into(), "-".into());
    };
    let mem = if s.memory_limit_bytes > 0 {
        format!(
            "{:.0}%",
            100.0 * s.memory_used_bytes as f64 / s.memory_limit_bytes as f64
        )
    } else {
        "-".into()
    };
    (format!("{:.0}%", s.cpu * 100.0), mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_say_when_a_life_is_short_for_its_tasks_and_what_life_is_not() {
        let stats = |share: f64, wanted: u64| pb::StatsResponse {
            functions: vec![pb::FunctionStats {
                function: "wait".into(),
                duration_bound_ms: 2_000,
                admitting_share: share,
                life_wanted_ms: wanted,
                ..Default::default()
            }],
            ..Default::default()
        };
        let short = stats_table(&stats(0.51, 12_300));
        assert!(
            short.contains("takes them for 51 % of its life (short for its tasks: a life of 12.3 s"),
            "{short}"
        );
        let long = stats_table(&stats(0.997, 0));
        assert!(long.contains("for 100 % of its life;"), "{long}");
        assert!(!long.contains("short for its tasks"), "{long}");
    }
}
