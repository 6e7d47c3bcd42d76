//! What the demo, the experiment and the comparison share: a coordinator run in this
//! process, waiting for the fleet to leave (when the bill closes), and how a saving is
//! counted.

use std::future::Future;
use std::time::{Duration, Instant};

use carpool_client::Client;
use carpool_proto::pb;

use carpool_coordinator::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Why an in-process coordinator did not serve or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InProcError {
    /// Binding its loopback port failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// It refused its configuration or failed while serving.
    #[error("coordinator: {0}")]
    Coordinator(#[from] carpool_coordinator::Error),
    /// Its task panicked or was cancelled.
    #[error("coordinator task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs a coordinator with `config` in this process, on a loopback port the OS picks, and
/// calls `drive` with its URL. Then stops it and waits for it to drain: whatever `drive`
/// returned comes back once the coordinator is down.
pub(crate) async fn with_coordinator<T, F, Fut>(config: Config, drive: F) -> Result<T, InProcError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = T>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(carpool_coordinator::run(listener, config, async {
        let _ = stopped.await;
    }));
    let outcome = drive(url).await;
    let _ = stop.send(());
    server.await??;
    Ok(outcome)
}

/// Stats once every worker has left, so the bill is closed (or once `within` has passed:
/// the caller's figures then say what was still alive).
pub(crate) async fn settled(
    client: &Client,
    within: Duration,
) -> Result<pb::StatsResponse, carpool_client::Error> {
    let deadline = Instant::now() + within;
    loop {
        let stats = client.stats().await?;
        let t = stats.total.clone().unwrap_or_default();
        if (t.workers_live == 0 && t.workers_starting == 0) || Instant::now() > deadline {
            return Ok(stats);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How much less `ours` is than `theirs`, in percent (0 when `theirs` is 0).
pub(crate) fn saving(ours: f64, theirs: f64) -> f64 {
    if theirs > 0.0 {
        100.0 * (1.0 - ours / theirs)
    } else {
        0.0
    }
}

/// Checks that `python` runs and has AWS's awslambdaric (what `--python` promises).
pub(crate) fn check_awslambdaric(python: &str) -> Result<(), String> {
    let check = std::process::Command::new(python)
        .args(["-c", "import awslambdaric"])
        .output()
        .map_err(|e| format!("cannot run {python:?}: {e}"))?;
    if check.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{python:?} has no awslambdaric (pip install awslambdaric)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saving_is_the_share_less_and_zero_against_nothing() {
        assert!((saving(25.0, 100.0) - 75.0).abs() < 1e-9);
        assert!((saving(150.0, 100.0) + 50.0).abs() < 1e-9);
        assert_eq!(saving(1.0, 0.0), 0.0);
    }
}
