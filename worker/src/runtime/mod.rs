//! Existing Lambda functions as task code, unchanged: the worker hosts the Lambda Runtime
//! API on loopback and runs copies of the user's runtime process (`python3 -m awslambdaric
//! app.handler`, `npx aws-lambda-ric index.handler`, any custom runtime) against it.
//!
//! - Each copy gets its own API on its own loopback port (`AWS_LAMBDA_RUNTIME_API`), as
//!   each Lambda sandbox has its own: the host always knows which process holds which
//!   invocation. A copy runs one invocation at a time; module state lives across them.
//! - Copies follow the work, paced ([`pace`]): one starts for a task that has no copy,
//!   never more than the coordinator's concurrency limit (at most [`MAX_RUNTIMES`]), at
//!   most as many initializing at once as the worker has CPUs, and only while memory holds
//!   every copy at the largest peak a copy has shown. Warm copies stay up to the limit;
//!   past it, idle ones are stopped first.
//! - Each task is one invocation: its payload is the event, the response its output, an
//!   error response a task error `errorType: errorMessage`. The deadline header is the
//!   attempt's own timeout ([`crate::Task::timeout`]).
//! - A copy that exits mid-task fails that task with its exit status and the end of its
//!   stderr, and is replaced. One still running its task [`TIMEOUT_GRACE`] past the
//!   deadline is killed (its task fails with Lambda's "Task timed out" message) and
//!   replaced; a task the coordinator cancels (its timeout passed there first) has its copy
//!   killed and replaced at once.
//! - An init error (`/runtime/init/error`, or a copy that exits before it asks for its first
//!   invocation) fails the session with the runtime's message; before the first connection
//!   ([`Handler::prepare`](crate::Handler::prepare)) the worker exits without dialing.
//!
//! [`api`] serves the endpoints; [`process`] starts, watches and kills the copies;
//! [`pace`] says how many copies to start.

mod api;
use carpool_core::pace;
mod process;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::handler::{BrokenFuture, Handler, HandlerFuture, Outcome, PrepareFuture, Task};

/// The most runtime processes one worker runs, whatever its limit (past it, tasks wait for
/// a free copy).
pub const MAX_RUNTIMES: usize = 1024;
/// How long past an invocation's deadline its copy may still answer before it is killed.
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(1);
/// How long the first copy may take to ask for its first invocation (its init) before the
/// worker gives up on the runtime.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest response or error body a copy may post (Lambda's limit for a synchronous
/// response); a larger response fails its task.
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;
/// Copies in a row that die while idle (after their init) before the runtime is given up.
const IDLE_CRASHES: u32 = 5;
pub use carpool_core::pace::COPY_MEMORY_SHARE;
/// How often the copies' memory peaks are read again (at most), when copies may start.
const PEAKS_EVERY: Duration = Duration::from_millis(50);

/// What the runtime processes are told about their function.
#[derive(Clone, Debug)]
pub struct RuntimeSettings {
    /// The command, run with `sh -c` (as `exec COMMAND`), e.g. `python3 -m awslambdaric
    /// app.handler`.
    pub command: String,
    /// The carpool function served (the default `AWS_LAMBDA_FUNCTION_NAME`).
    pub function: String,
    /// The worker's memory size (the default `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
    pub memory_mb: u32,
    /// The ARN in `Lambda-Runtime-Invoked-Function-Arn`; `None`: one made of the region
    /// and the function name.
    pub function_arn: Option<String>,
}

/// The handler that runs each task as an invocation of a Lambda runtime process. Dropping
/// it kills every copy.
pub struct RuntimeHost {
    inner: Arc<Inner>,
}

