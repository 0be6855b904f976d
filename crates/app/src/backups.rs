//! Backups: take, list, restore (to the same or another instance), delete, annotate, and the
//! account's storage bill. Backup and restore hold their instance like any mutating
//! operation, so at most one runs per instance.

use crate::auth::scope;
use crate::App;
use lobster_core::auth::{Caller, Permission};
use lobster_core::clock::Timestamp;
use lobster_core::instance::{check_mutable, InstanceStatus};
use lobster_core::task::TaskKind;
use lobster_core::{ids, Error};
use lobster_store::{BackupRow, InstanceRow, NewTask, Tx};
use serde_json::json;

pub const GIB: i64 = 1024 * 1024 * 1024;

/// A backup or restore that was queued.
#[derive(Debug, Clone)]
pub struct BackupQueued {
    pub task_id: String,
    pub instance: InstanceRow,
    pub volid: String,
    /// The name a restore asked for its instance (made with the prefix if one was asked
    /// for); `None` for a backup, and for a restore that keeps the instance's name.
    pub new_name: Option<String>,
}

/// How a restore names the instance it restores onto. The default keeps its name.
#[derive(Debug, Clone, Default)]
pub struct RestoreName {
    /// The name asked for; empty is none.
    pub new_name: Option<String>,
    /// Prefix the name with `RESTORE-<yyyymmdd>-`. Without a `new_name` the base is
    /// `source_name`, else the name of the instance the backup was taken from.
    pub prefix: bool,
    /// The base for a prefixed name without a `new_name`; empty is none.
    pub source_name: Option<String>,
}

/// A prefixed restore name is cut to this many characters.
const RESTORE_NAME_CUT: usize = 64;

/// `RESTORE-<yyyymmdd>-<base>` for a restore at `now`, at most 64 characters: cut on a
/// character (a byte count could split one).
fn restore_prefixed(now: i64, base: &str) -> String {
    let date = Timestamp(now).rfc3339()[..10].replace('-', "");
    format!("RESTORE-{date}-{base}")
        .chars()
        .take(RESTORE_NAME_CUT)
        .collect()
}

/// An instance's backups and what is running on it now.
#[derive(Debug, Clone)]
pub struct InstanceBackups {
    pub instance: InstanceRow,
    pub storage: String,
    pub backups: Vec<BackupRow>,
    pub backup_in_progress: Option<BackupRow>,
    pub restore_in_progress: Option<lobster_store::TaskRow>,
}

/// What an account stores and pays for.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageUsage {
    pub total_bytes: i64,
    pub free_tier_bytes: i64,
    pub billable_bytes: i64,
    pub backup_count: i64,
    pub monthly_cost_cents: i64,
}

/// Where a region's backups are kept.
pub fn storage_for(region: &str) -> String {
    format!("{region}-pbs")
}

impl App {
    /// Claims the instance for a backup or restore; a busy instance is 409 `task_in_progress`
    /// naming what runs.
    async fn claim_for_backup(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        id: &str,
        task_id: &str,
        what: &str,
    ) -> Result<InstanceRow, Error> {
        let sc = scope(caller);
        if tx
            .instance_claim(&sc, id, task_id, "rented", self.now())
            .await?
        {
            return tx
                .instance_get(&sc, id)
                .await?
                .ok_or_else(|| Error::not_found("instance", id));
        }
        let row = tx
            .instance_get(&sc, id)
            .await?
            .ok_or_else(|| Error::not_found("instance", id))?;
        let status = InstanceStatus::parse(&row.status).unwrap_or(InstanceStatus::Failed);
        if let Err(e) = check_mutable(status, row.active_task_id.is_some(), id, false) {
            if !matches!(e, Error::Conflict { .. }) {
                return Err(e);
            }
        }
        let running = match &row.active_task_id {
            Some(t) => tx.task_by_id(t).await?.map(|t| t.operation),
            None => None,
        }
        .unwrap_or_default();
        let busy = match running.as_str() {
            "create_backup" => "backup is already in progress",
            "restore_backup" => "restore is already in progress",
            _ => "another operation is in progress",
        };
        Err(Error::conflict(
            "task_in_progress",
            format!("Cannot start {what}: {busy} for this instance"),
        ))
    }

