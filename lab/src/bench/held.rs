//! The memory attack of a careless or hostile client: large payloads for a function no
//! worker serves, and large results, against `--max-pending-bytes` and
//! `--max-result-bytes` at their defaults.

use carpool_proto::pb;

use super::*;

/// The size of each payload and result: the largest the default `--max-payload-bytes`
/// takes, rounded down.
const BIG: usize = 4_000_000;

/// How many of each the attack sends (the figure the attack was first seen with).
const ATTACK: usize = 301;

/// Peak resident memory of `pid` (VmHWM), in bytes.
fn peak(pid: u32) -> Option<u64> {
    let p = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    Some(p.status().ok()?.vmhwm? * 1024)
}

fn request(function: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        function: function.into(),
        input: Some(carpool_proto::payload::text("x".repeat(BIG))),
        ..Default::default()
    }
}

/// Runs the two attacks on coordinators with default budgets; prints the coordinator's
/// peak RSS against each budget.
pub(super) async fn held_memory() -> Result<Vec<Row>, String> {
    let budget = |default: u64| default as f64 / 1e6;
    let pending_budget = budget(carpool_coordinator::config::DEFAULT_MAX_PENDING_BYTES);
    let result_budget = budget(carpool_coordinator::config::DEFAULT_MAX_RESULT_BYTES);
    // Pending payloads: nothing serves `f` (external spawner), so each stays held.
    let (coord, url) = proc::coordinator(&["--spawner", "external"])?;
    let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
    let mut refused = 0;
    for _ in 0..ATTACK {
        if let Err(e) = client.submit_request(request("f")).await {
            match &e {
                carpool_client::Error::Status(s) if s.code() == tonic::Code::ResourceExhausted => {
                    refused += 1
                }
                _ => return Err(format!("a pending submission failed otherwise: {e}")),
            }
        }
    }
    let pending_peak = peak(coord.0.id()).ok_or("coordinator memory")? as f64 / 1e6;
    drop(coord);
    // Results: local workers echo each payload back; the results outlive their tasks.
    let (coord, url) = proc::coordinator(&["--max-workers", "2"])?;
    let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
    let mut runs = futures::stream::iter((0..ATTACK).map(|_| {
        let client = client.clone();
        async move { client.run_request(request("echo")).await }
    }))
    .buffer_unordered(8);
    let mut succeeded = 0;
    while let Some(r) = runs.next().await {
        let r = r.map_err(|e| format!("an echo of 4 MB failed: {e}"))?;
        if r.state() == pb::TaskState::Succeeded {
            succeeded += 1;
        }
    }
    let result_peak = peak(coord.0.id()).ok_or("coordinator memory")? as f64 / 1e6;
    drop(coord);
    Ok(vec![
        row(
            "held_pending_refused",
            &format!("{ATTACK} pending submissions of 4 MB: refused with RESOURCE_EXHAUSTED"),
            f64::from(refused),
            "tasks",
        ),
        at_most(
            row(
                "held_pending_peak_rss_mb",
                &format!(
                    "coordinator peak RSS under that attack (--max-pending-bytes {pending_budget:.0} MB)"
                ),
                pending_peak,
                "MB",
            ),
            (pending_budget * 1.25).round(),
        ),
        row(
            "held_results_succeeded",
            &format!("{ATTACK} echoes of 4 MB on local workers: succeeded"),
            f64::from(succeeded),
            "tasks",
        ),
        at_most(
            row(
                "held_results_peak_rss_mb",
                &format!(
                    "coordinator peak RSS with their results retained (--max-result-bytes {result_budget:.0} MB)"
                ),
                result_peak,
                "MB",
            ),
            (result_budget * 1.25).round(),
        ),
    ])
}
