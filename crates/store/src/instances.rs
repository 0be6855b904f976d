//! Instances. Tenant reads are always scoped (account, and team for team-scoped keys);
//! engine writes are guarded by the instance's active task so that only the task that holds
//! the instance can move it on (invariant 3).

use crate::batch::{Statement, Val};
use crate::cache::visible;
use crate::{db_err, Backend, Cells, Store, Tx};
use lobster_core::capacity::Resources;
use lobster_core::Error;
use std::sync::Arc;

/// Whose instances a query may see.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub account_id: String,
    pub team_id: Option<String>,
}

impl Scope {
    /// SQL condition and binds, numbered from `first`.
    pub(crate) fn clause(&self, first: usize) -> (String, Vec<&str>) {
        match &self.team_id {
            Some(t) => (
                format!("account_id = ${first} AND team_id = ${}", first + 1),
                vec![self.account_id.as_str(), t.as_str()],
            ),
            None => (
                format!("account_id = ${first}"),
                vec![self.account_id.as_str()],
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceRow {
    pub id: String,
    pub account_id: String,
    pub team_id: Option<String>,
    pub team_name: Option<String>,
    pub name: String,
    pub host_id: String,
    pub region: String,
    pub instance_type: Option<String>,
    pub template_name: Option<String>,
    pub iso_url: Option<String>,
    pub os_type: Option<String>,
    pub resources: Resources,
    pub gpu_model: Option<String>,
    pub price_cents_per_hour: i64,
    pub status: String,
    pub power_status: String,
    pub ip_address: Option<String>,
    pub username: String,
    pub ssh_key: Option<String>,
    pub password: Option<String>,
    pub metadata: Option<String>,
    pub active_task_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub ready_at: Option<i64>,
    pub deleted_at: Option<i64>,
}

/// The instance of a claim in `v(n, id, account_id, team_id, ...)` (`n` 0 for padding) when
/// the claim's scope may see it and it is settled (`rented`, no task).
pub(crate) const CLAIMABLE: &str =
    "instances.id = v.id AND v.n > 0 AND instances.account_id = v.account_id
               AND (v.team_id IS NULL OR instances.team_id = v.team_id)
               AND instances.status = 'rented' AND instances.active_task_id IS NULL";

/// For a statement claiming the instances of `v` (`CLAIMABLE`): a CTE to add after `v`, and
/// the claims for the update to join (as `v`). On PostgreSQL the CTE locks the instances in
/// id order, and the update joins its rows: in the order of the update's own join (the
/// claims' order), two servers' batches claiming the same instances in different orders
/// could each hold one the other waits for (as with hosts: `hosts::in_id_order`). SQLite
/// has one writer at a time: no CTE, the claims themselves.
pub(crate) fn claimable_in_id_order(backend: Backend) -> (String, &'static str) {
    match backend {
        Backend::Postgres => (
            format!(
                ", locking AS MATERIALIZED (
               SELECT v.* FROM instances JOIN v ON {CLAIMABLE}
               ORDER BY instances.id FOR NO KEY UPDATE OF instances)"
            ),
            "locking v",
        ),
        Backend::Sqlite => (String::new(), "v"),
    }
}

/// One instance taken for a task (`Tx::instances_claim`).
#[derive(Debug, Clone)]
pub struct Claim {
    pub scope: Scope,
    pub id: String,
    pub task_id: String,
    pub new_status: String,
}

/// What a launch writes; the rest starts out as `creating`/`stopped`.
pub type NewInstance = InstanceRow;

/// The columns a new instance's row is written with, in `insert_vals`'s order.
pub(crate) const INSERT_COLS: &str =
    "id, account_id, team_id, name, host_id, region, instance_type, template_name,
       iso_url, os_type, cores, memory_gb, disk_gb, gpus, gpu_model, price_cents_per_hour, status,
       power_status, ip_address, username, ssh_key, password, metadata, active_task_id, created_at,
       updated_at, ready_at, deleted_at";

/// PostgreSQL's casts for a VALUES row of `n` and `INSERT_COLS`.
pub(crate) const INSERT_CASTS: [&str; 29] = {
    let (t, b) = ("", "::bigint");
    [
        b, t, t, t, t, t, t, t, t, t, t, b, b, b, b, t, b, t, t, t, t, t, t, t, t, b, b, b, b,
    ]
};

/// A VALUES row for a batch insert: its ordinal `n` (0 for padding), then `INSERT_COLS`.
pub(crate) fn insert_vals(n: i64, i: &NewInstance) -> [Val<'_>; 29] {
    [
        Val::from(n),
        (&i.id).into(),
        (&i.account_id).into(),
        (&i.team_id).into(),
        (&i.name).into(),
        (&i.host_id).into(),
        (&i.region).into(),
        (&i.instance_type).into(),
        (&i.template_name).into(),
        (&i.iso_url).into(),
        (&i.os_type).into(),
        i.resources.cores.into(),
        i.resources.memory_gb.into(),
        i.resources.disk_gb.into(),
        i.resources.gpus.into(),
        (&i.gpu_model).into(),
        i.price_cents_per_hour.into(),
        (&i.status).into(),
        (&i.power_status).into(),
        (&i.ip_address).into(),
        (&i.username).into(),
        (&i.ssh_key).into(),
        (&i.password).into(),
        (&i.metadata).into(),
        (&i.active_task_id).into(),
        i.created_at.into(),
        i.updated_at.into(),
        i.ready_at.into(),
        i.deleted_at.into(),
    ]
}

const COLS: &str = "i.id, i.account_id, i.team_id, t.name AS team_name, i.name, i.host_id, i.region,
    i.instance_type, i.template_name, i.iso_url, i.os_type, i.cores, i.memory_gb, i.disk_gb, i.gpus,
    i.gpu_model, i.price_cents_per_hour, i.status, i.power_status, i.ip_address, i.username, i.ssh_key,
    i.password, i.metadata, i.active_task_id, i.created_at, i.updated_at, i.ready_at, i.deleted_at";
/// `COLS` as the RETURNING list of an update of `instances`.
pub(crate) const CLAIMED: &str = "instances.id, instances.account_id, instances.team_id,
    (SELECT t.name FROM teams t WHERE t.id = instances.team_id) AS team_name, instances.name,
    instances.host_id, instances.region, instances.instance_type, instances.template_name,
    instances.iso_url, instances.os_type, instances.cores, instances.memory_gb, instances.disk_gb,
    instances.gpus, instances.gpu_model, instances.price_cents_per_hour, instances.status,
    instances.power_status, instances.ip_address, instances.username, instances.ssh_key,
    instances.password, instances.metadata, instances.active_task_id, instances.created_at,
    instances.updated_at, instances.ready_at, instances.deleted_at";
const FROM: &str = "FROM instances i LEFT JOIN teams t ON t.id = i.team_id";
const LIVE: &str = "i.status IN ('creating', 'rented', 'terminating')";

/// Reads the columns of `COLS` by position.
pub(crate) fn row(r: &impl Cells) -> Result<InstanceRow, Error> {
    Ok(InstanceRow {
        id: r.text(0)?,
        account_id: r.text(1)?,
        team_id: r.opt_text(2)?,
        team_name: r.opt_text(3)?,
        name: r.text(4)?,
        host_id: r.text(5)?,
        region: r.text(6)?,
        instance_type: r.opt_text(7)?,
        template_name: r.opt_text(8)?,
        iso_url: r.opt_text(9)?,
        os_type: r.opt_text(10)?,
        resources: Resources {
            cores: r.int(11)?,
            memory_gb: r.int(12)?,
            disk_gb: r.int(13)?,
            gpus: r.int(14)?,
        },
        gpu_model: r.opt_text(15)?,
        price_cents_per_hour: r.int(16)?,
        status: r.text(17)?,
        power_status: r.text(18)?,
        ip_address: r.opt_text(19)?,
        username: r.text(20)?,
        ssh_key: r.opt_text(21)?,
        password: r.opt_text(22)?,
        metadata: r.opt_text(23)?,
        active_task_id: r.opt_text(24)?,
        created_at: r.int(25)?,
        updated_at: r.int(26)?,
        ready_at: r.opt_int(27)?,
        deleted_at: r.opt_int(28)?,
    })
}

/// The live-name unique index turns a lost race into the same 409 the pre-check gives.
fn name_conflict(e: crate::exec::Fail, name: &str) -> Error {
    if e.unique {
        Error::conflict(
            "resource_conflict",
            format!("An instance named {name} already exists in this account"),
        )
    } else {
        e.into()
    }
}

fn scoped(scope: &Scope, first: usize) -> (String, Vec<&str>) {
    let (c, b) = scope.clause(first);
    (
        c.replace("account_id", "i.account_id")
            .replace("team_id", "i.team_id"),
        b,
    )
}

impl Store {
    /// A live instance the scope may see: from the read cache when it holds the row, else
    /// the row by id (cached for the next read) checked against the scope here.
    pub async fn instance_get(
        &self,
        scope: &Scope,
        id: &str,
    ) -> Result<Option<InstanceRow>, Error> {
        let cache = self.cache();
        let row = match cache.instance(id) {
            Some(row) => Some(row),
            None => {
                let ticket = cache.ticket();
                let row = self.instance_read(id).await?;
                if let Some(r) = &row {
                    cache.keep_instance(ticket, r);
                }
                row
            }
        };
        Ok(row.filter(|r| visible(scope, r)))
    }

    /// The row by id, whatever its state and owner, from the database.
    async fn instance_read(&self, id: &str) -> Result<Option<InstanceRow>, Error> {
        let sql = format!("SELECT {COLS} {FROM} WHERE i.id = $1");
        if let Some(fast) = self.fast() {
            return fast.one(&sql, &[id], |r| row(r)).await;
        }
        let r = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.reader())
            .await
            .map_err(db_err)?;
        r.as_ref().map(row).transpose()
    }

    /// Live instances the scope may see, newest first (shared with the read cache).
    pub async fn instance_list(&self, scope: &Scope) -> Result<Arc<Vec<InstanceRow>>, Error> {
        let cache = self.cache();
        if let Some(rows) = cache.list(scope) {
            return Ok(rows);
        }
        let ticket = cache.ticket();
        let read = || async { Ok::<_, Error>(Arc::new(self.instance_list_read(scope).await?)) };
        let (rows, ticket) = match cache.list_fill(ticket, scope) {
            Some(turn) => (turn.fill.get_or_try_init(read).await?.clone(), turn.began),
            None => (read().await?, ticket),
        };
        Ok(cache.keep_list(ticket, scope, rows))
    }

    async fn instance_list_read(&self, scope: &Scope) -> Result<Vec<InstanceRow>, Error> {
        let (cond, binds) = scoped(scope, 1);
        let sql = format!(
            "SELECT {COLS} {FROM} WHERE {cond} AND {LIVE} ORDER BY i.created_at DESC, i.id DESC"
        );
        if let Some(fast) = self.fast() {
            let binds = binds.into_iter().map(String::from).collect();
            return fast.all(sql, binds, |r| row(r)).await;
        }
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(self.reader()).await.map_err(db_err)?;
        rows.iter().map(row).collect()
    }

    /// The scope's instances whose life overlaps `[start, end]`, deleted and failed ones
    /// included, newest first.
    pub async fn instance_history(
        &self,
        scope: &Scope,
        start: i64,
        end: i64,
        only: Option<&str>,
    ) -> Result<Vec<InstanceRow>, Error> {
        let (cond, binds) = scoped(scope, 3);
        let mut sql = format!(
            "SELECT {COLS} {FROM} WHERE i.created_at <= $1 AND (i.deleted_at IS NULL OR i.deleted_at >= $2) AND {cond}"
        );
        if only.is_some() {
            sql.push_str(&format!(" AND i.id = ${}", 3 + binds.len()));
        }
        sql.push_str(" ORDER BY i.created_at DESC, i.id DESC");
        let mut q = sqlx::query(&sql).bind(end).bind(start);
        for b in binds {
            q = q.bind(b);
        }
        if let Some(id) = only {
            q = q.bind(id);
        }
        let rows = q.fetch_all(self.reader()).await.map_err(db_err)?;
        rows.iter().map(row).collect()
    }

    /// Any instance by id, whatever its state, from the database (never the cache): for the
    /// engine and invariant checks.
    pub async fn instance_by_id(&self, id: &str) -> Result<Option<InstanceRow>, Error> {
        self.instance_read(id).await
    }

    /// Instances by id, whatever their state, from the database (never the cache), in no
    /// particular order; ids that do not exist are left out. The engine reads a claimed
    /// batch's instances with one query.
    pub async fn instances_by_ids(&self, ids: &[&str]) -> Result<Vec<InstanceRow>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if self.fast().is_some() {
            // In-process reads: no round trip to save.
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.extend(self.instance_read(id).await?);
            }
            return Ok(out);
        }
        let ids = crate::batch::padded(ids);
        let marks = crate::batch::marks(1, ids.len());
        let sql = format!("SELECT {COLS} {FROM} WHERE i.id IN ({marks})");
        let mut q = sqlx::query(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(self.reader()).await.map_err(db_err)?;
        rows.iter().map(row).collect()
    }

    /// Every instance in every state: for invariant checks and operator views.
    pub async fn instance_all(&self) -> Result<Vec<InstanceRow>, Error> {
        let sql = format!("SELECT {COLS} {FROM} ORDER BY i.created_at");
        let rows = sqlx::query(&sql)
            .fetch_all(self.reader())
            .await
            .map_err(db_err)?;
        rows.iter().map(row).collect()
    }
}

impl Tx {
    pub async fn instance_insert(&mut self, i: &NewInstance) -> Result<(), Error> {
        self.wrote_instance(&i.id);
        self.q(
            "INSERT INTO instances (id, account_id, team_id, name, host_id, region, instance_type, template_name,
               iso_url, os_type, cores, memory_gb, disk_gb, gpus, gpu_model, price_cents_per_hour, status,
               power_status, ip_address, username, ssh_key, password, metadata, active_task_id, created_at,
               updated_at, ready_at, deleted_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
               $21, $22, $23, $24, $25, $26, $27, $28)",
        )
            .bind(&i.id)
            .bind(&i.account_id)
            .bind(&i.team_id)
            .bind(&i.name)
            .bind(&i.host_id)
            .bind(&i.region)
            .bind(&i.instance_type)
            .bind(&i.template_name)
            .bind(&i.iso_url)
            .bind(&i.os_type)
            .bind(i.resources.cores)
            .bind(i.resources.memory_gb)
            .bind(i.resources.disk_gb)
            .bind(i.resources.gpus)
            .bind(&i.gpu_model)
            .bind(i.price_cents_per_hour)
            .bind(&i.status)
            .bind(&i.power_status)
            .bind(&i.ip_address)
            .bind(&i.username)
            .bind(&i.ssh_key)
            .bind(&i.password)
            .bind(&i.metadata)
            .bind(&i.active_task_id)
            .bind(i.created_at)
            .bind(i.updated_at)
            .bind(i.ready_at)
            .bind(i.deleted_at)
            .try_execute()
            .await
        .map_err(|e| name_conflict(e, &i.name))?;
        Ok(())
    }

