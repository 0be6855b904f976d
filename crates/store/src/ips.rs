//! Public IPv4 addresses: regional pools, and which interface of which instance holds each.
//! Allocation is a conditional UPDATE, so two transactions can never take the same address.
//!
//! Which free address a launch gets: the free address of its region with the lowest `seq`.
//! An address's `seq` starts as its place in the region's pools, so a fresh pool is given out
//! in order; a released address goes to the back of that queue (`RELEASED_SEQ`), behind every
//! address never used and every address released before it. Why: an address given straight
//! back out (as the lowest free one would be) reaches the next launch, often another tenant's,
//! while DNS records, allowlists and the peers' connections of its last holder still point at
//! it. Taken last, it is reused only when no address has been free for longer.

use crate::batch::{Statement, Val};
use crate::{db_err, get_i64, get_opt_i64, get_opt_str, get_str, Backend, Store, Tx};
use lobster_core::Error;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An address held by an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct IpRow {
    pub address: String,
    pub instance_id: String,
    pub interface_name: String,
    pub mac_address: String,
    pub is_primary: bool,
    pub assigned_at: i64,
}

/// Who takes an address, and on which interface. (Its MAC follows from the address:
/// `ip::mac_for_address`.)
#[derive(Debug, Clone, PartialEq)]
pub struct IpClaim<'a> {
    pub instance_id: &'a str,
    pub interface_name: &'a str,
    pub is_primary: bool,
}

/// The MAC of the interface holding `address`: the one stored with it (for an address held
/// since before MACs came from addresses, session 24, the MAC its VM was made with), else the
/// address's own (`ip::mac_for_address`).
pub(crate) fn mac_of(stored: Option<String>, address: &str) -> String {
    match stored {
        Some(mac) if !mac.is_empty() => mac,
        _ => lobster_core::ip::mac_for_address(address),
    }
}

/// The MAC of the address in column `col` (`ip::mac_for_address`), computed by PostgreSQL:
/// `bc:24:11` and the address's low 24 bits. Stored as well as derived on read, so that a
/// server of an earlier version, which reads the column, shows and pushes the same MAC.
pub(crate) fn pg_mac(col: &str) -> String {
    let n = format!("({col}::inet - '0.0.0.0'::inet)");
    let octet = |shift: u32| format!("lpad(to_hex(({n} >> {shift}) & 255), 2, '0')");
    format!(
        "'bc:24:11:' || {} || ':' || {} || ':' || {}",
        octet(16),
        octet(8),
        octet(0)
    )
}

fn row(r: &impl crate::exec::Named) -> Result<IpRow, Error> {
    let address = get_str(r, "address")?;
    let mac_address = mac_of(get_opt_str(r, "mac_address")?, &address);
    Ok(IpRow {
        address,
        instance_id: get_str(r, "instance_id")?,
        interface_name: get_opt_str(r, "interface_name")?.unwrap_or_else(|| "net0".into()),
        mac_address,
        is_primary: get_i64(r, "is_primary")? != 0,
        assigned_at: get_opt_i64(r, "assigned_at")?.unwrap_or(0),
    })
}

/// Where this server starts looking for each region's free addresses: just past the last
/// one it took.
///
/// Why: free addresses are found through a partial index (`instance_id IS NULL`). On
/// PostgreSQL an address just taken leaves a dead entry in that index until vacuum, and a
/// search from the region's start walked all of them: after 10,000 launches it was the
/// costliest statement of a launch batch (1.5 ms of PostgreSQL's time per batch). A hint
/// only, never trusted for correctness (taking an address stays a conditional update): a
/// search that finds too few past it searches again from the start, so an address left free
/// below it (passed over while another transaction held it, or added by another server's
/// fleet sync) is still taken once the addresses above are. A release does not move it
/// back: a released address's new `seq` puts it past every address taken so far (see
/// `RELEASED_SEQ`), so a search from the region's start would only walk the dead entries of
/// the addresses taken since the last vacuum before finding what the hint finds (measured:
/// 9 % more launches and deletes interleaved, docs/benchmarks.md, session 16). A fleet sync,
/// whose new addresses may sort anywhere, does reset it.
#[derive(Default)]
pub(crate) struct IpHints(Mutex<Hints>);

#[derive(Default)]
struct Hints {
    next: HashMap<String, i64>,
    /// Counts resets: a transaction's takes are kept as hints only if no addresses were
    /// added since it read them (else a search that could not see an address another
    /// transaction was adding below it would set the hint past it).
    generation: u64,
}

