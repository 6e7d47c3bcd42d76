//! The journal in PostgreSQL (`--state-url postgres://…`), and the lease that makes one of
//! several coordinators sharing a database the active one.
//!
//! - **Schema.** The coordinator creates and migrates its tables itself: `carpool_schema`
//!   holds the version, and each step of [`MIGRATIONS`] runs once, in one transaction under
//!   an advisory lock (two coordinators starting together migrate once). A database whose
//!   schema is newer than this coordinator knows is refused.
//! - **Lease.** One row, `carpool_lease`: the holder, its URL, a term (the fencing token)
//!   and when it expires, all in the database's clock. The active coordinator renews it every
//!   third of [`Store::lease`]; a standby takes it once it has expired, with the next term.
//! - **Fencing.** Every write transaction first reads the term `FOR SHARE`: one that is not
//!   this coordinator's aborts, so a paused old leader writes nothing once another has taken
//!   over (and a takeover waits for a write in flight to commit first). That lock is never
//!   held for long by a paused process: the server ends a transaction idle for half a lease
//!   (`idle_in_transaction_session_timeout`), and a lock waits at most as long
//!   (`lock_timeout`), so a standby takes over within the lease plus one try whatever the
//!   old leader is doing. Lease times are the database's `clock_timestamp()` (the moment the
//!   row is written, not the start of a statement that may have waited for its lock).
//! - **Group commit.** As with redb: the writer takes everything queued (at most
//!   [`super::MAX_BATCH`]) and writes it in one transaction of a few array statements.
//! - **Outages.** A write that fails for want of the database fails the submissions in it
//!   (UNAVAILABLE, nothing acknowledged) and keeps the state's writes, which go again with
//!   the next batch after a backoff: nothing acknowledged is lost, and results are written
//!   once the database is back.

use std::collections::BTreeMap;
use std::time::Duration;

use carpool_proto::pb;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{MAX_BATCH, Op};
use crate::error::{Error, Result};
use crate::scheduler::{Learned, SizeCost};
use crate::state::{JournalOp, Recovered, StoredTask};

/// The schema, one step per version: `MIGRATIONS[0]` makes version 1, and so on.
pub(crate) const MIGRATIONS: [&str; 4] = [
    include_str!("schema/v1.sql"),
    include_str!("schema/v2.sql"),
    include_str!("schema/v3.sql"),
    include_str!("schema/v4.sql"),
];
/// The schema version this coordinator writes.
pub(crate) const SCHEMA_VERSION: usize = MIGRATIONS.len();
/// Serializes migrations between coordinators (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x0063_6172_706f_6f6c; // "carpool"
/// Connections: the writer, the lease, and a spare for loading and checks.
const POOL_SIZE: usize = 4;
/// How long a connection attempt or a wait for a pooled connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The database, and who this coordinator is in the lease.
#[derive(Clone)]
pub(crate) struct Store {
    pool: Pool,
    /// This process's name in the lease (unique per start).
    holder: String,
    /// The URL clients and workers should use to reach it (`--advertise-url` or the
    /// listen address), shown to them by standbys.
    url: String,
    /// How long a lease lasts without a renewal.
    pub(crate) lease: Duration,
    /// Cancelled when another coordinator holds the lease now: this one must stop at once.
    pub(crate) lost: CancellationToken,
}

/// Who holds the lease, when it is not this coordinator.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Lease {
    /// Ours, with this term.
    Ours(i64),
    /// Another's, reachable at `url` (empty if it gave none), expiring in `expires_in`
    /// unless renewed (zero once past).
    Held { url: String, expires_in: Duration },
}

fn db(e: impl std::error::Error) -> Error {
    Error::Journal(format!("the database: {}", chain(&e)))
}

/// An error with its sources, as one line: "db error" alone says nothing; the server's
/// own message is in its source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !out.contains(&next) {
            out.push_str(": ");
            out.push_str(&next);
        }
        source = s.source();
    }
    out
}

/// Whether a failure to connect is one that waiting cannot fix: the server refused who we
/// are (SQLSTATE class 28: a wrong password, an unknown role), the database does not exist
/// (3D000), we may not connect to it (42501), or TLS was required and the server does not
/// offer it or its certificate does not verify.
fn hopeless(e: &deadpool_postgres::PoolError) -> bool {
    let deadpool_postgres::PoolError::Backend(e) = e else {
        return false;
    };
    if let Some(server) = e.as_db_error() {
        let code = server.code().code();
        return code.starts_with("28") || code == "3D000" || code == "42501";
    }
    let text = chain(e);
    text.contains("does not support TLS") || text.contains("certificate") || text.contains("TLS handshake")
}

