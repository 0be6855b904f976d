//! Fresh planner statistics on PostgreSQL. PostgreSQL plans a prepared statement once per
//! connection and keeps that plan until the statistics of a table it reads change; a table
//! that has grown from nearly empty since is read with a plan made for a nearly empty one.
//! Measured: the scoped lookup of one instance by id, planned at 100 instances, went through
//! the account's live-name index and read 1,750 rows per launch on the way to 10,000.
//! Autovacuum refreshes statistics, but it looks only once a minute, and a control plane
//! takes hundreds of launches a second from a fresh start. So the server analyzes its own
//! tables once their number of rows moved by half since the last analysis: no plan is then
//! made from a table's size more than that far from the size it has.
//!
//! Size, not changes: each analysis makes every connection plan again every statement that
//! reads the table, and the big batch statements cost milliseconds to plan. Counted by rows
//! changed (a fifth of them), the hosts (ten rows, updated by every launch batch) and the
//! addresses (a fixed pool, updated by every launch) were analyzed every second of a burst
//! of launches, and analyses with the plans they voided were a fifth of PostgreSQL's time
//! (docs/benchmarks.md, session 13). How values spread within a table drifts by updates as
//! well; autovacuum's own analyses, by rows changed, keep up with that.

use crate::{db_err, Backend, Store};
use lobster_core::Error;
use sqlx::Row;

/// How far a table's number of rows moves from the one its last analysis counted before its
/// statistics are stale: a fixed floor (small tables) plus a fraction of those rows.
const STALE_FLOOR: i64 = 50;
const STALE_FRACTION: f64 = 0.5;
/// The statistics target of this module's analyses (see `stats_refresh`).
pub(crate) const TARGET: i64 = 10;
/// One server analyzes at a time; the others skip the round.
const LOCK_KEY: i64 = 7_220_116;

impl Store {
    /// Analyzes this schema's tables whose statistics are stale, and names them. Nothing to do
    /// on SQLite, whose planner does not use cached plans built from statistics.
    pub async fn stats_refresh(&self) -> Result<Vec<String>, Error> {
        if self.backend() != Backend::Postgres {
            return Ok(vec![]);
        }
        // Its statements run on the transaction's own connection, past the statement bound
        // (an analysis may take a while): the round as a whole is bounded instead, so that a
        // database gone silent cannot hold the keeper for good. Dropped, the transaction is
        // rolled back (or its connection closed, see `bound`).
        let most = self.bound.get() * 10;
        match tokio::time::timeout(most, self.stats_refresh_round()).await {
            Ok(done) => done,
            Err(_) => Err(Error::Unanswered {
                message: format!(
                    "{} {} ms (statistics)",
                    crate::bound::UNANSWERED,
                    most.as_millis()
                ),
                sent: true,
            }),
        }
    }

    async fn stats_refresh_round(&self) -> Result<Vec<String>, Error> {
        let mut tx = self.begin().await?;
        let locked: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS ok")
            .bind(LOCK_KEY)
            .fetch_one(tx.conn()?)
            .await
            .and_then(|r| r.try_get("ok"))
            .map_err(db_err)?;
        if !locked {
            return Ok(vec![]);
        }
        // What these analyses are for is the size of each table and the rough spread of its
        // keys, which a sample of 3,000 rows gives (ANALYZE samples 300 rows per unit of
        // target). At the default (30,000 rows, a hundred-bucket histogram of every column,
        // parameters and messages included) they were a tenth of PostgreSQL's CPU during a
        // burst of launches from a fresh start. Autovacuum's own analyses keep the database's
        // target.
        sqlx::query(&format!("SET LOCAL default_statistics_target = {TARGET}"))
            .execute(tx.conn()?)
            .await
            .map_err(db_err)?;
        let stale = sqlx::query(
            "SELECT s.relname::text AS name FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
             WHERE s.schemaname = current_schema()
               AND abs(s.n_live_tup - GREATEST(c.reltuples, 0)) >= $1 + $2 * GREATEST(c.reltuples, 0)
             ORDER BY 1",
        )
        .bind(STALE_FLOOR)
        .bind(STALE_FRACTION)
        .fetch_all(tx.conn()?)
        .await
        .map_err(db_err)?;
        let mut names = Vec::with_capacity(stale.len());
        for r in &stale {
            let name: String = r.try_get("name").map_err(db_err)?;
            // The name comes from the catalog; quoted all the same.
            let sql = format!("ANALYZE \"{}\"", name.replace('"', "\"\""));
            sqlx::query(&sql)
                .execute(tx.conn()?)
                .await
                .map_err(db_err)?;
            names.push(name);
        }
        tx.commit().await?;
        Ok(names)
    }
}
