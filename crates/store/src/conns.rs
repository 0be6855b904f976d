//! The batch statements' connections on PostgreSQL, kept without sqlx's pool.
//!
//! Why: sqlx's pool pings every connection that goes back to it (a round trip, so that what
//! a cancelled query left unread is flushed first), and a batch statement is one round trip
//! of its own: the ping doubled them, and was about a twentieth of the server's time in a
//! burst of launches (docs/benchmarks.md, session 17). Here a connection goes back only
//! after its statement ran to its end; one whose statement was cancelled (the future
//! dropped) or failed on the connection itself is closed, and a new one opened when needed.

use crate::batch::Statement;
use crate::bound::Bound;
use crate::exec::{Fail, Row};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Connection};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// An idle connection is pinged before use after this long: a server restarted meanwhile is
/// found by the ping, before a statement would fail on it (as the pool's `before_acquire`).
const IDLE_PING: Duration = Duration::from_secs(1);

/// PostgreSQL ends a batch statement itself before this server would give up on it (a tenth
/// of the bound sooner). Why: a batch statement is a transaction of its own, so one given up
/// on while it waited (say for a host row another transaction held) could still commit once
/// that lock was released, after its caller had looked for its rows, found none and answered
/// its launches as failed or sent them alone. Ended by the database, it is rolled back, and
/// the caller's answer is true.
fn statement_timeout(bound: Duration) -> String {
    let ms = bound.as_millis() * 9 / 10;
    format!("SET statement_timeout = {}", ms.max(1))
}

pub(crate) struct Conns {
    url: String,
    idle: Mutex<Vec<(AnyConnection, Instant)>>,
    /// One per connection that may be open at once.
    turns: Semaphore,
    /// How long opening a connection, pinging an idle one or running a statement may take
    /// (see `bound`). Why a bound: a database that accepts the connection but never answers
    /// (a host gone silent, a full backlog behind a proxy) would otherwise hold the
    /// statement's caller, and with it every launch queued behind its group's write, for as
    /// long as TCP takes to give up, or for good.
    bound: Bound,
}

