//! The built-in functions of the `carpool-worker` binary, one per kind of workload:
//! `echo`, `sleep` (waiting), `spin` (CPU), `hold` (memory), `mixed` (a CPU burst, then a
//! wait), `thumbnail` (the paper's task, see [`crate::thumbnail`]), and `--exec CMD` for
//! any language.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::handler::{Handler, HandlerFuture, Outcome, Task};
#[cfg(feature = "thumbnail")]
use crate::thumbnail::Files;

/// The built-ins' names.
pub const NAMES: [&str; 6] = carpool_proto::bounds::BUILTINS;

/// What the built-ins need to know about their worker.
#[derive(Clone, Debug, Default)]
pub struct BuiltinOptions {
    /// Serve the function with this shell command instead of a built-in.
    pub exec: Option<String>,
    /// The only local directory `thumbnail` reads and writes (`s3://` objects need none).
    pub data_dir: Option<PathBuf>,
    /// The worker's memory size: `hold` refuses to hold more.
    pub memory_mb: u32,
}

/// A built-in handler.
#[derive(Clone, Debug)]
pub enum Builtin {
    /// Returns the payload unchanged.
    Echo,
    /// Sleeps for the payload's milliseconds (I/O-bound stand-in).
    Sleep,
    /// Burns CPU for the payload's milliseconds of this thread's CPU time (CPU-bound
    /// stand-in: under contention it takes longer, as real work would). Stops at once when
    /// cancelled.
    Spin,
    /// Holds `{"mb": N}` MB of memory (every page touched) for `{"ms": T}` ms (memory-bound
    /// stand-in); at most the worker's memory size.
    Hold {
        /// The worker's memory size in MB.
        max_mb: u32,
    },
    /// Burns `{"cpu_ms": C}` ms of CPU, then waits `{"wait_ms": W}` ms (a task that
    /// computes, then calls out).
    Mixed,
    /// The paper's task (SeBS thumbnailer): read a JPEG, shrink it, write it (local files in
    /// the data directory, or `s3://` objects). With the `thumbnail` feature (on by default).
    #[cfg(feature = "thumbnail")]
    Thumbnail(Arc<Files>),
    /// Runs `sh -c CMD` with the payload on stdin; stdout is the output, a non-zero exit
    /// is a task error carrying stderr.
    Exec(String),
}

impl Builtin {
    /// The handler for `function`: `--exec` serves any function, otherwise the function
    /// must be a built-in's name.
    pub fn for_function(function: &str, options: &BuiltinOptions) -> Result<Self, String> {
        match (&options.exec, function) {
            (Some(cmd), _) => Ok(Builtin::Exec(cmd.clone())),
            (None, "echo") => Ok(Builtin::Echo),
            (None, "sleep") => Ok(Builtin::Sleep),
            (None, "spin") => Ok(Builtin::Spin),
            (None, "hold") => Ok(Builtin::Hold {
                max_mb: options.memory_mb,
            }),
            (None, "mixed") => Ok(Builtin::Mixed),
            #[cfg(feature = "thumbnail")]
            (None, "thumbnail") => Ok(Builtin::Thumbnail(Arc::new(Files::new(options.data_dir.clone())))),
            #[cfg(not(feature = "thumbnail"))]
            (None, "thumbnail") => Err(
                "the thumbnail built-in is not in this build of carpool-worker (built without the `thumbnail` feature)"
                    .to_owned(),
            ),
            (None, other) => Err(format!(
                "no handler for function {other:?}: the built-ins are {}; pass --exec CMD for others",
                NAMES.join(", ")
            )),
        }
    }
}

