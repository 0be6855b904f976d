//! A batch of launches written in one statement, its own transaction (PostgreSQL).
//!
//! Written as a transaction of separate statements, a batch is eight round trips (BEGIN, the
//! hosts, the addresses found and taken, the instances, the tasks, the reservations,
//! COMMIT), and on a loaded machine each costs about as much as the statement it carries:
//! the batch is bound by them, not by the database's work (docs/benchmarks.md, session 12).
//! Here the batch is placed on hosts read just before (`Store::hosts_read`), and one
//! statement locks those hosts and re-checks their room, takes the region's first free
//! addresses, and writes the addresses, the instances, the tasks and the reservations (a
//! primary address's holding is its instance's life, so it has no history row of its own:
//! see `Store::ip_history`) — each of those only when every host still had room and every launch got an
//! address, so that the statement writes all of the batch or none of it.

use crate::batch::{casts, numbered, values_list, Statement, Val};
use crate::{get_i64, get_opt_i64, get_opt_str, instances, ips, tasks, Backend, Store};
use crate::{Lease, NewInstance, NewTask};
use lobster_core::capacity::Resources;
use lobster_core::Error;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What `launches_write` is asked to write: launches of one region, each instance with its
/// create task (task k belongs to instance k). (Each primary interface's MAC follows from
/// the address the statement takes: `ip::mac_for_address`.)
pub struct LaunchBatch<'a> {
    pub region: &'a str,
    /// The instances as they will be written but for `ip_address`, which the statement sets.
    pub instances: &'a [NewInstance],
    /// The create tasks; `"ip_address":null` in their parameters becomes the address taken.
    pub tasks: &'a [NewTask],
    /// Written claimed under this lease (handed to this server's workers), else pending.
    pub lease: Option<&'a Lease>,
    /// What each host reserves for the batch, one entry per host.
    pub adds: &'a [(String, Resources)],
    pub now: i64,
    /// Pass over hosts whose rows another transaction holds (answered `NoRoom`) rather than
    /// wait for them: for a lone launch, which then takes the lone path, where it passes over
    /// a held host to the next candidate with room.
    pub skip_held: bool,
}

/// How a batch ended: written (each instance's address, in order), or nothing written
/// because a host no longer had room (or was no longer available) or the region had too
/// few free addresses.
#[derive(Debug, PartialEq)]
pub enum LaunchesWritten {
    Written(Vec<String>),
    NoRoom,
    NoAddresses,
}

/// The task parameters' stand-in for the address the statement takes.
pub const ADDRESS_TO_COME: &str = "\"ip_address\":null";

impl Store {
    /// Writes `b` in one statement (PostgreSQL only): all of it, or nothing and why.
    pub async fn launches_write(&self, b: &LaunchBatch<'_>) -> Result<LaunchesWritten, Error> {
        if self.backend() != Backend::Postgres {
            return Err(Error::Internal(
                "launches_write is for PostgreSQL; SQLite writes a batch in a transaction".into(),
            ));
        }
        if b.instances.is_empty() {
            return Ok(LaunchesWritten::Written(Vec::new()));
        }
        check(b)?;
        let mut hints = ips::TxHints::new(&self.ip_hints);
        let mut from = hints.from(b.region);
        let tokens = b.instances.iter().map(|i| i.id.clone());
        let written = loop {
            let got = self.launches_write_from(b, from).await;
            match &got {
                Ok(Outcome::Short) if from > 0 => from = 0,
                _ => break got,
            }
        };
        // Even when the outcome is unknown (the connection failed): a needless
        // invalidation costs a read, a missing one serves a stale row.
        self.cache()
            .invalidate(tokens.map(crate::cache::Token::Instance).collect(), true);
        if self.batch_answer_lost() {
            return Err(Error::Internal(
                "the launch batch's answer was lost (test)".into(),
            ));
        }
        let written = match written {
            Err(e) => {
                // The connection may have failed after the commit: then the batch is there,
                // and its launches must not be answered as failed (each would go again alone
                // and be refused on its own instance's id).
                return match self.launches_found(b).await {
                    Ok(Some(addresses)) => Ok(LaunchesWritten::Written(addresses)),
                    _ => Err(e),
                };
            }
            Ok(w) => w,
        };
        match written {
            Outcome::Written(addresses, last_seq) => {
                hints.took(b.region, last_seq);
                hints.end(true);
                Ok(LaunchesWritten::Written(addresses))
            }
            Outcome::Short => Ok(LaunchesWritten::NoAddresses),
            Outcome::NoRoom => Ok(LaunchesWritten::NoRoom),
        }
    }