impl Conns {
    pub(crate) fn new(url: &str, n: usize, bound: Bound) -> Conns {
        Conns {
            url: url.to_string(),
            idle: Mutex::new(Vec::new()),
            turns: Semaphore::new(n),
            bound,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(AnyConnection, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection that still answers, or a new one; an error when the database
    /// does not answer within the bound.
    async fn take(&self) -> Result<AnyConnection, sqlx::Error> {
        loop {
            let Some((mut c, since)) = self.idle().pop() else {
                break;
            };
            if since.elapsed() < IDLE_PING {
                return Ok(c);
            }
            if let Ok(Ok(())) = tokio::time::timeout(self.bound.get(), c.ping()).await {
                return Ok(c);
            }
        }
        let timeout = statement_timeout(self.bound.get());
        let open = async {
            let mut c = AnyConnection::connect(&self.url).await?;
            crate::plan_once(&mut c).await?;
            sqlx::Executor::execute(&mut c, timeout.as_str()).await?;
            Ok(c)
        };
        crate::bound::within(Some(self.bound.get()), open).await
    }

    /// Runs `st` on one of the connections; the rows it returned.
    pub(crate) async fn fetch(&self, st: &Statement<'_>) -> Result<Vec<Row>, Fail> {
        Ok(self
            .fetch_all(st)
            .await?
            .into_iter()
            .map(Row::Any)
            .collect())
    }

    async fn fetch_all(&self, st: &Statement<'_>) -> Result<Vec<AnyRow>, sqlx::Error> {
        // One deadline for a turn, a connection and the statement on it. Given up on, the
        // connection goes with the dropped future (closed), never back to `idle`.
        let run = async {
            let _turn = self
                .turns
                .acquire()
                .await
                .map_err(|_| sqlx::Error::PoolClosed)?;
            let mut c = self.take().await?;
            let got = st.query().fetch_all(&mut c).await;
            // The database refused the statement: the connection read the refusal to its
            // end and is ready for the next. Anything else may have left it mid-answer.
            if matches!(got, Ok(_) | Err(sqlx::Error::Database(_))) {
                self.idle().push((c, Instant::now()));
            }
            got
        };
        crate::bound::within(Some(self.bound.get()), run).await
    }

    /// Closes the idle connections; no new statement may start.
    pub(crate) async fn close(&self) {
        self.turns.close();
        let idle = std::mem::take(&mut *self.idle());
        for (c, _) in idle {
            let _ = c.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backend;
    use sqlx::Row as _;

    fn conns() -> Option<Conns> {
        sqlx::any::install_default_drivers();
        let url = std::env::var("LOBSTER_TEST_POSTGRES_URL").ok()?;
        Some(Conns::new(&url, 2, Bound::new(true)))
    }

    async fn one(c: &Conns, sql: &str) -> Result<i64, sqlx::Error> {
        let st = Statement::new(Backend::Postgres, sql, vec![]);
        let rows = c.fetch_all(&st).await?;
        rows[0].try_get::<i64, _>(0)
    }

    fn idle(c: &Conns) -> usize {
        c.idle().len()
    }

    /// A statement that ran to its end, or that the database refused, leaves its connection
    /// for the next; one cancelled midway does not (its answer would be read by the next).
    #[tokio::test]
    async fn only_a_connection_whose_statement_ended_is_used_again() {
        let Some(c) = conns() else { return };
        assert_eq!(one(&c, "SELECT 1::bigint").await.unwrap(), 1);
        assert_eq!(idle(&c), 1);
        let refused = one(&c, "SELECT (1 / 0)::bigint").await;
        assert!(
            matches!(refused, Err(sqlx::Error::Database(_))),
            "{refused:?}"
        );
        assert_eq!(idle(&c), 1, "a refusal leaves the connection ready");
        let mut slow = Box::pin(one(&c, "SELECT pg_sleep(30)::text::bigint"));
        // Cancelled once it is under way (the other branch is never ready first).
        tokio::select! {
            biased;
            _ = &mut slow => panic!("pg_sleep(30) ended"),
            _ = tokio::task::yield_now() => {}
        }
        let started = std::time::Instant::now();
        while idle(&c) == 1 && started.elapsed() < Duration::from_secs(30) {
            tokio::select! {
                _ = &mut slow => panic!("pg_sleep(30) ended"),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        assert_eq!(idle(&c), 0, "the statement has the connection");
        assert_eq!(c.turns.available_permits(), 1);
        drop(slow);
        assert_eq!(
            c.turns.available_permits(),
            2,
            "the cancelled statement ended"
        );
        assert_eq!(idle(&c), 0, "and its connection is gone");
        assert_eq!(one(&c, "SELECT 2::bigint").await.unwrap(), 2);
        c.close().await;
    }

    /// A database that takes the connection but never answers fails the statement (after
    /// the bound) instead of holding it, and its turn, forever.
    #[tokio::test]
    async fn a_database_that_never_answers_fails_the_statement() {
        sqlx::any::install_default_drivers();
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        // Accepts every connection and holds it without a word.
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                open.push(s);
            }
        });
        let c = Conns::new(
            &format!("postgres://postgres@{addr}/test"),
            1,
            Bound::new(true),
        );
        c.bound.set(Duration::from_millis(200));
        let got = one(&c, "SELECT 1::bigint").await;
        assert!(
            got.as_ref().is_err_and(crate::bound::is_unanswered),
            "{got:?}"
        );
        assert_eq!(c.turns.available_permits(), 1, "the turn is given back");
        held.abort();
    }

    /// An idle connection the server dropped (a restart) is found before use once it has
    /// been idle a while, and replaced.
    #[tokio::test]
    async fn a_dropped_idle_connection_is_replaced() {
        let Some(c) = conns() else { return };
        let pid = one(&c, "SELECT pg_backend_pid()::bigint").await.unwrap();
        let other = Conns::new(&c.url, 1, Bound::new(true));
        let killed = one(
            &other,
            &format!("SELECT COUNT(pg_terminate_backend({pid}))::bigint"),
        )
        .await
        .unwrap();
        assert_eq!(killed, 1);
        for (_, since) in c.idle().iter_mut() {
            *since = Instant::now() - IDLE_PING;
        }
        let again = one(&c, "SELECT pg_backend_pid()::bigint").await.unwrap();
        assert_ne!(again, pid);
        c.close().await;
        other.close().await;
    }
}