impl IpHints {
    fn hints(&self) -> std::sync::MutexGuard<'_, Hints> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the region's search starts, and the generation that answer belongs to.
    fn from(&self, region: &str) -> (i64, u64) {
        let h = self.hints();
        (h.next.get(region).copied().unwrap_or(0), h.generation)
    }

    /// A committed transaction's takes, read at `generation`: each region's next search
    /// starts past them, unless a release committed since.
    fn set(&self, generation: Option<u64>, next: Vec<(String, i64)>) {
        let mut h = self.hints();
        if next.is_empty() || generation != Some(h.generation) {
            return;
        }
        for (region, seq) in next {
            h.next.insert(region, seq);
        }
    }

    /// Addresses were added: search every region from its start again.
    fn reset(&self) {
        let mut h = self.hints();
        h.next.clear();
        h.generation += 1;
    }
}

/// One transaction's part in the hints: where its next searches start, the hints'
/// generation when it first read one, and whether it added addresses.
pub(crate) struct TxHints {
    hints: Arc<IpHints>,
    next: Vec<(String, i64)>,
    generation: Option<u64>,
    added: bool,
}

impl TxHints {
    pub(crate) fn new(hints: &Arc<IpHints>) -> TxHints {
        TxHints {
            hints: hints.clone(),
            next: Vec::new(),
            generation: None,
            added: false,
        }
    }

    /// Where the transaction's next search of the region starts: past what it took itself,
    /// else the server's hint (from the start once it added addresses itself).
    pub(crate) fn from(&mut self, region: &str) -> i64 {
        if self.added {
            return 0;
        }
        if let Some((_, next)) = self.next.iter().rev().find(|(r, _)| r == region) {
            return *next;
        }
        let (from, generation) = self.hints.from(region);
        // The oldest generation read counts: addresses added since make the takes moot.
        self.generation.get_or_insert(generation);
        from
    }

    pub(crate) fn took(&mut self, region: &str, seq: i64) {
        self.next.push((region.to_string(), seq + 1));
    }

    fn added(&mut self) {
        self.added = true;
        self.next.clear();
    }

    /// At the transaction's end: addresses added reset the hints whether or not the commit
    /// is known to have gone through (a needless reset costs one longer search); takes
    /// become hints only once committed.
    pub(crate) fn end(self, committed: bool) {
        if self.added {
            self.hints.reset();
        } else if committed {
            self.hints.set(self.generation, self.next);
        }
    }
}

/// Released addresses' `seq`: the release's second times `POOL_SPAN`, plus the address's place
/// in its pools (kept as the remainder, a second release included). Every such `seq` is above
/// every pool place, and later releases come after earlier ones (within a second, in pool
/// order). `$R` is `released_seq_base` of the release's time. It fits a BIGINT until 3058.
pub(crate) const RELEASED_SEQ: &str = "seq = $R + seq % 268435456";

/// More addresses than any region can hold (`ip_pools_sync` refuses more): 2^28.
pub(crate) const POOL_SPAN: i64 = 268_435_456;

/// What `RELEASED_SEQ` adds for a release at `now` (milliseconds).
pub(crate) fn released_seq_base(now: i64) -> i64 {
    (now.div_euclid(1000).max(0) + 1).saturating_mul(POOL_SPAN)
}

/// The statement that frees addresses, with the release's base as parameter `$n`.
pub(crate) fn freeing(n: usize, condition: &str) -> String {
    format!(
        "UPDATE ip_addresses SET instance_id = NULL, assigned_at = NULL, interface_name = NULL,
           mac_address = NULL, is_primary = 0, {}
         WHERE {condition}",
        RELEASED_SEQ.replace("$R", &format!("${n}"))
    )
}

const COLS: &str = "address, instance_id, interface_name, mac_address, is_primary, assigned_at";
const ORDER: &str = "ORDER BY is_primary DESC, interface_name, address";

