//! Backups. A row exists from the moment a backup is requested (`creating`), so listings can
//! show work in progress; it becomes `available` when the task finishes, `deleting` while a
//! delete task runs, and `deleted` (or `failed`) at the end — rows are kept for history.

use crate::{db_err, get_i64, get_opt_str, get_str, Backend, Scope, Store, Tx};
use lobster_core::Error;

#[derive(Debug, Clone, PartialEq)]
pub struct BackupRow {
    pub volid: String,
    pub account_id: String,
    pub instance_id: String,
    pub instance_name: String,
    pub storage: String,
    pub size_bytes: i64,
    pub format: String,
    pub notes: Option<String>,
    pub status: String,
    pub task_id: Option<String>,
    /// `manual` or `schedule` (only scheduled backups are pruned by retention).
    pub origin: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLS: &str =
    "b.volid, b.account_id, b.instance_id, b.instance_name, b.storage, b.size_bytes, b.format,
    b.notes, b.status, b.task_id, b.origin, b.created_at, b.updated_at";
/// Team scoping follows the instance's current team; the instance row outlives deletion.
const FROM: &str = "FROM backups b JOIN instances i ON i.id = b.instance_id";

fn row(r: &impl crate::exec::Named) -> Result<BackupRow, Error> {
    Ok(BackupRow {
        volid: get_str(r, "volid")?,
        account_id: get_str(r, "account_id")?,
        instance_id: get_str(r, "instance_id")?,
        instance_name: get_str(r, "instance_name")?,
        storage: get_str(r, "storage")?,
        size_bytes: get_i64(r, "size_bytes")?,
        format: get_str(r, "format")?,
        notes: get_opt_str(r, "notes")?,
        status: get_str(r, "status")?,
        task_id: get_opt_str(r, "task_id")?,
        origin: get_str(r, "origin")?,
        created_at: get_i64(r, "created_at")?,
        updated_at: get_i64(r, "updated_at")?,
    })
}

fn scoped(scope: &Scope, first: usize) -> (String, Vec<&str>) {
    let (c, b) = scope.clause(first);
    (
        c.replace("account_id", "b.account_id")
            .replace("team_id", "i.team_id"),
        b,
    )
}

impl Store {
    /// Backups the scope may see, newest first; `instance` narrows to one VM, `statuses` to
    /// some states.
    pub async fn backup_list(
        &self,
        scope: &Scope,
        instance: Option<&str>,
        statuses: &[&str],
    ) -> Result<Vec<BackupRow>, Error> {
        let (cond, binds) = scoped(scope, 1);
        let mut sql = format!("SELECT {COLS} {FROM} WHERE {cond}");
        let mut n = binds.len();
        if instance.is_some() {
            n += 1;
            sql.push_str(&format!(" AND b.instance_id = ${n}"));
        }
        let list: Vec<String> = statuses.iter().map(|s| format!("'{s}'")).collect();
        if !list.is_empty() {
            sql.push_str(&format!(" AND b.status IN ({})", list.join(", ")));
        }
        sql.push_str(" ORDER BY b.created_at DESC, b.volid DESC");
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        if let Some(i) = instance {
            q = q.bind(i);
        }
        let rows = q.fetch_all(self.reader()).await.map_err(db_err)?;
        rows.iter().map(row).collect()
    }

    pub async fn backup_get(&self, scope: &Scope, volid: &str) -> Result<Option<BackupRow>, Error> {
        let (cond, binds) = scoped(scope, 2);
        let sql = format!("SELECT {COLS} {FROM} WHERE b.volid = $1 AND {cond}");
        let mut q = sqlx::query(&sql).bind(volid);
        for b in binds {
            q = q.bind(b);
        }
        let r = q.fetch_optional(self.reader()).await.map_err(db_err)?;
        r.as_ref().map(row).transpose()
    }