    fn backup_task(
        &self,
        kind: TaskKind,
        inst: &InstanceRow,
        task_id: &str,
        volid: &str,
        storage: &str,
        now: i64,
    ) -> NewTask {
        NewTask {
            id: task_id.into(),
            account_id: inst.account_id.clone(),
            team_id: inst.team_id.clone(),
            instance_id: Some(inst.id.clone()),
            operation: kind.operation().into(),
            params: json!({
                "vm_uuid": inst.id, "host_id": inst.host_id, "account_id": inst.account_id,
                "ip_address": inst.ip_address, "volid": volid, "storage": storage,
            })
            .to_string(),
            message: "Queued".into(),
            max_attempts: self.engine.config().max_attempts,
            now,
        }
    }

    /// The size of the disk a restore of `backup` writes, in GB: its source instance's disk
    /// (a restore replaces the target's disk with the backup's whole disk, not with the data
    /// the backup holds, which is less); the data, rounded up, if the source is unknown.
    async fn backup_disk_gb(&self, backup: &BackupRow) -> Result<i64, Error> {
        let source = self.store.instances_by_ids(&[&backup.instance_id]).await?;
        Ok(match source.first() {
            Some(i) => i.resources.disk_gb,
            None => (backup.size_bytes + GIB - 1) / GIB,
        })
    }

    pub async fn backup_create(&self, caller: &Caller, id: &str) -> Result<BackupQueued, Error> {
        self.backup_take(caller, id, "manual").await
    }

    pub(crate) async fn backup_take(
        &self,
        caller: &Caller,
        id: &str,
        origin: &str,
    ) -> Result<BackupQueued, Error> {
        let mut tx = self.store.begin().await?;
        let queued = self.backup_take_in(&mut tx, caller, id, origin).await?;
        tx.commit().await?;
        self.wake_workers();
        Ok(queued)
    }

    /// `backup_take` inside the caller's transaction (which the caller commits, then wakes
    /// the workers).
    pub(crate) async fn backup_take_in(
        &self,
        tx: &mut lobster_store::Tx,
        caller: &Caller,
        id: &str,
        origin: &str,
    ) -> Result<BackupQueued, Error> {
        caller.require(Permission::InstanceWrite)?;
        let now = self.now();
        let task_id = ids::new_task_id();
        let inst = self
            .claim_for_backup(tx, caller, id, &task_id, "backup")
            .await?;
        let storage = storage_for(&inst.region);
        let volid = format!(
            "{storage}:backup/vm/{}/{}",
            inst.id,
            Timestamp(now).rfc3339_millis()
        );
        tx.backup_insert(&BackupRow {
            volid: volid.clone(),
            account_id: inst.account_id.clone(),
            instance_id: inst.id.clone(),
            instance_name: inst.name.clone(),
            storage: storage.clone(),
            size_bytes: 0,
            format: "pbs-vm".into(),
            notes: None,
            status: "creating".into(),
            task_id: Some(task_id.clone()),
            origin: origin.into(),
            created_at: now,
            updated_at: now,
        })
        .await?;
        tx.task_insert(&self.backup_task(TaskKind::Backup, &inst, &task_id, &volid, &storage, now))
            .await?;
        Ok(BackupQueued {
            task_id,
            instance: inst,
            volid,
            new_name: None,
        })
    }