/// What the copies, their APIs and the handler share.
struct Inner {
    settings: RuntimeSettings,
    arn: String,
    /// Invocations not yet taken by a copy (at most the tasks the session runs, which the
    /// coordinator's limit bounds).
    queue: Mutex<VecDeque<Job>>,
    /// Notified (all waiters) when a job is queued.
    queued: Notify,
    /// The live copies.
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Starting, ready (a copy asked for an invocation) or broken (with the reason).
    health: watch::Sender<Health>,
    /// Cancelled when the host is dropped: every copy is killed.
    stop: CancellationToken,
    next_slot: AtomicU64,
    /// The coordinator's concurrency limit for this worker (1 until it says).
    limit: AtomicUsize,
    /// Copies that may initialize at once: the CPUs the worker can run on.
    ramp: usize,
    /// What the worker and its copies may hold together, in bytes.
    budget: u64,
    /// Whether a task has finished on some copy.
    completed: AtomicBool,
    /// Whether a look is due once the longest-running invocation has run
    /// [`pace::WORKING_MEMORY_SHOWN`] (copies held back for a first task's memory).
    shown_look: AtomicBool,
    /// The worker's own memory, the largest peak a ready copy has shown, and when they
    /// were read.
    memory: Mutex<MemoryLook>,
    /// When the running invocations last reached a count higher than any since the last
    /// look ([`Handler::running`]), and that count: a copy that takes the next invocation
    /// in place of one that ended adds no task, and is not the newest.
    newest: Mutex<(Option<Instant>, usize)>,
    /// Copies that finished their init, and their inits added up.
    inits: Mutex<(u32, Duration)>,
}

/// The memory figures copy starts are judged by (read at most every [`PEAKS_EVERY`]).
#[derive(Default)]
struct MemoryLook {
    at: Option<Instant>,
    own_bytes: u64,
    copy_peak: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum Health {
    Starting,
    Ready,
    Broken(String),
}

/// One task waiting for a copy: the invocation, and where its outcome goes.
struct Job {
    invocation: Invocation,
    done: oneshot::Sender<Outcome>,
}

/// The invocation a copy holds.
struct Current {
    request_id: String,
    task: u64,
    /// When the copy took it.
    since: Instant,
    kill_at: Option<Instant>,
    timeout: Option<Duration>,
    done: oneshot::Sender<Outcome>,
    abandoned: CancellationToken,
}

/// One copy of the runtime: its API's port and what it is doing.
struct Slot {
    index: u64,
    /// When it was started.
    born: Instant,
    state: Mutex<SlotState>,
    /// Notified when its invocation starts or ends, or it is retired.
    changed: Notify,
}

#[derive(Default)]
struct SlotState {
    current: Option<Current>,
    /// Set when the limit fell: it takes no new invocation and is stopped once idle.
    retired: bool,
    /// Whether its process asked for an invocation yet (its init is done).
    asked: bool,
    /// The error its process posted to `/runtime/init/error`.
    init_error: Option<String>,
    /// Its process (the leader of its process group) while it runs.
    pid: Option<u32>,
    /// The most memory its process has held (the kernel's high-water mark), at the last look.
    peak: u64,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RuntimeHost {
    /// A host for `settings.command`; no copy runs until [`Handler::prepare`] or the first
    /// limit.
    pub fn new(settings: RuntimeSettings) -> Self {
        let arn = settings.function_arn.clone().unwrap_or_else(|| {
            let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned());
            let name =
                std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| settings.function.clone());
            format!("arn:aws:lambda:{region}:000000000000:function:{name}")
        });
        let (health, _) = watch::channel(Health::Starting);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let allotment = carpool_proto::lambda::vcpu_allotment(settings.memory_mb);
        let ramp = (allotment.ceil() as usize).clamp(1, cpus.max(1));
        let budget = (f64::from(settings.memory_mb) * 1024.0 * 1024.0 * COPY_MEMORY_SHARE) as u64;
        Self {
            inner: Arc::new(Inner {
                settings,
                arn,
                queue: Mutex::new(VecDeque::new()),
                queued: Notify::new(),
                slots: Mutex::new(Vec::new()),
                health,
                stop: CancellationToken::new(),
                next_slot: AtomicU64::new(0),
                limit: AtomicUsize::new(1),
                ramp,
                budget,
                completed: AtomicBool::new(false),
                shown_look: AtomicBool::new(false),
                memory: Mutex::new(MemoryLook::default()),
                newest: Mutex::new((None, 0)),
                inits: Mutex::new((0, Duration::ZERO)),
            }),
        }
    }

