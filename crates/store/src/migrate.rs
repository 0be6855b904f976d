//! Schema migrations, numbered and applied once each, inside a transaction. The SQL is the
//! subset SQLite and PostgreSQL share (BIGINT, TEXT, partial indexes, ON CONFLICT).

use crate::{db_err, Backend, Store};
use lobster_core::Error;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_firewall.sql")),
    (3, include_str!("../migrations/0003_ip_interfaces.sql")),
    (4, include_str!("../migrations/0004_console.sql")),
    (5, include_str!("../migrations/0005_backups.sql")),
    (6, include_str!("../migrations/0006_ip_history.sql")),
    (7, include_str!("../migrations/0007_task_claim.sql")),
    (
        8,
        include_str!("../migrations/0008_task_partial_indexes.sql"),
    ),
    (
        9,
        include_str!("../migrations/0009_live_name_by_deleted_at.sql"),
    ),
    (
        10,
        include_str!("../migrations/0010_instances_without_account_key.sql"),
    ),
    (
        11,
        include_str!("../migrations/0011_schedule_days_as_given.sql"),
    ),
    (12, include_str!("../migrations/0012_rate_windows.sql")),
    (13, BACKFILL_HELD_ADDRESSES),
    (
        14,
        include_str!("../migrations/0014_primary_history_from_instances.sql"),
    ),
];

/// Migration 13, also run by its test on rows put back as before migrations 3 and 6.
pub(crate) const BACKFILL_HELD_ADDRESSES: &str =
    include_str!("../migrations/0013_backfill_held_addresses.sql");

/// PostgreSQL's own additions to a migration, run after it in its transaction.
const POSTGRES_ONLY: &[(i64, &str)] = &[
    (
        9,
        // Room on each page for a HOT update of the rows inserted there (a create's end and a
        // command's claim rewrite the instance soon after its insert, on the same page).
        "ALTER TABLE instances SET (fillfactor = 80)",
    ),
    (
        10,
        // Measured (docs/benchmarks.md, session 17): +10 % launches a second.
        "ALTER TABLE instances DROP CONSTRAINT IF EXISTS instances_account_id_fkey",
    ),
];

/// Whether `stmt` holds no SQL (a migration of comments only: one for the other backend).
pub(crate) fn only_comments(stmt: &str) -> bool {
    stmt.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with("--"))
}

pub(crate) async fn run(store: &Store) -> Result<(), Error> {
    for (version, sql) in MIGRATIONS {
        let mut tx = store.begin().await?;
        // Several processes may start on one fresh database: one migrates, the others wait.
        // (SQLite's BEGIN IMMEDIATE already serialises them.)
        if store.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7220115)")
                .execute(tx.conn()?)
                .await
                .map_err(db_err)?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(tx.conn()?)
        .await
        .map_err(db_err)?;
        let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
            .bind(*version)
            .fetch_optional(tx.conn()?)
            .await
            .map_err(db_err)?;
        if done.is_some() {
            continue;
        }
        let own = POSTGRES_ONLY
            .iter()
            .filter(|(v, _)| *v == *version && store.backend() == Backend::Postgres)
            .map(|(_, sql)| *sql);
        let stmts = sql.split(';').chain(own).map(str::trim);
        for stmt in stmts.filter(|s| !only_comments(s)) {
            sqlx::query(stmt)
                .execute(tx.conn()?)
                .await
                .map_err(db_err)?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(*version)
            .bind(0i64)
            .execute(tx.conn()?)
            .await
            .map_err(db_err)?;
        tx.commit().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_migration_of_comments_only_runs_nothing() {
        assert!(super::only_comments("-- PostgreSQL only\n  -- why\n\n"));
        assert!(!super::only_comments("-- why\nDROP INDEX x"));
        let own = include_str!("../migrations/0010_instances_without_account_key.sql");
        assert!(own.split(';').all(super::only_comments));
    }
}