    pub async fn backup_list_instance(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<InstanceBackups, Error> {
        let inst = self.instance_get(caller, id).await?;
        let sc = scope(caller);
        let all = self
            .store
            .backup_list(&sc, Some(&inst.id), &["creating", "available", "deleting"])
            .await?;
        let (creating, backups): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|b| b.status == "creating");
        let restore_in_progress = match &inst.active_task_id {
            Some(t) => self
                .store
                .task_by_id(t)
                .await?
                .filter(|t| t.operation == "restore_backup"),
            None => None,
        };
        Ok(InstanceBackups {
            storage: storage_for(&inst.region),
            instance: inst,
            backups,
            backup_in_progress: creating.into_iter().next(),
            restore_in_progress,
        })
    }

    /// Every backup of the account (of deleted instances too), newest first.
    pub async fn backup_list(&self, caller: &Caller) -> Result<Vec<BackupRow>, Error> {
        caller.require(Permission::Read)?;
        self.store
            .backup_list(&scope(caller), None, &["available", "deleting"])
            .await
    }

    async fn backup_find(&self, caller: &Caller, volid: &str) -> Result<BackupRow, Error> {
        self.store
            .backup_get(&scope(caller), volid)
            .await?
            .filter(|b| matches!(b.status.as_str(), "available" | "deleting" | "creating"))
            .ok_or_else(|| Error::not_found("backup", volid))
    }

    /// Restores `volid` onto instance `id` (its own backup or another of the account's that
    /// fits its disk), optionally renaming it (see [`RestoreName`]).
    pub async fn backup_restore(
        &self,
        caller: &Caller,
        id: &str,
        volid: &str,
        name: RestoreName,
    ) -> Result<BackupQueued, Error> {
        caller.require(Permission::InstanceWrite)?;
        let backup = self.backup_find(caller, volid).await?;
        let now = self.now();
        let non_empty = |n: Option<String>| n.filter(|n| !n.is_empty());
        let mut new_name = non_empty(name.new_name);
        if name.prefix {
            let base = new_name
                .or_else(|| non_empty(name.source_name))
                .unwrap_or_else(|| backup.instance_name.clone());
            new_name = Some(restore_prefixed(now, &base));
        }
        if backup.status != "available" {
            return Err(Error::conflict(
                "task_in_progress",
                format!("Backup {volid} is not available ({})", backup.status),
            ));
        }
        let needs_gb = self.backup_disk_gb(&backup).await?;
        let task_id = ids::new_task_id();
        let mut tx = self.store.begin().await?;
        // Checked again, and held, in the transaction that queues the restore: a delete of
        // the backup (a tenant's, or retention's pruning) either came first or now sees the
        // restore and is refused.
        if !tx.backup_hold_available(volid).await? {
            return Err(Error::conflict(
                "task_in_progress",
                format!("Backup {volid} is not available"),
            ));
        }
        let inst = self
            .claim_for_backup(&mut tx, caller, id, &task_id, "restore")
            .await?;
        if inst.resources.disk_gb < needs_gb {
            return Err(Error::bad_request(
                "insufficient_disk",
                format!(
                    "Target disk ({} GB) is smaller than the backup's disk ({needs_gb} GB)",
                    inst.resources.disk_gb
                ),
            ));
        }
        if let Some(name) = new_name.clone().filter(|n| *n != inst.name) {
            if !lobster_core::validate::display_name(&name) {
                return Err(Error::bad_request(
                    "invalid_name",
                    "Name must be 3-64 characters, alphanumeric with hyphens/underscores only",
                ));
            }
            if tx
                .instance_name_taken(&inst.account_id, &name, &inst.id)
                .await?
            {
                return Err(Error::conflict(
                    "resource_conflict",
                    format!("An instance named {name} already exists in this account"),
                ));
            }
            tx.instance_rename(&inst.id, &name, now).await?;
        }
        tx.task_insert(&self.backup_task(
            TaskKind::Restore,
            &inst,
            &task_id,
            volid,
            &backup.storage,
            now,
        ))
        .await?;
        tx.commit().await?;
        self.wake_workers();
        Ok(BackupQueued {
            task_id,
            instance: inst,
            volid: volid.into(),
            new_name,
        })
    }