impl Store {
    /// Free addresses per region.
    pub async fn ip_free_counts(&self) -> Result<Vec<(String, i64)>, Error> {
        let rows = sqlx::query(
            "SELECT region, COUNT(*) AS n FROM ip_addresses WHERE instance_id IS NULL GROUP BY region",
        )
        .fetch_all(self.reader())
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| Ok((get_str(r, "region")?, get_i64(r, "n")?)))
            .collect()
    }

    /// Every (address, instance) pair currently held: for invariant checks.
    pub async fn ip_assignments(&self) -> Result<Vec<(String, String)>, Error> {
        let rows = sqlx::query(
            "SELECT address, instance_id FROM ip_addresses WHERE instance_id IS NOT NULL ORDER BY address",
        )
        .fetch_all(self.reader())
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| Ok((get_str(r, "address")?, get_str(r, "instance_id")?)))
            .collect()
    }

    /// The instance's addresses, primary first.
    pub async fn ip_list(&self, instance_id: &str) -> Result<Vec<IpRow>, Error> {
        let sql = format!("SELECT {COLS} FROM ip_addresses WHERE instance_id = $1 {ORDER}");
        let rows = sqlx::query(&sql)
            .bind(instance_id)
            .fetch_all(self.reader())
            .await
            .map_err(db_err)?;
        rows.iter().map(row).collect()
    }
}