    /// The command its copies run.
    pub fn command(&self) -> &str {
        &self.inner.settings.command
    }

    /// How many copies run now (retired ones still finishing a task included).
    pub fn copies(&self) -> usize {
        self.inner.slots().len()
    }

    /// How many copies finished their init (asked for an invocation).
    pub fn ready_copies(&self) -> usize {
        self.inner.slots().iter().filter(|s| s.lock().asked).count()
    }

    /// How many copies may initialize at once.
    pub fn ramp(&self) -> usize {
        self.inner.ramp
    }
}

impl Drop for RuntimeHost {
    /// Kills every copy now (the process may be about to exit, with no time for the
    /// supervisors to do it).
    fn drop(&mut self) {
        // Killed before their `next` calls are answered: a runtime client told the worker
        // is stopping would print a traceback on its way out.
        for slot in self.inner.slots().iter() {
            if let Some(pid) = slot.lock().pid {
                crate::children::kill_group(pid);
            }
        }
        self.inner.stop.cancel();
    }
}

impl Handler for RuntimeHost {
    fn call(&self, task: Task) -> HandlerFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let (done, result) = oneshot::channel();
            let abandoned = CancellationToken::new();
            let guard = abandoned.clone().drop_guard();
            let now_ms = carpool_proto::unix_ms();
            let deadline_ms = match task.timeout {
                Some(t) => now_ms.saturating_add(t.as_millis() as u64),
                // No limit at all: Lambda's longest, so that the handler sees a sane number.
                None => now_ms.saturating_add(15 * 60 * 1000),
            };
            inner.enqueue(Job {
                invocation: Invocation {
                    task: task.id,
                    attempt: task.attempt,
                    payload: task.payload,
                    deadline_ms,
                    kill_at: task.timeout.map(|t| Instant::now() + t + TIMEOUT_GRACE),
                    timeout: task.timeout,
                    abandoned,
                },
                done,
            });
            let outcome = result.await;
            guard.disarm();
            outcome.unwrap_or_else(|_| {
                Err("the Lambda runtime host stopped before the task finished".to_owned())
            })
        })
    }

    fn prepare(&self) -> PrepareFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            if inner.slots().is_empty() {
                inner.fit()?;
            }
            let mut health = inner.health.subscribe();
            let ready = tokio::time::timeout(INIT_TIMEOUT, health.wait_for(|h| *h != Health::Starting)).await;
            match ready {
                Err(_) => Err(format!(
                    "the Lambda runtime {:?} did not ask for an invocation within {} s of its start",
                    inner.settings.command,
                    INIT_TIMEOUT.as_secs()
                )),
                Ok(Err(_)) => Err("the Lambda runtime host stopped".to_owned()),
                Ok(Ok(h)) => match &*h {
                    Health::Broken(msg) => Err(msg.clone()),
                    _ => Ok(()),
                },
            }
        })
    }

    fn limit(&self, slots: u32) {
        self.inner
            .limit
            .store((slots as usize).clamp(1, MAX_RUNTIMES), Ordering::Relaxed);
        self.inner.refit();
    }

    fn running(&self) -> Option<crate::handler::Running> {
        let tasks = self
            .inner
            .slots()
            .iter()
            .filter(|s| s.lock().current.is_some())
            .count();
        let newest = {
            let mut newest = self.inner.newest.lock().unwrap_or_else(PoisonError::into_inner);
            // The next look counts rises from what runs now.
            *newest = (newest.0.filter(|_| tasks > 0), tasks);
            newest.0
        };
        let (inited, took) = *self.inner.inits.lock().unwrap_or_else(PoisonError::into_inner);
        Some(crate::handler::Running {
            tasks: tasks as u32,
            newest,
            copy_init: (inited > 0).then(|| took / inited),
        })
    }

    fn broken(&self) -> BrokenFuture {
        let mut health = self.inner.health.subscribe();
        Box::pin(async move {
            let reason = match health.wait_for(|h| matches!(h, Health::Broken(_))).await {
                Ok(h) => match &*h {
                    Health::Broken(msg) => Some(msg.clone()),
                    _ => None,
                },
                Err(_) => None,
            };
            match reason {
                Some(msg) => msg,
                None => std::future::pending().await,
            }
        })
    }
}