    pub async fn backup_delete(
        &self,
        caller: &Caller,
        volid: &str,
    ) -> Result<(String, BackupRow), Error> {
        caller.require(Permission::InstanceWrite)?;
        let backup = self.backup_find(caller, volid).await?;
        let now = self.now();
        let task_id = ids::new_task_id();
        // Read before the transaction, not inside it on a second connection (a backup's
        // instance does not change): sixteen deletes at once each holding a connection and
        // waiting for another would hold the pool until they all gave up.
        let inst = self
            .store
            .instance_by_id(&backup.instance_id)
            .await?
            .ok_or_else(|| Error::not_found("backup", volid))?;
        let mut tx = self.store.begin().await?;
        if !tx
            .backup_transition(volid, "available", "deleting", Some(&task_id), now)
            .await?
        {
            let why = if backup.status == "creating" {
                "is still being created"
            } else {
                "is already being deleted"
            };
            return Err(Error::conflict(
                "task_in_progress",
                format!("Backup {volid} {why}"),
            ));
        }
        // After the transition, which waits for a restore queueing it (PostgreSQL), so that
        // restore is seen here.
        if tx.backup_restores_queued(volid).await? {
            return Err(Error::conflict(
                "task_in_progress",
                format!("Backup {volid} is being restored"),
            ));
        }
        tx.task_insert(&self.backup_task(
            TaskKind::DeleteBackup,
            &inst,
            &task_id,
            volid,
            &backup.storage,
            now,
        ))
        .await?;
        tx.commit().await?;
        self.wake_workers();
        Ok((task_id, backup))
    }

    pub async fn backup_notes_set(
        &self,
        caller: &Caller,
        volid: &str,
        notes: &str,
    ) -> Result<(), Error> {
        caller.require(Permission::InstanceWrite)?;
        if notes.chars().count() > 1024 {
            return Err(Error::bad_request(
                "invalid_notes",
                "Notes are limited to 1024 characters",
            ));
        }
        self.backup_find(caller, volid).await?;
        let mut tx = self.store.begin().await?;
        tx.backup_notes_set(volid, notes, self.now()).await?;
        tx.commit().await
    }

    /// Stored bytes, the free tier, the billable rest and its monthly price (rounded up to
    /// the cent).
    pub async fn backup_storage(&self, caller: &Caller) -> Result<StorageUsage, Error> {
        let list = self.backup_list(caller).await?;
        let b = &self.fleet.billing;
        let total: i64 = list.iter().map(|b| b.size_bytes).sum();
        let free = b.backup_free_gb * GIB;
        let billable = (total - free).max(0);
        let cost = (billable as u128 * b.backup_cents_per_gb_month.max(0) as u128)
            .div_ceil(GIB as u128) as i64;
        Ok(StorageUsage {
            total_bytes: total,
            free_tier_bytes: free,
            billable_bytes: billable,
            backup_count: list.len() as i64,
            monthly_cost_cents: cost,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-15T10:30:00Z.
    const NOW: i64 = 1_705_314_600_000;

    #[test]
    fn a_restore_prefix_is_the_date_and_the_base() {
        assert_eq!(restore_prefixed(NOW, "web"), "RESTORE-20240115-web");
    }

    #[test]
    fn a_long_prefixed_name_is_cut_at_64_characters() {
        let name = restore_prefixed(NOW, &"a".repeat(100));
        assert_eq!(name.len(), 64);
        assert!(name.starts_with("RESTORE-20240115-aaa"));
    }

    /// "RESTORE-YYYYMMDD-" is 17 bytes and "€" 3: a cut at byte 64 would fall inside the
    /// 16th "€" and panic.
    #[test]
    fn a_wide_character_name_is_cut_on_a_character_not_a_byte() {
        let name = restore_prefixed(NOW, &"€".repeat(100));
        assert_eq!(name.chars().count(), 64);
        assert_eq!(name, format!("RESTORE-20240115-{}", "€".repeat(64 - 17)));
    }
}
