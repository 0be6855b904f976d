//! The end of delete tasks, many at once (group commit, as for creates: `task_finish_created`).
//! Written one by one, a delete's end was seven statements on the one path every delete
//! takes (task, instance, host, address history, addresses, and the transaction's two ends).

use crate::batch::{numbered, padded, values_list, Statement, Val};
use crate::{get_i64, get_str, Store, Tx};
use lobster_core::capacity::Resources;
use lobster_core::Error;
use std::collections::{BTreeMap, HashSet};

/// A delete task whose VM is gone, for `Store::task_finish_deleted`.
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    pub task_id: String,
    pub instance_id: String,
    /// The lease the run holds the task under (its claim's `lease_owner`).
    pub owner: String,
}

impl Store {
    /// Delete tasks that finished well: each task COMPLETED and, the first time, its instance
    /// `deleted` with its capacity and addresses given back, all in one transaction. Each
    /// is written only while the task is still held under the item's `owner` (the run's own
    /// claim). Answers, in the order of `items`,
    /// whether it was written (false: the lease was lost, nothing of it written).
    pub async fn task_finish_deleted(
        &self,
        message: &str,
        now: i64,
        items: &[Deleted],
    ) -> Result<Vec<bool>, Error> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(rounds) = crate::batch::rounds(items, |d| d.task_id.as_str()) {
            // Two runs of one task ending together: each statement answers by task id, so
            // each run goes in a statement of its own (as for creates).
            let write = |some: Vec<Deleted>| async move {
                self.finish_deleted_once(message, now, &some).await
            };
            return crate::batch::in_rounds(items, rounds, false, write).await;
        }
        self.finish_deleted_once(message, now, items).await
    }

    /// `task_finish_deleted` of items whose task ids are all different.
    async fn finish_deleted_once(
        &self,
        message: &str,
        now: i64,
        items: &[Deleted],
    ) -> Result<Vec<bool>, Error> {
        if self.backend() == crate::Backend::Postgres {
            return self.deleted_write(message, now, items).await;
        }
        let mut tx = self.begin().await?;
        let finished = tx.tasks_finished(message, now, items).await?;
        let mine: Vec<&Deleted> = items
            .iter()
            .filter(|d| finished.contains(&d.task_id))
            .collect();
        tx.hosts_of_lock(&mine).await?;
        let ended = tx.instances_ended(&mine, now).await?;
        let mut by_host: BTreeMap<String, Resources> = BTreeMap::new();
        for (_, host, r) in &ended {
            let sum = by_host.entry(host.clone()).or_default();
            *sum = sum.plus(r);
        }
        let adds: Vec<(String, Resources)> = by_host.into_iter().collect();
        tx.hosts_release(&adds).await?;
        let ids: Vec<&str> = ended.iter().map(|(id, _, _)| id.as_str()).collect();
        tx.ips_release_of(&ids, now).await?;
        tx.commit().await?;
        Ok(written_of(items, &finished))
    }
}

