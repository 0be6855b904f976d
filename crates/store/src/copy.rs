//! Copying a whole deployment from one store to another (SQLite to PostgreSQL): every table,
//! read from one consistent snapshot and written in one transaction, so the target holds
//! either everything or nothing.

use crate::{db_err, get_i64, Store, Tx};
use futures_util::TryStreamExt;
use lobster_core::Error;
use sqlx::any::AnyRow;
use sqlx::{Column, Row};

/// Rows per insert of a copy: at most 30 columns a row keeps a statement's bound values far
/// below PostgreSQL's 65,535.
const COPY_ROWS: usize = 500;

/// Tables in an order that satisfies the foreign keys.
pub const TABLES: &[&str] = &[
    "accounts",
    "teams",
    "api_keys",
    "hosts",
    "ip_addresses",
    "instances",
    "tasks",
    "firewalls",
    "console_tickets",
    "backups",
    "backup_schedules",
    "ip_history",
    "rate_windows",
];

/// The source's integer columns of a table, by the declared type (SQLite's `table_info`), so
/// that even a NULL is bound with the type the target column has.
async fn int_columns(conn: &mut sqlx::AnyConnection, table: &str) -> Result<Vec<String>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT name, type FROM pragma_table_info('{table}')"
    ))
    .fetch_all(conn)
    .await
    .map_err(db_err)?;
    let mut out = Vec::new();
    for r in rows {
        let (name, ty): (String, String) = (
            r.try_get("name").map_err(db_err)?,
            r.try_get("type").map_err(db_err)?,
        );
        if ty.to_ascii_uppercase().contains("INT") {
            out.push(name);
        }
    }
    Ok(out)
}

impl Store {
    /// Rows per table, in `TABLES` order.
    pub async fn table_counts(&self) -> Result<Vec<(&'static str, i64)>, Error> {
        let mut out = Vec::new();
        for t in TABLES {
            let r = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {t}"))
                .fetch_one(self.reader())
                .await
                .map_err(db_err)?;
            out.push((*t, get_i64(&r, "n")?));
        }
        Ok(out)
    }

    /// Copies every row of this SQLite store into `target`, which must hold no accounts,
    /// instances or tasks yet.
    /// Returns the rows copied per table.
    pub async fn copy_to(&self, target: &Store) -> Result<Vec<(&'static str, u64)>, Error> {
        let occupied = target.table_counts().await?;
        if occupied
            .iter()
            .any(|(t, n)| matches!(*t, "accounts" | "instances" | "tasks") && *n > 0)
        {
            return Err(Error::conflict(
                "target_not_empty",
                "the target database already holds accounts, instances or tasks",
            ));
        }
        let mut src = self.read_pool().begin().await.map_err(db_err)?;
        let mut dst = target.begin().await?;
        // Hosts and addresses may exist from a server that started on the target; the source's win.
        for t in ["ip_addresses", "hosts"] {
            sqlx::query(&format!("DELETE FROM {t}"))
                .execute(dst.conn()?)
                .await
                .map_err(db_err)?;
        }
        let mut copied = Vec::new();
        for t in TABLES {
            let ints = int_columns(&mut src, t).await?;
            // Read as a stream and written in multi-row statements: a long-lived deployment's
            // tasks and address history run to millions of rows, which neither fit in memory
            // at once nor copy in a sensible time one round trip each.
            let select = format!("SELECT * FROM {t}");
            let mut rows = sqlx::query(&select).fetch(&mut *src);
            let mut batch = Vec::new();
            let mut n = 0u64;
            while let Some(row) = rows.try_next().await.map_err(db_err)? {
                batch.push(row);
                if batch.len() == COPY_ROWS {
                    n += insert_rows(&mut dst, t, &ints, &batch).await?;
                    batch.clear();
                }
            }
            n += insert_rows(&mut dst, t, &ints, &batch).await?;
            copied.push((*t, n));
        }
        // Servers already running on the target forget what they had read of it.
        dst.written.push(crate::cache::Token::All);
        dst.commit().await?;
        Ok(copied)
    }
}

/// Writes `rows` of table `t` (all read by one `SELECT *`, so with the same columns) in one
/// statement; the number written.
async fn insert_rows(tx: &mut Tx, t: &str, ints: &[String], rows: &[AnyRow]) -> Result<u64, Error> {
    let Some(first) = rows.first() else {
        return Ok(0);
    };
    let cols: Vec<&str> = first.columns().iter().map(|c| c.name()).collect();
    let sql = format!(
        "INSERT INTO {t} ({}) VALUES {}",
        cols.join(", "),
        crate::batch::values_list(1, rows.len(), cols.len(), &vec![""; cols.len()])
    );
    let mut q = sqlx::query(&sql);
    for row in rows {
        for (i, name) in cols.iter().enumerate() {
            q = if ints.iter().any(|c| c == name) {
                q.bind(row.try_get::<Option<i64>, _>(i).map_err(db_err)?)
            } else {
                q.bind(row.try_get::<Option<String>, _>(i).map_err(db_err)?)
            };
        }
    }
    q.execute(tx.conn()?).await.map_err(db_err)?;
    Ok(rows.len() as u64)
}