impl Handler for Builtin {
    fn call(&self, task: Task) -> HandlerFuture {
        match self.clone() {
            Builtin::Echo => Box::pin(async move { Ok(task.payload) }),
            Builtin::Sleep => Box::pin(async move {
                let ms = millis(&task.payload)?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Bytes::from(format!("{{\"slept_ms\":{ms}}}")))
            }),
            Builtin::Spin => Box::pin(async move {
                let ms = millis(&task.payload)?;
                let spun = burn(Duration::from_millis(ms)).await?;
                Ok(Bytes::from(format!(
                    "{{\"spun_ms\":{ms},\"wall_ms\":{}}}",
                    spun.as_millis()
                )))
            }),
            Builtin::Hold { max_mb } => Box::pin(hold(task.payload, max_mb)),
            Builtin::Mixed => Box::pin(async move {
                let (cpu_ms, wait_ms) = (field(&task.payload, "cpu_ms")?, field(&task.payload, "wait_ms")?);
                burn(Duration::from_millis(cpu_ms)).await?;
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                Ok(Bytes::from(format!(
                    "{{\"cpu_ms\":{cpu_ms},\"wait_ms\":{wait_ms}}}"
                )))
            }),
            #[cfg(feature = "thumbnail")]
            Builtin::Thumbnail(files) => Box::pin(async move { files.thumbnail(&task.payload).await }),
            Builtin::Exec(cmd) => Box::pin(exec(cmd, task.payload)),
        }
    }
}

/// Sets its flag when dropped: a cancelled task's future is dropped, and the blocking loop
/// it started sees the flag and stops (a `spawn_blocking` thread cannot be aborted).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Burns `cpu` of CPU time on a blocking thread; stops early if the task is cancelled.
async fn burn(cpu: Duration) -> Result<Duration, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let _cancel = StopOnDrop(stop.clone());
    tokio::task::spawn_blocking(move || spin(cpu, &stop))
        .await
        .map_err(|e| format!("spin failed: {e}"))
}

/// The memory-bound task: `{"mb": N, "ms": T}`.
async fn hold(payload: Bytes, max_mb: u32) -> Outcome {
    let (mb, ms) = (field(&payload, "mb")?, field(&payload, "ms")?);
    if mb > u64::from(max_mb) {
        return Err(format!("hold of {mb} MB refused: this worker has {max_mb} MB"));
    }
    let bytes = usize::try_from(mb * 1024 * 1024).map_err(|_| format!("{mb} MB does not fit in memory"))?;
    // Its own anonymous mapping, every page touched so that it is resident, and unmapped on
    // drop: the memory comes and goes with the task (from the allocator's heap, freed memory
    // would stay resident and look like the next task's).
    let block = tokio::task::spawn_blocking(move || -> Result<Option<memmap2::MmapMut>, String> {
        if bytes == 0 {
            return Ok(None);
        }
        let mut map =
            memmap2::MmapMut::map_anon(bytes).map_err(|e| format!("hold of {mb} MB failed: {e}"))?;
        // Huge pages where the kernel offers them (a hint, ignored where it does not), so that
        // holding memory costs little CPU: this workload is about memory.
        let _ = map.advise(memmap2::Advice::HugePage);
        for i in (0..map.len()).step_by(4096) {
            map[i] = 1;
        }
        Ok(Some(map))
    })
    .await
    .map_err(|e| format!("hold failed: {e}"))??;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    drop(block);
    Ok(Bytes::from(format!("{{\"held_mb\":{mb},\"ms\":{ms}}}")))
}

/// A number in a JSON object payload: `{"NAME": N}`.
fn field(payload: &[u8], name: &str) -> Result<u64, String> {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| format!("payload must be a JSON object with {name:?}: {e}"))?;
    value
        .get(name)
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format!("payload needs a whole number {name:?}, got {value}"))
}

/// Reads a duration in milliseconds from a payload: `150` or `{"ms": 150}`.
fn millis(payload: &[u8]) -> Result<u64, String> {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| format!("payload must be a number of milliseconds or {{\"ms\": N}}: {e}"))?;
    value
        .as_u64()
        .or_else(|| value.get("ms").and_then(serde_json::Value::as_u64))
        .ok_or_else(|| format!("payload must be a number of milliseconds or {{\"ms\": N}}, got {value}"))
}

