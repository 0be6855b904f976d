//! Hosts, their reserved capacity, and the IP pools. Reservation is a conditional UPDATE that
//! only succeeds while the host still has room, so it holds across processes (invariant 1).

use crate::{db_err, get_opt_str, get_str, Backend, Cells, Store, Tx};
use lobster_core::capacity::{HostFree, Resources};
use lobster_core::fleet::Fleet;
use lobster_core::Error;

#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    pub id: String,
    pub region: String,
    pub gpu_model: Option<String>,
    pub status: String,
    pub total: Resources,
    pub used: Resources,
}

impl HostRow {
    pub fn free(&self) -> Resources {
        Resources {
            cores: self.total.cores - self.used.cores,
            memory_gb: self.total.memory_gb - self.used.memory_gb,
            disk_gb: self.total.disk_gb - self.used.disk_gb,
            gpus: self.total.gpus - self.used.gpus,
        }
    }

    pub fn as_free(&self) -> HostFree {
        HostFree {
            host_id: self.id.clone(),
            region: self.region.clone(),
            gpu_model: self.gpu_model.clone(),
            free: self.free(),
            available: self.status == "available",
        }
    }
}

const COLS: &str =
    "id, region, gpu_model, status, cores_total, memory_total, disk_total, gpus_total,
    cores_used, memory_used, disk_used, gpus_used";

/// Reads the columns of `COLS` by position.
fn host(r: &impl Cells) -> Result<HostRow, Error> {
    Ok(HostRow {
        id: r.text(0)?,
        region: r.text(1)?,
        gpu_model: r.opt_text(2)?,
        status: r.text(3)?,
        total: Resources {
            cores: r.int(4)?,
            memory_gb: r.int(5)?,
            disk_gb: r.int(6)?,
            gpus: r.int(7)?,
        },
        used: Resources {
            cores: r.int(8)?,
            memory_gb: r.int(9)?,
            disk_gb: r.int(10)?,
            gpus: r.int(11)?,
        },
    })
}

/// The host takes new placements and has room for $1–$4 (cores, memory, disk, GPUs).
const HAS_ROOM: &str = "status = 'available'
    AND cores_used + $1 <= cores_total AND memory_used + $2 <= memory_total
    AND disk_used + $3 <= disk_total AND gpus_used + $4 <= gpus_total";

impl Store {
    /// Makes the database's hosts and IP pools match the fleet configuration. Reservations are
    /// kept; hosts no longer configured are retired (no new placements) rather than deleted.
    ///
    /// Two transactions, addresses first: a launch locks its address, then its host, so a
    /// sync that held the hosts while its address inserts waited on a running launch's
    /// address deadlocked with it (the crash harness found it when a restarted server synced
    /// while the other launched). New addresses are harmless before their hosts change.
    pub async fn fleet_sync(&self, fleet: &Fleet) -> Result<(), Error> {
        self.ip_pools_sync(fleet).await?;
        let mut tx = self.begin().await?;
        if self.backend() == Backend::Postgres {
            // Every host, in id order (see `in_id_order`): the update below would lock
            // them in the table's order, against a launch holding one and waiting for the
            // next.
            tx.q("SELECT id FROM hosts ORDER BY id FOR UPDATE")
                .fetch_all()
                .await?;
        }
        tx.q("UPDATE hosts SET status = 'retired'")
            .execute()
            .await?;
        for h in &fleet.hosts {
            tx.q(
                "INSERT INTO hosts (id, region, gpu_model, status, cores_total, memory_total, disk_total, gpus_total)
                 VALUES ($1, $2, $3, 'available', $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET region = excluded.region, gpu_model = excluded.gpu_model,
                   status = 'available', cores_total = excluded.cores_total, memory_total = excluded.memory_total,
                   disk_total = excluded.disk_total, gpus_total = excluded.gpus_total",
            )
                .bind(&h.id)
                .bind(&h.region)
                .bind(&h.gpu_model)
                .bind(h.cores)
                .bind(h.memory_gb)
                .bind(h.disk_gb)
                .bind(h.gpus)
                .execute()
                .await?;
        }
        tx.commit().await
    }

    /// Adds every configured pool address the database does not have yet; a free address no
    /// pool holds any more is removed, and one whose pool moved to another region moves with
    /// it. (An address still held when its pool is dropped stays with its instance, retired:
    /// never given out again once released, and removed at the next start after that.)
    async fn ip_pools_sync(&self, fleet: &Fleet) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        // New addresses may sort before the hints.
        tx.ips_added();
        let mut configured: std::collections::HashMap<String, &str> =
            std::collections::HashMap::new();
        for r in &fleet.regions {
            let mut addrs = Vec::new();
            for pool in &r.ip_pools {
                addrs.extend(lobster_core::ip::parse_pool(pool).map_err(Error::Internal)?);
            }
            // A place in the pools must stay below every released address's `seq`.
            if addrs.len() as i64 >= crate::ips::POOL_SPAN {
                return Err(Error::Internal(format!(
                    "region {} has {} pool addresses; at most {} are supported",
                    r.name,
                    addrs.len(),
                    crate::ips::POOL_SPAN - 1
                )));
            }
            configured.extend(addrs.iter().map(|a| (a.to_string(), r.name.as_str())));
            // Many rows per statement: a /15 pool is 130,000 addresses, synced on every start.
            for (n, chunk) in addrs.chunks(500).enumerate() {
                let values: Vec<String> = (0..chunk.len())
                    .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                    .collect();
                let sql = format!(
                    "INSERT INTO ip_addresses (address, region, seq) VALUES {} ON CONFLICT (address) DO NOTHING",
                    values.join(", ")
                );
                let mut q = tx.q(&sql);
                for (i, a) in chunk.iter().enumerate() {
                    let seq = (n * 500 + i + 1) as i64;
                    q = q.bind(a.to_string()).bind(&r.name).bind(seq);
                }
                q.execute().await?;
            }
        }
        let rehome = ip_pools_prune(&mut tx, &configured).await?;
        tx.commit().await?;
        self.ip_held_rehome(&rehome).await;
        Ok(())
    }

