//! One copy's life: start the runtime process against its API, watch it and its
//! invocation, kill it when its task is cancelled or overruns, replace it when it dies.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{IDLE_CRASHES, Inner, RuntimeSettings, Slot};

/// The most of a copy's stderr kept to explain its death.
const TAIL_BYTES: usize = 2048;

/// How a copy's process ended.
enum End {
    /// It exited (or was killed by someone else).
    Exited(String),
    /// Its task was cancelled: killed.
    Abandoned,
    /// Its task ran past its deadline and grace: killed.
    TimedOut(Option<Duration>),
    /// Retired (the limit fell) while idle: killed.
    Retired,
    /// The host stopped: killed.
    Stopped,
}

/// Runs copy `slot` until it is retired or the host stops: serves its API on `listener`
/// and keeps one runtime process running against it.
pub(super) async fn supervise(inner: Arc<Inner>, slot: Arc<Slot>, listener: std::net::TcpListener) {
    let Some((addr, server)) = serve_api(&inner, &slot, listener) else {
        inner.remove(&slot);
        return;
    };
    let mut idle_crashes = 0u32;
    while !(inner.stop.is_cancelled() || slot.lock().retired) {
        let Some(life) = run_once(&inner, &slot, &addr.to_string()).await else {
            break;
        };
        if crate::children::stopping() || !outlive(&inner, &slot, life, &mut idle_crashes).await {
            break;
        }
    }
    server.abort();
    inner.remove(&slot);
}

/// Serves copy `slot`'s Lambda Runtime API on `listener`: its address and the server's
/// task, or `None` (the host told why) when it cannot.
fn serve_api(
    inner: &Arc<Inner>,
    slot: &Arc<Slot>,
    listener: std::net::TcpListener,
) -> Option<(std::net::SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    match listener
        .local_addr()
        .and_then(|a| tokio::net::TcpListener::from_std(listener).map(|l| (a, l)))
    {
        Ok((addr, listener)) => {
            let router = super::api::router(inner.clone(), slot.clone());
            Some((
                addr,
                tokio::spawn(async move { axum::serve(listener, router).await }),
            ))
        }
        Err(e) => {
            inner.fail(format!("cannot serve the Lambda Runtime API on loopback: {e}"));
            None
        }
    }
}

/// One runtime process's life, as the copy saw it end.
struct Life {
    end: End,
    /// Its last stderr lines, to explain an exit.
    stderr: String,
    /// The invocation it held when it ended.
    current: Option<super::Current>,
    /// Whether it ever asked for an invocation.
    asked: bool,
    /// What it reported through the init error endpoint.
    init_error: Option<String>,
}

/// Starts one runtime process against the API at `addr`, watches it to its end and reaps
/// it. `None` (the host told why) when it cannot start.
async fn run_once(inner: &Inner, slot: &Slot, addr: &str) -> Option<Life> {
    {
        let mut st = slot.lock();
        st.asked = false;
        st.peak = 0;
    }
    let (mut child, tail, reader) = match start(&inner.settings, addr) {
        Ok(started) => started,
        Err(e) => {
            inner.fail(format!(
                "cannot start the Lambda runtime {:?}: {e}",
                inner.settings.command
            ));
            return None;
        }
    };
    let pid = child.id();
    slot.lock().pid = pid;
    let counted = pid.map(crate::children::register);
    info!(function = %inner.settings.function, copy = slot.index, pid, "Lambda runtime copy started");
    let end = watch(inner, slot, &mut child).await;
    // Reaped: its pid may be reused from now on.
    slot.lock().pid = None;
    drop(counted);
    // What it wrote last, to explain an exit (the pipe closes with the process).
    let _ = tokio::time::timeout(Duration::from_millis(200), reader).await;
    let mut st = slot.lock();
    Some(Life {
        end,
        stderr: last_lines(&tail),
        current: st.current.take(),
        asked: st.asked,
        init_error: st.init_error.take(),
    })
}