impl Tx {
    /// Takes the region's first free address (see the module's note on order); None when
    /// the pool is exhausted. The outer `instance_id IS NULL` re-check makes a lost race a
    /// retry, never a double assignment.
    pub async fn ip_allocate(
        &mut self,
        region: &str,
        claim: &IpClaim<'_>,
        now: i64,
    ) -> Result<Option<String>, Error> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // The MAC is stored as well as derived on read: a server of an earlier version reads
        // it. PostgreSQL computes it in the statement; SQLite's is set by a second one.
        let mac = match self.backend {
            Backend::Postgres => format!("mac_address = {}, ", pg_mac("address")),
            Backend::Sqlite => String::new(),
        };
        let take = format!(
            "UPDATE ip_addresses SET instance_id = $1, assigned_at = $2, interface_name = $4,
               {mac}is_primary = $5
             WHERE address = (SELECT address FROM ip_addresses WHERE region = $3 AND instance_id IS NULL
                              AND seq >= $6 ORDER BY seq LIMIT 1{lock})
               AND instance_id IS NULL
             RETURNING address, seq"
        );
        // An additional address is metered from here (billing reads this history); a
        // primary's holding is its instance's life (see `Store::ip_history`). On PostgreSQL
        // the history row is written by the same statement: one round trip fewer.
        let sql = match self.backend {
            Backend::Postgres => format!(
                "WITH a AS ({take}),
                      h AS (INSERT INTO ip_history (address, instance_id, interface_name, is_primary, assigned_at)
                            SELECT address, $1, $4, $5, $2 FROM a WHERE $5 = 0)
                 SELECT address, seq FROM a"
            ),
            Backend::Sqlite => take,
        };
        let mut from = self.ip_from(region);
        for _ in 0..5 {
            let row = self
                .q(&sql)
                .bind(claim.instance_id)
                .bind(now)
                .bind(region)
                .bind(claim.interface_name)
                .bind(claim.is_primary as i64)
                .bind(from)
                .fetch_optional()
                .await?;
            if let Some(r) = row {
                let address = get_str(&r, "address")?;
                self.ip_took(region, get_i64(&r, "seq")?);
                if self.backend == Backend::Postgres {
                    return Ok(Some(address));
                }
                self.q("UPDATE ip_addresses SET mac_address = $1 WHERE address = $2")
                    .bind(lobster_core::ip::mac_for_address(&address))
                    .bind(&address)
                    .execute()
                    .await?;
                if claim.is_primary {
                    return Ok(Some(address));
                }
                self.q(
                    "INSERT INTO ip_history (address, instance_id, interface_name, is_primary, assigned_at)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                    .bind(&address)
                    .bind(claim.instance_id)
                    .bind(claim.interface_name)
                    .bind(claim.is_primary as i64)
                    .bind(now)
                    .execute()
                    .await?;
                return Ok(Some(address));
            }
            if from > 0 {
                // Nothing free past the hint: the rest of the region, from its start.
                from = 0;
                continue;
            }
            let free = self.q(
                "SELECT 1 AS x FROM ip_addresses WHERE region = $1 AND instance_id IS NULL LIMIT 1",
            )
                .bind(region)
                .fetch_optional()
                .await?;
            if free.is_none() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    fn ip_from(&mut self, region: &str) -> i64 {
        self.ips.from(region)
    }

    fn ip_took(&mut self, region: &str, seq: i64) {
        self.ips.took(region, seq);
    }

    /// Addresses were added to the pools: once this transaction ends, searches start from
    /// the regions' starts.
    pub(crate) fn ips_added(&mut self) {
        self.ips.added();
    }

    /// The instance's addresses as this transaction sees them.
    pub async fn ip_list(&mut self, instance_id: &str) -> Result<Vec<IpRow>, Error> {
        let sql = format!("SELECT {COLS} FROM ip_addresses WHERE instance_id = $1 {ORDER}");
        let rows = self.q(&sql).bind(instance_id).fetch_all().await?;
        rows.iter().map(row).collect()
    }

    /// Returns one address to its pool; false when the instance did not hold it.
    pub async fn ip_release(
        &mut self,
        instance_id: &str,
        address: &str,
        now: i64,
    ) -> Result<bool, Error> {
        self.ip_history_close(instance_id, Some(address), now)
            .await?;
        let r = self
            .q(&freeing(3, "instance_id = $1 AND address = $2"))
            .bind(instance_id)
            .bind(address)
            .bind(released_seq_base(now))
            .execute()
            .await?;
        Ok(r == 1)
    }

    /// Returns every address the instance holds to its pool.
    pub async fn ip_release_all(&mut self, instance_id: &str, now: i64) -> Result<(), Error> {
        self.ip_history_close(instance_id, None, now).await?;
        self.q(&freeing(2, "instance_id = $1"))
            .bind(instance_id)
            .bind(released_seq_base(now))
            .execute()
            .await?;
        Ok(())
    }

    async fn ip_history_close(
        &mut self,
        instance_id: &str,
        address: Option<&str>,
        now: i64,
    ) -> Result<(), Error> {
        match address {
            Some(a) => {
                self.q(
                    "UPDATE ip_history SET released_at = $1 WHERE instance_id = $2 AND address = $3 AND released_at IS NULL",
                )
                .bind(now)
                .bind(instance_id)
                .bind(a)
                .execute()
                .await?
            }
            None => {
                self.q("UPDATE ip_history SET released_at = $1 WHERE instance_id = $2 AND released_at IS NULL")
                    .bind(now)
                    .bind(instance_id)
                    .execute()
                    .await?
            }
        };
        Ok(())
    }
}

/// One period an address was held.
#[derive(Debug, Clone, PartialEq)]
pub struct IpHeld {
    pub address: String,
    pub instance_id: String,
    pub is_primary: bool,
    pub assigned_at: i64,
    pub released_at: Option<i64>,
}

impl Store {
    /// Every period the account's instances held an address, for billing.
    ///
    /// A primary address is held for exactly its instance's life: taken in the statement
    /// that writes the instance (`created_at`), kept until the instance ends, and released
    /// in the statement that sets its `deleted_at` (a delete, or a create that failed).
    /// So its period is read off the instance row and has no history row of its own, which
    /// would be a row and an index entry more in every launch. The history table holds the
    /// additional addresses' periods. (Rows of primaries written before migration 14 are
    /// removed by it; `is_primary = 0` also keeps out any a server of an earlier version
    /// writes during an upgrade.)
    pub async fn ip_history(&self, account_id: &str) -> Result<Vec<IpHeld>, Error> {
        let rows = sqlx::query(
            "SELECT h.address, h.instance_id, h.is_primary, h.assigned_at, h.released_at
             FROM ip_history h JOIN instances i ON i.id = h.instance_id
             WHERE i.account_id = $1 AND h.is_primary = 0
             UNION ALL
             SELECT ip_address AS address, id AS instance_id, 1 AS is_primary,
                    created_at AS assigned_at, deleted_at AS released_at
             FROM instances WHERE account_id = $1 AND ip_address IS NOT NULL",
        )
        .bind(account_id)
        .fetch_all(self.reader())
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(IpHeld {
                    address: get_str(r, "address")?,
                    instance_id: get_str(r, "instance_id")?,
                    is_primary: get_i64(r, "is_primary")? != 0,
                    assigned_at: get_i64(r, "assigned_at")?,
                    released_at: get_opt_i64(r, "released_at")?,
                })
            })
            .collect()
    }
}

