//! Statements on whichever connection runs them: a write transaction (`Tx`) or the store's
//! autocommit writes, through sqlx (PostgreSQL; SQLite in memory) or, on a SQLite file, on
//! the one in-process writer connection.
//!
//! Why the in-process writer: sqlx runs each SQLite connection on a thread of its own and
//! hands every statement there and every answer back, so a batch of launches (nine
//! statements) was nine round trips between threads, all on the one writer that every write
//! queues for. Profiled during launches, that writer thread was busy 44 % of the time and the
//! runtime's workers a quarter each: the machine sat half idle, waiting on hand-offs. SQLite
//! is a library; here a transaction runs its statements on the caller's own thread, under an
//! async lock on the one write connection (so writers queue in-process, in order, as they did
//! for sqlx's single-connection pool), and the lock is released by COMMIT or ROLLBACK, or a
//! ROLLBACK at once when the transaction is dropped (sqlx would roll back only when its
//! connection was next used).

use crate::batch::{Statement, Val};
use crate::bound::Bounded;
use crate::{Backend, Cells};
use lobster_core::Error;
use rusqlite::types::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The one SQLite write connection, shared by the store's clones.
pub(crate) type Writer = Arc<Mutex<rusqlite::Connection>>;

/// The writer's page cache. SQLite's default (2 MiB) held too little of the indexes every
/// launch and delete touch: during deletes 7 % of the server's time went to reading pages
/// back from the OS. At most this much more memory, used only as the database grows.
const WRITER_CACHE_KIB: u32 = 32 * 1024;

/// What the WAL file is cut back to when the writer starts it over after a complete
/// checkpoint. Without a limit it keeps the size of its largest burst on disk for good (a
/// WAL grows past the writer's 40 MB bound while a long read holds checkpoints back). Above
/// that bound, so that in normal running the file is reused, never cut and grown again (a
/// 16 MiB limit was cut and regrown every few checkpoints during a launch burst).
pub(crate) const WAL_KEPT_BYTES: u32 = 64 << 20;

/// Opens the in-process write connection to a SQLite file, with the pragmas sqlx's
/// connections get, and its checkpointer.
pub(crate) fn open_writer(path: &str) -> Result<Writer, Error> {
    let writer = Arc::new(Mutex::new(writer_connection(path)?));
    // Checkpoints run on a thread of their own (see `checkpoint`).
    crate::checkpoint::spawn(path, Arc::downgrade(&writer));
    Ok(writer)
}

/// The writer's connection, configured, without its checkpointer.
pub(crate) fn writer_connection(path: &str) -> Result<rusqlite::Connection, Error> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(path, flags).map_err(local_err)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;
         PRAGMA wal_autocheckpoint = {}; PRAGMA cache_size = -{};
         PRAGMA journal_size_limit = {};",
        crate::checkpoint::WRITER_BOUND,
        WRITER_CACHE_KIB,
        WAL_KEPT_BYTES
    ))
    .map_err(local_err)?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

/// What a transaction runs on.
pub(crate) enum Inner {
    /// With how long each of its statements may go unanswered (see `bound`; None on SQLite).
    Sqlx(Transaction<'static, Any>, Option<Duration>),
    Local(Local),
}

/// A transaction on the in-process SQLite writer: holds the writer until it ends.
pub(crate) struct Local {
    conn: Option<OwnedMutexGuard<rusqlite::Connection>>,
}

impl Local {
    pub(crate) async fn begin(writer: &Writer) -> Result<Local, Error> {
        let conn = writer.clone().lock_owned().await;
        // IMMEDIATE takes the file's write lock up front, so a transaction that reads and
        // then writes cannot fail half-way when another process (the admin CLI) writes.
        conn.execute_batch("BEGIN IMMEDIATE").map_err(local_err)?;
        Ok(Local { conn: Some(conn) })
    }

    fn conn(&self) -> Result<&rusqlite::Connection, Error> {
        self.conn
            .as_deref()
            .ok_or_else(|| Error::Internal("transaction already ended".into()))
    }

