//! Latency and throughput of one coordinator, as a client sees them.

use super::*;

pub(super) async fn repeat<F, Fut>(reps: usize, mut f: F) -> Result<f64, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<f64, String>>,
{
    let mut xs = Vec::new();
    for _ in 0..reps.max(1) {
        xs.push(f().await?);
    }
    Ok(median(xs))
}

pub(super) async fn dispatch_latency(
    client: &Client,
    function: &str,
    starts: &fake::StartTimes,
    n: usize,
) -> Result<(Samples, Samples), String> {
    dispatch_latency_of(client, function, Bytes::new(), starts, n).await
}

/// Submit to result of `n` tasks one at a time (every one must succeed), and submit to
/// start where the fake workers noted the start.
pub(super) async fn dispatch_latency_of(
    client: &Client,
    function: &str,
    payload: Bytes,
    starts: &fake::StartTimes,
    n: usize,
) -> Result<(Samples, Samples), String> {
    let mut total = Samples::default();
    let mut to_start = Samples::default();
    for _ in 0..n {
        let t = Instant::now();
        let r = client
            .run(function, payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        total.push(t.elapsed());
        if r.state() != carpool_client::TaskState::Succeeded {
            return Err(format!("task {} failed: {}", r.task_id, r.error));
        }
        if let Some(at) = starts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&r.task_id)
        {
            to_start.push(at.saturating_duration_since(t));
        }
    }
    Ok((total, to_start))
}

/// Submit to result one at a time through one open `Map` stream: the next input is sent
/// when the previous result is back, so each task pays its dispatch alone, without a new
/// HTTP/2 stream per task as a unary `Run` does.
pub(super) async fn streamed_latency(client: &Client, function: &str, n: usize) -> Result<Samples, String> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let mut results = client
        .map(function, tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?;
    let mut s = Samples::default();
    for _ in 0..n {
        let t = Instant::now();
        tx.send(Bytes::new()).await.map_err(|_| "Map stream closed")?;
        match results.next().await {
            Some(Ok(_)) => s.push(t.elapsed()),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("Map ended early".into()),
        }
    }
    Ok(s)
}

pub(super) async fn map_throughput(client: &Client, function: &str, n: usize) -> Result<f64, String> {
    map_throughput_of(client, function, Bytes::new(), n).await
}

/// Tasks of `function` with `payload` per second through one Map call; every one must
/// succeed.
pub(super) async fn map_throughput_of(
    client: &Client,
    function: &str,
    payload: Bytes,
    n: usize,
) -> Result<f64, String> {
    let inputs = futures::stream::iter((0..n).map(move |_| payload.clone()));
    let start = Instant::now();
    let mut results = client.map(function, inputs).await.map_err(|e| e.to_string())?;
    let mut done = 0usize;
    while let Some(r) = results.next().await {
        let r = r.map_err(|e| e.to_string())?;
        match r.result {
            Some(res) if res.state() == carpool_client::TaskState::Succeeded => {}
            Some(res) => return Err(format!("task {} failed: {}", res.task_id, res.error)),
            None => return Err(format!("submission {} rejected: {}", r.seq, r.rejected)),
        }
        done += 1;
    }
    if done != n {
        return Err(format!("Map returned {done} of {n} results"));
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub(super) async fn submit_throughput(client: &Client, n: usize, in_flight: usize) -> Result<f64, String> {
    submit_throughput_of(client, "noop", n, in_flight).await
}

/// Unary Submits of `function` per second, `in_flight` at a time (acknowledged, not run).
pub(super) async fn submit_throughput_of(
    client: &Client,
    function: &'static str,
    n: usize,
    in_flight: usize,
) -> Result<f64, String> {
    let start = Instant::now();
    let per = n.div_ceil(in_flight);
    let mut loops = Vec::new();
    for _ in 0..in_flight {
        let c = client.clone();
        loops.push(tokio::spawn(async move {
            for _ in 0..per {
                c.submit(function, Bytes::new())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        }));
    }
    for l in loops {
        l.await.map_err(|e| e.to_string())??;
    }
    Ok((per * in_flight) as f64 / start.elapsed().as_secs_f64())
}
