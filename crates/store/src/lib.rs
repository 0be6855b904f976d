//! Persistence. One implementation over sqlx's `Any` driver serves both SQLite (embedded
//! default, WAL) and PostgreSQL: the SQL is written once in the dialect both accept, and the
//! few real differences (row locking on claim, transaction start) sit behind `Backend`.
//!
//! SQLite gets a single-connection write pool so that write transactions queue in-process
//! instead of failing with SQLITE_BUSY; reads use a separate pool and see WAL snapshots.

/// `<prefix>status = 'PROCESSING'` for statements that find their tasks by id, written so
/// that PostgreSQL cannot prove from it the predicate of the partial index `tasks_leased`
/// (`''` is never a status). Why: with the plain comparison that index is a candidate, and
/// with few tasks processing at the last analysis PostgreSQL costs a scan of all of it as
/// no dearer than the primary key, and takes it; but every task that ended since the last
/// vacuum left a dead entry there, and the scan walks them all. Seen in the statement that
/// ends a batch of creates: each walked the index of thousands of tasks ended moments ago.
macro_rules! processing {
    ($prefix:literal) => {
        concat!($prefix, "status IN ('PROCESSING', '')")
    };
}

pub mod accounts;
pub mod backups;
mod batch;
mod bound;
mod cache;
mod checkpoint;
pub mod claims;
mod conns;
pub mod console;
pub mod copy;
mod deleted;
mod exec;
pub mod firewall;
pub mod group;
pub mod hosts;
pub mod instances;
pub mod ips;
pub mod launches;
mod migrate;
mod notify;
mod rate;
pub use rate::WINDOW_MS as RATE_WINDOW_MS;
pub mod schedules;
mod sqlite_read;
mod stats;
pub mod tasks;
mod watch;

use bound::{Bound, Bounded};
use cache::{Cache, Token};
use exec::{Inner, Local, Named, Target, Writer, Q};
use lobster_core::Error;
use sqlite_read::SqliteReads;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor};
use std::sync::Arc;
use std::time::Duration;

pub use accounts::{AccountRow, KeyRow, TeamRow};
pub use backups::BackupRow;
pub use claims::{instance_task_params, ClaimFor, ClaimedFor};
pub use deleted::Deleted;
pub use hosts::HostRow;
pub use instances::{Claim, InstanceRow, NewInstance, Scope};
pub use ips::{IpClaim, IpHeld, IpRow};
pub use launches::{LaunchBatch, LaunchesWritten};
pub use tasks::{Created, CreatedEnd, Lease, NewTask, TaskFilter, TaskRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    read: AnyPool,
    write: AnyPool,
    /// The one-statement batches (`fetch`). PostgreSQL: connections of their own, so that
    /// each of their few statement texts is prepared and planned on a few connections, not
    /// on every connection of the main pool (the launch statement's plan costs about half
    /// its execution; see `BATCH_CONNECTIONS`), and kept without sqlx's pool (see `conns`).
    /// SQLite: none (`local` writes).
    batch: Option<Arc<conns::Conns>>,
    /// SQLite only: the hot reads, in-process (see `sqlite_read`).
    fast: Option<Arc<SqliteReads>>,
    /// SQLite files only: the one write connection, in-process (see `exec`).
    local: Option<Writer>,
    /// Tenants' hot reads, from memory (see `cache`).
    cache: Arc<Cache>,
    /// Where each region's search for a free address starts (see `ips::IpHints`).
    ip_hints: Arc<ips::IpHints>,
    /// PostgreSQL: ends the cache's listening and announcing tasks with the last clone.
    stop: Option<Arc<notify::Stop>>,
    /// PostgreSQL: the cache's notification channel.
    channel: Option<Arc<str>>,
    /// For tests: the next launch or command batch's answer is lost after its commit, and so
    /// is the look that would find it written (`lose_next_batch_answer`).
    lose_batch_answer: Arc<std::sync::atomic::AtomicBool>,
    /// How long a statement may go unanswered (see `bound`).
    bound: Bound,
}

/// A write transaction. Commands do all their writes through one of these.
pub struct Tx {
    backend: Backend,
    inner: Inner,
    cache: Arc<Cache>,
    /// What this transaction wrote that the read cache may hold, invalidated at commit.
    written: Vec<Token>,
    /// What this transaction's address searches and releases tell the hints at its end.
    ips: ips::TxHints,
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation()
                || d.message().contains("UNIQUE")
                || d.message().contains("duplicate key")
        }
        _ => false,
    }
}

