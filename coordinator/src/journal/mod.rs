//! Accepted means durable: the journal behind `--state-dir` (embedded, [`redb`]) or
//! `--state-url` (PostgreSQL, [`postgres`]). One interface, [`Journal`], for both.
//!
//! Operations queue on a channel; a writer takes everything queued, writes it in one
//! transaction, commits and only then acknowledges: concurrent submissions share a commit
//! (group commit), so durability costs a commit per batch, not per task. The state's writes
//! (an attempt started, a result, a forgotten task, a learned level) go the same way but
//! nobody waits for them: a result lost in a crash means the task runs again
//! (at-least-once). At shutdown [`Journal::close`] writes what is queued and stops the
//! writer.
//!
//! The queue is bounded by what it serves: a submission waits for its write, and each task
//! adds at most four unwaited writes over its life (attempts, result, forget).

pub(crate) mod postgres;
mod redb;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use carpool_proto::pb;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::state::{JournalOp, Recovered, StoredTask};

/// Most operations written in one transaction.
const MAX_BATCH: usize = 4096;

enum Op {
    Accept(u64, Box<StoredTask>, oneshot::Sender<Result<(), String>>),
    State(JournalOp),
    /// Resolves once everything queued before it is durable (dropped, unresolved, if it
    /// never will be: the lease was lost, the store failed).
    Barrier(oneshot::Sender<()>),
    /// Everything before it is written: acknowledge and stop.
    Close(oneshot::Sender<()>),
}

/// Who writes: a thread (redb) or a task (PostgreSQL).
enum Writer {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

/// Where evicted results are read back from.
#[derive(Clone)]
enum Reader {
    Redb(Arc<::redb::Database>),
    Postgres(postgres::Store),
}

/// The handle the coordinator writes through; cheap to clone.
#[derive(Clone)]
pub(crate) struct Journal {
    ops: mpsc::UnboundedSender<Op>,
    writer: Arc<Mutex<Option<Writer>>>,
    reader: Reader,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

pub(crate) use carpool_core::state::ID_BLOCK;

impl Journal {
    /// Opens (or creates) the embedded journal in `dir` and starts its writer thread. A
    /// record that does not decode stops the start with its id: a journal is never silently
    /// rewritten.
    pub(crate) fn open(dir: &Path) -> Result<(Self, Recovered)> {
        let (ops, writer, db, recovered) = redb::open(dir)?;
        Ok((
            Self::with(ops, Writer::Thread(writer), Reader::Redb(db)),
            recovered,
        ))
    }

    /// The journal in PostgreSQL, for the holder of lease `term` (see [`postgres`]): reads
    /// what is stored and starts the writer, whose every transaction checks the term.
    pub(crate) async fn open_postgres(store: postgres::Store, term: i64) -> Result<(Self, Recovered)> {
        let mut recovered = store.load().await?;
        recovered.reserved_until = store.reserve(term, recovered.next_id + ID_BLOCK).await?;
        let (ops, rx) = mpsc::unbounded_channel();
        let reader = Reader::Postgres(store.clone());
        let writer = tokio::spawn(postgres::writer(store, term, rx));
        Ok((Self::with(ops, Writer::Task(writer), reader), recovered))
    }

    fn with(ops: mpsc::UnboundedSender<Op>, writer: Writer, reader: Reader) -> Self {
        Self {
            ops,
            writer: Arc::new(Mutex::new(Some(writer))),
            reader,
        }
    }

    /// The stored result of finished task `id` (one evicted from memory): read once every
    /// write queued before the call is durable, so a result whose write is still queued is
    /// found. `UnknownTask` if the journal no longer holds it (its retention passed).
    pub(crate) async fn result(&self, id: u64) -> Result<pb::TaskResult> {
        if self.barrier().await.is_err() {
            return Err(Error::Journal(format!(
                "the result of task {id} was evicted from memory and the journal cannot be read now (its writes are failing); retry"
            )));
        }
        let found = match &self.reader {
            Reader::Redb(db) => {
                let db = db.clone();
                tokio::task::spawn_blocking(move || redb::result(&db, id))
                    .await
                    .map_err(|e| Error::Journal(format!("reading the journal: {e}")))??
            }
            Reader::Postgres(store) => store.result(id).await?,
        };
        found.ok_or(carpool_core::Error::UnknownTask(id).into())
    }

    /// Stores a new task; resolves once it is durable.
    pub(crate) async fn accept(&self, id: u64, task: StoredTask) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.ops
            .send(Op::Accept(id, Box::new(task), done))
            .map_err(|_| Error::Journal("the journal writer has stopped".into()))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Journal(e)),
            Err(_) => Err(Error::Journal("the journal writer has stopped".into())),
        }
    }

    /// Queues the state's writes (not waited for).
    pub(crate) fn apply(&self, ops: impl IntoIterator<Item = JournalOp>) {
        for op in ops {
            let _ = self.ops.send(Op::State(op));
        }
    }

    /// Resolves `Ok` once every write queued so far is durable; `Err` if it never will be.
    /// A final state reaches a client only behind one: none sees a result the journal does
    /// not hold.
    pub(crate) fn barrier(&self) -> oneshot::Receiver<()> {
        let (done, wait) = oneshot::channel();
        let _ = self.ops.send(Op::Barrier(done));
        wait
    }

    /// Writes everything queued, then stops and joins the writer.
    pub(crate) async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.ops.send(Op::Close(done)).is_ok() {
            let _ = wait.await;
        }
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        match writer {
            Some(Writer::Thread(h)) => {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
            Some(Writer::Task(h)) => {
                let _ = h.await;
            }
            None => {}
        }
    }
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Journal(format!("the state directory: {e}"))
}