/// What follows a process's end: its task told how it ended, and whether a new process
/// replaces it (false: the copy ends; the host was told why if it is a failure).
async fn outlive(inner: &Inner, slot: &Slot, life: Life, idle_crashes: &mut u32) -> bool {
    let Life {
        end,
        stderr,
        current,
        asked,
        init_error,
    } = life;
    match end {
        End::Exited(status) => {
            if let Some(c) = current {
                warn!(task = c.task, copy = slot.index, %status, "the Lambda runtime exited mid-task; its task fails and a copy replaces it");
                let _ = c.done.send(Err(format!(
                    "the Lambda runtime process exited mid-task ({status}){stderr}"
                )));
                *idle_crashes = 0;
            } else if !asked || init_error.is_some() {
                inner.fail(init_error.unwrap_or_else(|| {
                    format!(
                        "the Lambda runtime {:?} exited before asking for an invocation ({status}){stderr}",
                        inner.settings.command
                    )
                }));
                return false;
            } else {
                *idle_crashes += 1;
                warn!(copy = slot.index, %status, idle_crashes = *idle_crashes, "the Lambda runtime exited while idle");
                if *idle_crashes >= IDLE_CRASHES {
                    inner.fail(format!(
                        "the Lambda runtime {:?} exited while idle {IDLE_CRASHES} times in a row (last: {status}){stderr}",
                        inner.settings.command
                    ));
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(100) * *idle_crashes).await;
            }
        }
        End::Abandoned => {
            if let Some(c) = current {
                info!(
                    task = c.task,
                    copy = slot.index,
                    "task cancelled: its Lambda runtime copy was killed and is replaced"
                );
            }
        }
        End::TimedOut(timeout) => {
            if let Some(c) = current {
                let secs = timeout.map_or(0.0, |t| t.as_secs_f64());
                warn!(
                    task = c.task,
                    copy = slot.index,
                    "the handler ran past its timeout: its Lambda runtime copy was killed and is replaced"
                );
                let _ = c
                    .done
                    .send(Err(format!("Task timed out after {secs:.2} seconds")));
            }
        }
        End::Retired | End::Stopped => return false,
    }
    true
}

/// Waits until the process exits or must be killed (then kills it).
async fn watch(inner: &Inner, slot: &Slot, child: &mut Child) -> End {
    loop {
        let changed = slot.changed.notified();
        let (watched, retired_idle) = {
            let st = slot.lock();
            (
                st.current
                    .as_ref()
                    .map(|c| (c.request_id.clone(), c.abandoned.clone(), c.kill_at, c.timeout)),
                st.retired && st.current.is_none(),
            )
        };
        if retired_idle {
            kill(child).await;
            return End::Retired;
        }
        let (id, abandoned, kill_at, timeout) = match watched {
            Some((id, a, k, t)) => (Some(id), Some(a), k, t),
            None => (None, None, None, None),
        };
        tokio::select! {
            status = child.wait() => return End::Exited(describe(status)),
            () = changed => {}
            () = cancelled(abandoned) => if holds(slot, id.as_deref()) {
                kill(child).await;
                return End::Abandoned;
            },
            () = sleep_until(kill_at) => if holds(slot, id.as_deref()) {
                kill(child).await;
                return End::TimedOut(timeout);
            },
            () = inner.stop.cancelled() => {
                kill(child).await;
                return End::Stopped;
            }
        }
    }
}

/// Whether the slot still runs invocation `id`.
fn holds(slot: &Slot, id: Option<&str>) -> bool {
    let st = slot.lock();
    st.current.as_ref().map(|c| c.request_id.as_str()) == id
}

async fn cancelled(token: Option<CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Kills the process's whole group (a runtime may start helpers) and reaps it.
async fn kill(child: &mut Child) {
    if let Some(pid) = child.id() {
        crate::children::kill_group(pid);
    }
    let _ = child.kill().await;
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("its status is unknown: {e}"),
    }
}

type Tail = Arc<Mutex<VecDeque<u8>>>;