    /// COMMIT (or ROLLBACK) and let the next writer in.
    pub(crate) fn end(mut self, sql: &str) -> Result<(), Error> {
        let conn = self.conn.take();
        match conn {
            Some(c) => {
                let done = c.execute_batch(sql).map_err(local_err);
                if done.is_err() && !c.is_autocommit() {
                    // A failed COMMIT leaves the transaction open: undo it before letting go.
                    let _ = c.execute_batch("ROLLBACK");
                }
                done
            }
            None => Ok(()),
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if !c.is_autocommit() {
                let _ = c.execute_batch("ROLLBACK");
            }
        }
    }
}

/// Where a statement runs.
pub(crate) enum Target<'t> {
    Tx(&'t mut Inner),
    Pool(Bounded<'t>),
    Writer(&'t Writer),
}

/// A failed statement: whether it broke a unique constraint (callers turn that into 409s),
/// whether it was only unlucky (`crate::is_transient`), and what the database said.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) unique: bool,
    transient: bool,
    message: String,
    /// An error that was not the database's, passed through as it was.
    passed: Option<Error>,
}

impl From<Fail> for Error {
    fn from(f: Fail) -> Error {
        match f.passed {
            Some(e) => e,
            None => crate::db_error(f.transient, &f.message),
        }
    }
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Fail {
        if crate::bound::is_unanswered(&e) {
            return Fail::from(crate::unanswered_error(&e));
        }
        Fail {
            unique: crate::is_unique_violation(&e),
            transient: crate::is_transient(&e),
            message: e.to_string(),
            passed: None,
        }
    }
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Fail {
        let unique = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation)
        ) && e.to_string().contains("UNIQUE");
        Fail {
            unique,
            transient: false,
            message: e.to_string(),
            passed: None,
        }
    }
}

fn local_err(e: rusqlite::Error) -> Error {
    Error::Internal(format!("database: {e}"))
}

/// A statement being built: `sqlx::query`'s shape (`$N` parameters, `bind` in order).
pub(crate) struct Q<'t, 'a> {
    target: Target<'t>,
    backend: Backend,
    sql: &'a str,
    vals: Vec<Val<'a>>,
}

impl<'t, 'a> Q<'t, 'a> {
    pub(crate) fn new(target: Target<'t>, backend: Backend, sql: &'a str) -> Self {
        Q {
            target,
            backend,
            sql,
            vals: Vec::new(),
        }
    }

    pub(crate) fn bind(mut self, v: impl Into<Val<'a>>) -> Self {
        self.vals.push(v.into());
        self
    }

    /// Runs it; the rows it changed.
    pub(crate) async fn execute(self) -> Result<u64, Error> {
        Ok(self.try_execute().await?)
    }

    /// Runs it; a failure as `Fail`, for callers that answer a unique violation.
    pub(crate) async fn try_execute(self) -> Result<u64, Fail> {
        let st = Statement::new(self.backend, self.sql, self.vals);
        run(self.target, &st).await
    }

    pub(crate) async fn fetch_all(self) -> Result<Vec<Row>, Error> {
        let st = Statement::new(self.backend, self.sql, self.vals);
        Ok(fetch(self.target, &st).await?)
    }

    pub(crate) async fn fetch_optional(self) -> Result<Option<Row>, Error> {
        Ok(self.fetch_all().await?.into_iter().next())
    }

    pub(crate) async fn fetch_one(self) -> Result<Row, Error> {
        self.fetch_optional()
            .await?
            .ok_or_else(|| Error::Internal("database: no row returned".into()))
    }
}

/// Runs `st` on `target`; the rows it changed.
pub(crate) async fn run(target: Target<'_>, st: &Statement<'_>) -> Result<u64, Fail> {
    match target {
        Target::Tx(Inner::Sqlx(tx, within)) => {
            let done = crate::bound::within(*within, st.query().execute(&mut **tx)).await;
            Ok(done?.rows_affected())
        }
        Target::Pool(pool) => Ok(st.query().execute(pool).await?.rows_affected()),
        Target::Tx(Inner::Local(l)) => local_run(l.conn()?, st),
        Target::Writer(w) => local_run(&*w.lock().await, st),
    }
}

/// Runs `st` on `target`; the rows it returned.
pub(crate) async fn fetch(target: Target<'_>, st: &Statement<'_>) -> Result<Vec<Row>, Fail> {
    let any = |rows: Vec<AnyRow>| rows.into_iter().map(Row::Any).collect();
    match target {
        Target::Tx(Inner::Sqlx(tx, within)) => {
            let rows = crate::bound::within(*within, st.query().fetch_all(&mut **tx)).await;
            Ok(any(rows?))
        }
        Target::Pool(pool) => Ok(any(st.query().fetch_all(pool).await?)),
        Target::Tx(Inner::Local(l)) => local_fetch(l.conn()?, st),
        Target::Writer(w) => local_fetch(&*w.lock().await, st),
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail {
            unique: false,
            transient: false,
            message: e.to_string(),
            passed: Some(e),
        }
    }
}

