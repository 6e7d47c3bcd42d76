//! Lambda mode: the same worker, run by AWS Lambda (or an emulator) through the Lambda
//! Runtime API. Detected by `AWS_LAMBDA_RUNTIME_API` in the environment.
//!
//! Each invocation's event ([`WorkerEvent`]) starts one session:
//! - the coordinator URL, worker id, function, token and slots come from the event;
//! - the execution timeout is the invocation's remaining time, less a margin so that the
//!   session ends (and its results are sent) before Lambda freezes or kills the instance.
//!   A deadline that is already past or absurd (some emulators send one) is treated as
//!   unknown: the configured `--timeout` applies, and that is logged once;
//! - memory is `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, vCPUs are the CPUs the instance has;
//! - the instance shown in ListWorkers is the invocation's request id.
//!
//! The invocation returns a small JSON [`InvocationSummary`]. A malformed event fails the
//! invocation at once with an error naming the problem. SIGTERM ends a running session
//! cleanly (the coordinator gives its tasks back at once) and then the process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use carpool_proto::lambda::WorkerEvent;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::WorkerConfig;
use crate::handler::Handler;
use crate::runtime::{RuntimeHost, RuntimeSettings};
use crate::sampler::Measure;
use crate::served::Served;

/// The environment variables lambda_runtime needs; checked first so that a missing one is a
/// clear error rather than a panic.
const REQUIRED_ENV: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// A deadline further away than this is not a real one (Lambda's longest timeout is 15 min).
const LONGEST_INVOCATION: Duration = Duration::from_secs(15 * 60 + 60);

/// Whether this process was started by Lambda (or an emulator of its Runtime API).
pub fn detected() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// What an invocation returns.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct InvocationSummary {
    /// The worker id from the event.
    pub worker_id: String,
    /// Tasks finished in this invocation.
    pub tasks_run: u64,
    /// Seconds the session lasted.
    pub seconds_alive: f64,
    /// Why it ended, e.g. `shutdown: idle`, `execution timeout`, `terminated`.
    pub ended: String,
}

/// Settings that do not come with the event (from flags or `CARPOOL_*` variables).
#[derive(Clone, Debug)]
pub struct LambdaDefaults {
    /// The execution timeout when the invocation's deadline is unknown.
    pub timeout: Duration,
    /// How long to keep reconnecting after the stream breaks.
    pub reconnect_for: Duration,
    /// A CA to verify the coordinator's certificate with (PEM), if not the system's roots.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// The worker token, when the event carries none (e.g. set on the function's environment).
    pub token: Option<carpool_proto::Secret>,
    /// The Lambda runtime command to host (`--runtime`, `CARPOOL_RUNTIME`), when the event
    /// names none.
    pub runtime: Option<String>,
}

/// Serves invocations until the runtime stops: each event runs one session with the handler
/// `make(function)` returns. Returns an error if the Lambda environment is incomplete or
/// the Runtime API fails.
pub async fn serve<F, H>(defaults: LambdaDefaults, make: F) -> Result<(), String>
where
    F: Fn(&str) -> Result<H, String> + Send + Sync + 'static,
    H: Handler,
{
    let missing: Vec<&str> = REQUIRED_ENV
        .iter()
        .copied()
        .filter(|v| std::env::var_os(v).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "AWS_LAMBDA_RUNTIME_API is set but {} is not: the Lambda environment is incomplete",
            missing.join(", ")
        ));
    }
    let memory_mb = match std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").map(|v| v.parse::<u32>()) {
        Ok(Ok(mb)) if mb > 0 => mb,
        _ => return Err("AWS_LAMBDA_FUNCTION_MEMORY_SIZE is not a positive number of MB".into()),
    };
    let terminate = CancellationToken::new();
    let active = Arc::new(tokio::sync::Semaphore::new(1));
    watch_sigterm(terminate.clone(), active.clone());
    let shared = Arc::new(Shared {
        defaults,
        memory_mb,
        make,
        terminate,
        active,
        warned_deadline: AtomicBool::new(false),
        hosted: std::sync::Mutex::new(None),
    });
    info!(memory_mb, "serving Lambda invocations");
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let shared = shared.clone();
        async move { shared.invocation(event).await }
    }))
    .await
    .map_err(|e| format!("the Lambda runtime stopped: {e}"))
}

struct Shared<F> {
    defaults: LambdaDefaults,
    memory_mb: u32,
    make: F,
    terminate: CancellationToken,
    /// Held while a session runs (SIGTERM waits for it before the process exits).
    active: Arc<tokio::sync::Semaphore>,
    warned_deadline: AtomicBool,
    /// The hosted Lambda runtime, kept warm across invocations (its copies keep their
    /// module state, as Lambda's own do): (function, command, host).
    hosted: std::sync::Mutex<Option<(String, String, Arc<RuntimeHost>)>>,
}