    pub async fn host_list(&self) -> Result<Vec<HostRow>, Error> {
        let sql = format!("SELECT {COLS} FROM hosts ORDER BY id");
        if let Some(fast) = self.fast() {
            // Every launch reads the hosts first: in-process on SQLite.
            return fast.few(&sql, &[], |r| host(r)).await;
        }
        let rows = sqlx::query(&sql)
            .fetch_all(self.reader())
            .await
            .map_err(db_err)?;
        rows.iter().map(host).collect()
    }
}

impl Tx {
    /// Reserves `r` on the host if it still has room; false when it does not. Waits for a
    /// transaction that holds the host's row.
    pub async fn host_reserve(&mut self, host_id: &str, r: &Resources) -> Result<bool, Error> {
        self.host_reserve_where(host_id, r, "$5").await
    }

    /// As `host_reserve`, but false at once when another transaction holds the host's row
    /// (PostgreSQL; SQLite runs one writer at a time, so nothing else can hold it).
    pub async fn host_reserve_unless_busy(
        &mut self,
        host_id: &str,
        r: &Resources,
    ) -> Result<bool, Error> {
        match self.backend {
            Backend::Postgres => {
                // The room is checked inside the locking subquery too: a host without room
                // must not stay locked by this launch while it tries the next candidate (two
                // launches each holding a full host and waiting for the other's would
                // deadlock).
                let free = format!(
                    "(SELECT id FROM hosts WHERE id = $5 AND {HAS_ROOM} FOR NO KEY UPDATE SKIP LOCKED)"
                );
                self.host_reserve_where(host_id, r, &free).await
            }
            Backend::Sqlite => self.host_reserve(host_id, r).await,
        }
    }

    async fn host_reserve_where(
        &mut self,
        host_id: &str,
        r: &Resources,
        id: &str,
    ) -> Result<bool, Error> {
        let sql = format!(
            "UPDATE hosts SET cores_used = cores_used + $1, memory_used = memory_used + $2,
                disk_used = disk_used + $3, gpus_used = gpus_used + $4
             WHERE id = {id} AND {HAS_ROOM}"
        );
        Ok(self.host_update(&sql, host_id, r).await? == 1)
    }

    pub async fn host_release(&mut self, host_id: &str, r: &Resources) -> Result<(), Error> {
        let sql = "UPDATE hosts SET cores_used = cores_used - $1, memory_used = memory_used - $2,
                disk_used = disk_used - $3, gpus_used = gpus_used - $4 WHERE id = $5";
        self.host_update(sql, host_id, r).await?;
        Ok(())
    }