pub(crate) fn db_err(e: sqlx::Error) -> Error {
    if bound::is_unanswered(&e) {
        return unanswered_error(&e);
    }
    db_error(is_transient(&e), &e.to_string())
}

/// A database that did not answer in time (see `bound`): 503, try again. Unlike a broken
/// deadlock, a write's outcome is unknown here.
pub(crate) fn unanswered_error(e: &sqlx::Error) -> Error {
    tracing::warn!("database: {e} (answered 503)");
    Error::Unanswered {
        message: format!("{e}; try again"),
        sent: !matches!(e, sqlx::Error::PoolTimedOut),
    }
}

/// A statement PostgreSQL failed only for bad luck: a deadlock it broke by failing this
/// transaction (`40P01`), or a serialization failure (`40001`). Nothing of the transaction
/// was written, and the same request may well succeed at once.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// The error of a failed statement: a transient one is `Unavailable` (503: try again), any
/// other `Internal` (500).
pub(crate) fn db_error(transient: bool, message: &str) -> Error {
    if transient {
        // Logged here, where the database's words are: the client is told only to retry. A
        // deadlock means some writer broke the lock order; it should not pass unseen.
        tracing::warn!("database: {message} (answered 503)");
        Error::Unavailable("the database was busy; nothing was written, try again".into())
    } else {
        Error::Internal(format!("database: {message}"))
    }
}

/// The batch statements' own connections on PostgreSQL. Their callers (the group commits of
/// launches, of power and delete commands and of create ends) each run one statement at a
/// time, outside any transaction, so they never wait for a connection here; and every batch
/// text is planned at most this many times (again after each refresh of statistics) instead
/// of once on each of the main pool's sixteen. A statement waiting for a row lock holds its
/// connection, but whoever holds the lock runs on the main pool.
const BATCH_CONNECTIONS: usize = 4;

/// The main pool's connections on PostgreSQL (reads and transactions share it).
pub const PG_POOL_CONNECTIONS: u32 = 16;

/// A pool of `n` connections to PostgreSQL at `url`, each planning a statement once.
async fn pg_pool(url: &str, n: u32, bound: &Bound) -> Result<AnyPool, Error> {
    let released = bound.clone();
    AnyPoolOptions::new()
        .max_connections(n)
        .acquire_timeout(Duration::from_secs(30))
        // A connection whose statement was given up on (see `bound`) may be waiting for an
        // answer that never comes: the pool's own check of a returned connection, a ping,
        // would wait with it for good, holding its place in the pool. This ping is bounded,
        // and a connection that does not answer it is closed. (The pool then pings again:
        // one round trip more per use of the main pool; the hot batch statements run on
        // connections of their own, see `conns`.)
        //
        // The check also asks whether the connection is still inside a transaction block
        // (its transaction began before this statement did): a BEGIN given up on after the
        // server ran it leaves one that sqlx does not know of (sqlx 0.8.6 counts a
        // transaction only once BEGIN has answered), and the next user's writes would run
        // inside it. Such a connection is closed, which rolls it back.
        .after_release(move |conn, _| {
            let within = Some(released.get());
            Box::pin(async move {
                // The simple protocol: a transaction begun by this very statement takes the
                // statement's own start time; with the extended protocol the two differ.
                // (A bare text is sent with the simple protocol.)
                let check = conn.fetch_one("SELECT now() = statement_timestamp() AS clear");
                let row = bound::within(within, check).await?;
                sqlx::Row::try_get::<bool, _>(&row, "clear")
            })
        })
        // A ping before every use is a round trip per statement or transaction; one after a
        // second idle still finds a connection the server dropped (a restart) before a
        // request does, while a busy pool pays nothing.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > Duration::from_secs(1) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .after_connect(|conn, _| Box::pin(async move { plan_once(conn).await }))
        .connect(url)
        .await
        .map_err(db_err)
}