impl Inner {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enqueue(self: &Arc<Self>, job: Job) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(job);
        self.queued.notify_waiters();
        self.refit();
    }

    /// [`Inner::fit`], failing the runtime if a copy cannot be started.
    fn refit(self: &Arc<Self>) {
        if let Err(msg) = self.fit() {
            self.fail(msg);
        }
    }

    /// An invocation ended on a copy: its memory shows in the copy's peak, and a copy may
    /// be free for the queue (or more may start).
    fn finished(self: &Arc<Self>) {
        self.completed.store(true, Ordering::Relaxed);
        self.refit();
    }

    /// The next live job for `slot`, now its invocation; `None` if it is retired or nothing
    /// waits. Jobs whose task was cancelled while they waited are dropped.
    fn take_for(&self, slot: &Slot) -> Option<(Invocation, String)> {
        let mut state = slot.lock();
        if state.retired || state.current.is_some() {
            return None;
        }
        let job = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                let job = queue.pop_front()?;
                if !job.invocation.abandoned.is_cancelled() && !job.done.is_closed() {
                    break job;
                }
            }
        };
        let Job {
            invocation: job,
            done,
        } = job;
        let request_id = format!("carpool-{}-{}", job.task, job.attempt);
        state.current = Some(Current {
            request_id: request_id.clone(),
            task: job.task,
            since: Instant::now(),
            kill_at: job.kill_at,
            timeout: job.timeout,
            done,
            abandoned: job.abandoned.clone(),
        });
        drop(state);
        slot.changed.notify_one();
        let busy = self.slots().iter().filter(|s| s.lock().current.is_some()).count();
        let mut newest = self.newest.lock().unwrap_or_else(PoisonError::into_inner);
        if busy > newest.1 || newest.0.is_none() {
            *newest = (Some(Instant::now()), busy);
        }
        drop(newest);
        Some((job, request_id))
    }

    /// Starts the copies the work asks for and [`pace`] allows, or retires those past the
    /// limit (idle ones first).
    fn fit(self: &Arc<Self>) -> Result<(), String> {
        if self.stop.is_cancelled() {
            return Ok(());
        }
        let limit = self.limit.load(Ordering::Relaxed).clamp(1, MAX_RUNTIMES);
        let queued = self.queue.lock().unwrap_or_else(PoisonError::into_inner).len();
        let look = self.look_at_memory();
        let mut slots = self.slots();
        let live: Vec<&Arc<Slot>> = slots.iter().filter(|s| !s.lock().retired).collect();
        if live.len() > limit {
            self.retire(&live, live.len() - limit);
            return Ok(());
        }
        let mut census = pace::Census {
            limit,
            live: live.len(),
            queued,
            ramp: self.ramp,
            completed: self.completed.load(Ordering::Relaxed),
            own_bytes: look.own_bytes,
            copy_peak: look.copy_peak,
            budget: self.budget,
            ..pace::Census::default()
        };
        let mut oldest: Option<Instant> = None;
        for slot in &live {
            let st = slot.lock();
            census.starting += usize::from(!st.asked);
            census.busy += usize::from(st.current.is_some());
            census.peaks_sum += st.peak;
            if let Some(c) = &st.current {
                oldest = Some(oldest.map_or(c.since, |o| o.min(c.since)));
            }
        }
        // A task that has run long enough shows its working memory as a finished one does.
        census.completed |= oldest.is_some_and(|o| o.elapsed() >= pace::WORKING_MEMORY_SHOWN);
        let (n, hold) = pace::to_start(&census);
        if hold == pace::Hold::FirstTask
            && let Some(o) = oldest
            && !self.shown_look.swap(true, Ordering::Relaxed)
        {
            // Look again when the oldest invocation has run that long.
            let inner = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until((o + pace::WORKING_MEMORY_SHOWN).into()).await;
                inner.shown_look.store(false, Ordering::Relaxed);
                inner.refit();
            });
        }
        if n == 0 && hold != pace::Hold::NoWork {
            tracing::debug!(function = %self.settings.function, ?hold, live = census.live, queued, "no copy started");
        }
        for _ in 0..n {
            let slot = Arc::new(Slot {
                index: self.next_slot.fetch_add(1, Ordering::Relaxed),
                born: Instant::now(),
                state: Mutex::new(SlotState::default()),
                changed: Notify::new(),
            });
            let listener =
                api::bind().map_err(|e| format!("cannot listen for a Lambda runtime on loopback: {e}"))?;
            slots.push(slot.clone());
            tokio::spawn(process::supervise(self.clone(), slot, listener));
        }
        Ok(())
    }

    /// Retires `excess` of the `live` copies: idle ones first, then the newest busy ones
    /// (they stop after their task).
    fn retire(&self, live: &[&Arc<Slot>], mut excess: usize) {
        let mut order: Vec<&Arc<Slot>> = live.to_vec();
        order.sort_by_key(|s| (s.lock().current.is_some(), std::cmp::Reverse(s.index)));
        for slot in order {
            if excess == 0 {
                break;
            }
            slot.lock().retired = true;
            slot.changed.notify_one();
            excess -= 1;
        }
        // Their `next` calls must look again (a retired copy takes nothing).
        self.queued.notify_waiters();
    }

    /// The worker's own memory and the copies' peaks, read again if the last look is older
    /// than [`PEAKS_EVERY`] (each copy's peak is kept in its slot).
    fn look_at_memory(&self) -> MemoryLook {
        let mut look = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        if look.at.is_none_or(|at| at.elapsed() >= PEAKS_EVERY) {
            look.at = Some(Instant::now());
            look.own_bytes = crate::children::own_resident_bytes();
            for slot in self.slots().iter() {
                let mut st = slot.lock();
                if let Some(pid) = st.pid {
                    st.peak = st.peak.max(crate::children::peak_bytes(pid));
                }
                if st.asked {
                    look.copy_peak = look.copy_peak.max(st.peak);
                }
            }
        }
        MemoryLook {
            at: look.at,
            own_bytes: look.own_bytes,
            copy_peak: look.copy_peak,
        }
    }

    /// Takes `slot` out of the live copies.
    fn remove(&self, slot: &Slot) {
        self.slots().retain(|s| s.index != slot.index);
    }

    /// Marks the runtime unusable: the session ends with `msg`.
    fn fail(&self, msg: String) {
        let first = self.health.send_if_modified(|h| {
            if matches!(h, Health::Broken(_)) {
                false
            } else {
                *h = Health::Broken(msg.clone());
                true
            }
        });
        if first {
            warn!(function = %self.settings.function, error = %msg, "the Lambda runtime cannot serve tasks");
        }
    }

    /// A copy asked for its first invocation: its init is done (and another may start).
    fn initialized(self: &Arc<Self>, slot: &Slot) {
        let first = !std::mem::replace(&mut slot.lock().asked, true);
        if first {
            self.health.send_if_modified(|h| {
                if *h == Health::Starting {
                    *h = Health::Ready;
                    true
                } else {
                    false
                }
            });
            let took = slot.born.elapsed();
            {
                let mut inits = self.inits.lock().unwrap_or_else(PoisonError::into_inner);
                inits.0 += 1;
                inits.1 += took;
            }
            info!(function = %self.settings.function, copy = slot.index, init_ms = took.as_millis() as u64, "Lambda runtime copy ready");
            // Its init's memory counts from now on.
            self.memory.lock().unwrap_or_else(PoisonError::into_inner).at = None;
            self.refit();
        }
    }
}

/// What the `next` call hands a copy.
struct Invocation {
    task: u64,
    attempt: u32,
    payload: Bytes,
    deadline_ms: u64,
    /// When its copy is killed if it has not answered.
    kill_at: Option<Instant>,
    timeout: Option<Duration>,
    /// Cancelled when the task's future is dropped (the coordinator cancelled it).
    abandoned: CancellationToken,
}

#[cfg(test)]
mod tests;
