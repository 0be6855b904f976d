//! Backup, restore and backup deletion steps. The backup's volume id and storage travel in
//! the task's params; the backups row records where each backup stands.

use crate::{Engine, Outcome};
use lobster_core::fleet::Host;
use lobster_core::task::TaskKind;
use lobster_core::Error;
use lobster_store::{InstanceRow, TaskRow, Tx};

/// `(volid, storage)` from the task's params.
fn target(task: &TaskRow) -> Option<(String, String)> {
    let p: serde_json::Value = serde_json::from_str(&task.params).ok()?;
    Some((
        p.get("volid")?.as_str()?.to_string(),
        p.get("storage")?.as_str()?.to_string(),
    ))
}

impl Engine {
    pub(crate) async fn backup(&self, task: &TaskRow, host: &Host, inst: &InstanceRow) -> Outcome {
        let Some((volid, storage)) = target(task) else {
            return Outcome::Fail("task names no backup".into());
        };
        match self.driver.backup(host, &inst.id, &storage, &volid).await {
            Ok(size) => match self.store.backup_size_set(&volid, size as i64).await {
                Ok(()) => Outcome::Done("Backup completed".into()),
                Err(e) => Outcome::Retry(format!("database: {e}")),
            },
            Err(e) => self.on_driver_error(task, "backup", e),
        }
    }

    pub(crate) async fn restore(&self, task: &TaskRow, host: &Host, inst: &InstanceRow) -> Outcome {
        let Some((volid, storage)) = target(task) else {
            return Outcome::Fail("task names no backup".into());
        };
        match self.driver.restore(host, &inst.id, &storage, &volid).await {
            Ok(()) => Outcome::Done("Restore completed".into()),
            Err(e) => self.on_driver_error(task, "restore", e),
        }
    }

    pub(crate) async fn delete_backup(&self, task: &TaskRow) -> Outcome {
        let Some((volid, storage)) = target(task) else {
            return Outcome::Fail("task names no backup".into());
        };
        let out = if task.attempts > task.max_attempts {
            Outcome::Fail(format!("gave up after {} attempts", task.max_attempts))
        } else {
            match self.driver.delete_backup(&storage, &volid).await {
                Ok(()) => Outcome::Done("Backup deleted".into()),
                Err(e) => self.on_driver_error(task, "delete backup", e),
            }
        };
        // Attempts whose answers were lost may have removed it after all: ask the storage,
        // so the record says what the storage holds.
        match out {
            Outcome::Fail(why) => match self.driver.backup_exists(&storage, &volid).await {
                Ok(false) => Outcome::Done("Backup deleted".into()),
                _ => Outcome::Fail(why),
            },
            other => other,
        }
    }

    /// A backup that failed leaves nothing on the storage: an attempt whose answer was lost
    /// (or whose worker died) may have written it. If the storage cannot be reached for that,
    /// the task retries the clean-up.
    pub(crate) async fn compensate_backup(&self, task: &TaskRow, why: String) -> Outcome {
        let Some((volid, storage)) = target(task) else {
            return Outcome::Fail(why);
        };
        match self.driver.delete_backup(&storage, &volid).await {
            Ok(()) => Outcome::Fail(why),
            Err(e) if task.attempts < task.max_attempts + crate::steps::CLEANUP_TRIES => {
                Outcome::Retry(format!("{why}; cleaning up: {e}"))
            }
            Err(e) => {
                tracing::error!(%volid, "leaving a backup behind after a failed backup: {e}");
                Outcome::Fail(format!(
                    "{why}; the partial backup could not be removed: {e}"
                ))
            }
        }
    }

    /// The state changes that end a backup-related task, inside its finishing transaction.
    pub(crate) async fn finish_backup(
        &self,
        tx: &mut Tx,
        (kind, ok): (TaskKind, bool),
        task: &TaskRow,
        inst: &InstanceRow,
        power_after_failure: Option<&str>,
        now: i64,
    ) -> Result<(), Error> {
        let volid = target(task).map(|t| t.0).unwrap_or_default();
        let t = task.id.as_str();
        match (kind, ok) {
            (TaskKind::Backup, ok) => {
                let to = if ok { "available" } else { "failed" };
                tx.backup_transition(&volid, "creating", to, None, now)
                    .await?;
                tx.instance_release(&inst.id, t, None, now).await?;
            }
            (TaskKind::Restore, true) => {
                tx.instance_release(&inst.id, t, Some("running"), now)
                    .await?;
            }
            (TaskKind::Restore, false) => {
                tx.instance_release(&inst.id, t, power_after_failure, now)
                    .await?;
            }
            (TaskKind::DeleteBackup, ok) => {
                let to = if ok { "deleted" } else { "available" };
                tx.backup_transition(&volid, "deleting", to, None, now)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}
