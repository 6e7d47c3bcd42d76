//! Fleet scale, an idle worker's cost and memory per pending task.

use super::*;

/// `n` simulated workers on one coordinator: its CPU and memory while they sample at the
/// normal interval, and dispatch latency among them.
pub(super) async fn fleet(n: usize, dispatches: usize) -> Result<Vec<Row>, String> {
    let (coord, url) = proc::coordinator(&["--spawner", "external", "--keep-alive", "1h"])?;
    let mut workers = Vec::with_capacity(n);
    let mut pending = futures::stream::iter((0..n).map(|i| {
        let url = url.clone();
        async move {
            let ch = fake::channel(&url).await?;
            fake::spawn_worker(ch, format!("fleet-{i}"), "fleet", 1, None).await
        }
    }))
    .buffer_unordered(256);
    while let Some(w) = pending.next().await {
        workers.push(w?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = coord.0.id();
    let a = proc::usage(pid).ok_or("coordinator usage")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = proc::usage(pid).ok_or("coordinator usage")?;
    let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
    let mut lat = Samples::default();
    for _ in 0..dispatches {
        let t = Instant::now();
        client
            .run("fleet", Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        lat.push(t.elapsed());
    }
    let rows = vec![
        row(
            &format!("fleet_{n}_coordinator_cpu_pct"),
            &format!("{n} workers: coordinator CPU (% of a core)"),
            100.0 * proc::cpu_share(&a, &b),
            "%",
        ),
        row(
            &format!("fleet_{n}_coordinator_rss_mb"),
            &format!("{n} workers: coordinator RSS"),
            b.rss as f64 / 1e6,
            "MB",
        ),
        at_most(
            row(
                &format!("fleet_{n}_dispatch_p99_us"),
                &format!("{n} workers: submit to result p99"),
                us(lat.percentile(99.0)),
                "us",
            ),
            5000.0,
        ),
    ];
    for w in workers {
        w.abort();
    }
    drop(coord);
    Ok(rows)
}

/// CPU used by a real, idle `carpool-worker` (sampler and stream) over `secs` seconds.
pub(super) async fn idle_worker(secs: u64) -> Result<Row, String> {
    let (coord, url) = proc::coordinator(&["--spawner", "external", "--keep-alive", "1h"])?;
    let child = std::process::Command::new(proc::sibling("carpool-worker")?)
        .args(["--coordinator", &url, "--function", "echo"])
        .env("RUST_LOG", "error")
        .spawn()
        .map_err(|e| format!("starting carpool-worker: {e}"))?;
    let worker = proc::Guard(child);
    let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .stats()
        .await
        .map_err(|e| e.to_string())?
        .total
        .unwrap_or_default()
        .workers_live
        == 0
    {
        if Instant::now() > deadline {
            return Err("the idle worker never connected".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = proc::usage(worker.0.id()).ok_or("worker usage")?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let b = proc::usage(worker.0.id()).ok_or("worker usage")?;
    drop((worker, coord));
    Ok(row(
        "idle_worker_cpu_pct",
        "idle worker's control overhead (% of a core)",
        100.0 * proc::cpu_share(&a, &b),
        "%",
    ))
}

/// Coordinator memory with `n` pending tasks of 100 bytes.
pub(super) async fn pending_memory(n: usize) -> Result<Vec<Row>, String> {
    let max = (n * 2).to_string();
    let (coord, url) = proc::coordinator(&["--spawner", "external", "--max-pending", &max])?;
    let client = Client::connect(&url).await.map_err(|e| e.to_string())?;
    let before = proc::usage(coord.0.id()).ok_or("coordinator usage")?;
    let payload = Bytes::from(vec![b'x'; 100]);
    let inputs = futures::stream::iter((0..n).map(move |_| payload.clone()));
    let call = client.map("resize", inputs).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let pending = client
            .stats()
            .await
            .map_err(|e| e.to_string())?
            .total
            .unwrap_or_default()
            .pending;
        if pending as usize >= n {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {pending} of {n} tasks became pending"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = proc::usage(coord.0.id()).ok_or("coordinator usage")?;
    drop(call);
    drop(coord);
    let total_mb = after.rss as f64 / 1e6;
    let per_task = after.rss.saturating_sub(before.rss) as f64 / n as f64;
    // The target, 1,000,000 pending tasks in under 1 GB, is 1,000 bytes per task.
    Ok(vec![
        row(
            "pending_rss_mb",
            &format!("coordinator RSS with {n} pending 100-byte tasks"),
            total_mb,
            "MB",
        ),
        at_most(
            row(
                "pending_bytes_per_task",
                "memory per pending task",
                per_task,
                "bytes",
            ),
            1000.0,
        ),
    ])
}