    /// Writes many new instances in one statement (a batch of launches). A name taken
    /// fails the whole statement, as `instance_insert` fails for one.
    pub async fn instances_insert(&mut self, rows: &[NewInstance]) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        for i in rows {
            self.wrote_instance(&i.id);
        }
        let numbered = crate::batch::numbered(rows);
        let casts = crate::batch::casts(self.backend, &INSERT_CASTS);
        let sql = format!(
            "WITH v(n, {INSERT_COLS}) AS (VALUES {})
             INSERT INTO instances ({INSERT_COLS}) SELECT {INSERT_COLS} FROM v WHERE n > 0",
            crate::batch::values_list(1, numbered.len(), INSERT_CASTS.len(), &casts)
        );
        let mut vals: Vec<Val> = Vec::with_capacity(numbered.len() * INSERT_CASTS.len());
        for (n, i) in numbered {
            vals.extend(insert_vals(n, i));
        }
        let st = Statement::new(self.backend, &sql, vals);
        self.run(&st).await?;
        Ok(())
    }

    /// Moves a `creating` instance written in this transaction to another host (the launch
    /// wrote it on its best candidate before reserving capacity).
    pub async fn instance_rehost(
        &mut self,
        id: &str,
        host_id: &str,
        gpu_model: Option<&str>,
    ) -> Result<(), Error> {
        self.wrote_instance(id);
        self.q("UPDATE instances SET host_id = $1, gpu_model = $2 WHERE id = $3 AND status = 'creating'")
            .bind(host_id)
            .bind(gpu_model)
            .bind(id)
            .execute()
            .await?;
        Ok(())
    }

    /// Reads a live instance inside the transaction, for decisions the write depends on, and
    /// holds it to commit: on PostgreSQL another transaction deciding on the same instance
    /// (two address assignments picking the next interface, a rename and a delete's claim)
    /// waits, then reads what this one wrote. (SQLite runs one writer at a time.)
    pub async fn instance_get(
        &mut self,
        scope: &Scope,
        id: &str,
    ) -> Result<Option<InstanceRow>, Error> {
        let (cond, binds) = scoped(scope, 2);
        let lock = match self.backend {
            Backend::Postgres => " FOR NO KEY UPDATE OF i",
            Backend::Sqlite => "",
        };
        let sql = format!("SELECT {COLS} {FROM} WHERE i.id = $1 AND {cond} AND {LIVE}{lock}");
        let mut q = self.q(&sql).bind(id);
        for b in binds {
            q = q.bind(b);
        }
        let r = q.fetch_optional().await?;
        r.as_ref().map(row).transpose()
    }

    /// Gives a settled (`rented`, idle) instance to `task_id`, optionally moving it to
    /// `new_status`. False when the instance is not settled or not in scope.
    pub async fn instance_claim(
        &mut self,
        scope: &Scope,
        id: &str,
        task_id: &str,
        new_status: &str,
        now: i64,
    ) -> Result<bool, Error> {
        self.wrote_instance(id);
        let (cond, binds) = scope.clause(5);
        let sql = format!(
            "UPDATE instances SET active_task_id = $1, status = $2, updated_at = $3
             WHERE id = $4 AND {cond} AND status = 'rented' AND active_task_id IS NULL"
        );
        let mut q = self
            .q(&sql)
            .bind(task_id)
            .bind(new_status)
            .bind(now)
            .bind(id);
        for b in binds {
            q = q.bind(b);
        }
        Ok(q.execute().await? == 1)
    }

    /// `instance_claim` for many instances in one statement: each claim takes its instance
    /// for its task when the scope may see it and it is settled (`rented`, no task). The
    /// instances claimed, as they are now, in the order of `claims`; None for a claim that
    /// took nothing (the caller tells why by trying it alone). Two claims of one instance
    /// that may both take it: one does, either.
    pub async fn instances_claim(
        &mut self,
        claims: &[Claim],
        now: i64,
    ) -> Result<Vec<Option<InstanceRow>>, Error> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        for c in claims {
            self.wrote_instance(&c.id);
        }
        let rows = crate::batch::numbered(claims);
        let casts = crate::batch::casts(self.backend, &["::bigint", "", "", "", "", ""]);
        let (lock, claims_v) = claimable_in_id_order(self.backend);
        let sql = format!(
            "WITH v(n, id, account_id, team_id, task_id, status) AS (VALUES {}){lock}
             UPDATE instances SET active_task_id = v.task_id, status = v.status, updated_at = $1
             FROM {claims_v}
             WHERE {CLAIMABLE}
             RETURNING {CLAIMED}",
            crate::batch::values_list(2, rows.len(), 6, &casts)
        );
        let mut vals: Vec<Val> = vec![now.into()];
        for (n, c) in &rows {
            vals.extend([
                Val::from(*n),
                (&c.id).into(),
                (&c.scope.account_id).into(),
                (&c.scope.team_id).into(),
                (&c.task_id).into(),
                (&c.new_status).into(),
            ]);
        }
        let st = Statement::new(self.backend, &sql, vals);
        let got = self.fetch(&st).await?;
        let mut by_task: std::collections::HashMap<String, InstanceRow> = got
            .iter()
            .map(|r| row(r).map(|i| (i.active_task_id.clone().unwrap_or_default(), i)))
            .collect::<Result<_, _>>()?;
        Ok(claims.iter().map(|c| by_task.remove(&c.task_id)).collect())
    }

    /// True when another live instance of the account already has this name.
    pub async fn instance_name_taken(
        &mut self,
        account_id: &str,
        name: &str,
        except: &str,
    ) -> Result<bool, Error> {
        let r = self
            .q(
                "SELECT 1 AS x FROM instances WHERE account_id = $1 AND name = $2 AND id <> $3
               AND deleted_at IS NULL LIMIT 1",
            )
            .bind(account_id)
            .bind(name)
            .bind(except)
            .fetch_optional()
            .await?;
        Ok(r.is_some())
    }

    /// Moves the instance into a team (or out of any with None).
    pub async fn instance_set_team(
        &mut self,
        id: &str,
        team_id: Option<&str>,
        now: i64,
    ) -> Result<(), Error> {
        self.wrote_instance(id);
        self.q("UPDATE instances SET team_id = $1, updated_at = $2 WHERE id = $3")
            .bind(team_id)
            .bind(now)
            .bind(id)
            .execute()
            .await?;
        Ok(())
    }

    pub async fn instance_rename(&mut self, id: &str, name: &str, now: i64) -> Result<(), Error> {
        self.wrote_instance(id);
        self.q("UPDATE instances SET name = $1, updated_at = $2 WHERE id = $3")
            .bind(name)
            .bind(now)
            .bind(id)
            .try_execute()
            .await
            .map_err(|e| name_conflict(e, name))?;
        Ok(())
    }

    /// The create task finished: the instance is rented and running, and the one-time
    /// password is forgotten. Only the task holding the instance may do this.
    pub async fn instance_created(
        &mut self,
        id: &str,
        task_id: &str,
        now: i64,
    ) -> Result<bool, Error> {
        self.wrote_instance(id);
        let r = self.q(
            "UPDATE instances SET status = 'rented', power_status = 'running', active_task_id = NULL,
               password = NULL, ready_at = $1, updated_at = $1
             WHERE id = $2 AND active_task_id = $3 AND status = 'creating'",
        )
            .bind(now)
            .bind(id)
            .bind(task_id)
            .execute()
            .await?;
        Ok(r == 1)
    }

    /// `instance_created` for a batch of create tasks that all finished in this transaction
    /// (`Store::task_finish_created` on SQLite): one statement. Matching ids and task ids as
    /// two sets is exact because each task names its own instance.
    pub(crate) async fn instances_created(
        &mut self,
        done: &[&crate::tasks::Created],
        now: i64,
    ) -> Result<(), Error> {
        let done = crate::batch::padded(done);
        let n = done.len();
        let ids: Vec<String> = (0..n).map(|k| format!("${}", k + 2)).collect();
        let tasks: Vec<String> = (0..n).map(|k| format!("${}", k + 2 + n)).collect();
        let sql = format!(
            "UPDATE instances SET status = 'rented', power_status = 'running', active_task_id = NULL,
               password = NULL, ready_at = $1, updated_at = $1
             WHERE id IN ({}) AND active_task_id IN ({}) AND status = 'creating'",
            ids.join(", "),
            tasks.join(", ")
        );
        for d in &done {
            self.wrote_instance(&d.instance_id);
        }
        let mut q = self.q(&sql).bind(now);
        for d in &done {
            q = q.bind(&d.instance_id);
        }
        for d in &done {
            q = q.bind(&d.task_id);
        }
        q.execute().await?;
        Ok(())
    }

    /// Ends the instance (`deleted` or `failed`). True exactly once per instance, so the
    /// caller releases capacity exactly once.
    pub async fn instance_end(
        &mut self,
        id: &str,
        task_id: &str,
        status: &str,
        now: i64,
    ) -> Result<bool, Error> {
        let sql = "UPDATE instances SET status = $1, active_task_id = NULL, password = NULL, deleted_at = $2, updated_at = $2
             WHERE id = $3 AND active_task_id = $4 AND status IN ('creating', 'terminating')";
        self.task_guarded(sql, Some(status), now, id, task_id).await
    }

    /// Runs `sql`, an update of instance `id` that applies only while `task_id` holds it
    /// (`$1` the value, `$2` now, `$3` the id, `$4` the task). True when it applied.
    async fn task_guarded(
        &mut self,
        sql: &str,
        value: Option<&str>,
        now: i64,
        id: &str,
        task_id: &str,
    ) -> Result<bool, Error> {
        self.wrote_instance(id);
        let r = self
            .q(sql)
            .bind(value)
            .bind(now)
            .bind(id)
            .bind(task_id)
            .execute()
            .await?;
        Ok(r == 1)
    }

    /// Releases the instance from its task, recording the power state the task left behind.
    pub async fn instance_release(
        &mut self,
        id: &str,
        task_id: &str,
        power: Option<&str>,
        now: i64,
    ) -> Result<bool, Error> {
        // Without a power state to record, the one it has is written back.
        let sql = "UPDATE instances SET active_task_id = NULL,
               power_status = COALESCE($1, power_status), updated_at = $2
             WHERE id = $3 AND active_task_id = $4";
        self.task_guarded(sql, power, now, id, task_id).await
    }

    /// Gives up a claim and puts the instance back in `status` (a delete that failed leaves
    /// the instance rented so the tenant can try again).
    pub async fn instance_unclaim(
        &mut self,
        id: &str,
        task_id: &str,
        status: &str,
        now: i64,
    ) -> Result<bool, Error> {
        let sql = "UPDATE instances SET active_task_id = NULL, status = $1, updated_at = $2
             WHERE id = $3 AND active_task_id = $4";
        self.task_guarded(sql, Some(status), now, id, task_id).await
    }
}
