//! Durable tasks. A task row is written in the same transaction as the state change that
//! needs it; workers claim it with a lease, heartbeat, and finish it only while they still
//! hold the lease, so a task reclaimed after a crash is never finished twice.

use crate::batch::{padded, values_list, Statement, Val};
use crate::{db_err, get_i64, get_opt_i64, get_opt_str, get_str, Backend, Scope, Store, Tx};
use lobster_core::Error;

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub id: String,
    pub account_id: String,
    pub team_id: Option<String>,
    pub instance_id: Option<String>,
    pub operation: String,
    pub status: String,
    pub params: String,
    pub message: Option<String>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub run_after: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub id: String,
    pub account_id: String,
    pub team_id: Option<String>,
    pub instance_id: Option<String>,
    pub operation: String,
    pub params: String,
    pub message: String,
    pub max_attempts: i64,
    pub now: i64,
}

/// A lease a task is written with: the task is born claimed by `owner` (a launch handing its
/// create task straight to its own process's workers) instead of pending.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub owner: String,
    pub until: i64,
}

impl NewTask {
    /// The row `tasks_insert_leased` writes for this task under `lease`, as a claim would
    /// have returned it.
    pub fn leased_row(&self, lease: &Lease) -> TaskRow {
        TaskRow {
            id: self.id.clone(),
            account_id: self.account_id.clone(),
            team_id: self.team_id.clone(),
            instance_id: self.instance_id.clone(),
            operation: self.operation.clone(),
            status: "PROCESSING".into(),
            params: self.params.clone(),
            message: Some(self.message.clone()),
            attempts: 1,
            max_attempts: self.max_attempts,
            lease_owner: Some(lease.owner.clone()),
            lease_until: Some(lease.until),
            run_after: self.now,
            created_at: self.now,
            updated_at: self.now,
            finished_at: None,
        }
    }
}

/// The columns of a VALUES row of new tasks (after its ordinal `n`), in `insert_vals`'s order.
pub(crate) const INSERT_COLS: &str =
    "id, account_id, team_id, instance_id, operation, params, message, max_attempts, at";

/// The columns a new task is written into, from a VALUES row of `INSERT_COLS`.
pub(crate) const INSERTED: &str =
    "(id, account_id, team_id, instance_id, operation, status, params, message, attempts,
      max_attempts, lease_owner, lease_until, run_after, created_at, updated_at)";

/// PostgreSQL's casts for a VALUES row of `n` and `INSERT_COLS`.
pub(crate) const INSERT_CASTS: [&str; 10] = {
    let (t, b) = ("", "::bigint");
    [b, t, t, t, t, t, t, t, b, b]
};

/// A VALUES row for a batch insert: its ordinal `n` (0 for padding), then `INSERT_COLS`.
pub(crate) fn insert_vals(n: i64, t: &NewTask) -> [Val<'_>; 10] {
    [
        Val::from(n),
        (&t.id).into(),
        (&t.account_id).into(),
        (&t.team_id).into(),
        (&t.instance_id).into(),
        (&t.operation).into(),
        (&t.params).into(),
        (&t.message).into(),
        t.max_attempts.into(),
        t.now.into(),
    ]
}

/// The status, attempts, lease owner and lease end of tasks written under `lease` (born
/// claimed: the owner and end are the placeholders given) or without (pending).
pub(crate) fn leased_as(
    backend: Backend,
    leased: bool,
    owner: &'static str,
    until: &str,
) -> (&'static str, i64, &'static str, String) {
    match (leased, backend) {
        (false, _) => ("'PENDING'", 0, "NULL", "NULL".into()),
        (true, Backend::Postgres) => ("'PROCESSING'", 1, owner, format!("{until}::bigint")),
        (true, Backend::Sqlite) => ("'PROCESSING'", 1, owner, until.into()),
    }
}

const COLS: &str =
    "id, account_id, team_id, instance_id, operation, status, params, message, attempts,
    max_attempts, lease_owner, lease_until, run_after, created_at, updated_at, finished_at";

/// Claimable: pending and due, or processing with an expired lease (its worker died).
const CLAIMABLE: &str =
    "((status = 'PENDING' AND run_after <= $3) OR (status = 'PROCESSING' AND lease_until < $3))";

