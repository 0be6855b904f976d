//! Instance history with billing: every instance whose life overlaps a time range (deleted
//! ones included) and what it has cost, by the rule in `lobster_core::billing`.

use crate::auth::scope;
use crate::App;
use lobster_core::auth::{Caller, Permission};
use lobster_core::billing::{instance_charge, ip_charge, Charge};
use lobster_core::Error;
use lobster_store::InstanceRow;

/// The longest range one query may span.
pub const MAX_RANGE_MS: i64 = 90 * 86_400_000;

#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub instance: InstanceRow,
    pub charge: Charge,
    /// What additional IP addresses added to `charge.cents`.
    pub ip_cents: i64,
    pub total_cents: i64,
}

impl App {
    pub async fn instance_log(
        &self,
        caller: &Caller,
        start: i64,
        end: i64,
        only: Option<&str>,
    ) -> Result<Vec<HistoryEntry>, Error> {
        caller.require(Permission::Read)?;
        let bad = |m: &str| Error::Unprocessable {
            code: "invalid_time_range",
            message: m.into(),
        };
        if start >= end {
            return Err(bad("start_time must be before end_time"));
        }
        if end - start > MAX_RANGE_MS {
            return Err(bad("Maximum time range is 90 days"));
        }
        let now = self.now();
        let list = self
            .store
            .instance_history(&scope(caller), start, end, only)
            .await?;
        let held = self.store.ip_history(&caller.account_id).await?;
        let per_month = self.fleet.billing.extra_ip_cents_per_month;
        Ok(list
            .into_iter()
            .map(|i| {
                let until = i.deleted_at.unwrap_or(now);
                let charge = instance_charge(i.ready_at, until, i.price_cents_per_hour);
                let extra: Vec<(i64, i64)> = held
                    .iter()
                    .filter(|h| h.instance_id == i.id && !h.is_primary)
                    .map(|h| (h.assigned_at, h.released_at.unwrap_or(until)))
                    .collect();
                let ip_cents = ip_charge(&extra, per_month);
                HistoryEntry {
                    total_cents: charge.cents + ip_cents,
                    instance: i,
                    charge,
                    ip_cents,
                }
            })
            .collect())
    }
}