impl Tx {
    /// Takes the region's first free addresses for `claims`, in order: the addresses
    /// of the first k claims, k fewer than all when the pool has fewer free (or, on
    /// PostgreSQL, not locked by another transaction; the caller retries those one by one).
    /// An additional address is metered from here, as with `ip_allocate` (a primary's
    /// holding is its instance's life).
    pub async fn ips_allocate(
        &mut self,
        region: &str,
        claims: &[IpClaim<'_>],
        now: i64,
    ) -> Result<Vec<String>, Error> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT address, seq FROM ip_addresses WHERE region = $1 AND instance_id IS NULL
             AND seq >= $3 ORDER BY seq LIMIT $2{lock}"
        );
        let want = claims.len() as i64;
        let from = self.ip_from(region);
        let mut free = self
            .q(&sql)
            .bind(region)
            .bind(want)
            .bind(from)
            .fetch_all()
            .await?;
        if free.len() < claims.len() && from > 0 {
            // Too few past the hint: the whole region, from its start (what was found past
            // the hint is found again: on PostgreSQL this transaction's own locks do not
            // make it skip those rows).
            free = self
                .q(&sql)
                .bind(region)
                .bind(want)
                .bind(0i64)
                .fetch_all()
                .await?;
        }
        let addresses: Vec<String> = free
            .iter()
            .map(|r| get_str(r, "address"))
            .collect::<Result<_, _>>()?;
        let Some(last) = free.last() else {
            return Ok(addresses);
        };
        self.ip_took(region, get_i64(last, "seq")?);
        let taken: Vec<(&String, &IpClaim)> = addresses.iter().zip(claims).collect();
        let rows = crate::batch::numbered(&taken);
        let casts = crate::batch::casts(self.backend, &["::bigint", "", "", "", "", "::bigint"]);
        let v = format!(
            "v(n, address, instance_id, iface, mac, prim) AS (VALUES {})",
            crate::batch::values_list(2, rows.len(), 6, &casts)
        );
        let update = "UPDATE ip_addresses SET instance_id = v.instance_id, assigned_at = $1,
               interface_name = v.iface, mac_address = v.mac, is_primary = v.prim
             FROM v WHERE ip_addresses.address = v.address AND v.n > 0
               AND ip_addresses.instance_id IS NULL";
        // An additional address is metered from here; a primary's holding is its
        // instance's life (see `Store::ip_history`), so only the others get history rows.
        let extra = claims
            .iter()
            .take(taken.len())
            .filter(|c| !c.is_primary)
            .count();
        let history = format!(
            "WITH {v} INSERT INTO ip_history (address, instance_id, interface_name, is_primary, assigned_at)
             SELECT address, instance_id, iface, prim, $1 FROM v WHERE n > 0 AND prim = 0"
        );
        let mut vals: Vec<Val> = vec![now.into()];
        for (n, (address, c)) in &rows {
            vals.extend([
                Val::from(*n),
                Val::from(address.as_str()),
                c.instance_id.into(),
                c.interface_name.into(),
                Val::Text(Some(lobster_core::ip::mac_for_address(address).into())),
                (c.is_primary as i64).into(),
            ]);
        }
        let mut statements = vec![(format!("WITH {v} {update}"), taken.len())];
        if extra > 0 {
            statements.push((history, extra));
        }
        for (sql, want) in statements {
            let st = Statement::new(self.backend, &sql, vals.clone());
            let done = self.run(&st).await?;
            if done != want as u64 {
                // Another writer took one after it was found free (the update re-checks).
                return Err(Error::Internal(format!(
                    "assigned {done} of {want} addresses"
                )));
            }
        }
        Ok(addresses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `RELEASED_SEQ` computes, in Rust.
    fn released(seq: i64, now: i64) -> i64 {
        released_seq_base(now) + seq % POOL_SPAN
    }

    #[test]
    fn released_addresses_sort_after_every_pool_place_and_by_second_of_release() {
        let last_place = POOL_SPAN - 1;
        assert!(released(1, 0) > last_place);
        // A later second sorts later, whatever the places; within a second, by place.
        assert!(released(last_place, 1_999) < released(1, 2_000));
        assert!(released(3, 2_000) < released(4, 2_999));
        // A second release keeps the place and moves on with time.
        let once = released(7, 5_000);
        assert_eq!(released(once, 9_000) % POOL_SPAN, 7);
        assert!(released(once, 9_000) > once);
        // No overflow for any clock before the year 3000 (2^63 / 2^28 seconds is 3058).
        assert!(released(last_place, 32_503_679_999_000) < i64::MAX);
        assert_eq!(RELEASED_SEQ, format!("seq = $R + seq % {POOL_SPAN}"));
    }
}