fn row(r: &impl crate::exec::Named) -> Result<TaskRow, Error> {
    Ok(TaskRow {
        id: get_str(r, "id")?,
        account_id: get_str(r, "account_id")?,
        team_id: get_opt_str(r, "team_id")?,
        instance_id: get_opt_str(r, "instance_id")?,
        operation: get_str(r, "operation")?,
        status: get_str(r, "status")?,
        params: get_str(r, "params")?,
        message: get_opt_str(r, "message")?,
        attempts: get_i64(r, "attempts")?,
        max_attempts: get_i64(r, "max_attempts")?,
        lease_owner: get_opt_str(r, "lease_owner")?,
        lease_until: get_opt_i64(r, "lease_until")?,
        run_after: get_i64(r, "run_after")?,
        created_at: get_i64(r, "created_at")?,
        updated_at: get_i64(r, "updated_at")?,
        finished_at: get_opt_i64(r, "finished_at")?,
    })
}

/// A claim's update: `$1` the worker, `$2` its lease's end, `$3` now.
const CLAIM: &str = "UPDATE tasks SET status = 'PROCESSING', lease_owner = $1, lease_until = $2,
    attempts = attempts + 1, updated_at = $3";

/// The earliest due pending task's id (a subquery; `$3` is now).
fn due_pending(lock: &str) -> String {
    format!(
        "(SELECT id FROM tasks WHERE status = 'PENDING' AND run_after <= $3
            ORDER BY run_after LIMIT 1{lock})"
    )
}

/// Filters for the task list.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFilter {
    pub since: i64,
    pub status: Option<String>,
    pub limit: i64,
}

/// A create task whose VM is built and started, for `Store::task_finish_created`.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub task_id: String,
    pub instance_id: String,
    /// The version of the instance's firewall the worker applied; -1 when there was none.
    pub firewall_version: i64,
    /// The lease the run holds the task under (its claim's `lease_owner`).
    pub owner: String,
}

/// How finishing one create task went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreatedEnd {
    /// COMPLETED, and its instance rented and running.
    Finished,
    /// Another worker holds the task now: nothing was written.
    LeaseLost,
    /// The instance's firewall changed after the worker read it (or was configured while
    /// the VM was built): nothing was written; apply the new one, then finish.
    FirewallChanged,
}

/// A finish of created tasks: `$1` the message, `$2` now, then each (padded) item's task,
/// instance, firewall version and lease.
fn created_statement<'q>(
    backend: Backend,
    sql: &str,
    (message, now): (&'q str, i64),
    items: &'q [Created],
) -> Statement<'q> {
    let mut vals: Vec<Val> = vec![message.into(), now.into()];
    for it in padded(items) {
        vals.extend([
            Val::from(&it.task_id),
            (&it.instance_id).into(),
            it.firewall_version.into(),
            (&it.owner).into(),
        ]);
    }
    Statement::new(backend, sql, vals)
}