fn prepared<'c>(
    c: &'c rusqlite::Connection,
    st: &Statement<'_>,
) -> Result<rusqlite::CachedStatement<'c>, rusqlite::Error> {
    let mut s = c.prepare_cached(st.sql())?;
    for (i, v) in st.vals().iter().enumerate() {
        match v {
            Val::Text(t) => s.raw_bind_parameter(i + 1, t.as_deref())?,
            Val::Int(n) => s.raw_bind_parameter(i + 1, *n)?,
        }
    }
    Ok(s)
}

fn local_run(c: &rusqlite::Connection, st: &Statement<'_>) -> Result<u64, Fail> {
    let mut s = prepared(c, st)?;
    // Stepped to the end rather than `raw_execute`, which refuses statements with RETURNING.
    let mut rows = s.raw_query();
    while rows.next()?.is_some() {}
    Ok(c.changes())
}

fn local_fetch(c: &rusqlite::Connection, st: &Statement<'_>) -> Result<Vec<Row>, Fail> {
    let mut s = prepared(c, st)?;
    let names: Arc<[String]> = s.column_names().iter().map(|n| n.to_string()).collect();
    let width = names.len();
    let mut rows = s.raw_query();
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let vals = (0..width)
            .map(|i| r.get::<_, Value>(i))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Row::Local(LocalRow {
            names: names.clone(),
            vals,
        }));
    }
    Ok(out)
}

/// A row read by a statement of this module, whichever connection ran it.
pub(crate) enum Row {
    Any(AnyRow),
    Local(LocalRow),
}

pub(crate) struct LocalRow {
    names: Arc<[String]>,
    vals: Vec<Value>,
}

impl LocalRow {
    fn at(&self, i: usize) -> Result<&Value, Error> {
        self.vals
            .get(i)
            .ok_or_else(|| Error::Internal(format!("database: no column {i}")))
    }

    fn index(&self, name: &str) -> Result<usize, Error> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| Error::Internal(format!("database: no column {name:?}")))
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, Error> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            v => Err(Error::Internal(format!(
                "database: column {i} is {v:?}, not text"
            ))),
        }
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, Error> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Integer(n) => Ok(Some(*n)),
            v => Err(Error::Internal(format!(
                "database: column {i} is {v:?}, not an integer"
            ))),
        }
    }
}

fn required<T>(v: Option<T>, i: usize) -> Result<T, Error> {
    v.ok_or_else(|| Error::Internal(format!("database: column {i} is NULL")))
}

impl Cells for Row {
    fn text(&self, i: usize) -> Result<String, Error> {
        match self {
            Row::Any(r) => r.text(i),
            Row::Local(r) => required(r.opt_text(i)?, i),
        }
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, Error> {
        match self {
            Row::Any(r) => r.opt_text(i),
            Row::Local(r) => r.opt_text(i),
        }
    }
    fn int(&self, i: usize) -> Result<i64, Error> {
        match self {
            Row::Any(r) => r.int(i),
            Row::Local(r) => required(r.opt_int(i)?, i),
        }
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Error> {
        match self {
            Row::Any(r) => r.opt_int(i),
            Row::Local(r) => r.opt_int(i),
        }
    }
}

/// A row's cells by column name (for the statements whose rows are read by name).
pub(crate) trait Named {
    fn named_text(&self, col: &str) -> Result<Option<String>, Error>;
    fn named_int(&self, col: &str) -> Result<Option<i64>, Error>;
    /// For the NOT NULL columns: a NULL is a broken row, not a value.
    fn named_required<T>(v: Option<T>, col: &str) -> Result<T, Error> {
        v.ok_or_else(|| Error::Internal(format!("database: column {col:?} is NULL")))
    }
}

impl Named for AnyRow {
    fn named_text(&self, col: &str) -> Result<Option<String>, Error> {
        sqlx::Row::try_get(self, col).map_err(crate::db_err)
    }
    fn named_int(&self, col: &str) -> Result<Option<i64>, Error> {
        sqlx::Row::try_get(self, col).map_err(crate::db_err)
    }
}

impl Named for Row {
    fn named_text(&self, col: &str) -> Result<Option<String>, Error> {
        match self {
            Row::Any(r) => r.named_text(col),
            Row::Local(r) => r.opt_text(r.index(col)?),
        }
    }
    fn named_int(&self, col: &str) -> Result<Option<i64>, Error> {
        match self {
            Row::Any(r) => r.named_int(col),
            Row::Local(r) => r.opt_int(r.index(col)?),
        }
    }
}