/// Plans each prepared statement once per connection (and again when the statistics of a
/// table it reads are refreshed, see `stats`), instead of PostgreSQL's default of a fresh
/// plan at every execution until five of them have cost no less than a generic plan would.
/// Why: the launch and task statements are multi-row `VALUES` batches that PostgreSQL kept
/// planning afresh: a sixth of its CPU during a burst of launches. Every predicate that
/// selects a partial index is written as a literal (`status = 'PENDING'`), so a plan made
/// without the parameters' values still uses those indexes.
///
/// A plan made once must stay right while the tables grow under it, so these connections
/// also plan without sequential scans where an index serves (`enable_seqscan = off`, which
/// only prices a sequential scan out, still used where no index applies). Every statement
/// Lobster runs reads rows by a key, an account or a partial index, and a scan's cost grows
/// with its table while an index probe's does not; but a plan is made from the size a table
/// has when it is made. Measured (docs/benchmarks.md, session 16): the end of a batch of
/// creates, planned while the tasks were few, joined its rows to a sequential scan of all
/// tasks, and kept that plan until the next analysis, which in a burst of launches from a
/// fresh start was the whole burst: a sixth of PostgreSQL's CPU.
pub(crate) async fn plan_once(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute("SET plan_cache_mode = force_generic_plan")
        .await?;
    conn.execute("SET enable_seqscan = off").await.map(|_| ())
}