impl Store {
    /// Connects to `url` (a `postgres://` URL) and brings the schema to
    /// [`SCHEMA_VERSION`]; retries with backoff while the database is unreachable, for as
    /// long as `patience`.
    pub(crate) async fn connect(
        url: &str,
        ca: Option<&std::path::Path>,
        advertise: String,
        lease: Duration,
        patience: Duration,
    ) -> Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("--state-url: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("carpool-coordinator");
        }
        // A coordinator paused in the middle of a write (a stalled VM, SIGSTOP) must not
        // hold the lease row's lock for as long as it is frozen: the server ends a
        // transaction left idle for half a lease, so the lock is gone before the lease
        // expires; and a standby's attempt waits at most as long for a lock, then tries
        // again. Both are session settings sent at connection start (no extra round trip).
        let guard_ms = (lease.as_millis() / 2).max(100);
        let mut options = config.get_options().map(str::to_owned).unwrap_or_default();
        options.push_str(&format!(
            " -c idle_in_transaction_session_timeout={guard_ms} -c lock_timeout={guard_ms}"
        ));
        config.options(options.trim());
        let recycling = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match config.get_ssl_mode() {
            // TLS only when asked for: `prefer` (the default) would refuse a server whose
            // certificate the roots do not vouch for instead of going on in plain TCP.
            tokio_postgres::config::SslMode::Require => Manager::from_config(config, tls(ca)?, recycling),
            _ => Manager::from_config(config, NoTls, recycling),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| Error::Config(format!("--state-url: {e}")))?;
        let store = Self {
            pool,
            holder: format!("{}-{:x}", std::process::id(), carpool_proto::unix_ms()),
            url: advertise,
            lease,
            lost: CancellationToken::new(),
        };
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            // Only an unreachable server is waited for; a refusal waiting cannot change
            // fails the start at once, with the server's own words.
            if let Err(e) = store.pool.get().await
                && hopeless(&e)
            {
                return Err(Error::Config(format!("--state-url: {}", chain(&e))));
            }
            match store.migrate().await {
                Ok(version) => {
                    info!(version, "database schema ready");
                    return Ok(store);
                }
                Err(Error::Journal(e)) if started.elapsed() < patience => {
                    warn!(error = %e, wait_ms = wait.as_millis() as u64, "the database is not reachable yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies the migrations the database has not had; returns the version it is at.
    pub(crate) async fn migrate(&self) -> Result<usize> {
        let mut client = self.pool.get().await.map_err(db)?;
        migrate_to(&mut client, SCHEMA_VERSION).await
    }

    /// Takes the lease if it is free or expired (the next term); else says who holds it.
    pub(crate) async fn acquire(&self) -> Result<Lease> {
        let client = self.pool.get().await.map_err(db)?;
        let secs = self.lease.as_secs_f64();
        let taken = client
            .query_opt(
                "UPDATE carpool_lease SET holder = $1, url = $2, term = term + 1, \
                 expires_at = clock_timestamp() + make_interval(secs => $3) \
                 WHERE id = 1 AND expires_at < clock_timestamp() RETURNING term",
                &[&self.holder, &self.url, &secs],
            )
            .await
            .map_err(db)?;
        if let Some(row) = taken {
            return Ok(Lease::Ours(row.get(0)));
        }
        let row = client
            .query_one(
                "SELECT url, GREATEST(EXTRACT(EPOCH FROM expires_at - clock_timestamp()), 0)::float8 \
                 FROM carpool_lease WHERE id = 1",
                &[],
            )
            .await
            .map_err(db)?;
        let secs: f64 = row.get(1);
        Ok(Lease::Held {
            url: row.get(0),
            expires_in: Duration::try_from_secs_f64(secs).unwrap_or_default(),
        })
    }

    /// Extends lease `term`; `false` if another coordinator holds it now.
    pub(crate) async fn renew(&self, term: i64) -> Result<bool> {
        let client = self.pool.get().await.map_err(db)?;
        let secs = self.lease.as_secs_f64();
        let n = client
            .execute(
                "UPDATE carpool_lease SET expires_at = clock_timestamp() + make_interval(secs => $2) \
                 WHERE id = 1 AND term = $1",
                &[&term, &secs],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    /// Gives lease `term` up (a clean shutdown), so that a standby takes over at once.
    pub(crate) async fn release(&self, term: i64) {
        let released = async {
            let client = self.pool.get().await.map_err(db)?;
            client
                .execute(
                    "UPDATE carpool_lease SET expires_at = 'epoch' WHERE id = 1 AND term = $1",
                    &[&term],
                )
                .await
                .map_err(db)
        };
        match released.await {
            Ok(_) => info!(term, "lease released"),
            Err(e) => warn!(term, error = %e, "could not release the lease; it expires on its own"),
        }
    }

    /// Renews lease `term` every third of the lease until `stop`; cancels [`Store::lost`]
    /// if another coordinator has taken it. A database that cannot be reached is retried:
    /// nobody can take the lease from it meanwhile either.
    pub(crate) fn keep(&self, term: i64, stop: CancellationToken) {
        let store = self.clone();
        tokio::spawn(async move {
            let every = store.lease / 3;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = stop.cancelled() => return,
                }
                match store.renew(term).await {
                    Ok(true) => {}
                    Ok(false) => {
                        error!(term, "another coordinator holds the lease now");
                        store.lost.cancel();
                        return;
                    }
                    Err(e) => warn!(term, error = %e, "could not renew the lease; retrying"),
                }
            }
        });
    }

    /// Reserves the task ids below `until` for the holder of lease `term`, before it hands
    /// out any: the next coordinator to load the journal starts at or above it. Returns it.
    pub(crate) async fn reserve(&self, term: i64, until: u64) -> Result<u64> {
        let client = self.pool.get().await.map_err(db)?;
        let until = until as i64;
        let updated = client
            .execute(
                "UPDATE carpool_meta SET value = GREATEST(value, $1) WHERE key = 'next_task_id' \
                 AND EXISTS (SELECT 1 FROM carpool_lease WHERE id = 1 AND term = $2)",
                &[&until, &term],
            )
            .await
            .map_err(db)?;
        if updated == 0 {
            return Err(Error::Journal(format!(
                "the lease of term {term} was lost before this coordinator could reserve task ids"
            )));
        }
        Ok(until as u64)
    }

    /// The stored result of task `id`, if the database holds one.
    pub(crate) async fn result(&self, id: u64) -> Result<Option<pb::TaskResult>> {
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_opt("SELECT result FROM carpool_tasks WHERE id = $1", &[&(id as i64)])
            .await
            .map_err(db)?;
        match row.and_then(|r| r.get::<_, Option<Vec<u8>>>(0)) {
            Some(bytes) => pb::TaskResult::decode(bytes.as_slice())
                .map(Some)
                .map_err(|e| Error::Journal(format!("the stored result of task {id} does not decode: {e}"))),
            None => Ok(None),
        }
    }

    /// Everything stored, as a restart reads it.
    pub(crate) async fn load(&self) -> Result<Recovered> {
        let client = self.pool.get().await.map_err(db)?;
        let rows = client
            .query(
                "SELECT t.id, t.function, t.payload, t.timeout_ms, t.idempotency_key, t.fingerprint, \
                 t.submitted_unix_ms, t.result, COALESCE(a.attempt, 0), t.deadline_unix_ms \
                 FROM carpool_tasks t LEFT JOIN carpool_attempts a ON a.id = t.id ORDER BY t.id",
                &[],
            )
            .await
            .map_err(db)?;
        let mut tasks = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.get::<_, i64>(0) as u64;
            let result = match row.get::<_, Option<&[u8]>>(7) {
                Some(bytes) => Some(pb::TaskResult::decode(bytes).map_err(|e| {
                    Error::Journal(format!(
                        "the stored result of task {id} does not decode ({e}); refusing to start on a damaged journal: restore the database from a backup"
                    ))
                })?),
                None => None,
            };
            let task = StoredTask {
                function: row.get(1),
                payload: row.get::<_, Option<Vec<u8>>>(2).unwrap_or_default().into(),
                timeout_ms: row.get::<_, i64>(3) as u64,
                key: row.get(4),
                fingerprint: row.get::<_, i64>(5) as u64,
                submitted_unix_ms: row.get::<_, i64>(6) as u64,
                result,
                deadline_unix_ms: row.get::<_, i64>(9) as u64,
            };
            let started = if task.result.is_some() {
                0
            } else {
                row.get::<_, i32>(8) as u32
            };
            tasks.push((id, task, started));
        }
        let next: i64 = client
            .query_one("SELECT value FROM carpool_meta WHERE key = 'next_task_id'", &[])
            .await
            .map_err(db)?
            .get(0);
        let next_id = (next as u64).max(tasks.last().map_or(1, |(id, _, _)| id + 1));
        let learned = client
            .query(
                "SELECT function, memory_mb, level, settled FROM carpool_learned",
                &[],
            )
            .await
            .map_err(db)?
            .into_iter()
            .map(|r| {
                let key = (r.get::<_, String>(0), r.get::<_, i32>(1) as u32);
                let learned = Learned {
                    level: r.get::<_, i32>(2) as u32,
                    settled: r.get(3),
                };
                (key, learned)
            })
            .collect();
        let costs = client
            .query(
                "SELECT function, memory_mb, workers, tasks, billed_gb_ms FROM carpool_size_costs",
                &[],
            )
            .await
            .map_err(db)?
            .into_iter()
            .map(|r| {
                let key = (r.get::<_, String>(0), r.get::<_, i32>(1) as u32);
                let cost = SizeCost {
                    workers: r.get::<_, i64>(2) as u64,
                    tasks: r.get::<_, i64>(3) as u64,
                    billed_gb_ms: r.get(4),
                    // Which kind of measure it was is not kept: measured at a known level.
                    provisional: false,
                };
                (key, cost)
            })
            .collect();
        info!(tasks = tasks.len(), next_id, "journal loaded from the database");
        Ok(Recovered {
            tasks,
            next_id,
            reserved_until: 0,
            learned,
            costs,
            unix_ms: 0,
        })
    }
}

/// TLS to the database for `sslmode=require`: the server's certificate is verified against
/// `ca` (PEM) or, without one, the system's roots, and its name against the URL's host.
fn tls(ca: Option<&std::path::Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let bad = |msg: String| Error::Config(format!("--state-ca: {msg}"));
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(bad(format!("{} holds no certificate", path.display())));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS to the database: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Brings the schema of the database behind `client` to `target` (tests stop at an older
/// version to test the upgrade from it); returns the version it is at.
pub(crate) async fn migrate_to(client: &mut tokio_postgres::Client, target: usize) -> Result<usize> {
    let txn = client.transaction().await.map_err(db)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    txn.batch_execute("CREATE TABLE IF NOT EXISTS carpool_schema (version INTEGER NOT NULL)")
        .await
        .map_err(db)?;
    let current = txn
        .query_opt("SELECT version FROM carpool_schema", &[])
        .await
        .map_err(db)?
        .map_or(0, |r| r.get::<_, i32>(0) as usize);
    if current > SCHEMA_VERSION {
        return Err(Error::Config(format!(
            "--state-url: the database's schema is version {current}, newer than this coordinator's {SCHEMA_VERSION}: upgrade the coordinator"
        )));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().take(target).skip(current) {
        txn.batch_execute(step).await.map_err(db)?;
        info!(version = i + 1, "database schema migrated");
    }
    let version = current.max(target.min(SCHEMA_VERSION));
    txn.execute("DELETE FROM carpool_schema", &[]).await.map_err(db)?;
    txn.execute("INSERT INTO carpool_schema VALUES ($1)", &[&(version as i32)])
        .await
        .map_err(db)?;
    txn.commit().await.map_err(db)?;
    Ok(version)
}

/// Why a batch was not written.
enum Failed {
    /// Another coordinator holds the lease: nothing may be written any more.
    Fenced,
    /// The database could not be reached or refused the write.
    Database(String),
}

/// The writer task: group commit under lease `term`.
pub(super) async fn writer(store: Store, term: i64, mut rx: mpsc::UnboundedReceiver<Op>) {
    // The state's writes of a batch that failed, written with the next one (and the
    // barriers behind them, which resolve once they are).
    let mut carried: Vec<JournalOp> = Vec::new();
    let mut carried_barriers: Vec<oneshot::Sender<()>> = Vec::new();
    let mut wait = Duration::from_millis(100);
    loop {
        let mut batch: Vec<Op> = carried.drain(..).map(Op::State).collect();
        batch.extend(carried_barriers.drain(..).map(Op::Barrier));
        if batch.is_empty() {
            match rx.recv().await {
                Some(op) => batch.push(op),
                None => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let outcome = write(&store, term, &batch).await;
        let failed = match &outcome {
            Ok(()) => {
                wait = Duration::from_millis(100);
                None
            }
            Err(Failed::Fenced) => {
                error!(
                    term,
                    "another coordinator holds the lease: this one writes nothing more"
                );
                store.lost.cancel();
                Some("this coordinator lost its lease to another; retry on the active one".to_owned())
            }
            Err(Failed::Database(e)) => {
                warn!(error = %e, ops = batch.len(), "journal write failed; the submissions in it are refused, the rest is retried");
                Some(format!("cannot write to the database: {e}"))
            }
        };
        let mut closing = None;
        for op in batch {
            match op {
                Op::Accept(_, _, done) => {
                    let _ = done.send(match &failed {
                        None => Ok(()),
                        Some(e) => Err(e.clone()),
                    });
                }
                Op::Close(done) => closing = Some(done),
                Op::State(op) if failed.is_some() && !matches!(outcome, Err(Failed::Fenced)) => {
                    carried.push(op)
                }
                Op::State(_) => {}
                Op::Barrier(done) if failed.is_none() => {
                    let _ = done.send(());
                }
                Op::Barrier(done) if !matches!(outcome, Err(Failed::Fenced)) => carried_barriers.push(done),
                // Fenced: what it waited for will never be written.
                Op::Barrier(_) => {}
            }
        }
        if matches!(outcome, Err(Failed::Fenced)) {
            if let Some(done) = closing {
                let _ = done.send(());
            }
            return;
        }
        if let Some(done) = closing {
            if failed.is_none() || carried.is_empty() {
                let _ = done.send(());
                info!("journal closed");
                return;
            }
            // Closing while the database is away: one more try for what is carried.
            error!(
                ops = carried.len(),
                "closing with writes the database did not take; they are lost with this process"
            );
            let _ = done.send(());
            return;
        }
        if failed.is_some() {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

/// One batch in one transaction, after checking the term.
async fn write(store: &Store, term: i64, batch: &[Op]) -> Result<(), Failed> {
    let database = |e: tokio_postgres::Error| Failed::Database(e.to_string());
    let mut client = store
        .pool
        .get()
        .await
        .map_err(|e| Failed::Database(e.to_string()))?;
    let txn = client.transaction().await.map_err(database)?;
    let holder: i64 = txn
        .query_one("SELECT term FROM carpool_lease WHERE id = 1 FOR SHARE", &[])
        .await
        .map_err(database)?
        .get(0);
    if holder != term {
        return Err(Failed::Fenced);
    }
    let mut new = NewTasks::default();
    let mut attempts: BTreeMap<i64, i32> = BTreeMap::new();
    let mut finished: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
    let mut forgotten: Vec<i64> = Vec::new();
    let mut learned: BTreeMap<(String, i32), (i32, bool)> = BTreeMap::new();
    let mut costs: BTreeMap<(String, i32), SizeCost> = BTreeMap::new();
    // Functions whose learned rows go before this batch's own are written (a level or cost
    // of theirs earlier in the batch is dropped with them).
    let mut unlearned: Vec<String> = Vec::new();
    let mut reserve: Option<i64> = None;
    for op in batch {
        match op {
            Op::Accept(id, task, _) => new.push(*id, task),
            Op::State(JournalOp::Started(id, attempt)) => {
                attempts.insert(*id as i64, *attempt as i32);
            }
            Op::State(JournalOp::Finish(id, result)) => {
                finished.insert(*id as i64, result.encode_to_vec());
            }
            Op::State(JournalOp::Forget(id)) => forgotten.push(*id as i64),
            Op::State(JournalOp::Learn(function, memory_mb, l)) => {
                learned.insert(
                    (function.to_string(), *memory_mb as i32),
                    (l.level as i32, l.settled),
                );
            }
            Op::State(JournalOp::Cost(function, memory_mb, c)) => {
                costs.insert((function.to_string(), *memory_mb as i32), *c);
            }
            Op::State(JournalOp::Unlearn(function)) => {
                learned.retain(|(f, _), _| f.as_str() != function.as_ref());
                costs.retain(|(f, _), _| f.as_str() != function.as_ref());
                unlearned.push(function.to_string());
            }
            Op::State(JournalOp::Reserve(until)) => reserve = reserve.max(Some(*until as i64)),
            Op::Close(_) | Op::Barrier(_) => {}
        }
    }
    if !new.ids.is_empty() {
        txn.execute(
            "INSERT INTO carpool_tasks (id, function, payload, timeout_ms, idempotency_key, fingerprint, submitted_unix_ms, deadline_unix_ms) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::bigint[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[]) \
             ON CONFLICT (id) DO NOTHING",
            &[&new.ids, &new.functions, &new.payloads, &new.timeouts, &new.keys, &new.fingerprints, &new.submitted, &new.deadlines],
        )
        .await
        .map_err(database)?;
        let next = new.ids.iter().max().map_or(1, |m| m + 1);
        txn.execute(
            "UPDATE carpool_meta SET value = GREATEST(value, $1) WHERE key = 'next_task_id'",
            &[&next],
        )
        .await
        .map_err(database)?;
    }
    if let Some(until) = reserve {
        txn.execute(
            "UPDATE carpool_meta SET value = GREATEST(value, $1) WHERE key = 'next_task_id'",
            &[&until],
        )
        .await
        .map_err(database)?;
    }
    if !attempts.is_empty() {
        let (ids, values): (Vec<i64>, Vec<i32>) = attempts.into_iter().unzip();
        txn.execute(
            "INSERT INTO carpool_attempts (id, attempt) SELECT * FROM unnest($1::bigint[], $2::int[]) \
             ON CONFLICT (id) DO UPDATE SET attempt = EXCLUDED.attempt",
            &[&ids, &values],
        )
        .await
        .map_err(database)?;
    }
    if !finished.is_empty() {
        let (ids, results): (Vec<i64>, Vec<Vec<u8>>) = finished.into_iter().unzip();
        // Keep what is needed to report it; the input is no longer needed.
        txn.execute(
            "UPDATE carpool_tasks t SET result = u.result, payload = NULL \
             FROM unnest($1::bigint[], $2::bytea[]) AS u(id, result) WHERE t.id = u.id",
            &[&ids, &results],
        )
        .await
        .map_err(database)?;
        txn.execute("DELETE FROM carpool_attempts WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(database)?;
    }
    if !forgotten.is_empty() {
        txn.execute("DELETE FROM carpool_tasks WHERE id = ANY($1)", &[&forgotten])
            .await
            .map_err(database)?;
        txn.execute("DELETE FROM carpool_attempts WHERE id = ANY($1)", &[&forgotten])
            .await
            .map_err(database)?;
    }
    if !unlearned.is_empty() {
        txn.execute(
            "DELETE FROM carpool_learned WHERE function = ANY($1)",
            &[&unlearned],
        )
        .await
        .map_err(database)?;
        txn.execute(
            "DELETE FROM carpool_size_costs WHERE function = ANY($1)",
            &[&unlearned],
        )
        .await
        .map_err(database)?;
    }
    for ((function, memory_mb), (level, settled)) in learned {
        txn.execute(
            "INSERT INTO carpool_learned (function, memory_mb, level, settled) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (function, memory_mb) DO UPDATE SET level = EXCLUDED.level, settled = EXCLUDED.settled",
            &[&function, &memory_mb, &level, &settled],
        )
        .await
        .map_err(database)?;
    }
    for ((function, memory_mb), c) in costs {
        txn.execute(
            "INSERT INTO carpool_size_costs (function, memory_mb, workers, tasks, billed_gb_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (function, memory_mb) DO UPDATE SET workers = EXCLUDED.workers, tasks = EXCLUDED.tasks, \
             billed_gb_ms = EXCLUDED.billed_gb_ms",
            &[&function, &memory_mb, &(c.workers as i64), &(c.tasks as i64), &c.billed_gb_ms],
        )
        .await
        .map_err(database)?;
    }
    txn.commit().await.map_err(database)
}

/// The columns of the tasks a batch accepts.
#[derive(Default)]
struct NewTasks {
    ids: Vec<i64>,
    functions: Vec<String>,
    payloads: Vec<Vec<u8>>,
    timeouts: Vec<i64>,
    keys: Vec<String>,
    fingerprints: Vec<i64>,
    submitted: Vec<i64>,
    deadlines: Vec<i64>,
}

impl NewTasks {
    fn push(&mut self, id: u64, task: &StoredTask) {
        self.ids.push(id as i64);
        self.functions.push(task.function.clone());
        self.payloads.push(task.payload.to_vec());
        self.timeouts.push(task.timeout_ms as i64);
        self.keys.push(task.key.clone());
        self.fingerprints.push(task.fingerprint as i64);
        self.submitted.push(task.submitted_unix_ms as i64);
        self.deadlines
            .push(task.deadline_unix_ms.min(i64::MAX as u64) as i64);
    }
}