    pub async fn backup_by_volid(&self, volid: &str) -> Result<Option<BackupRow>, Error> {
        let sql = format!("SELECT {COLS} {FROM} WHERE b.volid = $1");
        let r = sqlx::query(&sql)
            .bind(volid)
            .fetch_optional(self.reader())
            .await
            .map_err(db_err)?;
        r.as_ref().map(row).transpose()
    }

    /// Every backup row: for invariant checks.
    pub async fn backup_all(&self) -> Result<Vec<BackupRow>, Error> {
        let sql = format!("SELECT {COLS} {FROM} ORDER BY b.created_at");
        let rows = sqlx::query(&sql)
            .fetch_all(self.reader())
            .await
            .map_err(db_err)?;
        rows.iter().map(row).collect()
    }

    /// Records the size the driver reported, before the task marks the backup available.
    pub async fn backup_size_set(&self, volid: &str, size: i64) -> Result<(), Error> {
        self.q("UPDATE backups SET size_bytes = $1 WHERE volid = $2")
            .bind(size)
            .bind(volid)
            .execute()
            .await?;
        Ok(())
    }
}

impl Tx {
    pub async fn backup_insert(&mut self, b: &BackupRow) -> Result<(), Error> {
        self.q(
            "INSERT INTO backups (volid, account_id, instance_id, instance_name, storage, size_bytes, format, notes,
               status, task_id, origin, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
            .bind(&b.volid)
            .bind(&b.account_id)
            .bind(&b.instance_id)
            .bind(&b.instance_name)
            .bind(&b.storage)
            .bind(b.size_bytes)
            .bind(&b.format)
            .bind(&b.notes)
            .bind(&b.status)
            .bind(&b.task_id)
            .bind(&b.origin)
            .bind(b.created_at)
            .bind(b.updated_at)
            .execute()
            .await?;
        Ok(())
    }

    /// True when the backup is `available`, and then held so to commit: on PostgreSQL a
    /// delete's transition of it waits for this transaction, and then sees the restore it
    /// queued (`backup_restores_queued`). (SQLite runs one writer at a time.)
    pub async fn backup_hold_available(&mut self, volid: &str) -> Result<bool, Error> {
        let lock = match self.backend {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        };
        let sql =
            format!("SELECT 1 AS x FROM backups WHERE volid = $1 AND status = 'available'{lock}");
        Ok(self.q(&sql).bind(volid).fetch_optional().await?.is_some())
    }

    /// True when a restore of the backup is queued or running (its task not yet finished).
    pub async fn backup_restores_queued(&mut self, volid: &str) -> Result<bool, Error> {
        let rows = self
            .q("SELECT params FROM tasks WHERE operation = 'restore_backup'
                 AND status IN ('PENDING', 'PROCESSING')")
            .fetch_all()
            .await?;
        for r in &rows {
            let params: serde_json::Value =
                serde_json::from_str(&get_str(r, "params")?).unwrap_or_default();
            if params["volid"].as_str() == Some(volid) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Moves a backup from one state to another (with the task now responsible for it);
    /// false when it was not in `from`.
    pub async fn backup_transition(
        &mut self,
        volid: &str,
        from: &str,
        to: &str,
        task_id: Option<&str>,
        now: i64,
    ) -> Result<bool, Error> {
        let r = self.q("UPDATE backups SET status = $1, task_id = $2, updated_at = $3 WHERE volid = $4 AND status = $5")
            .bind(to)
            .bind(task_id)
            .bind(now)
            .bind(volid)
            .bind(from)
            .execute()
            .await?;
        Ok(r == 1)
    }

    pub async fn backup_notes_set(
        &mut self,
        volid: &str,
        notes: &str,
        now: i64,
    ) -> Result<(), Error> {
        self.q("UPDATE backups SET notes = $1, updated_at = $2 WHERE volid = $3")
            .bind(notes)
            .bind(now)
            .bind(volid)
            .execute()
            .await?;
        Ok(())
    }
}
