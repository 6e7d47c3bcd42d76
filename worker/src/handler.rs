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
}

/// What a handler returns: the output bytes, or an error message for the client.
pub type Outcome = Result<Bytes, String>;

/// A boxed future of a handler's outcome.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

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