impl Store {
    /// `task_finish_deleted` on PostgreSQL: one statement, its own transaction. Written as a
    /// transaction of separate statements it was eight round trips (BEGIN, the tasks, the
    /// hosts' locks, the instances, the hosts, the addresses' history, the addresses,
    /// COMMIT), each costing about as much as the statement it carried. The order of the
    /// locks is the transaction's: the tasks, then their instances' hosts in id order, then
    /// the instances (`ended` waits for `locked`, see `hosts_of_lock`).
    async fn deleted_write(
        &self,
        message: &str,
        now: i64,
        items: &[Deleted],
    ) -> Result<Vec<bool>, Error> {
        let rows = numbered(items);
        let casts = crate::batch::casts(self.backend(), &["::bigint", "", "", ""]);
        let free = crate::ips::freeing(3, "instance_id IN (SELECT id FROM ended)");
        let sql = format!(
            concat!(
                "WITH v(n, task_id, instance_id, owner) AS (VALUES {values}),
             finished AS (
               UPDATE tasks SET status = 'COMPLETED', message = $1, updated_at = $2, finished_at = $2,
                 lease_owner = NULL, lease_until = NULL
               FROM v
               WHERE tasks.id = v.task_id AND v.n > 0 AND tasks.lease_owner = v.owner AND ",
                processing!("tasks."),
                "
               RETURNING tasks.id, v.instance_id),
             locked AS MATERIALIZED (
               SELECT hosts.id FROM hosts
               WHERE hosts.id IN (SELECT host_id FROM instances
                                  WHERE id IN (SELECT instance_id FROM finished))
               ORDER BY hosts.id FOR NO KEY UPDATE OF hosts),
             ended AS (
               UPDATE instances SET status = 'deleted', active_task_id = NULL, password = NULL,
                 deleted_at = $2, updated_at = $2
               FROM finished
               WHERE instances.id = finished.instance_id AND instances.active_task_id = finished.id
                 AND instances.status IN ('creating', 'terminating')
                 AND (SELECT count(*) FROM locked) >= 0
               RETURNING instances.id, instances.host_id, instances.cores, instances.memory_gb,
                 instances.disk_gb, instances.gpus),
             shares AS (
               SELECT host_id, sum(cores) AS c, sum(memory_gb) AS m, sum(disk_gb) AS d,
                 sum(gpus) AS g
               FROM ended GROUP BY host_id),
             released AS (
               UPDATE hosts SET cores_used = cores_used - shares.c,
                 memory_used = memory_used - shares.m, disk_used = disk_used - shares.d,
                 gpus_used = gpus_used - shares.g
               FROM shares WHERE hosts.id = shares.host_id),
             history AS (
               UPDATE ip_history SET released_at = $2
               WHERE released_at IS NULL AND instance_id IN (SELECT id FROM ended)),
             freed AS ({free})
             SELECT id FROM finished"
            ),
            values = values_list(4, rows.len(), 4, &casts),
            free = free,
        );
        let mut vals: Vec<Val> = vec![
            message.into(),
            now.into(),
            crate::ips::released_seq_base(now).into(),
        ];
        for (n, d) in &rows {
            vals.extend(owned_row(*n, d));
        }
        let st = Statement::new(self.backend(), &sql, vals);
        let got = self.fetch(&st).await;
        // Even when the outcome is unknown: a needless invalidation costs a read.
        let tokens = items
            .iter()
            .map(|d| crate::cache::Token::Instance(d.instance_id.clone()));
        self.cache().invalidate(tokens.collect(), true);
        let finished: HashSet<String> = got?
            .iter()
            .map(|r| get_str(r, "id"))
            .collect::<Result<_, _>>()?;
        Ok(written_of(items, &finished))
    }
}

/// A VALUES row of `(n, task_id, instance_id, owner)`.
fn owned_row<'a>(n: i64, d: &'a Deleted) -> [Val<'a>; 4] {
    [
        Val::from(n),
        (&d.task_id).into(),
        (&d.instance_id).into(),
        (&d.owner).into(),
    ]
}

/// Whether each of `items` was written: its task among those `finished`.
fn written_of(items: &[Deleted], finished: &HashSet<String>) -> Vec<bool> {
    items
        .iter()
        .map(|d| finished.contains(&d.task_id))
        .collect()
}

impl Tx {
    /// Locks the hosts of the instances of `items`, in id order (PostgreSQL), before their
    /// instances end: a batch of launches locks its hosts, then inserts names, and waits for
    /// an ending instance's name until that transaction commits; were the hosts locked after
    /// the instances, such a batch holding one of them would deadlock with this end.
    async fn hosts_of_lock(&mut self, items: &[&Deleted]) -> Result<(), Error> {
        if items.is_empty() || self.backend != crate::Backend::Postgres {
            return Ok(());
        }
        let ids: Vec<&str> = items.iter().map(|d| d.instance_id.as_str()).collect();
        let ids = padded(&ids);
        let sql = format!(
            "SELECT id FROM hosts WHERE id IN (SELECT host_id FROM instances WHERE id IN ({}))
             ORDER BY id FOR NO KEY UPDATE",
            crate::batch::marks(1, ids.len())
        );
        let vals: Vec<Val> = ids.iter().map(|id| Val::from(**id)).collect();
        self.fetch(&Statement::new(self.backend, &sql, vals))
            .await?;
        Ok(())
    }

    /// The tasks among `items` still held under their runs' leases, now COMPLETED.
    async fn tasks_finished(
        &mut self,
        message: &str,
        now: i64,
        items: &[Deleted],
    ) -> Result<HashSet<String>, Error> {
        let rows = numbered(items);
        let casts = crate::batch::casts(self.backend, &["::bigint", "", "", ""]);
        let sql = format!(
            concat!(
                "WITH v(n, task_id, instance_id, owner) AS (VALUES {})
             UPDATE tasks SET status = 'COMPLETED', message = $1, updated_at = $2, finished_at = $2,
               lease_owner = NULL, lease_until = NULL
             FROM v
             WHERE tasks.id = v.task_id AND v.n > 0 AND tasks.lease_owner = v.owner
               AND ",
                processing!("tasks."),
                "
             RETURNING tasks.id"
            ),
            values_list(3, rows.len(), 4, &casts)
        );
        let mut vals: Vec<Val> = vec![message.into(), now.into()];
        for (n, d) in &rows {
            vals.extend(owned_row(*n, d));
        }
        let st = Statement::new(self.backend, &sql, vals);
        let got = self.fetch(&st).await?;
        got.iter().map(|r| get_str(r, "id")).collect()
    }