/// Busy-loops until this thread has used `cpu` of CPU time, or `stop` is set; returns the
/// wall time taken.
fn spin(cpu: Duration, stop: &AtomicBool) -> Duration {
    let start = Instant::now();
    let Some(begin) = thread_cpu() else {
        // No thread clock: fall back to wall time.
        while start.elapsed() < cpu && !stop.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
        return start.elapsed();
    };
    let mut x: u64 = 1;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
        std::hint::black_box(x);
        match thread_cpu() {
            Some(now) if now.saturating_sub(begin) >= cpu => break,
            Some(_) => {}
            None => break,
        }
    }
    start.elapsed()
}

fn thread_cpu() -> Option<Duration> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    Some(Duration::from(t))
}

async fn exec(cmd: String, payload: Bytes) -> Outcome {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that everything it starts can be ended with it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    // A cancelled task drops this future: the guard kills the whole group, not just `sh`.
    // After a normal exit it ends whatever the command left running in the background.
    let _group = child.id().map(KillGroup);
    // Its CPU and memory are the worker's.
    let _counted = child.id().map(crate::children::register);
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input closes the pipe early: not an error.
        let _ = stdin.write_all(&payload).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("waiting for {cmd:?} failed: {e}"))?;
    if out.status.success() {
        Ok(Bytes::from(out.stdout))
    } else {
        Err(format!(
            "{cmd:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

/// Kills a process group when dropped.
struct KillGroup(u32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.0) {
            // ESRCH (nothing left in the group) is the normal case.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_accepts_a_number_or_an_object() {
        assert_eq!(millis(b"150"), Ok(150));
        assert_eq!(millis(br#"{"ms": 7}"#), Ok(7));
        assert!(millis(b"soon").is_err());
        assert!(millis(br#"{"s": 1}"#).is_err());
    }

    #[test]
    fn unknown_function_without_exec_is_refused() {
        assert!(Builtin::for_function("resize", &BuiltinOptions::default()).is_err());
        let exec = BuiltinOptions {
            exec: Some("cat".into()),
            ..BuiltinOptions::default()
        };
        assert!(matches!(
            Builtin::for_function("resize", &exec),
            Ok(Builtin::Exec(_))
        ));
    }

    fn task(payload: &str) -> Task {
        Task {
            id: 1,
            attempt: 1,
            function: "x".into(),
            payload: Bytes::from(payload.to_owned()),
            timeout: None,
        }
    }

    #[tokio::test]
    async fn hold_keeps_its_memory_and_refuses_more_than_the_worker_has() {
        let h = Builtin::Hold { max_mb: 64 };
        let out = h.call(task(r#"{"mb": 8, "ms": 1}"#)).await;
        assert_eq!(out.as_deref(), Ok(&b"{\"held_mb\":8,\"ms\":1}"[..]));
        let err = h
            .call(task(r#"{"mb": 65, "ms": 1}"#))
            .await
            .err()
            .unwrap_or_default();
        assert!(err.contains("refused") && err.contains("64 MB"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_spin_stops_burning_its_core() {
        let before = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).expect("clock");
        let spinning = tokio::spawn(Builtin::Spin.call(task("10000")));
        tokio::time::sleep(Duration::from_millis(100)).await;
        spinning.abort();
        let _ = spinning.await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mid = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).expect("clock");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).expect("clock");
        let burning = Duration::from(after) - Duration::from(mid);
        assert!(
            burning < Duration::from_millis(100),
            "still burning after the cancel: {burning:?}"
        );
        assert!(Duration::from(mid) > Duration::from(before), "it never spun");
    }

    #[tokio::test]
    async fn exec_failure_carries_stderr() {
        let task = Task {
            id: 1,
            attempt: 1,
            function: "x".into(),
            payload: Bytes::new(),
            timeout: None,
        };
        let out = Builtin::Exec("echo oops >&2; exit 3".into()).call(task).await;
        let err = out.err().unwrap_or_default();
        assert!(err.contains("oops") && err.contains('3'), "{err}");
    }
}