impl<F, H> Shared<F>
where
    F: Fn(&str) -> Result<H, String> + Send + Sync + 'static,
    H: Handler,
{
    async fn invocation(
        &self,
        event: LambdaEvent<serde_json::Value>,
    ) -> Result<InvocationSummary, Diagnostic> {
        let request_id = event.context.request_id.clone();
        let bytes = serde_json::to_vec(&event.payload).unwrap_or_default();
        let ev = WorkerEvent::parse(&bytes).map_err(|msg| {
            error!(request_id, error = %msg, "rejected the invocation's event");
            diagnostic("InvalidCarpoolEvent", msg)
        })?;
        let runtime = ev.runtime.clone().or_else(|| self.defaults.runtime.clone());
        let handler = match runtime {
            Some(command) => Served::Runtime(self.host(&ev.function, command, &event.context.invoked_function_arn)),
            None => Served::Own((self.make)(&ev.function).map_err(|msg| {
                error!(request_id, worker = %ev.worker_id, error = %msg, "no handler for the event's function");
                diagnostic("UnknownCarpoolFunction", msg)
            })?),
        };
        let timeout = match remaining(event.context.deadline, SystemTime::now()) {
            Some(t) => t,
            None => {
                if !self.warned_deadline.swap(true, Ordering::Relaxed) {
                    warn!(deadline_ms = event.context.deadline, fallback = %humantime::format_duration(self.defaults.timeout), "the invocation's deadline is not a real time; using the configured timeout");
                }
                self.defaults.timeout
            }
        };
        let mut config = WorkerConfig::new(ev.coordinator_url, ev.function);
        config.id = ev.worker_id;
        config.memory_mb = self.memory_mb;
        // The micro-VM shows cores it does not allot: the memory size buys the vCPUs.
        config.vcpus = carpool_proto::lambda::vcpus_for_memory(self.memory_mb);
        config.vcpu_allotment = Some(carpool_proto::lambda::vcpu_allotment(self.memory_mb));
        config.measure = Measure::Process;
        config.slots = ev.slots;
        config.timeout = timeout;
        config.instance = request_id.clone();
        config.reconnect_for = self.defaults.reconnect_for;
        config.tls.domain = ev.tls_domain;
        config.tls.ca_pem.clone_from(&self.defaults.tls_ca_pem);
        config.token = match ev.token {
            Some(t) => Some(carpool_proto::Secret::new(&t)),
            None => self.defaults.token.clone(),
        };
        config.stop = self.terminate.child_token();
        let worker_id = config.id.clone();
        info!(request_id, worker = %worker_id, timeout_ms = timeout.as_millis() as u64, "invocation started a session");
        let _active = self.active.acquire().await;
        match crate::run(config, handler).await {
            Ok(s) => Ok(InvocationSummary {
                worker_id: s.worker_id,
                tasks_run: s.tasks_run,
                seconds_alive: (s.alive.as_secs_f64() * 1000.0).round() / 1000.0,
                ended: s.reason.describe(),
            }),
            Err(e) => {
                error!(request_id, worker = %worker_id, error = %e, "session failed");
                Err(diagnostic("CarpoolSessionFailed", e.to_string()))
            }
        }
    }
}

impl<F> Shared<F> {
    /// The runtime host for `function` and `command`: the warm one if it is the same,
    /// else a new one (the old one's copies are stopped: one function per instance).
    fn host(&self, function: &str, command: String, arn: &str) -> Arc<RuntimeHost> {
        let mut hosted = self
            .hosted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((f, c, host)) = hosted.as_ref()
            && f == function
            && *c == command
        {
            return host.clone();
        }
        let host = Arc::new(RuntimeHost::new(RuntimeSettings {
            command: command.clone(),
            function: function.to_owned(),
            memory_mb: self.memory_mb,
            function_arn: (!arn.is_empty()).then(|| arn.to_owned()),
        }));
        *hosted = Some((function.to_owned(), command, host.clone()));
        host
    }
}

fn diagnostic(kind: &str, message: String) -> Diagnostic {
    Diagnostic {
        error_type: kind.to_owned(),
        error_message: message,
    }
}

/// The session's timeout for an invocation whose deadline is `deadline_ms` (Unix ms): the
/// remaining time less a margin (a tenth of it, at most one second) to close the stream
/// and answer. `None` if the deadline is past or further than Lambda's longest timeout.
pub fn remaining(deadline_ms: u64, now: SystemTime) -> Option<Duration> {
    let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(deadline_ms);
    let left = deadline.duration_since(now).ok().filter(|d| !d.is_zero())?;
    if left > LONGEST_INVOCATION {
        return None;
    }
    let margin = (left / 10).min(Duration::from_secs(1));
    Some(left - margin)
}

/// On SIGTERM (Lambda's shutdown phase, or a local stop): ends the running session, waits
/// for it to close its stream (at most 2 s), then exits.
fn watch_sigterm(terminate: CancellationToken, active: Arc<tokio::sync::Semaphore>) {
    tokio::spawn(async move {
        let Ok(mut sigterm) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            warn!("cannot watch SIGTERM");
            return;
        };
        sigterm.recv().await;
        warn!("SIGTERM: ending the session");
        terminate.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), active.acquire()).await;
        // The hosted runtime's copies (kept warm between invocations) go with it.
        crate::children::kill_all();
        std::process::exit(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn the_remaining_time_less_a_margin_is_the_timeout() {
        let now = 1_800_000_000_000;
        assert_eq!(remaining(now + 60_000, at(now)), Some(Duration::from_secs(59)));
        assert_eq!(
            remaining(now + 3_000, at(now)),
            Some(Duration::from_millis(2_700))
        );
    }

    #[test]
    fn a_past_or_absurd_deadline_is_unknown() {
        let now = 1_800_000_000_000;
        // What an emulator hands out: 600000 ms after the epoch.
        assert_eq!(remaining(600_000, at(now)), None);
        assert_eq!(remaining(now, at(now)), None);
        assert_eq!(remaining(now + 3_600_000, at(now)), None);
    }
}