impl Store {
    /// Opens (creating if needed) the database at `url` and runs migrations.
    /// `sqlite:///path/file.db` or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Store, Error> {
        Store::open(url, true).await
    }

    /// As `connect`, for a tool that reads a PostgreSQL database beside the servers (the
    /// bench): no read cache, so no listening connection, and no hello that would make every
    /// server announce its writes to it (see `cache`). Its own writes are still announced.
    pub async fn connect_uncached(url: &str) -> Result<Store, Error> {
        Store::open(url, false).await
    }

    async fn open(url: &str, cached: bool) -> Result<Store, Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(Error::Internal(format!("unsupported database url {url:?}")));
        };
        let bound = Bound::new(backend == Backend::Postgres);
        let store = match backend {
            Backend::Sqlite => {
                let url = if url.contains('?') {
                    url.to_string()
                } else {
                    format!("{url}?mode=rwc")
                };
                let opts = |n: u32| {
                    AnyPoolOptions::new()
                        .max_connections(n)
                        .acquire_timeout(Duration::from_secs(30))
                        // sqlx pings a pooled connection before every use by default: for an
                        // embedded file that is only a round trip to its thread (one more per
                        // transaction, on the one writer).
                        .test_before_acquire(false)
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                for p in [
                                    "PRAGMA journal_mode = WAL",
                                    "PRAGMA synchronous = NORMAL",
                                    "PRAGMA busy_timeout = 10000",
                                    "PRAGMA foreign_keys = ON",
                                ] {
                                    conn.execute(p).await?;
                                }
                                Ok(())
                            })
                        })
                };
                let write = opts(1).connect(&url).await.map_err(db_err)?;
                let read = opts(4).connect(&url).await.map_err(db_err)?;
                Store {
                    backend,
                    read,
                    batch: None,
                    write,
                    fast: None,
                    local: None,
                    cache: Cache::new(false),
                    ip_hints: Arc::default(),
                    lose_batch_answer: Arc::default(),
                    stop: None,
                    channel: None,
                    bound: bound.clone(),
                }
            }
            Backend::Postgres => {
                let pool = pg_pool(url, PG_POOL_CONNECTIONS, &bound).await?;
                let batch = Some(Arc::new(conns::Conns::new(
                    url,
                    BATCH_CONNECTIONS,
                    bound.clone(),
                )));
                Store {
                    backend,
                    read: pool.clone(),
                    write: pool,
                    batch,
                    fast: None,
                    local: None,
                    // Off until its listening connection is up.
                    cache: Cache::new(true),
                    ip_hints: Arc::default(),
                    lose_batch_answer: Arc::default(),
                    stop: None,
                    channel: None,
                    bound: bound.clone(),
                }
            }
        };
        migrate::run(&store).await?;
        let (fast, stop, channel) = match backend {
            Backend::Sqlite => (SqliteReads::open(url)?, None, None),
            Backend::Postgres => {
                let (stop, channel) =
                    notify::start(url, &store.write, store.cache.clone(), cached).await?;
                (None, Some(Arc::new(stop)), Some(channel.into()))
            }
        };
        // Writes move to the in-process writer once the migrations are in; sqlx's write
        // connection is closed so that no write can take the file's lock behind its back.
        let local = match &fast {
            Some(reads) => {
                store.write.close().await;
                Some(exec::open_writer(reads.path())?)
            }
            None => None,
        };
        // A SQLite file's cache keeps keys while a watch hears no write (see `watch`).
        let cache = match fast.as_ref().and_then(|r| watch::DbWatch::open(r.path())) {
            Some(w) => Cache::watching(w),
            None => store.cache.clone(),
        };
        Ok(Store {
            fast,
            local,
            cache,
            stop,
            channel,
            ..store
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn begin(&self) -> Result<Tx, Error> {
        let inner = match (&self.local, self.backend) {
            (Some(w), _) => Inner::Local(Local::begin(w).await?),
            // IMMEDIATE takes the write lock up front, so a transaction that reads and then
            // writes cannot fail half-way when another process (the admin CLI) also writes.
            (None, Backend::Sqlite) => Inner::Sqlx(
                self.write
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(db_err)?,
                None,
            ),
            (None, Backend::Postgres) => {
                let within = self.bound.within();
                let tx = bound::within(within, self.write.begin()).await;
                Inner::Sqlx(tx.map_err(db_err)?, within)
            }
        };
        Ok(Tx {
            backend: self.backend,
            inner,
            cache: self.cache.clone(),
            written: Vec::new(),
            ips: ips::TxHints::new(&self.ip_hints),
        })
    }

    /// Liveness probe for the health endpoint.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1")
            .execute(self.reader())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// The database's own clock, in milliseconds since the epoch: the reference every
    /// server's clock is held to, since leases written by one server are judged expired by
    /// another's clock (see the engine's clock check).
    pub async fn db_clock_ms(&self) -> Result<i64, Error> {
        let sql = match self.backend() {
            Backend::Postgres => {
                "SELECT CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT) AS ms"
            }
            Backend::Sqlite => {
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) AS ms"
            }
        };
        let row = sqlx::query(sql)
            .fetch_one(self.reader())
            .await
            .map_err(db_err)?;
        get_i64(&row, "ms")
    }

    /// The read pool, every statement bounded (see `bound`).
    pub(crate) fn reader(&self) -> Bounded<'_> {
        Bounded {
            pool: &self.read,
            within: self.bound.within(),
        }
    }

    /// The read pool itself, for what holds a connection for long (a copy's snapshot).
    pub(crate) fn read_pool(&self) -> &AnyPool {
        &self.read
    }

    /// How long a statement may go unanswered on PostgreSQL before it is given up (30 s;
    /// shortened by tests).
    #[doc(hidden)]
    pub fn set_statement_bound(&self, d: Duration) {
        self.bound.set(d);
    }

    pub(crate) fn fast(&self) -> Option<&Arc<SqliteReads>> {
        self.fast.as_ref()
    }

    #[cfg(test)]
    pub(crate) fn writer(&self) -> &AnyPool {
        &self.write
    }

    /// The write pool, every statement bounded (see `bound`).
    fn writer_bounded(&self) -> Bounded<'_> {
        Bounded {
            pool: &self.write,
            within: self.bound.within(),
        }
    }

    /// A write outside a transaction (its own, on SQLite's in-process writer).
    pub(crate) fn q<'t, 'a>(&'t self, sql: &'a str) -> Q<'t, 'a> {
        let target = match &self.local {
            Some(w) => Target::Writer(w),
            None => Target::Pool(self.writer_bounded()),
        };
        Q::new(target, self.backend, sql)
    }

    /// For tests: the next launch or command batch (PostgreSQL's one statement) is written,
    /// but its caller is told it failed without learning whether it was written, as when
    /// the connection is lost after the commit and the look that would find the batch
    /// fails too.
    #[doc(hidden)]
    pub fn lose_next_batch_answer(&self) {
        self.lose_batch_answer
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether this batch's answer is to be lost (`lose_next_batch_answer`).
    pub(crate) fn batch_answer_lost(&self) -> bool {
        self.lose_batch_answer
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Runs a prepared batch statement outside a transaction; the rows it returned.
    pub(crate) async fn fetch(&self, st: &batch::Statement<'_>) -> Result<Vec<exec::Row>, Error> {
        let target = match (&self.local, &self.batch) {
            (Some(w), _) => Target::Writer(w),
            (None, Some(conns)) => return Ok(conns.fetch(st).await?),
            (None, None) => Target::Pool(self.writer_bounded()),
        };
        Ok(exec::fetch(target, st).await?)
    }

    /// Resolves once reads may be served from memory: at once on SQLite; on PostgreSQL when
    /// the listening connection is up and the others have had time to hear this server
    /// (see `cache`), about a second after connecting. Never, for `connect_uncached`.
    pub async fn read_cache_on(&self) {
        loop {
            let changed = self.cache.changed.notified();
            if self.cache.is_on() {
                return;
            }
            changed.await;
        }
    }

    pub(crate) fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    pub(crate) fn channel(&self) -> Option<&str> {
        self.channel.as_deref()
    }

    pub async fn close(&self) {
        if let Some(stop) = &self.stop {
            stop.now();
        }
        self.write.close().await;
        self.read.close().await;
        if let Some(b) = &self.batch {
            b.close().await;
        }
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), Error> {
        let Tx {
            inner,
            cache,
            written,
            ips,
            ..
        } = self;
        let done = match inner {
            Inner::Sqlx(tx, within) => bound::within(within, tx.commit()).await.map_err(db_err),
            Inner::Local(l) => l.end("COMMIT"),
        };
        // Even when the commit's outcome is unknown (its connection failed): a needless
        // invalidation costs a read, a missing one serves a stale row.
        cache.invalidate(written, true);
        ips.end(done.is_ok());
        done
    }

    /// Tells every server's read cache, as part of this transaction, that keys changed (and
    /// this server's at commit).
    pub(crate) async fn announce_keys_changed(
        &mut self,
        channel: Option<&str>,
    ) -> Result<(), Error> {
        if let Some(ch) = channel {
            self.q("SELECT pg_notify($1, 'k')")
                .bind(ch)
                .execute()
                .await?;
        }
        self.written.push(Token::Keys);
        Ok(())
    }

    /// Marks an instance written: the cache drops it when this transaction commits.
    pub(crate) fn wrote_instance(&mut self, id: &str) {
        self.written.push(Token::Instance(id.to_string()));
    }

    /// Undoes the transaction now (dropping it also rolls back, but only when its connection
    /// is next used).
    pub async fn rollback(self) -> Result<(), Error> {
        match self.inner {
            Inner::Sqlx(tx, within) => bound::within(within, tx.rollback()).await.map_err(db_err),
            Inner::Local(l) => l.end("ROLLBACK"),
        }
    }

    /// A statement in this transaction.
    pub(crate) fn q<'t, 'a>(&'t mut self, sql: &'a str) -> Q<'t, 'a> {
        Q::new(Target::Tx(&mut self.inner), self.backend, sql)
    }

    /// Runs a prepared batch statement in this transaction; the rows it changed.
    pub(crate) async fn run(&mut self, st: &batch::Statement<'_>) -> Result<u64, Error> {
        Ok(exec::run(Target::Tx(&mut self.inner), st).await?)
    }

    /// Runs a prepared batch statement in this transaction; the rows it returned.
    pub(crate) async fn fetch(
        &mut self,
        st: &batch::Statement<'_>,
    ) -> Result<Vec<exec::Row>, Error> {
        Ok(exec::fetch(Target::Tx(&mut self.inner), st).await?)
    }

    /// The sqlx connection, for what runs only through sqlx (migrations, PostgreSQL's
    /// statistics, the copy into PostgreSQL).
    pub(crate) fn conn(&mut self) -> Result<&mut sqlx::AnyConnection, Error> {
        match &mut self.inner {
            Inner::Sqlx(tx, _) => Ok(&mut **tx),
            Inner::Local(_) => Err(Error::Internal(
                "a statement for sqlx's connection on the in-process writer".into(),
            )),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}

/// A row's cells by position, whichever driver read it: one row mapper per table serves
/// sqlx's rows and the in-process SQLite reads alike. Positions follow the table's column
/// list constant, which sits beside its mapper.
pub(crate) trait Cells {
    fn text(&self, i: usize) -> Result<String, Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, Error>;
    fn int(&self, i: usize) -> Result<i64, Error>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Error>;
}

impl Cells for AnyRow {
    fn text(&self, i: usize) -> Result<String, Error> {
        sqlx::Row::try_get(self, i).map_err(db_err)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, Error> {
        sqlx::Row::try_get(self, i).map_err(db_err)
    }
    fn int(&self, i: usize) -> Result<i64, Error> {
        sqlx::Row::try_get(self, i).map_err(db_err)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Error> {
        sqlx::Row::try_get(self, i).map_err(db_err)
    }
}

pub(crate) fn get_i64<R: Named>(row: &R, col: &str) -> Result<i64, Error> {
    R::named_required(row.named_int(col)?, col)
}

pub(crate) fn get_opt_i64(row: &impl Named, col: &str) -> Result<Option<i64>, Error> {
    row.named_int(col)
}

pub(crate) fn get_str<R: Named>(row: &R, col: &str) -> Result<String, Error> {
    R::named_required(row.named_text(col)?, col)
}

pub(crate) fn get_opt_str(row: &impl Named, col: &str) -> Result<Option<String>, Error> {
    row.named_text(col)
}

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod claims_tests;
#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod launches_tests;
#[cfg(test)]
mod lock_order_tests;
#[cfg(test)]
mod silent_tests;
