//! The handler API: what a user implements (usually a closure) to run tasks.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// One task as its handler sees it.
#[derive(Clone, Debug)]
pub struct Task {
    /// The coordinator's id for the task.
    pub id: u64,
    /// Which attempt this is (1 unless a worker was lost while running it).
    pub attempt: u32,
    /// The function it was submitted to.
    pub function: String,
    /// Its input, unchanged from the submission.
    pub payload: Bytes,
    /// How long this attempt may run: the submission's timeout (or the coordinator's
    /// default), else what is left of the worker's session. Past it the coordinator
    /// cancels the task (the future is dropped).
    pub timeout: Option<std::time::Duration>,
}

/// What a handler returns: the output bytes, or an error message for the client.
pub type Outcome = Result<Bytes, String>;

/// What a handler that queues tasks itself (the Lambda runtime host) runs now: the
/// worker's samples report these, not the tasks handed over, so that a level counts as
/// reached only once its tasks really run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Running {
    /// Tasks running now (a task waiting for a free copy is not running).
    pub tasks: u32,
    /// When the newest of them started running.
    pub newest: Option<std::time::Instant>,
    /// A copy's init, on average over those ready so far (`None` for a handler without
    /// copies to start, or before one is ready).
    pub copy_init: Option<std::time::Duration>,
}

/// A boxed future of a handler's outcome.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;
/// A boxed future of a handler's readiness: `Err` says why it cannot serve.
pub type PrepareFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;
/// A boxed future that resolves, with the reason, when a handler cannot serve any more.
pub type BrokenFuture = Pin<Box<dyn Future<Output = String> + Send + 'static>>;

/// Runs tasks. Implemented for every `Fn(Task) -> impl Future<Output = Result<O, E>>` with
/// `O: Into<Bytes>` and `E: Display`, so a closure is a handler:
///
/// ```no_run
/// # async fn f() -> Result<(), carpool_worker::Error> {
/// let config = carpool_worker::WorkerConfig::new("http://127.0.0.1:50051", "echo");
/// carpool_worker::run(config, |task: carpool_worker::Task| async move {
///     Ok::<_, String>(task.payload)
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// Each task runs in its own tokio task: a handler that panics fails that task, never the
/// worker; a cancelled task's future is dropped.
pub trait Handler: Send + Sync + 'static {
    /// Starts one task.
    fn call(&self, task: Task) -> HandlerFuture;

    /// Gets ready before the session dials (a handler that starts processes starts them
    /// here); an error ends the session before it connects. Ready at once by default.
    fn prepare(&self) -> PrepareFuture {
        Box::pin(async { Ok(()) })
    }

    /// The concurrency limit the coordinator gave this worker: at each connection and
    /// whenever it moves. A handler that keeps something per task slot (the Lambda
    /// runtime's processes) follows it. Ignored by default.
    fn limit(&self, _slots: u32) {}

    /// Resolves, with the reason, when the handler can no longer run tasks (its runtime
    /// failed to initialize); the session then ends with that error. Never by default.
    fn broken(&self) -> BrokenFuture {
        Box::pin(std::future::pending())
    }

    /// What runs now, for a handler that may hold tasks before they run; `None` (the
    /// default): every task handed over runs at once.
    fn running(&self) -> Option<Running> {
        None
    }
}

impl<F, Fut, O, E> Handler for F
where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    O: Into<Bytes>,
    E: std::fmt::Display,
{
    fn call(&self, task: Task) -> HandlerFuture {
        let fut = self(task);
        Box::pin(async move { fut.await.map(Into::into).map_err(|e| e.to_string()) })
    }
}