    /// Runs a host update whose $1–$4 are the shape's cores, memory, disk and GPUs and $5
    /// the host; the number of rows it changed.
    async fn host_update(&mut self, sql: &str, host_id: &str, r: &Resources) -> Result<u64, Error> {
        let res = self
            .q(sql)
            .bind(r.cores)
            .bind(r.memory_gb)
            .bind(r.disk_gb)
            .bind(r.gpus)
            .bind(host_id)
            .execute()
            .await?;
        Ok(res)
    }
}

impl Tx {
    /// The hosts' rows as they are now: what a batch of launches is placed against in
    /// memory. Not locked: `hosts_reserve` re-checks the room as it reserves, last, so that
    /// on PostgreSQL the host rows are held only from there to commit (as a single launch
    /// holds its host's).
    pub async fn hosts_read(&mut self, ids: &[&str]) -> Result<Vec<HostRow>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (sql, ids) = hosts_by_ids(ids);
        hosts_fetch(self.q(&sql), ids).await
    }

    /// Locks the hosts `ids` in id order to commit (PostgreSQL; SQLite runs one writer at a
    /// time: nothing).
    pub async fn hosts_lock(&mut self, ids: &[&str]) -> Result<(), Error> {
        if ids.is_empty() || self.backend != Backend::Postgres {
            return Ok(());
        }
        let (sql, ids) = hosts_by_ids(ids);
        hosts_fetch(self.q(&format!("{sql} FOR NO KEY UPDATE")), ids).await?;
        Ok(())
    }

    /// Locks, in id order, those of the hosts `ids` that have room for `r` (PostgreSQL;
    /// SQLite: nothing). A host another transaction holds is waited for, and kept locked
    /// even if it has no room once that one commits (still in id order); a host without room
    /// as of now is neither waited for nor locked.
    pub async fn hosts_lock_with_room(&mut self, ids: &[&str], r: &Resources) -> Result<(), Error> {
        if ids.is_empty() || self.backend != Backend::Postgres {
            return Ok(());
        }
        let ids = crate::batch::padded(ids);
        let sql = format!(
            "SELECT id FROM hosts WHERE id IN ({}) AND {HAS_ROOM} ORDER BY id FOR NO KEY UPDATE",
            crate::batch::marks(5, ids.len())
        );
        let mut q = self
            .q(&sql)
            .bind(r.cores)
            .bind(r.memory_gb)
            .bind(r.disk_gb)
            .bind(r.gpus);
        for id in ids {
            q = q.bind(*id);
        }
        q.fetch_all().await?;
        Ok(())
    }

    /// Adds each shape to its host (one entry per host), in one statement. Checked all the
    /// same: an error, and nothing reserved, unless every host still had room and took new
    /// placements.
    pub async fn hosts_reserve(&mut self, adds: &[(String, Resources)]) -> Result<(), Error> {
        if adds.is_empty() {
            return Ok(());
        }
        let rows = crate::batch::numbered(adds);
        let casts = crate::batch::casts(self.backend, &SHARE_CASTS);
        let (lock, locked) = in_id_order(self.backend);
        let sql = format!(
            "WITH v(n, id, c, m, d, g) AS (VALUES {}){lock}
             UPDATE hosts SET cores_used = cores_used + v.c, memory_used = memory_used + v.m,
               disk_used = disk_used + v.d, gpus_used = gpus_used + v.g
             FROM v
             WHERE hosts.id = v.id AND v.n > 0{locked} AND hosts.status = 'available'
               AND cores_used + v.c <= cores_total AND memory_used + v.m <= memory_total
               AND disk_used + v.d <= disk_total AND gpus_used + v.g <= gpus_total",
            crate::batch::values_list(1, rows.len(), 6, &casts)
        );
        let mut vals = Vec::with_capacity(rows.len() * SHARE_CASTS.len());
        for (n, (id, r)) in rows {
            vals.extend(share_vals(n, id, r));
        }
        let done = self
            .run(&crate::batch::Statement::new(self.backend, &sql, vals))
            .await?;
        if done != adds.len() as u64 {
            return Err(Error::Internal(format!(
                "reserved on {} of {} hosts",
                done,
                adds.len()
            )));
        }
        Ok(())
    }
}

/// The statement reading the hosts `ids` (padded to a power of two, so that a few texts
/// serve every count), and the ids to bind.
fn hosts_by_ids<'a>(ids: &[&'a str]) -> (String, Vec<&'a str>) {
    let ids: Vec<&str> = crate::batch::padded(ids).into_iter().copied().collect();
    let sql = format!(
        "SELECT {COLS} FROM hosts WHERE id IN ({}) ORDER BY id",
        crate::batch::marks(1, ids.len())
    );
    (sql, ids)
}

