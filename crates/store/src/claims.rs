//! Instances claimed for new tasks, and the tasks, in one statement: its own transaction
//! (PostgreSQL). A transaction of `instances_claim` and `tasks_insert_leased` is four round
//! trips, and on a loaded machine the BEGIN and COMMIT alone cost a third of the batch's
//! time; so, as for launches (`launches.rs`), PostgreSQL writes it as one.

use crate::batch::{casts, numbered, values_list, Statement, Val};
use crate::instances::{claimable_in_id_order, row, CLAIMABLE, CLAIMED};
use crate::{get_str, tasks, Backend, Claim, InstanceRow, Lease, Store};
use lobster_core::Error;

/// A claim with the operation of the task it queues.
pub struct ClaimFor<'a> {
    pub claim: &'a Claim,
    pub operation: &'a str,
}

/// What `instances_claim_queue` claimed: the instance as claimed and the parameters its task
/// was written with.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedFor {
    pub instance: InstanceRow,
    pub params: String,
}

/// The parameters of a task queued against an existing instance, as
/// `serde_json::json!({"vm_uuid", "host_id", "account_id", "ip_address"}).to_string()`
/// writes them (keys sorted, compact): what the statement below writes in SQL.
pub fn instance_task_params(i: &InstanceRow) -> String {
    serde_json::json!({
        "vm_uuid": i.id, "host_id": i.host_id, "account_id": i.account_id, "ip_address": i.ip_address,
    })
    .to_string()
}

/// `instance_task_params` in SQL, over the claimed row `c`: each value as `to_json` writes it
/// (a JSON string; `null` for no address).
const PARAMS_SQL: &str = "'{\"account_id\":' || to_json(c.account_id)::text
    || ',\"host_id\":' || to_json(c.host_id)::text
    || ',\"ip_address\":' || coalesce(to_json(c.ip_address)::text, 'null')
    || ',\"vm_uuid\":' || to_json(c.id)::text || '}'";

impl Store {
    /// PostgreSQL only: `instances_claim` and, for each instance claimed, its task (status
    /// as `tasks_insert_leased` writes it; message `message`, parameters as
    /// `instance_task_params`), in one statement. The claims' results in their order: None
    /// for a claim that took nothing (the caller tells why by trying it alone).
    pub async fn instances_claim_queue(
        &self,
        claims: &[ClaimFor<'_>],
        message: &str,
        max_attempts: i64,
        lease: Option<&Lease>,
        now: i64,
    ) -> Result<Vec<Option<ClaimedFor>>, Error> {
        if self.backend() != Backend::Postgres {
            return Err(Error::Internal(
                "instances_claim_queue is for PostgreSQL; SQLite claims in a transaction".into(),
            ));
        }
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let st = claim_queue_statement(claims, message, max_attempts, lease, now);
        let got = self.fetch(&st).await;
        // Even when the outcome is unknown: a needless invalidation costs a read.
        self.cache().invalidate(
            claims
                .iter()
                .map(|c| crate::cache::Token::Instance(c.claim.id.clone()))
                .collect(),
            true,
        );
        if self.batch_answer_lost() {
            return Err(Error::Internal(
                "the command batch's answer was lost (test)".into(),
            ));
        }
        let got = match got {
            Ok(rows) => rows,
            // The connection may have failed after the commit: then the claims that took
            // are there, and must not be answered as failed.
            Err(e) => return self.claims_found(claims).await.map_err(|_| e),
        };
        let mut by_task: std::collections::HashMap<String, ClaimedFor> = got
            .iter()
            .map(|r| {
                let instance = row(r)?;
                let params = get_str(r, "task_params")?;
                let task = instance.active_task_id.clone().unwrap_or_default();
                Ok((task, ClaimedFor { instance, params }))
            })
            .collect::<Result<_, Error>>()?;
        Ok(claims
            .iter()
            .map(|c| by_task.remove(&c.claim.task_id))
            .collect())
    }
}

impl Store {
    /// What `instances_claim_queue` wrote for `claims`, by a look at their tasks (their ids
    /// are new, so one found is this claim's): for each claim whose task is there, its
    /// instance as it is now and the task's parameters; None for the others.
    pub async fn claims_found(
        &self,
        claims: &[ClaimFor<'_>],
    ) -> Result<Vec<Option<ClaimedFor>>, Error> {
        let mut out = Vec::with_capacity(claims.len());
        for c in claims {
            let Some(task) = self.task_by_id(&c.claim.task_id).await? else {
                out.push(None);
                continue;
            };
            let instance = self.instance_by_id(&c.claim.id).await?;
            out.push(instance.map(|instance| ClaimedFor {
                instance,
                params: task.params,
            }));
        }
        Ok(out)
    }
}

/// `$1` now, `$2` the tasks' message, `$3` their attempts at most, `$4`/`$5` the lease's
/// owner and end; then the claims' VALUES rows.
fn claim_queue_statement<'a>(
    claims: &'a [ClaimFor<'_>],
    message: &'a str,
    max_attempts: i64,
    lease: Option<&'a Lease>,
    now: i64,
) -> Statement<'a> {
    let rows = numbered(claims);
    let cast = casts(Backend::Postgres, &["::bigint", "", "", "", "", "", ""]);
    let mut vals: Vec<Val> = vec![
        now.into(),
        message.into(),
        max_attempts.into(),
        lease.map(|l| l.owner.as_str()).into(),
        lease.map(|l| l.until).into(),
    ];
    for (n, c) in &rows {
        vals.extend([
            Val::from(*n),
            (&c.claim.id).into(),
            (&c.claim.scope.account_id).into(),
            (&c.claim.scope.team_id).into(),
            (&c.claim.task_id).into(),
            (&c.claim.new_status).into(),
            c.operation.into(),
        ]);
    }
    let (status, attempts, owner, until) =
        tasks::leased_as(Backend::Postgres, lease.is_some(), "$4", "$5");
    let (lock, claims_v) = claimable_in_id_order(Backend::Postgres);
    let sql = format!(
        "WITH v(n, id, account_id, team_id, task_id, status, operation) AS (VALUES {v}){lock},
         claimed AS (
           UPDATE instances SET active_task_id = v.task_id, status = v.status, updated_at = $1::bigint
           FROM {claims_v}
           WHERE {CLAIMABLE}
           RETURNING {CLAIMED}, v.operation AS operation),
         p AS MATERIALIZED (
           SELECT c.*, {PARAMS_SQL} AS task_params, $4::text AS lease_owner_, $5::bigint AS lease_until_
           FROM claimed c),
         queued AS (
           INSERT INTO tasks {inserted}
           SELECT p.active_task_id, p.account_id, p.team_id, p.id, p.operation, {status}, p.task_params,
             $2, {attempts}, $3::bigint, {owner}, {until}, $1::bigint, $1::bigint, $1::bigint
           FROM p)
         SELECT * FROM p",
        v = values_list(6, rows.len(), cast.len(), &cast),
        inserted = tasks::INSERTED,
    );
    Statement::new(Backend::Postgres, &sql, vals)
}
