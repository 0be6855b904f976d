//! Instance queries and the mutating commands that need no placement: power, delete, rename.

use crate::auth::scope;
use crate::App;
use lobster_core::auth::{Caller, Permission};
use lobster_core::instance::{check_mutable, InstanceStatus, PowerOp};
use lobster_core::task::TaskKind;
use lobster_core::{ids, validate, Error};
use lobster_store::{InstanceRow, NewTask};
use serde_json::json;

/// A task queued against an instance.
#[derive(Debug, Clone)]
pub struct Queued {
    pub task_id: String,
    pub instance: InstanceRow,
}

impl App {
    pub async fn instance_get(&self, caller: &Caller, id: &str) -> Result<InstanceRow, Error> {
        caller.require(Permission::Read)?;
        self.store
            .instance_get(&scope(caller), id)
            .await?
            .ok_or_else(|| Error::not_found("instance", id))
    }

    pub async fn instance_list(
        &self,
        caller: &Caller,
    ) -> Result<std::sync::Arc<Vec<InstanceRow>>, Error> {
        caller.require(Permission::Read)?;
        self.store.instance_list(&scope(caller)).await
    }

    pub async fn instance_power(
        &self,
        caller: &Caller,
        id: &str,
        op: PowerOp,
    ) -> Result<Queued, Error> {
        self.instance_enqueue(caller, id, TaskKind::Power(op), InstanceStatus::Rented)
            .await
    }

    pub async fn instance_delete(&self, caller: &Caller, id: &str) -> Result<Queued, Error> {
        self.instance_enqueue(
            caller,
            id,
            TaskKind::DeleteInstance,
            InstanceStatus::Terminating,
        )
        .await
    }

    /// Claims a settled instance for a new task (409 when another operation holds it) and
    /// queues the task, in one transaction.
    async fn instance_enqueue(
        &self,
        caller: &Caller,
        id: &str,
        kind: TaskKind,
        new_status: InstanceStatus,
    ) -> Result<Queued, Error> {
        caller.require(Permission::InstanceWrite)?;
        let sc = scope(caller);
        let now = self.now();
        let task_id = ids::new_task_id();
        let mut tx = self.store.begin().await?;
        if !tx
            .instance_claim(&sc, id, &task_id, new_status.as_str(), now)
            .await?
        {
            let row = tx
                .instance_get(&sc, id)
                .await?
                .ok_or_else(|| Error::not_found("instance", id))?;
            let status = InstanceStatus::parse(&row.status).unwrap_or(InstanceStatus::Failed);
            let deleting = kind == TaskKind::DeleteInstance;
            check_mutable(status, row.active_task_id.is_some(), id, deleting)?;
            return Err(Error::operation_in_progress());
        }
        let inst = tx
            .instance_get(&sc, id)
            .await?
            .ok_or_else(|| Error::not_found("instance", id))?;
        let params = json!({
            "vm_uuid": id, "host_id": inst.host_id, "account_id": inst.account_id, "ip_address": inst.ip_address,
        });
        tx.task_insert(&NewTask {
            id: task_id.clone(),
            account_id: inst.account_id.clone(),
            team_id: inst.team_id.clone(),
            instance_id: Some(id.to_string()),
            operation: kind.operation().into(),
            params: params.to_string(),
            message: "Queued".into(),
            max_attempts: self.engine.config().max_attempts,
            now,
        })
        .await?;
        tx.commit().await?;
        self.wake_workers();
        Ok(Queued {
            task_id,
            instance: inst,
        })
    }

    /// Changes the display name (3-64 letters, digits, `-`, `_`; unique among the account's
    /// live instances). No task: the hostname follows on the next power cycle.
    pub async fn instance_rename(
        &self,
        caller: &Caller,
        id: &str,
        name: &str,
    ) -> Result<InstanceRow, Error> {
        caller.require(Permission::InstanceWrite)?;
        if !validate::display_name(name) {
            return Err(Error::bad_request(
                "invalid_name",
                "Name must be 3-64 characters, alphanumeric with hyphens/underscores only",
            ));
        }
        let sc = scope(caller);
        let mut tx = self.store.begin().await?;
        let mut inst = tx
            .instance_get(&sc, id)
            .await?
            .ok_or_else(|| Error::not_found("instance", id))?;
        if inst.status == InstanceStatus::Terminating.as_str() {
            return Err(Error::bad_request(
                "invalid_state",
                "VM is not in 'rented' status: terminating",
            ));
        }
        if tx.instance_name_taken(&inst.account_id, name, id).await? {
            return Err(Error::conflict(
                "resource_conflict",
                format!("An instance named {name} already exists in this account"),
            ));
        }
        tx.instance_rename(id, name, self.now()).await?;
        tx.commit().await?;
        inst.name = name.to_string();
        Ok(inst)
    }
}
