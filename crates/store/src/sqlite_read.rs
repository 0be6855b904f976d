//! The hot reads on SQLite (the API key lookup every request makes, one instance, the
//! instance list), run in-process on the calling thread instead of through sqlx.
//!
//! Why: sqlx runs each SQLite connection on its own thread and hands every query and row
//! across a channel. On a point read that costs more than the read itself: the profile of
//! `GET /instances/{id}` was dominated by thread wake-ups and `AnyRow` conversion, not by
//! SQLite. SQLite is a library; a read of one row from a warm page cache takes microseconds,
//! less than one thread hop. So these reads call it directly, with prepared statements cached
//! per connection, on connections that are read-only (`query_only`) and see WAL snapshots
//! exactly as sqlx's readers do: each statement is its own read transaction and sees every
//! commit before it (statements are reset when dropped, so none holds a snapshot open).
//!
//! Reads whose size the tenant controls (the list) run on tokio's blocking pool so that a long
//! list cannot stall the runtime's workers. The SQL is the same text the sqlx path uses.

use crate::Cells;
use lobster_core::Error;
use rusqlite::{Connection, OpenFlags};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// A few read-only connections to one SQLite file, handed out one caller at a time.
pub(crate) struct SqliteReads {
    path: String,
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection: callers beyond `CONNECTIONS` wait for one to come back
    /// rather than open more (opening a connection reads the schema; it is not cheap).
    permits: Semaphore,
}

/// More than the two runtime workers plus a few blocking list reads; more would only
/// contend for the same two cores.
const CONNECTIONS: usize = 6;

fn err(e: rusqlite::Error) -> Error {
    Error::Internal(format!("database: {e}"))
}

impl SqliteReads {
    /// For a `sqlite:` URL naming a file; `None` for in-memory databases (each connection
    /// would see its own empty database).
    pub(crate) fn open(url: &str) -> Result<Option<Arc<SqliteReads>>, Error> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() || path.contains(":memory:") || url.contains("mode=memory") {
            return Ok(None);
        }
        let reads = Arc::new(SqliteReads {
            path: path.to_string(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(CONNECTIONS),
        });
        // Open one now so that a bad path fails at start, not on the first request.
        let conn = reads.connect()?;
        reads.put(conn);
        Ok(Some(reads))
    }

    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    fn connect(&self) -> Result<Connection, Error> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(err)?;
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 10000;")
            .map_err(err)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    fn take(&self) -> Result<Connection, Error> {
        let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match conn {
            Some(c) => Ok(c),
            None => self.connect(),
        }
    }

    fn put(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }

    /// Runs `f` on a connection of the pool, on this thread. The caller holds a permit.
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let conn = self.take()?;
        let out = f(&conn);
        self.put(conn);
        out
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        self.permits
            .acquire()
            .await
            .map_err(|e| Error::Internal(format!("read pool: {e}")))
    }

    /// At most one row of `sql` with `binds`, mapped by `map`. Runs on this thread.
    pub(crate) async fn one<T>(
        &self,
        sql: &str,
        binds: &[&str],
        map: impl FnOnce(&rusqlite::Row<'_>) -> Result<T, Error>,
    ) -> Result<Option<T>, Error> {
        let _permit = self.permit().await?;
        self.with(|c| {
            let mut st = c.prepare_cached(sql).map_err(err)?;
            let mut rows = st
                .query(rusqlite::params_from_iter(binds.iter()))
                .map_err(err)?;
            match rows.next().map_err(err)? {
                Some(r) => map(r).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Every row of `sql` with `binds`, mapped by `map`, on this thread: for results of a
    /// few rows, where a hand-off to another thread would cost more than the read.
    pub(crate) async fn few<T>(
        &self,
        sql: &str,
        binds: &[&str],
        map: impl Fn(&rusqlite::Row<'_>) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        let _permit = self.permit().await?;
        self.with(|c| rows_of(c, sql, binds, map))
    }

    /// Every row of `sql` with `binds`, mapped by `map`, on tokio's blocking pool.
    pub(crate) async fn all<T: Send + 'static>(
        self: &Arc<Self>,
        sql: String,
        binds: Vec<String>,
        map: fn(&rusqlite::Row<'_>) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        let permit = self.permit().await?;
        let me = self.clone();
        let job = move || me.with(|c| rows_of(c, &sql, &binds, map));
        let out = tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| Error::Internal(format!("read task: {e}")))?;
        drop(permit);
        out
    }
}

/// Every row of `sql` with `binds`, mapped by `map`.
fn rows_of<T, B: rusqlite::ToSql>(
    c: &rusqlite::Connection,
    sql: &str,
    binds: &[B],
    map: impl Fn(&rusqlite::Row<'_>) -> Result<T, Error>,
) -> Result<Vec<T>, Error> {
    let mut st = c.prepare_cached(sql).map_err(err)?;
    let mut rows = st
        .query(rusqlite::params_from_iter(binds.iter()))
        .map_err(err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(err)? {
        out.push(map(r)?);
    }
    Ok(out)
}

impl Cells for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<String, Error> {
        self.get(i).map_err(err)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, Error> {
        self.get(i).map_err(err)
    }
    fn int(&self, i: usize) -> Result<i64, Error> {
        self.get(i).map_err(err)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Error> {
        self.get(i).map_err(err)
    }
}