    /// Whether `b` was written, by a look at its instances (their ids are new, so one found
    /// is this batch's): each one's address, in order, when all of them are there; None when
    /// any is missing (a batch is written whole or not at all).
    pub async fn launches_found(&self, b: &LaunchBatch<'_>) -> Result<Option<Vec<String>>, Error> {
        let ids: Vec<&str> = b.instances.iter().map(|i| i.id.as_str()).collect();
        let rows = self.instances_by_ids(&ids).await?;
        let found = b.instances.iter().map(|i| {
            let row = rows.iter().find(|r| r.id == i.id)?;
            row.ip_address.clone()
        });
        Ok(found.collect())
    }

    async fn launches_write_from(&self, b: &LaunchBatch<'_>, from: i64) -> Result<Outcome, Error> {
        let st = batch_statement(b, from);
        let rows = self.fetch(&st).await?;
        let first = rows
            .first()
            .ok_or_else(|| Error::Internal("database: no row returned".into()))?;
        let want = b.instances.len() as i64;
        if get_i64(first, "ok")? == 0 {
            return Ok(match get_i64(first, "ips")? < want {
                true => Outcome::Short,
                false => Outcome::NoRoom,
            });
        }
        let mut addresses = vec![String::new(); b.instances.len()];
        let mut last = 0;
        for r in &rows {
            let (Some(n), Some(address), Some(seq)) = (
                get_opt_i64(r, "n")?,
                get_opt_str(r, "address")?,
                get_opt_i64(r, "seq")?,
            ) else {
                return Err(Error::Internal(
                    "database: a launch without its address".into(),
                ));
            };
            addresses[(n - 1) as usize] = address;
            last = last.max(seq);
        }
        if addresses.iter().any(String::is_empty) {
            return Err(Error::Internal(
                "database: a launch without its address".into(),
            ));
        }
        Ok(Outcome::Written(addresses, last))
    }
}

/// What the statement relies on and does not check itself: a task per instance (else
/// instances could be written without their tasks), and each host once among the additions
/// (else each share would be checked alone and the host overbooked).
fn check(b: &LaunchBatch<'_>) -> Result<(), Error> {
    let n = b.instances.len();
    if b.tasks.len() != n {
        return Err(Error::Internal(format!(
            "a launch batch of {n} instances with {} tasks",
            b.tasks.len()
        )));
    }
    let mut hosts: Vec<&str> = b.adds.iter().map(|(h, _)| h.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    if hosts.len() != b.adds.len() {
        return Err(Error::Internal(
            "a launch batch adds to a host twice".into(),
        ));
    }
    Ok(())
}

enum Outcome {
    Written(Vec<String>, i64),
    Short,
    NoRoom,
}

/// The statement. `$1` region, `$2` where the address search starts, `$3` launches, `$4`
/// now, `$5` hosts, `$6`/`$7` the lease's owner and end; then the VALUES rows: instances
/// (`v`), tasks (`t`), hosts' additions (`h`). Every write is gated
/// on `ok`, computed once, after the hosts are locked in id order (`FOR NO KEY UPDATE`, as a
/// single launch locks its host, re-checks their room on their latest versions) and the addresses locked (`SKIP LOCKED`: those another launch
/// holds are passed over). The instances are inserted in name order, so that two servers'
/// batches naming the same instances wait for each other's names in one order, never each
/// holding one the other waits for.
fn batch_statement<'a>(b: &'a LaunchBatch<'_>, from: i64) -> Statement<'a> {
    let inst = numbered(b.instances);
    let task = numbered(b.tasks);
    let hosts = numbered(b.adds);
    let mut vals: Vec<Val> = vec![
        b.region.into(),
        from.into(),
        (b.instances.len() as i64).into(),
        b.now.into(),
        (b.adds.len() as i64).into(),
        b.lease.map(|l| l.owner.as_str()).into(),
        b.lease.map(|l| l.until).into(),
    ];
    for (n, i) in &inst {
        vals.extend(instances::insert_vals(*n, i));
    }
    for (n, t) in &task {
        vals.extend(tasks::insert_vals(*n, t));
    }
    for (n, (id, r)) in &hosts {
        vals.extend(crate::hosts::share_vals(*n, id, r));
    }
    let shape = Shape {
        rows: inst.len(),
        hosts: hosts.len(),
        skip_held: b.skip_held,
        leased: b.lease.is_some(),
    };
    Statement::shared(batch_sql(shape), vals)
}

/// What the launch statement's text depends on: the padded numbers of launches and of
/// hosts, and two flags. Padded to powers of two, a handful of shapes serve every batch.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    rows: usize,
    hosts: usize,
    skip_held: bool,
    leased: bool,
}

