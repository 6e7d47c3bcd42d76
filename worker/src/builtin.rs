//! The built-in functions of the `carpool-worker` binary: `echo`, `sleep`, `spin`, and
//! `--exec CMD` for any language.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::handler::{Handler, HandlerFuture, Outcome, Task};

/// A built-in handler.
#[derive(Clone, Debug)]
pub enum Builtin {
    /// Returns the payload unchanged.
    Echo,
    /// Sleeps for the payload's milliseconds (I/O-bound stand-in).
    Sleep,
    /// Burns CPU for the payload's milliseconds of this thread's CPU time (CPU-bound
    /// stand-in: under contention it takes longer, as real work would).
    Spin,
    /// The paper's task (SeBS thumbnailer): decode the JPEG at `{"input": PATH}`, shrink it
    /// to fit `{"size": N}` pixels (default 100, aspect kept), write it as JPEG to
    /// `{"output": PATH}`.
    Thumbnail,
    /// Runs `sh -c CMD` with the payload on stdin; stdout is the output, a non-zero exit
    /// is a task error carrying stderr.
    Exec(String),
}

impl Builtin {
    /// The handler for `function`: `--exec` serves any function, otherwise the function
    /// must be a built-in's name.
    pub fn for_function(function: &str, exec: Option<String>) -> Result<Self, String> {
        match (exec, function) {
            (Some(cmd), _) => Ok(Builtin::Exec(cmd)),
            (None, "echo") => Ok(Builtin::Echo),
            (None, "sleep") => Ok(Builtin::Sleep),
            (None, "spin") => Ok(Builtin::Spin),
            (None, "thumbnail") => Ok(Builtin::Thumbnail),
            (None, other) => Err(format!(
                "no handler for function {other:?}: the built-ins are echo, sleep, spin and thumbnail; pass --exec CMD for others"
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
                let spun = tokio::task::spawn_blocking(move || spin(Duration::from_millis(ms)))
                    .await
                    .map_err(|e| format!("spin failed: {e}"))?;
                Ok(Bytes::from(format!(
                    "{{\"spun_ms\":{ms},\"wall_ms\":{}}}",
                    spun.as_millis()
                )))
            }),
            Builtin::Thumbnail => Box::pin(async move {
                tokio::task::spawn_blocking(move || thumbnail(&task.payload))
                    .await
                    .map_err(|e| format!("thumbnail failed: {e}"))?
            }),
            Builtin::Exec(cmd) => Box::pin(exec(cmd, task.payload)),
        }
    }
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

/// The thumbnail task: `{"input": PATH, "output": PATH, "size": N}`.
fn thumbnail(payload: &[u8]) -> Outcome {
    let args: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| format!("payload must be JSON {{\"input\", \"output\"}}: {e}"))?;
    let path = |key: &str| {
        args.get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("payload needs a string {key:?}"))
    };
    let (input, output) = (path("input")?, path("output")?);
    let size = args
        .get("size")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(100)
        .clamp(1, 10_000) as u32;
    let image = image::open(&input).map_err(|e| format!("{input}: {e}"))?;
    let small = image.thumbnail(size, size);
    small
        .to_rgb8()
        .save(&output)
        .map_err(|e| format!("{output}: {e}"))?;
    Ok(Bytes::from(format!(
        "{{\"output\":{},\"width\":{},\"height\":{}}}",
        serde_json::Value::String(output),
        small.width(),
        small.height()
    )))
}

/// Busy-loops until this thread has used `cpu` of CPU time; returns the wall time taken.
fn spin(cpu: Duration) -> Duration {
    let start = Instant::now();
    let Some(begin) = thread_cpu() else {
        // No thread clock: fall back to wall time.
        while start.elapsed() < cpu {
            std::hint::spin_loop();
        }
        return start.elapsed();
    };
    let mut x: u64 = 1;
    loop {
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
        assert!(Builtin::for_function("resize", None).is_err());
        assert!(matches!(
            Builtin::for_function("resize", Some("cat".into())),
            Ok(Builtin::Exec(_))
        ));
    }

    #[tokio::test]
    async fn exec_failure_carries_stderr() {
        let task = Task {
            id: 1,
            attempt: 1,
            function: "x".into(),
            payload: Bytes::new(),
        };
        let out = Builtin::Exec("echo oops >&2; exit 3".into()).call(task).await;
        let err = out.err().unwrap_or_default();
        assert!(err.contains("oops") && err.contains('3'), "{err}");
    }
}