async fn hosts_fetch(mut q: crate::exec::Q<'_, '_>, ids: Vec<&str>) -> Result<Vec<HostRow>, Error> {
    for id in ids {
        q = q.bind(id);
    }
    let rows = q.fetch_all().await?;
    rows.iter().map(host).collect()
}

/// For a statement updating the hosts of a VALUES list `v(n, id, ...)` (`n` 0 for padding):
/// on PostgreSQL, a CTE that locks them in id order, and the condition joining the update to
/// it. Every statement that updates several hosts locks them in id order, as a batch of
/// launches does (`launches::statement`); in the order of a join's plan instead, a release
/// holding one host and a launch holding another could each wait for the other's, a
/// deadlock PostgreSQL breaks only after a second, by failing one of them. SQLite has one
/// writer at a time: nothing.
pub(crate) fn in_id_order(backend: Backend) -> (&'static str, &'static str) {
    match backend {
        Backend::Postgres => (
            ", locked AS MATERIALIZED (
               SELECT hosts.id FROM hosts JOIN v ON hosts.id = v.id AND v.n > 0
               ORDER BY hosts.id FOR NO KEY UPDATE OF hosts)",
            " AND hosts.id IN (SELECT id FROM locked)",
        ),
        Backend::Sqlite => ("", ""),
    }
}

/// PostgreSQL's casts for a VALUES row of a host's share: `n`, id, cores, memory, disk, GPUs.
pub(crate) const SHARE_CASTS: [&str; 6] = [
    "::bigint", "", "::bigint", "::bigint", "::bigint", "::bigint",
];

/// A VALUES row of a host's share of a batch (`n` 0 for padding), as `SHARE_CASTS` types it.
pub(crate) fn share_vals<'a>(n: i64, id: &'a String, r: &Resources) -> [crate::batch::Val<'a>; 6] {
    [
        n.into(),
        id.into(),
        r.cores.into(),
        r.memory_gb.into(),
        r.disk_gb.into(),
        r.gpus.into(),
    ]
}

impl Store {
    /// The hosts' rows as committed now, outside any transaction: what a batch of
    /// launches written in one statement (`launches_write`) is placed against.
    pub async fn hosts_read(&self, ids: &[&str]) -> Result<Vec<HostRow>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // On the batch statements' connections: a launch batch reads its hosts just before
        // its statement, and a pooled connection would cost a second round trip (`conns`).
        let (sql, ids) = hosts_by_ids(ids);
        let vals = ids.into_iter().map(Into::into).collect();
        let st = crate::batch::Statement::new(self.backend(), &sql, vals);
        self.fetch(&st).await?.iter().map(host).collect()
    }
}

/// The region of an address no configured pool holds any more, while an instance still
/// holds it: no launch asks for it (region names are not empty), so once released it is
/// never given out, and the next sync removes it.
pub(crate) const RETIRED_REGION: &str = "";