/// The statement's text for `shape`, built once: it is kilobytes of SQL (a VALUES cell per
/// column and launch), and building it for every batch was about a twentieth of the
/// server's work in a burst of launches (`perf`, docs/benchmarks.md, session 25).
fn batch_sql(shape: Shape) -> Arc<str> {
    static TEXTS: OnceLock<Mutex<HashMap<Shape, Arc<str>>>> = OnceLock::new();
    let texts = TEXTS.get_or_init(Default::default);
    if let Some(sql) = texts.lock().expect("launch texts").get(&shape) {
        return sql.clone();
    }
    let sql: Arc<str> = batch_text(shape).into();
    texts
        .lock()
        .expect("launch texts")
        .insert(shape, sql.clone());
    sql
}

/// The statement's text (see `batch_statement`).
fn batch_text(shape: Shape) -> String {
    // The first parameter of the instances' rows, then the tasks', then the hosts' (after
    // the seven of the statement itself).
    let inst_casts = casts(Backend::Postgres, &instances::INSERT_CASTS);
    let task_casts = casts(Backend::Postgres, &tasks::INSERT_CASTS);
    let host_casts = crate::hosts::SHARE_CASTS;
    let v_first = 8;
    let t_first = v_first + shape.rows * inst_casts.len();
    let h_first = t_first + shape.rows * task_casts.len();
    let v = values_list(v_first, shape.rows, inst_casts.len(), &inst_casts);
    let t = values_list(t_first, shape.rows, task_casts.len(), &task_casts);
    let h = values_list(h_first, shape.hosts, host_casts.len(), &host_casts);
    let (status, attempts, owner, until) =
        tasks::leased_as(Backend::Postgres, shape.leased, "$6", "$7");
    let inserted_instance: Vec<String> = instances::INSERT_COLS
        .split(',')
        .map(str::trim)
        .map(|c| match c {
            "ip_address" => "a.address".to_string(),
            c => format!("a.{c}"),
        })
        .collect();
    format!(
        "WITH v(n, {icols}) AS (VALUES {v}),
         t(n, {tcols}) AS (VALUES {t}),
         h(n, id, c, m, d, g) AS (VALUES {h}),
         locked AS MATERIALIZED (
           SELECT hosts.id FROM hosts JOIN h ON hosts.id = h.id AND h.n > 0
           WHERE hosts.status = 'available'
             AND hosts.cores_used + h.c <= hosts.cores_total AND hosts.memory_used + h.m <= hosts.memory_total
             AND hosts.disk_used + h.d <= hosts.disk_total AND hosts.gpus_used + h.g <= hosts.gpus_total
           ORDER BY hosts.id FOR NO KEY UPDATE OF hosts{skip}),
         free AS MATERIALIZED (
           SELECT address, seq, row_number() OVER (ORDER BY seq) AS k FROM (
             SELECT address, seq FROM ip_addresses
             WHERE region = $1 AND instance_id IS NULL AND seq >= $2::bigint
             ORDER BY seq LIMIT $3::bigint FOR UPDATE SKIP LOCKED) f),
         ok AS MATERIALIZED (
           SELECT CASE WHEN (SELECT count(*) FROM locked) = $5::bigint
                        AND (SELECT count(*) FROM free) = $3::bigint THEN 1 ELSE 0 END::bigint AS ok,
                  (SELECT count(*) FROM free)::bigint AS ips,
                  $6::text AS lease_owner, $7::bigint AS lease_until),
         a AS (SELECT free.address, free.seq, v.* FROM free JOIN v ON v.n = free.k
               WHERE (SELECT ok FROM ok) = 1),
         taken AS (
           UPDATE ip_addresses SET instance_id = a.id, assigned_at = $4::bigint, interface_name = 'net0',
             mac_address = {mac}, is_primary = 1
           FROM a WHERE ip_addresses.address = a.address),
         inserted AS (
           INSERT INTO instances ({icols}) SELECT {ivals} FROM a ORDER BY a.account_id, a.name),
         created AS (
           INSERT INTO tasks {tinserted}
           SELECT t.id, t.account_id, t.team_id, t.instance_id, t.operation, {status},
             replace(t.params, '{marker}', '\"ip_address\":' || to_json(a.address)::text),
             t.message, {attempts}, t.max_attempts, {owner}, {until}, t.at, t.at, t.at
           FROM t JOIN a ON a.n = t.n),
         reserved AS (
           UPDATE hosts SET cores_used = cores_used + h.c, memory_used = memory_used + h.m,
             disk_used = disk_used + h.d, gpus_used = gpus_used + h.g
           FROM h WHERE hosts.id = h.id AND h.n > 0 AND (SELECT ok FROM ok) = 1)
         SELECT ok.ok, ok.ips, a.n, a.address, a.seq FROM ok LEFT JOIN a ON true",
        icols = instances::INSERT_COLS,
        tcols = tasks::INSERT_COLS,
        tinserted = tasks::INSERTED,
        ivals = inserted_instance.join(", "),
        marker = ADDRESS_TO_COME,
        skip = if shape.skip_held { " SKIP LOCKED" } else { "" },
        mac = ips::pg_mac("a.address"),
    )
}
