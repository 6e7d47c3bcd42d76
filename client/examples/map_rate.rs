//! No-op tasks per second through [`carpool_client::Client::map`]: `map_rate URL FUNCTION N`
//! maps N empty payloads and prints one JSON line (`tasks`, `seconds`, `tasks_per_s`,
//! `succeeded`). `scripts/bench-python` runs it beside the Python client.

use std::time::Instant;

use carpool_client::{Client, TaskState};
use carpool_proto::Bytes;
use futures::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(function), Some(n)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: map_rate URL FUNCTION N".into());
    };
    let n: usize = n.parse().map_err(|e| format!("N: {e}"))?;
    let client = Client::connect(&url).await?;
    let started = Instant::now();
    let inputs = futures::stream::iter(std::iter::repeat_n(Bytes::new(), n));
    let mut results = client.map(&function, inputs).await?;
    let mut succeeded = 0usize;
    while let Some(r) = results.next().await {
        if r?.result.is_some_and(|t| t.state() == TaskState::Succeeded) {
            succeeded += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"tasks\":{n},\"seconds\":{seconds},\"tasks_per_s\":{},\"succeeded\":{succeeded}}}",
        n as f64 / seconds
    );
    Ok(())
}