/// The free addresses no configured pool holds are removed; those configured in another
/// region than the one they are in are moved there; and a free address whose MAC an
/// interface of its region already has is parked (`RETIRED_REGION`) until the next sync
/// looks again. The held ones to retire or move are returned, for after the transaction.
///
/// Why: a pool dropped from the configuration (or narrowed, or moved) must stop being given
/// out, and the insert of the configured ones leaves existing rows as they were. A held
/// address is moved too, so that its release frees it where it now belongs: left as it was,
/// it went back to its old region's free addresses and was given out again until the next
/// start. Parking keeps MACs unique in a region (`ip::mac_for_address`) beside interfaces
/// whose MAC did not come from their address: one held since before MACs came from
/// addresses (a hash of its instance id), or one whose pool was dropped or moved while held
/// (its address's low bits may be a new pool's).
async fn ip_pools_prune(
    tx: &mut Tx,
    configured: &std::collections::HashMap<String, &str>,
) -> Result<Vec<(String, String)>, Error> {
    use lobster_core::ip::mac_for_address;
    let rows = tx
        .q(
            "SELECT a.address, a.region, a.instance_id, a.mac_address, i.region AS holder_region
            FROM ip_addresses a LEFT JOIN instances i ON i.id = a.instance_id",
        )
        .fetch_all()
        .await?;
    let mut held_macs: std::collections::HashSet<(String, String)> = Default::default();
    let mut free = Vec::new();
    // Held addresses and the region each belongs in now, for `Store::ip_held_rehome`.
    let mut rehome = Vec::new();
    for r in &rows {
        let (address, region) = (get_str(r, "address")?, get_str(r, "region")?);
        let to = configured.get(&address).copied().unwrap_or(RETIRED_REGION);
        if get_opt_str(r, "instance_id")?.is_none() {
            free.push((address, region, to));
            continue;
        }
        let mac = crate::ips::mac_of(get_opt_str(r, "mac_address")?, &address);
        let holder = get_opt_str(r, "holder_region")?.unwrap_or_else(|| region.clone());
        held_macs.insert((holder, mac));
        if to != region {
            rehome.push((address, to.to_string()));
        }
    }
    let mut gone = Vec::new();
    // Free addresses to move, by the region they go to.
    let mut moves: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (address, region, to) in free {
        if to == RETIRED_REGION {
            gone.push(address);
            continue;
        }
        let clash = held_macs.contains(&(to.to_string(), mac_for_address(&address)));
        let to = if clash { RETIRED_REGION } else { to };
        if to != region {
            moves.entry(to).or_default().push(address);
        }
    }
    // 500 a statement: a pool of a /14 moved to another region is 262,144 addresses, and a
    // statement each was as many round trips in the start. (Free rows only: a launch passes
    // over those this transaction holds, and no release waits for them.)
    for (to, addresses) in &moves {
        for chunk in addresses.chunks(500) {
            let sql = format!(
                "UPDATE ip_addresses SET region = $1 WHERE instance_id IS NULL AND address IN ({})",
                crate::batch::marks(2, chunk.len())
            );
            let mut q = tx.q(&sql).bind(*to);
            for a in chunk {
                q = q.bind(a.as_str());
            }
            q.execute().await?;
        }
    }
    for chunk in gone.chunks(500) {
        let sql = format!(
            "DELETE FROM ip_addresses WHERE instance_id IS NULL AND address IN ({})",
            crate::batch::marks(1, chunk.len())
        );
        let mut q = tx.q(&sql);
        for a in chunk {
            q = q.bind(a.as_str());
        }
        q.execute().await?;
    }
    Ok(rehome)
}

impl Store {
    /// Moves each held address of `rehome` (address, region) to its region
    /// (`RETIRED_REGION` for one no pool holds), outside any transaction, 500 a statement.
    /// An address released since the read is moved all the same (a retired one is never
    /// given out; the next sync removes it). A failure is logged: the next start tries again.
    ///
    /// Why not in the sync's transaction: a release locks the held addresses of the
    /// instances it frees, several per statement, in an order of its own; the sync waiting
    /// for some while holding others could deadlock with it (on PostgreSQL), and a start that
    /// lost that would stop the server. So on PostgreSQL each statement moves only the rows
    /// no one else holds (`SKIP LOCKED`: it never waits, so it is in no cycle), and the rows
    /// it passed over are moved one per statement, each waiting for its row alone.
    async fn ip_held_rehome(&self, rehome: &[(String, String)]) {
        let mut by_region: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for (address, region) in rehome {
            by_region.entry(region).or_default().push(address);
        }
        for (region, addresses) in by_region {
            for chunk in addresses.chunks(500) {
                let moved = self.ip_held_move(region, chunk).await.unwrap_or_else(|e| {
                    tracing::warn!("held addresses to move to region {region:?}: {e}");
                    Default::default()
                });
                for address in chunk.iter().filter(|a| !moved.contains(**a)) {
                    let one = self
                        .q("UPDATE ip_addresses SET region = $1 WHERE address = $2 AND region <> $1")
                        .bind(region)
                        .bind(*address)
                        .execute()
                        .await;
                    if let Err(e) = one {
                        tracing::warn!("address {address} held, to move to region {region:?}: {e}");
                    }
                }
            }
        }
    }

    /// Moves the rows of `addresses` not held by another transaction (PostgreSQL; on
    /// SQLite, every row) to `region`, in one statement; the addresses moved.
    async fn ip_held_move(
        &self,
        region: &str,
        addresses: &[&str],
    ) -> Result<std::collections::HashSet<String>, Error> {
        let skip = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE ip_addresses SET region = $1 WHERE address IN (
               SELECT address FROM ip_addresses WHERE address IN ({}) AND region <> $1{skip})
             RETURNING address",
            crate::batch::marks(2, addresses.len())
        );
        let mut q = self.q(&sql).bind(region);
        for a in addresses {
            q = q.bind(*a);
        }
        let rows = q.fetch_all().await?;
        rows.iter().map(|r| get_str(r, "address")).collect()
    }
}