/// The statement that ends `rows` create tasks on PostgreSQL (see `task_finish_created`).
/// The tasks are also named as an array (`tasks.id = ANY(...)`): joined to the `VALUES` rows
/// alone, a plan made while the tasks were few (each connection plans once, see
/// `plan_once`) read the whole primary-key index for batches of 32 or more, and kept doing
/// so while the table grew by thousands a second (docs/benchmarks.md, session 18). Named as
/// an array, the tasks are found by their keys whatever the table's size at planning.
pub(crate) fn finish_created_pg_sql(rows: usize) -> String {
    format!(
        concat!("WITH v(task_id, instance_id, fwv, owner) AS (VALUES {}),
              t AS (UPDATE tasks SET status = 'COMPLETED', message = $1, updated_at = $2, finished_at = $2,
                      lease_owner = NULL, lease_until = NULL
                    FROM v
                    WHERE tasks.id = ANY(ARRAY(SELECT task_id FROM v))
                      AND tasks.id = v.task_id AND tasks.instance_id = v.instance_id
                      AND tasks.lease_owner = v.owner AND ", processing!("tasks."), "
                      AND NOT EXISTS (SELECT 1 FROM firewalls f WHERE f.instance_id = v.instance_id AND f.version > v.fwv)
                    RETURNING tasks.id, tasks.instance_id),
              i AS (UPDATE instances SET status = 'rented', power_status = 'running', active_task_id = NULL,
                      password = NULL, ready_at = $2, updated_at = $2
                    FROM t
                    WHERE instances.id = t.instance_id AND instances.active_task_id = t.id
                      AND instances.status = 'creating'
                    RETURNING instances.id)
         SELECT v.task_id AS id, CASE WHEN t.id IS NULL THEN 0 ELSE 1 END::bigint AS finished,
                CASE WHEN t.id IS NOT NULL THEN 1
                     ELSE (SELECT COUNT(*) FROM tasks h WHERE h.id = v.task_id AND h.lease_owner = v.owner
                             AND ", processing!("h."), ") END::bigint AS held
         FROM v LEFT JOIN t ON t.id = v.task_id"),
        values_list(3, rows, 4, &["", "", "::bigint", ""])
    )
}

impl Store {
    /// Create tasks that finished well: each task COMPLETED and its instance rented and
    /// running (what `Tx::task_finish` then `Tx::instance_created` write), for each task
    /// only while it is still held under the item's `owner` (the run's own claim) and the
    /// instance's firewall is still the version the run applied. A batch because every launch ends here: the engine finishes
    /// the creates that end together in one write (one statement on PostgreSQL, one
    /// transaction of two updates on SQLite) instead of one transaction each.
    /// Answers in the order of `items`.
    pub async fn task_finish_created(
        &self,
        message: &str,
        now: i64,
        items: &[Created],
    ) -> Result<Vec<CreatedEnd>, Error> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(rounds) = crate::batch::rounds(items, |it| it.task_id.as_str()) {
            // Two runs of one task (one whose lease ran out, and the run that took it over)
            // ending together: each statement answers by task id, so each run goes in a
            // statement of its own.
            let write = |some: Vec<Created>| async move {
                self.finish_created_once(message, now, &some).await
            };
            return crate::batch::in_rounds(items, rounds, CreatedEnd::LeaseLost, write).await;
        }
        self.finish_created_once(message, now, items).await
    }

    /// `task_finish_created` of items whose task ids are all different.
    async fn finish_created_once(
        &self,
        message: &str,
        now: i64,
        items: &[Created],
    ) -> Result<Vec<CreatedEnd>, Error> {
        let ends = match self.backend() {
            Backend::Postgres => self.finish_created_pg(message, now, items).await,
            Backend::Sqlite => self.finish_created_sqlite(message, now, items).await,
        };
        // Whatever the outcome (a lost connection may hide a commit), the rows may have changed.
        for it in items {
            self.cache().wrote_instance(&it.instance_id);
        }
        ends
    }

    async fn finish_created_pg(
        &self,
        message: &str,
        now: i64,
        items: &[Created],
    ) -> Result<Vec<CreatedEnd>, Error> {
        let sql = finish_created_pg_sql(padded(items).len());
        let st = created_statement(self.backend, &sql, (message, now), items);
        let rows = self.fetch(&st).await?;
        let mut by_id = std::collections::HashMap::new();
        for r in &rows {
            // `held` (asked only of a task not finished) reads the statement's snapshot, from
            // before its own update: a task held but not finished was refused for its
            // firewall, or lost its lease to a claim that committed after that snapshot (read
            // committed lets the update see the claim). The second is answered as the first;
            // harmless, since a run that lost its lease was stopped by its heartbeat already.
            let end = match (get_i64(r, "finished")?, get_i64(r, "held")?) {
                (1, _) => CreatedEnd::Finished,
                (_, 0) => CreatedEnd::LeaseLost,
                _ => CreatedEnd::FirewallChanged,
            };
            by_id.insert(get_str(r, "id")?, end);
        }
        Ok(items
            .iter()
            .map(|it| {
                by_id
                    .get(&it.task_id)
                    .copied()
                    .unwrap_or(CreatedEnd::LeaseLost)
            })
            .collect())
    }

    async fn finish_created_sqlite(
        &self,
        message: &str,
        now: i64,
        items: &[Created],
    ) -> Result<Vec<CreatedEnd>, Error> {
        let mut tx = self.begin().await?;
        // SQLite's RETURNING sees only the updated table: the task's own instance_id.
        let sql = format!(
            concat!("WITH v(task_id, instance_id, fwv, owner) AS (VALUES {})
             UPDATE tasks SET status = 'COMPLETED', message = $1, updated_at = $2, finished_at = $2,
               lease_owner = NULL, lease_until = NULL
             FROM v
             WHERE tasks.id = v.task_id AND tasks.instance_id = v.instance_id
               AND tasks.lease_owner = v.owner AND ", processing!("tasks."), "
               AND NOT EXISTS (SELECT 1 FROM firewalls f WHERE f.instance_id = v.instance_id AND f.version > v.fwv)
             RETURNING tasks.id"),
            values_list(3, padded(items).len(), 4, &["", "", "", ""])
        );
        let st = created_statement(tx.backend, &sql, (message, now), items);
        let rows = tx.fetch(&st).await?;
        let done: std::collections::HashSet<String> = rows
            .iter()
            .map(|r| get_str(r, "id"))
            .collect::<Result<_, _>>()?;
        let finished: Vec<&Created> = items
            .iter()
            .filter(|it| done.contains(&it.task_id))
            .collect();
        let unfinished: Vec<(&str, &str)> = items
            .iter()
            .filter(|it| !done.contains(&it.task_id))
            .map(|it| (it.task_id.as_str(), it.owner.as_str()))
            .collect();
        // Of those not finished, the ones still held under their runs' leases were refused
        // for their firewall alone (read in the same transaction, so nothing came between).
        let held = tx.tasks_held(&unfinished).await?;
        if finished.is_empty() {
            // Release SQLite's write lock now, not when the connection is next used.
            tx.rollback().await?;
        } else {
            tx.instances_created(&finished, now).await?;
            tx.commit().await?;
        }
        let ends = items
            .iter()
            .map(
                |it| match (done.contains(&it.task_id), held.contains(&it.task_id)) {
                    (true, _) => CreatedEnd::Finished,
                    (false, true) => CreatedEnd::FirewallChanged,
                    (false, false) => CreatedEnd::LeaseLost,
                },
            )
            .collect();
        Ok(ends)
    }

    pub async fn task_get(&self, scope: &Scope, id: &str) -> Result<Option<TaskRow>, Error> {
        let (cond, binds) = scope.clause(2);
        let sql = format!("SELECT {COLS} FROM tasks WHERE id = $1 AND {cond}");
        let mut q = sqlx::query(&sql).bind(id);
        for b in binds {
            q = q.bind(b);
        }
        let r = q.fetch_optional(self.reader()).await.map_err(db_err)?;
        r.as_ref().map(row).transpose()
    }

    /// Tasks of the scope created since `filter.since`, newest first, and how many match.
    pub async fn task_list(
        &self,
        scope: &Scope,
        filter: &TaskFilter,
    ) -> Result<(Vec<TaskRow>, i64), Error> {
        let (cond, binds) = scope.clause(1);
        let n = binds.len();
        let mut where_ = format!("{cond} AND created_at >= ${}", n + 1);
        if filter.status.is_some() {
            where_.push_str(&format!(" AND status = ${}", n + 2));
        }
        let list_sql = format!(
            "SELECT {COLS} FROM tasks WHERE {where_} ORDER BY created_at DESC, id DESC LIMIT {}",
            filter.limit.max(0)
        );
        let count_sql = format!("SELECT COUNT(*) AS n FROM tasks WHERE {where_}");
        let mut list = sqlx::query(&list_sql);
        let mut count = sqlx::query(&count_sql);
        for b in &binds {
            list = list.bind(*b);
            count = count.bind(*b);
        }
        list = list.bind(filter.since);
        count = count.bind(filter.since);
        if let Some(s) = &filter.status {
            list = list.bind(s.as_str());
            count = count.bind(s.as_str());
        }
        let rows = list.fetch_all(self.reader()).await.map_err(db_err)?;
        let total = get_i64(&count.fetch_one(self.reader()).await.map_err(db_err)?, "n")?;
        Ok((rows.iter().map(row).collect::<Result<_, _>>()?, total))
    }

    pub async fn task_by_id(&self, id: &str) -> Result<Option<TaskRow>, Error> {
        let sql = format!("SELECT {COLS} FROM tasks WHERE id = $1");
        let r = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.reader())
            .await
            .map_err(db_err)?;
        r.as_ref().map(row).transpose()
    }

    pub async fn task_all(&self) -> Result<Vec<TaskRow>, Error> {
        let sql = format!("SELECT {COLS} FROM tasks ORDER BY created_at, id");
        let rows = sqlx::query(&sql)
            .fetch_all(self.reader())
            .await
            .map_err(db_err)?;
        rows.iter().map(row).collect()
    }

    /// Claims the oldest claimable task for `worker` until `now + lease_ms`: a task whose
    /// lease expired (its worker died) first, as it was due first, then the earliest due one.
    pub async fn task_claim(
        &self,
        worker: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<TaskRow>, Error> {
        let lock = self.skip_locked();
        let candidate = format!(
            "COALESCE(
                 (SELECT id FROM tasks WHERE status = 'PROCESSING' AND lease_until < $3
                    ORDER BY lease_until LIMIT 1{lock}),
                 {})",
            due_pending(lock)
        );
        let sql = format!("{CLAIM} WHERE id = {candidate} AND {CLAIMABLE} RETURNING {COLS}");
        let claimed = self.task_claim_of(&sql, worker, now, lease_ms).await?;
        Ok(claimed.into_iter().next())
    }

    /// Claims the earliest `limit` due pending tasks (fewer when fewer are due), not looking
    /// for expired leases. Looking costs more than the claim itself on PostgreSQL while the
    /// lease index still holds an entry for every task that ran since the last vacuum (1,900
    /// buffers per claim at 10,000 finished tasks), and expired leases are rare: the engine
    /// looks for them only now and then, and whenever it finds nothing pending. Several at
    /// once because a claim is a write: one statement for a batch instead of one per task.
    pub async fn task_claim_pending(
        &self,
        worker: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<TaskRow>, Error> {
        let due = "status = 'PENDING' AND run_after <= $3 ORDER BY run_after";
        self.task_claim_batch(due, worker, now, lease_ms, limit)
            .await
    }

    /// Claims up to `limit` tasks whose worker died (expired leases), the longest expired
    /// first: after a crash a server may leave a whole batch behind.
    pub async fn task_claim_expired(
        &self,
        worker: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<TaskRow>, Error> {
        let expired = "status = 'PROCESSING' AND lease_until < $3 ORDER BY lease_until";
        self.task_claim_batch(expired, worker, now, lease_ms, limit)
            .await
    }

    /// Claims up to `limit` tasks chosen by `which` (a condition and its order). The
    /// candidates are chosen once, in a CTE of their own: as `id IN (subquery)`, PostgreSQL
    /// re-ran the locking subquery while updating and claimed every due task.
    async fn task_claim_batch(
        &self,
        which: &str,
        worker: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<TaskRow>, Error> {
        let sql = format!(
            "WITH c(claim_id) AS MATERIALIZED
                 (SELECT id FROM tasks WHERE {which} LIMIT $4{})
             {CLAIM} FROM c WHERE tasks.id = c.claim_id AND {CLAIMABLE} RETURNING {COLS}",
            self.skip_locked()
        );
        let rows = self
            .q(&sql)
            .bind(worker)
            .bind(now + lease_ms)
            .bind(now)
            .bind(limit.max(1) as i64)
            .fetch_all()
            .await?;
        rows.iter().map(row).collect()
    }

    fn skip_locked(&self) -> &'static str {
        match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    /// Runs a claim (`CLAIM` and the tasks it takes, if they are still claimable). Each
    /// candidate is found by one index range scan (migration 0007).
    async fn task_claim_of(
        &self,
        sql: &str,
        worker: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<TaskRow>, Error> {
        let rows = self
            .q(sql)
            .bind(worker)
            .bind(now + lease_ms)
            .bind(now)
            .fetch_all()
            .await?;
        rows.iter().map(row).collect()
    }

    /// Extends the lease; false when the worker no longer holds it.
    pub async fn task_heartbeat(&self, id: &str, worker: &str, until: i64) -> Result<bool, Error> {
        let r = self
            .q(concat!(
                "UPDATE tasks SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND ",
                processing!("")
            ))
            .bind(until)
            .bind(id)
            .bind(worker)
            .execute()
            .await?;
        Ok(r == 1)
    }

    /// Renews the lease of a task `worker` was given with `was` as its end, if nothing
    /// else happened to it since (a reclaim or a heartbeat moves the end): a task handed
    /// over that waited too long to run on its first lease.
    pub async fn task_relet(
        &self,
        id: &str,
        worker: &str,
        was: i64,
        until: i64,
    ) -> Result<bool, Error> {
        self.task_as_handed("lease_until = $1", (id, worker, was), until)
            .await
    }

    /// Puts a task handed to `worker` with `was` as its lease's end, and not run, back in
    /// the queue, its attempt refunded, if nothing happened to it since.
    pub async fn task_unlet(
        &self,
        id: &str,
        worker: &str,
        was: i64,
        now: i64,
    ) -> Result<bool, Error> {
        let set = "status = 'PENDING', lease_owner = NULL, lease_until = NULL, run_after = $1,
            updated_at = $1, attempts = attempts - 1";
        self.task_as_handed(set, (id, worker, was), now).await
    }

    /// Applies `set` (whose `$1` is `v`) to a task still exactly as it was handed over:
    /// held by `worker`, processing, its lease ending at `was`.
    async fn task_as_handed(
        &self,
        set: &str,
        (id, worker, was): (&str, &str, i64),
        v: i64,
    ) -> Result<bool, Error> {
        let sql = format!(
            concat!(
                "UPDATE tasks SET {set} WHERE id = $2 AND lease_owner = $3 AND ",
                processing!(""),
                " AND lease_until = $4"
            ),
            set = set
        );
        let r = self
            .q(&sql)
            .bind(v)
            .bind(id)
            .bind(worker)
            .bind(was)
            .execute()
            .await?;
        Ok(r == 1)
    }

    /// Records progress text on a task the worker holds.
    pub async fn task_progress(
        &self,
        id: &str,
        worker: &str,
        message: &str,
        now: i64,
    ) -> Result<(), Error> {
        self.q(concat!(
            "UPDATE tasks SET message = $1, updated_at = $2 WHERE id = $3 AND lease_owner = $4 AND ",
            processing!("")
        ))
            .bind(message)
            .bind(now)
            .bind(id)
            .bind(worker)
            .execute()
            .await?;
        Ok(())
    }

    /// Counts by status, for health and tests.
    /// Tasks pending or processing: two counts over the small partial indexes, cheap enough
    /// to poll (the counts by status read every task ever run).
    pub async fn task_open_count(&self) -> Result<i64, Error> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM tasks WHERE status = 'PENDING')
                  + (SELECT COUNT(*) FROM tasks WHERE status = 'PROCESSING') AS n",
        )
        .fetch_one(self.reader())
        .await
        .map_err(db_err)?;
        get_i64(&row, "n")
    }

    pub async fn task_counts(&self) -> Result<Vec<(String, i64)>, Error> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
            .fetch_all(self.reader())
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| Ok((get_str(r, "status")?, get_i64(r, "n")?)))
            .collect()
    }

    /// Puts a failed attempt back in the queue; false when the lease was lost.
    pub async fn task_retry(
        &self,
        id: &str,
        worker: &str,
        run_after: i64,
        message: &str,
        now: i64,
    ) -> Result<bool, Error> {
        self.task_requeue(id, worker, (run_after, message, now), 0)
            .await
    }

    /// Puts a task that could not start yet back in the queue without counting the attempt.
    pub async fn task_wait(
        &self,
        id: &str,
        worker: &str,
        run_after: i64,
        message: &str,
        now: i64,
    ) -> Result<bool, Error> {
        self.task_requeue(id, worker, (run_after, message, now), 1)
            .await
    }

    async fn task_requeue(
        &self,
        id: &str,
        worker: &str,
        when: (i64, &str, i64),
        refund: i64,
    ) -> Result<bool, Error> {
        let (run_after, message, now) = when;
        let r = self.q(concat!(
            "UPDATE tasks SET status = 'PENDING', lease_owner = NULL, lease_until = NULL, run_after = $1,
               message = $2, updated_at = $3, attempts = attempts - $6
             WHERE id = $4 AND lease_owner = $5 AND ",
            processing!("")
        ))
            .bind(run_after)
            .bind(message)
            .bind(now)
            .bind(id)
            .bind(worker)
            .bind(refund)
            .execute()
            .await?;
        Ok(r == 1)
    }
}

