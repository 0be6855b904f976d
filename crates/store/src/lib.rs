//! Persistence. One implementation over sqlx's `Any` driver serves both SQLite (embedded
//! default, WAL) and PostgreSQL: the SQL is written once in the dialect both accept, and the
//! few real differences (row locking on claim, transaction start) sit behind `Backend`.
//!
//! SQLite gets a single-connection write pool so that write transactions queue in-process
//! instead of failing with SQLITE_BUSY; reads use a separate pool and see WAL snapshots.

pub mod accounts;
pub mod backups;
mod batch;
mod cache;
pub mod console;
pub mod copy;
mod deleted;
pub mod firewall;
pub mod group;
pub mod hosts;
pub mod instances;
pub mod ips;
mod migrate;
mod notify;
pub mod schedules;
mod sqlite_read;
mod stats;
pub mod tasks;

use cache::{Cache, Token};
use lobster_core::Error;
use sqlite_read::SqliteReads;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Transaction};
use std::sync::Arc;
use std::time::Duration;

pub use accounts::{AccountRow, KeyRow, TeamRow};
pub use backups::BackupRow;
pub use deleted::Deleted;
pub use hosts::HostRow;
pub use instances::{Claim, InstanceRow, NewInstance, Scope};
pub use ips::{IpClaim, IpHeld, IpRow};
pub use tasks::{Created, CreatedEnd, NewTask, TaskFilter, TaskRow};

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
    /// SQLite only: the hot reads, in-process (see `sqlite_read`).
    fast: Option<Arc<SqliteReads>>,
    /// Tenants' hot reads, from memory (see `cache`).
    cache: Arc<Cache>,
    /// PostgreSQL: ends the cache's listening and announcing tasks with the last clone.
    stop: Option<Arc<notify::Stop>>,
    /// PostgreSQL: the cache's notification channel.
    channel: Option<Arc<str>>,
}

/// A write transaction. Commands do all their writes through one of these.
pub struct Tx {
    backend: Backend,
    inner: Transaction<'static, Any>,
    cache: Arc<Cache>,
    /// What this transaction wrote that the read cache may hold, invalidated at commit.
    written: Vec<Token>,
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
    Error::Internal(format!("database: {e}"))
}

impl Store {
    /// Opens (creating if needed) the database at `url` and runs migrations.
    /// `sqlite:///path/file.db` or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Store, Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(Error::Internal(format!("unsupported database url {url:?}")));
        };
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
                    write,
                    fast: None,
                    cache: Cache::new(false),
                    stop: None,
                    channel: None,
                }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    // A ping before every use is a round trip per statement or transaction;
                    // one after a second idle still finds a connection the server dropped
                    // (a restart) before a request does, while a busy pool pays nothing.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for > Duration::from_secs(1) {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect(url)
                    .await
                    .map_err(db_err)?;
                Store {
                    backend,
                    read: pool.clone(),
                    write: pool,
                    fast: None,
                    // Off until its listening connection is up.
                    cache: Cache::new(true),
                    stop: None,
                    channel: None,
                }
            }
        };
        migrate::run(&store).await?;
        let (fast, stop, channel) = match backend {
            Backend::Sqlite => (SqliteReads::open(url)?, None, None),
            Backend::Postgres => {
                let (stop, channel) = notify::start(url, &store.write, store.cache.clone()).await?;
                (None, Some(Arc::new(stop)), Some(channel.into()))
            }
        };
        Ok(Store {
            fast,
            stop,
            channel,
            ..store
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn begin(&self) -> Result<Tx, Error> {
        let inner = match self.backend {
            // IMMEDIATE takes the write lock up front, so a transaction that reads and then
            // writes cannot fail half-way when another process (the admin CLI) also writes.
            Backend::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.write.begin().await,
        }
        .map_err(db_err)?;
        Ok(Tx {
            backend: self.backend,
            inner,
            cache: self.cache.clone(),
            written: Vec::new(),
        })
    }

    /// Liveness probe for the health endpoint.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub(crate) fn reader(&self) -> &AnyPool {
        &self.read
    }

    pub(crate) fn fast(&self) -> Option<&Arc<SqliteReads>> {
        self.fast.as_ref()
    }

    pub(crate) fn writer(&self) -> &AnyPool {
        &self.write
    }

    pub(crate) fn cache(&self) -> &Cache {
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
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), Error> {
        let Tx {
            inner,
            cache,
            written,
            ..
        } = self;
        let done = inner.commit().await.map_err(db_err);
        // Even when the commit's outcome is unknown (its connection failed): a needless
        // invalidation costs a read, a missing one serves a stale row.
        cache.invalidate(written, true);
        done
    }

    /// Tells every server's read cache, as part of this transaction, that keys changed (and
    /// this server's at commit).
    pub(crate) async fn announce_keys_changed(
        &mut self,
        channel: Option<&str>,
    ) -> Result<(), Error> {
        if let Some(ch) = channel {
            sqlx::query("SELECT pg_notify($1, 'k')")
                .bind(ch)
                .execute(self.conn())
                .await
                .map_err(db_err)?;
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
        self.inner.rollback().await.map_err(db_err)
    }

    pub(crate) fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.inner
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

pub(crate) fn get_i64(row: &AnyRow, col: &str) -> Result<i64, Error> {
    use sqlx::Row;
    row.try_get::<i64, _>(col).map_err(db_err)
}

pub(crate) fn get_opt_i64(row: &AnyRow, col: &str) -> Result<Option<i64>, Error> {
    use sqlx::Row;
    row.try_get::<Option<i64>, _>(col).map_err(db_err)
}

pub(crate) fn get_str(row: &AnyRow, col: &str) -> Result<String, Error> {
    use sqlx::Row;
    row.try_get::<String, _>(col).map_err(db_err)
}

pub(crate) fn get_opt_str(row: &AnyRow, col: &str) -> Result<Option<String>, Error> {
    use sqlx::Row;
    row.try_get::<Option<String>, _>(col).map_err(db_err)
}

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod contract_tests;
