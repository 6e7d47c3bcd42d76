//! The embedded backend (`--state-dir`): one writer thread owns the redb database and
//! writes each batch in one transaction (one fsync); reads of evicted results run beside it
//! in read transactions.

use std::path::Path;
use std::sync::Arc;

use carpool_proto::Bytes;
use carpool_proto::pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::mpsc;
use tracing::{error, info};

use super::{MAX_BATCH, Op, storage};
use crate::error::{Error, Result};
use crate::scheduler::{Learned, SizeCost};
use crate::state::{JournalOp, Recovered, StoredTask};

const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The concurrency level learned per (function, memory size in MB): (level, settled).
const LEARNED: TableDefinition<(&str, u32), (u32, bool)> = TableDefinition::new("learned");
/// What each (function, memory size in MB) has cost: (workers, tasks, billed GB-ms).
const COSTS: TableDefinition<(&str, u32), (u64, u64, f64)> = TableDefinition::new("size_costs");
/// The last attempt started of each unfinished task (so attempts keep counting across a
/// restart, and a task that was running can be told from one that was waiting).
const ATTEMPTS: TableDefinition<u64, u32> = TableDefinition::new("attempts");
const NEXT_ID: &str = "next_task_id";
/// What opening gives: the writer's queue and thread, the database for reads, and what it held.
type Opened = (
    mpsc::UnboundedSender<Op>,
    std::thread::JoinHandle<()>,
    Arc<Database>,
    Recovered,
);

/// Opens (or creates) the database in `dir`, reads it, and starts its writer thread.
pub(super) fn open(dir: &Path) -> Result<Opened> {
    std::fs::create_dir_all(dir)?;
    let db = Arc::new(Database::create(dir.join("carpool.redb")).map_err(storage)?);
    let mut recovered = load(&db)?;
    recovered.reserved_until = recovered.next_id + super::ID_BLOCK;
    reserve(&db, recovered.reserved_until).map_err(storage)?;
    info!(dir = %dir.display(), tasks = recovered.tasks.len(), next_id = recovered.next_id, "journal opened");
    let (ops, rx) = mpsc::unbounded_channel();
    let reader = db.clone();
    let writer = std::thread::Builder::new()
        .name("carpool-journal".into())
        .spawn(move || writer(&db, rx))?;
    Ok((ops, writer, reader, recovered))
}

/// The stored result of task `id`, if the journal holds one (a read transaction: it runs
/// beside the writer's).
pub(super) fn result(db: &Database, id: u64) -> Result<Option<pb::TaskResult>> {
    let txn = db.begin_read().map_err(storage)?;
    let tasks = txn.open_table(TASKS).map_err(storage)?;
    let Some(value) = tasks.get(id).map_err(storage)? else {
        return Ok(None);
    };
    let stored = StoredTask::decode(value.value())
        .map_err(|e| Error::Journal(format!("the journal's record of task {id} does not decode: {e}")))?;
    Ok(stored.result)
}

fn load(db: &Database) -> Result<Recovered> {
    // Create the tables on first use so that reading never fails on a fresh directory.
    let txn = db.begin_write().map_err(storage)?;
    {
        txn.open_table(TASKS).map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
        txn.open_table(LEARNED).map_err(storage)?;
        txn.open_table(COSTS).map_err(storage)?;
        txn.open_table(ATTEMPTS).map_err(storage)?;
    }
    txn.commit().map_err(storage)?;
    let txn = db.begin_read().map_err(storage)?;
    let attempts_table = txn.open_table(ATTEMPTS).map_err(storage)?;
    let tasks_table = txn.open_table(TASKS).map_err(storage)?;
    let mut tasks = Vec::new();
    for entry in tasks_table.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let id = k.value();
        let task = StoredTask::decode(v.value()).map_err(|e| {
            Error::Journal(format!(
                "the record of task {id} does not decode ({e}); refusing to start on a damaged journal: move the state directory aside, or restore it from a backup"
            ))
        })?;
        let started = match &task.result {
            Some(_) => 0,
            None => attempts_table.get(id).map_err(storage)?.map_or(0, |a| a.value()),
        };
        tasks.push((id, task, started));
    }
    let meta = txn.open_table(META).map_err(storage)?;
    let stored_next = meta.get(NEXT_ID).map_err(storage)?.map_or(1, |v| v.value());
    let next_id = stored_next.max(tasks.last().map_or(1, |(id, _, _)| id + 1));
    let mut learned = Vec::new();
    for entry in txn
        .open_table(LEARNED)
        .map_err(storage)?
        .iter()
        .map_err(storage)?
    {
        let (k, v) = entry.map_err(storage)?;
        let (function, memory_mb) = k.value();
        let (level, settled) = v.value();
        learned.push(((function.to_owned(), memory_mb), Learned { level, settled }));
    }
    let mut costs = Vec::new();
    for entry in txn.open_table(COSTS).map_err(storage)?.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let (function, memory_mb) = k.value();
        let (workers, tasks, billed_gb_ms) = v.value();
        let cost = SizeCost {
            workers,
            tasks,
            billed_gb_ms,
            // Which kind of measure it was is not kept: measured at a known level.
            provisional: false,
        };
        costs.push(((function.to_owned(), memory_mb), cost));
    }
    Ok(Recovered {
        tasks,
        next_id,
        reserved_until: 0,
        learned,
        costs,
        unix_ms: 0,
    })
}

