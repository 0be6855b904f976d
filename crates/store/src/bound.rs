//! A bound on every statement sent to PostgreSQL. A database that stops answering without
//! closing its connections (a host gone silent, a partition, a frozen VM) leaves a read
//! waiting for an answer that never comes, and TCP never gives up on a connection that has
//! nothing unacknowledged to send (sqlx has no keepalives). Unbounded, each such statement
//! holds its caller and its connection until the server restarts: requests pile up behind
//! them and, once the pool's connections are all held, nothing is answered, even after the
//! database is back.
//!
//! So each statement, with its wait for a connection, is given up after the bound, and
//! answered 503 ("try again"; a write's outcome is then unknown, as after any lost
//! connection, and the paths that must know look for what they wrote). The connection it ran
//! on is closed rather than reused: the pool tests a returned connection with a ping, bounded
//! too (`pg_pool`'s `after_release`), and the batch statements' own connections drop it.

use futures_util::{FutureExt, StreamExt};
use sqlx::any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::{Any, AnyPool, Describe, Either, Execute, Executor};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a statement may go unanswered by default: far beyond any statement this
/// store sends (most take milliseconds; the longest wait on another transaction's row
/// locks), short enough that a silent database is noticed while a client still waits.
pub(crate) const DEFAULT: Duration = Duration::from_secs(30);

/// The bound, shared by a store's clones, its pool's release check and its batch
/// connections; tests shorten it. `on` is the backend's: PostgreSQL only.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    ms: Arc<AtomicU64>,
    on: bool,
}

impl Bound {
    pub(crate) fn new(on: bool) -> Bound {
        Bound {
            ms: Arc::new(AtomicU64::new(DEFAULT.as_millis() as u64)),
            on,
        }
    }

    /// The bound for statements of the pool and of transactions: None when not on.
    pub(crate) fn within(&self) -> Option<Duration> {
        self.on.then(|| self.get())
    }

    pub(crate) fn get(&self) -> Duration {
        Duration::from_millis(self.ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set(&self, d: Duration) {
        self.ms
            .store(d.as_millis().max(1) as u64, Ordering::Relaxed);
    }
}

/// The error of a statement given up on.
pub(crate) fn unanswered(within: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "the database gave no answer within {} ms",
            within.as_millis()
        ),
    ))
}

/// Whether `e` says the database did not answer in time: a statement given up on here, or no
/// connection to be had within the pool's wait.
pub(crate) fn is_unanswered(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::TimedOut,
        sqlx::Error::PoolTimedOut => true,
        _ => false,
    }
}

/// `fut`, or `unanswered` once `within` has passed (the future is dropped: its connection
/// goes back to the pool, which closes it, see the module's comment); no bound when None
/// (SQLite: a file, no network; its busy timeout bounds its waits).
pub(crate) async fn within<T>(
    within: Option<Duration>,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    match within {
        None => fut.await,
        Some(d) => tokio::time::timeout(d, fut)
            .await
            .unwrap_or_else(|_| Err(unanswered(d))),
    }
}

/// The start of `unanswered`'s message.
pub(crate) const UNANSWERED: &str = "the database gave no answer within";

/// The pool as an executor whose every statement is bounded: what `Store::reader` hands
/// out, so that every read written as `sqlx::query(…).fetch_…(store.reader())` is bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounded<'p> {
    pub(crate) pool: &'p AnyPool,
    pub(crate) within: Option<Duration>,
}

impl<'p> Executor<'p> for Bounded<'p> {
    type Database = Any;

    /// The whole answer is read within the bound, then handed on (the store reads every
    /// answer whole anyway; a caller that streams through here holds the whole answer).
    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_core::stream::BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let all = self.pool.fetch_many(query).collect::<Vec<_>>();
        let answer = within(self.within, all.map(Ok));
        answer
            .map(|got| {
                let items = got.unwrap_or_else(|e| vec![Err(e)]);
                futures_util::stream::iter(items)
            })
            .flatten_stream()
            .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_core::future::BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        within(self.within, self.pool.fetch_optional(query)).boxed()
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [AnyTypeInfo],
    ) -> futures_core::future::BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>>
    where
        'p: 'e,
    {
        within(self.within, self.pool.prepare_with(sql, parameters)).boxed()
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> futures_core::future::BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'p: 'e,
    {
        within(self.within, self.pool.describe(sql)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_that_did_not_answer_is_a_503_that_says_so() {
        use lobster_core::Error;
        let e = crate::db_err(unanswered(Duration::from_millis(300)));
        assert!(matches!(e, Error::Unanswered { sent: true, .. }), "{e:?}");
        assert!(e.to_string().contains("no answer within 300 ms"), "{e}");
        // No connection to be had in time: unanswered too, but nothing was sent, so a
        // lone launch may try again.
        let e = crate::db_err(sqlx::Error::PoolTimedOut);
        assert!(matches!(e, Error::Unanswered { sent: false, .. }), "{e:?}");
        // A broken deadlock keeps its own answer.
        let e = crate::db_error(true, "deadlock");
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    }
}