    /// Ends the instances of finished delete tasks (each only while its task holds it, so
    /// once); the ones ended, with the host and shape whose capacity they held.
    async fn instances_ended(
        &mut self,
        items: &[&Deleted],
        now: i64,
    ) -> Result<Vec<(String, String, Resources)>, Error> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        for d in items {
            self.wrote_instance(&d.instance_id);
        }
        let rows = numbered(items);
        let casts = crate::batch::casts(self.backend, &["::bigint", "", ""]);
        let sql = format!(
            "WITH v(n, task_id, instance_id) AS (VALUES {})
             UPDATE instances SET status = 'deleted', active_task_id = NULL, password = NULL,
               deleted_at = $1, updated_at = $1
             FROM v
             WHERE instances.id = v.instance_id AND v.n > 0 AND instances.active_task_id = v.task_id
               AND instances.status IN ('creating', 'terminating')
             RETURNING instances.id, instances.host_id, instances.cores, instances.memory_gb,
               instances.disk_gb, instances.gpus",
            values_list(2, rows.len(), 3, &casts)
        );
        let mut vals: Vec<Val> = vec![now.into()];
        for (n, d) in &rows {
            vals.extend([Val::from(*n), (&d.task_id).into(), (&d.instance_id).into()]);
        }
        let st = Statement::new(self.backend, &sql, vals);
        let got = self.fetch(&st).await?;
        got.iter()
            .map(|r| {
                let shape = Resources {
                    cores: get_i64(r, "cores")?,
                    memory_gb: get_i64(r, "memory_gb")?,
                    disk_gb: get_i64(r, "disk_gb")?,
                    gpus: get_i64(r, "gpus")?,
                };
                Ok((get_str(r, "id")?, get_str(r, "host_id")?, shape))
            })
            .collect()
    }

    /// Gives back each host's share (one entry per host).
    pub(crate) async fn hosts_release(
        &mut self,
        shares: &[(String, Resources)],
    ) -> Result<(), Error> {
        if shares.is_empty() {
            return Ok(());
        }
        let rows = numbered(shares);
        let casts = crate::batch::casts(self.backend, &crate::hosts::SHARE_CASTS);
        let (lock, locked) = crate::hosts::in_id_order(self.backend);
        let sql = format!(
            "WITH v(n, id, c, m, d, g) AS (VALUES {}){lock}
             UPDATE hosts SET cores_used = cores_used - v.c, memory_used = memory_used - v.m,
               disk_used = disk_used - v.d, gpus_used = gpus_used - v.g
             FROM v WHERE hosts.id = v.id AND v.n > 0{locked}",
            values_list(1, rows.len(), 6, &casts)
        );
        let mut vals: Vec<Val> = Vec::new();
        for (n, (id, r)) in &rows {
            vals.extend(crate::hosts::share_vals(*n, id, r));
        }
        let st = Statement::new(self.backend, &sql, vals);
        self.run(&st).await?;
        Ok(())
    }

    /// `ip_release_all` for many instances: their addresses free, their holding periods
    /// closed.
    async fn ips_release_of(&mut self, ids: &[&str], now: i64) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = padded(ids);
        let marks = |first: usize| crate::batch::marks(first, ids.len());
        let history = format!(
            "UPDATE ip_history SET released_at = $1 WHERE released_at IS NULL AND instance_id IN ({})",
            marks(2)
        );
        let free = crate::ips::freeing(1, &format!("instance_id IN ({})", marks(2)));
        let of: Vec<Val> = ids.iter().map(|id| Val::from(**id)).collect();
        let mut at: Vec<Val> = vec![now.into()];
        at.extend(of.iter().cloned());
        let mut back: Vec<Val> = vec![crate::ips::released_seq_base(now).into()];
        back.extend(of);
        for (sql, vals) in [(history, at), (free, back)] {
            let st = Statement::new(self.backend, &sql, vals);
            self.run(&st).await?;
        }
        Ok(())
    }
}