/// Ids below `until` may be handed out: stored before any is.
fn reserve(db: &Database, until: u64) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let current = meta.get(NEXT_ID)?.map_or(1, |v| v.value());
        meta.insert(NEXT_ID, current.max(until))?;
    }
    txn.commit()?;
    Ok(())
}

fn writer(db: &Database, mut rx: mpsc::UnboundedReceiver<Op>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let outcome = write(db, &batch).map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            error!(error = %e, ops = batch.len(), "journal write failed");
        }
        let mut closing = None;
        for op in batch {
            match op {
                Op::Accept(_, _, done) => {
                    let _ = done.send(outcome.clone());
                }
                Op::Close(done) => closing = Some(done),
                Op::Barrier(done) => {
                    if outcome.is_ok() {
                        let _ = done.send(());
                    }
                }
                Op::State(_) => {}
            }
        }
        if let Some(done) = closing {
            let _ = done.send(());
            info!("journal closed");
            return;
        }
    }
}

fn write(db: &Database, batch: &[Op]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut tasks = txn.open_table(TASKS)?;
        let mut attempts = txn.open_table(ATTEMPTS)?;
        let mut next_id = None;
        for op in batch {
            match op {
                Op::Accept(id, task, _) => {
                    tasks.insert(*id, task.encode_to_vec().as_slice())?;
                    next_id = next_id.max(Some(id + 1));
                }
                Op::State(JournalOp::Started(id, attempt)) => {
                    attempts.insert(*id, *attempt)?;
                }
                Op::State(JournalOp::Finish(id, result)) => {
                    // Keep what is needed to report it; the input is no longer needed.
                    let stored = match tasks.get(*id)? {
                        Some(v) => StoredTask::decode(v.value()),
                        None => continue, // forgotten already
                    };
                    let Ok(mut stored) = stored else {
                        // Never rewrite what does not decode: the next start refuses it, by id.
                        error!(
                            task = id,
                            "the journal's record of this task does not decode; its result is not written"
                        );
                        continue;
                    };
                    stored.payload = Bytes::new();
                    stored.result = Some(result.as_ref().clone());
                    tasks.insert(*id, stored.encode_to_vec().as_slice())?;
                    attempts.remove(*id)?;
                }
                Op::State(JournalOp::Forget(id)) => {
                    tasks.remove(*id)?;
                    attempts.remove(*id)?;
                }
                Op::State(JournalOp::Learn(function, memory_mb, l)) => {
                    txn.open_table(LEARNED)?
                        .insert((function.as_ref(), *memory_mb), (l.level, l.settled))?;
                }
                Op::State(JournalOp::Cost(function, memory_mb, c)) => {
                    txn.open_table(COSTS)?.insert(
                        (function.as_ref(), *memory_mb),
                        (c.workers, c.tasks, c.billed_gb_ms),
                    )?;
                }
                Op::State(JournalOp::Unlearn(function)) => {
                    let f = function.as_ref();
                    txn.open_table(LEARNED)?
                        .retain_in((f, 0)..=(f, u32::MAX), |_, _| false)?;
                    txn.open_table(COSTS)?
                        .retain_in((f, 0)..=(f, u32::MAX), |_, _| false)?;
                }
                Op::State(JournalOp::Reserve(until)) => next_id = next_id.max(Some(*until)),
                Op::Close(_) | Op::Barrier(_) => {}
            }
        }
        if let Some(next) = next_id {
            let mut meta = txn.open_table(META)?;
            let current = meta.get(NEXT_ID)?.map_or(1, |v| v.value());
            meta.insert(NEXT_ID, current.max(next))?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::Journal;
    use super::*;

    fn task(function: &str) -> StoredTask {
        StoredTask {
            function: function.into(),
            payload: Bytes::from_static(b"in"),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn accepted_tasks_results_attempts_and_levels_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (j, rec) = Journal::open(dir.path()).expect("open");
            assert_eq!((rec.tasks.len(), rec.next_id), (0, 1));
            assert_eq!(
                rec.reserved_until,
                1 + super::super::ID_BLOCK,
                "a block reserved at once"
            );
            j.accept(1, task("echo")).await.expect("accept 1");
            j.accept(2, task("echo")).await.expect("accept 2");
            j.accept(3, task("echo")).await.expect("accept 3");
            let done = Arc::new(carpool_proto::pb::TaskResult {
                task_id: 1,
                state: 3,
                ..Default::default()
            });
            let level = |level| Learned { level, settled: true };
            j.apply([
                JournalOp::Started(1, 1),
                JournalOp::Started(2, 1),
                JournalOp::Started(2, 2),
                JournalOp::Finish(1, done),
                JournalOp::Forget(3),
                JournalOp::Learn(Arc::from("echo"), 2048, level(40)),
                JournalOp::Learn(Arc::from("echo"), 2048, level(64)),
            ]);
            // An accept after them is acknowledged only once everything before it is written.
            let due = StoredTask {
                deadline_unix_ms: 1_060_000,
                ..task("spin")
            };
            j.accept(4, due).await.expect("accept 4");
            j.close().await;
        }
        let (_, rec) = Journal::open(dir.path()).expect("the journal reopens");
        let ids: Vec<(u64, u32)> = rec.tasks.iter().map(|(id, _, a)| (*id, *a)).collect();
        // Task 1 finished, task 2 ran twice and is unfinished, task 4 never started.
        assert_eq!(ids, vec![(1, 0), (2, 2), (4, 0)]);
        // Ids never repeat, even after a forget, and not even those the first opening could
        // have handed out without writing: the reopened journal starts above its reservation.
        let block = super::super::ID_BLOCK;
        assert_eq!((rec.next_id, rec.reserved_until), (1 + block, 1 + 2 * block));
        let first = &rec.tasks[0].1;
        assert!(first.result.is_some() && first.payload.is_empty());
        assert!(rec.tasks[1].1.result.is_none());
        assert_eq!(rec.tasks[2].1.deadline_unix_ms, 1_060_000, "a deadline is kept");
        let learned = Learned {
            level: 64,
            settled: true,
        };
        assert_eq!(rec.learned, vec![(("echo".to_owned(), 2048), learned)]);
    }

    #[tokio::test]
    async fn unlearning_a_function_removes_its_levels_and_costs_at_every_size_and_no_other() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (j, _) = Journal::open(dir.path()).expect("open");
            let level = |level| Learned { level, settled: true };
            let cost = SizeCost {
                workers: 2,
                tasks: 40,
                billed_gb_ms: 800.0,
                ..Default::default()
            };
            let (echo, spin) = (Arc::<str>::from("echo"), Arc::<str>::from("spin"));
            j.apply([
                JournalOp::Learn(echo.clone(), 1024, level(8)),
                JournalOp::Learn(echo.clone(), 4096, level(32)),
                JournalOp::Cost(echo.clone(), 1024, cost),
                JournalOp::Cost(echo.clone(), 4096, cost),
                JournalOp::Learn(spin.clone(), 1024, level(2)),
                JournalOp::Cost(spin.clone(), 1024, cost),
                JournalOp::Unlearn(echo.clone()),
                // Learned again after: kept.
                JournalOp::Learn(echo.clone(), 2048, level(16)),
            ]);
            j.close().await;
        }
        let (_, rec) = Journal::open(dir.path()).expect("the journal reopens");
        let learned: Vec<(String, u32, u32)> = rec
            .learned
            .iter()
            .map(|((f, mb), l)| (f.clone(), *mb, l.level))
            .collect();
        assert_eq!(
            learned,
            vec![("echo".to_owned(), 2048, 16), ("spin".to_owned(), 1024, 2)]
        );
        let costs: Vec<(String, u32)> = rec.costs.iter().map(|((f, mb), _)| (f.clone(), *mb)).collect();
        assert_eq!(costs, vec![("spin".to_owned(), 1024)]);
    }

    #[tokio::test]
    async fn a_record_that_does_not_decode_stops_the_start_and_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (j, _) = Journal::open(dir.path()).expect("open");
            j.accept(7, task("echo")).await.expect("accept");
            j.close().await;
        }
        {
            let db = Database::create(dir.path().join("carpool.redb")).expect("db");
            let txn = db.begin_write().expect("txn");
            txn.open_table(TASKS)
                .expect("table")
                .insert(7, &b"\xff\xff\xff"[..])
                .expect("insert");
            txn.commit().expect("commit");
        }
        let err = Journal::open(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("task 7") && err.contains("refusing to start"),
            "{err}"
        );
    }
}
