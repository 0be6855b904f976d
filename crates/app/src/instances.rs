//! Instance queries and the mutating commands that need no placement: power, delete, rename.

use crate::auth::scope;
use crate::{App, Turn};
use lobster_core::auth::{Caller, Permission};
use lobster_core::instance::{check_mutable, InstanceStatus, PowerOp};
use lobster_core::task::TaskKind;
use lobster_core::{ids, validate, Error};
use lobster_store::{instance_task_params, Backend, Claim, ClaimFor, InstanceRow, NewTask, Scope};

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
    /// queues the task, in one transaction: the commands that arrive while one is written
    /// share the next (`enqueue_batch`).
    async fn instance_enqueue(
        &self,
        caller: &Caller,
        id: &str,
        kind: TaskKind,
        new_status: InstanceStatus,
    ) -> Result<Queued, Error> {
        caller.require(Permission::InstanceWrite)?;
        let item = Enqueue {
            scope: scope(caller),
            id: id.to_string(),
            kind,
            new_status,
            task_id: ids::new_task_id(),
        };
        let write = |batch: Vec<Enqueue>| enqueue_batch(self.turn(), batch);
        let queued = match self.enqueues.submit(item, write).await {
            Some(queued) => queued?,
            None => {
                return Err(Error::Internal(
                    "the task batch ended without an answer".into(),
                ))
            }
        };
        Ok(queued)
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

/// Tasks against existing instances queued in one batch at most.
pub(crate) const MOST: usize = 128;

/// A task to queue against an instance, waiting for its batch.
pub(crate) struct Enqueue {
    scope: Scope,
    id: String,
    kind: TaskKind,
    new_status: InstanceStatus,
    task_id: String,
}

pub(crate) type Enqueued = Result<Queued, Error>;

/// Queues a turn's tasks: on SQLite a lone command in a transaction of its own; more (on
/// PostgreSQL, any number: there a batch is one statement, one round trip, where a lone
/// command's transaction takes five) by one claim of all their instances and one insert of
/// all their tasks; then, alone, each whose instance the batch did not take (missing, not
/// the caller's, busy, or claimed twice in the batch), so that it gets the answer a lone
/// command would (404, 409).
///
/// Why the lone command matters: under load the writes alternate between one command (the
/// first client back after a write) and the rest (docs/benchmarks.md, session 20).
async fn enqueue_batch(turn: Turn, batch: Vec<Enqueue>) -> Vec<Enqueued> {
    let written = match batch.len() {
        1 if turn.store.backend() != Backend::Postgres => Ok(vec![None]),
        _ => write_batch(&turn, &batch).await,
    };
    let what = ("task", &turn.batched.enqueues);
    let done = |_, q| Ok(q);
    let alone = |e: Enqueue| {
        let turn = &turn;
        async move { enqueue_one(turn, &e).await }
    };
    turn.settle(what, batch, written, done, alone).await
}

async fn write_batch(turn: &Turn, batch: &[Enqueue]) -> Result<Vec<Option<Queued>>, Error> {
    let claims: Vec<Claim> = batch
        .iter()
        .map(|e| Claim {
            scope: e.scope.clone(),
            id: e.id.clone(),
            task_id: e.task_id.clone(),
            new_status: e.new_status.as_str().to_string(),
        })
        .collect();
    if turn.store.backend() == Backend::Postgres {
        return write_batch_one_statement(turn, batch, &claims).await;
    }
    let mut tx = turn.store.begin().await?;
    let claimed = tx.instances_claim(&claims, turn.now).await?;
    let tasks: Vec<NewTask> = batch
        .iter()
        .zip(&claimed)
        .filter_map(|(e, inst)| {
            let inst = inst.as_ref()?;
            Some(new_task(turn, e, inst, instance_task_params(inst)))
        })
        .collect();
    let lease = turn.lease(tasks.len());
    tx.tasks_insert_leased(&tasks, lease.as_ref()).await?;
    tx.commit().await?;
    let handed = tasks
        .into_iter()
        .zip(claimed.iter().flatten().cloned())
        .collect();
    turn.hand_over(lease, handed);
    Ok(batch
        .iter()
        .zip(claimed)
        .map(|(e, inst)| {
            inst.map(|instance| Queued {
                task_id: e.task_id.clone(),
                instance,
            })
        })
        .collect())
}

/// `write_batch` on PostgreSQL: the claims and the claimed instances' tasks in one statement
/// (two round trips fewer than the transaction, which bound the batch).
async fn write_batch_one_statement(
    turn: &Turn,
    batch: &[Enqueue],
    claims: &[Claim],
) -> Result<Vec<Option<Queued>>, Error> {
    let ops: Vec<ClaimFor> = batch
        .iter()
        .zip(claims)
        .map(|(e, claim)| ClaimFor {
            claim,
            operation: e.kind.operation(),
        })
        .collect();
    let lease = turn.lease(batch.len());
    let claimed = turn
        .store
        .instances_claim_queue(&ops, QUEUED, turn.max_attempts, lease.as_ref(), turn.now)
        .await?;
    let mut handed = Vec::new();
    let out = batch
        .iter()
        .zip(claimed)
        .map(|(e, c)| {
            let c = c?;
            let task = new_task(turn, e, &c.instance, c.params);
            handed.push((task, c.instance.clone()));
            Some(Queued {
                task_id: e.task_id.clone(),
                instance: c.instance,
            })
        })
        .collect();
    turn.hand_over(lease, handed);
    Ok(out)
}

/// One command in a transaction of its own; its error is its answer.
async fn enqueue_one(turn: &Turn, e: &Enqueue) -> Enqueued {
    let (sc, id) = (&e.scope, e.id.as_str());
    let mut tx = turn.store.begin().await?;
    if !tx
        .instance_claim(sc, id, &e.task_id, e.new_status.as_str(), turn.now)
        .await?
    {
        let row = tx
            .instance_get(sc, id)
            .await?
            .ok_or_else(|| Error::not_found("instance", id))?;
        if row.active_task_id.as_deref() == Some(e.task_id.as_str()) {
            // Held by this command's own task: its batch was written after all (the
            // connection lost after the commit, and the look that would have found it failed
            // too). Its id is new, so nothing else wrote it; answered 409, the command would
            // still run. (The task, written leased to this server and not handed over, runs
            // once that lease is reclaimed.)
            tx.rollback().await?;
            return Ok(Queued {
                task_id: e.task_id.clone(),
                instance: row,
            });
        }
        let status = InstanceStatus::parse(&row.status).unwrap_or(InstanceStatus::Failed);
        let deleting = e.kind == TaskKind::DeleteInstance;
        check_mutable(status, row.active_task_id.is_some(), id, deleting)?;
        return Err(Error::operation_in_progress());
    }
    let inst = tx
        .instance_get(sc, id)
        .await?
        .ok_or_else(|| Error::not_found("instance", id))?;
    let task = new_task(turn, e, &inst, instance_task_params(&inst));
    let lease = turn.lease(1);
    tx.tasks_insert_leased(std::slice::from_ref(&task), lease.as_ref())
        .await?;
    tx.commit().await?;
    turn.hand_over(lease, vec![(task, inst.clone())]);
    Ok(Queued {
        task_id: e.task_id.clone(),
        instance: inst,
    })
}

/// The message a task queued against an instance starts with.
const QUEUED: &str = "Queued";

/// The task `e` queues against `inst`, with its parameters (`instance_task_params`, or as
/// the statement that wrote it built them).
fn new_task(turn: &Turn, e: &Enqueue, inst: &InstanceRow, params: String) -> NewTask {
    NewTask {
        id: e.task_id.clone(),
        account_id: inst.account_id.clone(),
        team_id: inst.team_id.clone(),
        instance_id: Some(inst.id.clone()),
        operation: e.kind.operation().into(),
        params,
        message: QUEUED.into(),
        max_attempts: turn.max_attempts,
        now: turn.now,
    }
}