impl Tx {
    /// Which of the (task, lease owner) pairs are still held so (leased, processing).
    async fn tasks_held(
        &mut self,
        held: &[(&str, &str)],
    ) -> Result<std::collections::HashSet<String>, Error> {
        if held.is_empty() {
            return Ok(Default::default());
        }
        let held = padded(held);
        let sql = format!(
            concat!(
                "WITH v(id, owner) AS (VALUES {})
                 SELECT tasks.id FROM tasks JOIN v ON tasks.id = v.id AND tasks.lease_owner = v.owner
                 WHERE ",
                processing!("tasks.")
            ),
            values_list(1, held.len(), 2, &["", ""])
        );
        let mut vals: Vec<Val> = Vec::with_capacity(held.len() * 2);
        for (id, owner) in held {
            vals.extend([Val::from(*id), Val::from(*owner)]);
        }
        let rows = self
            .fetch(&Statement::new(self.backend, &sql, vals))
            .await?;
        rows.iter().map(|r| get_str(r, "id")).collect()
    }

    pub async fn task_insert(&mut self, t: &NewTask) -> Result<(), Error> {
        self.q(
            "INSERT INTO tasks (id, account_id, team_id, instance_id, operation, status, params, message, attempts,
               max_attempts, run_after, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 'PENDING', $6, $7, 0, $8, $9, $9, $9)",
        )
            .bind(&t.id)
            .bind(&t.account_id)
            .bind(&t.team_id)
            .bind(&t.instance_id)
            .bind(&t.operation)
            .bind(&t.params)
            .bind(&t.message)
            .bind(t.max_attempts)
            .bind(t.now)
            .execute()
            .await?;
        Ok(())
    }

    /// Queues many tasks in one statement (a batch of launches).
    pub async fn tasks_insert(&mut self, tasks: &[NewTask]) -> Result<(), Error> {
        self.tasks_insert_leased(tasks, None).await
    }

    /// `tasks_insert`, the tasks born claimed under `lease` when one is given (status
    /// PROCESSING, the attempt counted, as a claim would leave them), else pending.
    pub async fn tasks_insert_leased(
        &mut self,
        tasks: &[NewTask],
        lease: Option<&Lease>,
    ) -> Result<(), Error> {
        if tasks.is_empty() {
            return Ok(());
        }
        let numbered = crate::batch::numbered(tasks);
        let casts = crate::batch::casts(self.backend, &INSERT_CASTS);
        let (status, attempts, owner, until) = leased_as(self.backend, lease.is_some(), "$1", "$2");
        let first = if lease.is_some() { 3 } else { 1 };
        let sql = format!(
            "WITH v(n, {INSERT_COLS}) AS (VALUES {})
             INSERT INTO tasks {INSERTED}
             SELECT id, account_id, team_id, instance_id, operation, {status}, params, message, {attempts},
               max_attempts, {owner}, {until}, at, at, at
             FROM v WHERE n > 0",
            values_list(first, numbered.len(), INSERT_CASTS.len(), &casts)
        );
        let mut vals: Vec<Val> = Vec::with_capacity(2 + numbered.len() * INSERT_CASTS.len());
        if let Some(l) = lease {
            vals.extend([Val::from(&l.owner), l.until.into()]);
        }
        for (n, t) in numbered {
            vals.extend(insert_vals(n, t));
        }
        let st = Statement::new(self.backend, &sql, vals);
        self.run(&st).await?;
        Ok(())
    }

    /// A task by id, read on the transaction's own connection: a transaction that took a
    /// second connection of the pool for a read could wait for it behind others doing the same,
    /// each holding one, until the pool ran dry.
    pub async fn task_by_id(&mut self, id: &str) -> Result<Option<TaskRow>, Error> {
        let sql = format!("SELECT {COLS} FROM tasks WHERE id = $1");
        let r = self.q(&sql).bind(id).fetch_optional().await?;
        r.as_ref().map(row).transpose()
    }

    /// Rewrites the parameters of a task not yet run (a launch moved to another host, in the
    /// transaction that wrote the task).
    pub async fn task_params(&mut self, id: &str, params: &str) -> Result<(), Error> {
        self.q(
            "UPDATE tasks SET params = $1 WHERE id = $2 AND status IN ('PENDING', 'PROCESSING')",
        )
        .bind(params)
        .bind(id)
        .execute()
        .await?;
        Ok(())
    }

    /// Finishes a task the worker still holds (COMPLETED or FAILED). False when the lease was
    /// lost to another worker: then the caller must roll back its transaction.
    pub async fn task_finish(
        &mut self,
        id: &str,
        worker: &str,
        status: &str,
        message: &str,
        now: i64,
    ) -> Result<bool, Error> {
        let r = self.q(concat!(
            "UPDATE tasks SET status = $1, message = $2, updated_at = $3, finished_at = $3, lease_owner = NULL,
               lease_until = NULL
             WHERE id = $4 AND lease_owner = $5 AND ",
            processing!("")
        ))
            .bind(status)
            .bind(message)
            .bind(now)
            .bind(id)
            .bind(worker)
            .execute()
            .await?;
        Ok(r == 1)
    }
}