/// Starts the runtime command (`sh -c`, in its own process group) with
/// `AWS_LAMBDA_RUNTIME_API` at `api`, and what Lambda would set when it is not set already.
/// What it writes (both streams) goes to the worker's stderr, and its end is kept.
fn start(
    settings: &RuntimeSettings,
    api: &str,
) -> std::io::Result<(Child, Tail, tokio::task::JoinHandle<()>)> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(shell_line(&settings.command))
        .env("AWS_LAMBDA_RUNTIME_API", api)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let task_root = task_root(&settings.command).display().to_string();
    let defaults = [
        ("AWS_LAMBDA_FUNCTION_NAME", settings.function.clone()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", settings.memory_mb.to_string()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ("LAMBDA_TASK_ROOT", task_root),
    ];
    for (name, value) in defaults {
        if std::env::var_os(name).is_none() {
            cmd.env(name, value);
        }
    }
    let mut child = cmd.spawn()?;
    let tail: Tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_BYTES)));
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let out = tokio::spawn(forward(stdout, tail.clone()));
    let err = forward(stderr, tail.clone());
    let reader = tokio::spawn(async move {
        err.await;
        let _ = out.await;
    });
    Ok((child, tail, reader))
}

/// Copies what a copy writes to the worker's stderr (Lambda sends both of a runtime's
/// streams to its log; the worker's own stdout may be closed), keeping the end of it in
/// `tail`. A write that fails is dropped: the copy is never blocked on its output.
async fn forward(stream: Option<impl tokio::io::AsyncRead + Unpin>, tail: Tail) {
    let Some(mut stream) = stream else { return };
    let mut out = tokio::io::stderr();
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let _ = out.write_all(&buf[..n]).await;
        let mut t = tail.lock().unwrap_or_else(PoisonError::into_inner);
        t.extend(&buf[..n]);
        let excess = t.len().saturating_sub(TAIL_BYTES);
        t.drain(..excess);
    }
}

/// `command` for `sh -c`: a plain command is `exec`ed, so that the copy is the runtime
/// itself rather than a shell waiting on it; one with shell syntax (`cd DIR && …`, a pipe,
/// a variable) runs as written (its process group is killed whole either way).
fn shell_line(command: &str) -> String {
    let plain = !command.contains(|c: char| ";&|<>()$`\\\n\"'*?~{}#".contains(c))
        && command
            .split_whitespace()
            .next()
            .is_some_and(|first| first != "exec" && !first.contains('='));
    if plain {
        format!("exec {command}")
    } else {
        command.to_owned()
    }
}

/// Where the handler lives (`LAMBDA_TASK_ROOT`): the directory a command of the form
/// `cd DIR && …` moves to (relative to the worker's own), else the worker's directory.
fn task_root(command: &str) -> std::path::PathBuf {
    let here = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let moved = command
        .trim_start()
        .strip_prefix("cd ")
        .and_then(|rest| rest.split_once("&&"))
        .map(|(dir, _)| dir.trim().trim_matches(|c| c == '"' || c == '\''))
        .filter(|dir| !dir.is_empty() && !dir.contains(|c: char| "$`~;|".contains(c)));
    match moved {
        Some(dir) => here.join(dir),
        None => here,
    }
}

/// The last lines a copy wrote, as `; stderr: …`, or nothing.
fn last_lines(tail: &Tail) -> String {
    let bytes: Vec<u8> = tail
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines[lines.len().saturating_sub(5)..].join(" | ");
    if last.is_empty() {
        String::new()
    } else {
        format!("; stderr: {last}")
    }
}

#[cfg(test)]
mod tests {
    use super::{shell_line, task_root};

    #[test]
    fn the_task_root_is_where_a_cd_form_moves_to() {
        let here = std::env::current_dir().unwrap_or_default();
        assert_eq!(task_root("python3 -m awslambdaric app.handler"), here);
        assert_eq!(
            task_root("cd /var/task && exec python3 -m awslambdaric app.handler"),
            std::path::PathBuf::from("/var/task")
        );
        assert_eq!(
            task_root("cd 'handlers/thumb' && node ric.mjs index.handler"),
            here.join("handlers/thumb")
        );
        assert_eq!(
            task_root("cd $HOME && node x"),
            here,
            "shell expansions are not guessed"
        );
    }

    #[test]
    fn a_plain_command_is_execed_and_shell_syntax_left_alone() {
        assert_eq!(
            shell_line("python3 -m awslambdaric app.handler"),
            "exec python3 -m awslambdaric app.handler"
        );
        for line in [
            "cd /var/task && node ric.mjs index.handler",
            "A=1 node x",
            "exec node x",
            "node $RIC",
        ] {
            assert_eq!(shell_line(line), line);
        }
    }
}
