//! The billing rule (see docs/billing.md): an instance is billed from the moment it is ready
//! (a failed creation never is) until it is deleted, whether running or stopped, because its
//! capacity stays reserved. Time is counted in whole 30-minute blocks, rounded down; each
//! block costs half the hourly price. Additional IP addresses cost a monthly price, prorated
//! over the same blocks (a month is 730 hours). Money is integer cents, rounded half up once
//! per line.

/// Length of one billing block.
pub const BLOCK_MS: i64 = 30 * 60 * 1000;
/// Hours in a billing month (365 × 24 / 12).
pub const HOURS_PER_MONTH: i64 = 730;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Charge {
    pub blocks: i64,
    pub cents: i64,
    /// Start of the first billed block, if any.
    pub first_billed_at: Option<i64>,
    /// End of the last whole billed block, if any.
    pub last_billed_at: Option<i64>,
}

impl Charge {
    pub fn hours(&self) -> f64 {
        self.blocks as f64 / 2.0
    }
}

/// Integer division rounding half up, for non-negative values.
fn div_round(n: i128, d: i128) -> i64 {
    ((2 * n + d) / (2 * d)) as i64
}

fn blocks(from: i64, to: i64) -> i64 {
    ((to - from).max(0)) / BLOCK_MS
}

/// What an instance costs from `ready_at` to `until` at `cents_per_hour`.
pub fn instance_charge(ready_at: Option<i64>, until: i64, cents_per_hour: i64) -> Charge {
    let Some(start) = ready_at else {
        return Charge::default();
    };
    let b = blocks(start, until);
    Charge {
        blocks: b,
        cents: div_round(b as i128 * cents_per_hour as i128, 2),
        first_billed_at: Some(start),
        last_billed_at: (b > 0).then(|| start + b * BLOCK_MS),
    }
}

/// What additional addresses held over `intervals` (assigned, released) cost at
/// `cents_per_month` each.
pub fn ip_charge(intervals: &[(i64, i64)], cents_per_month: i64) -> i64 {
    let b: i64 = intervals.iter().map(|(a, r)| blocks(*a, *r)).sum();
    div_round(
        b as i128 * cents_per_month as i128,
        2 * HOURS_PER_MONTH as i128,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: i64 = 3_600_000;

    #[test]
    fn the_specs_example() {
        // Created 15:43:15, deleted 11:21:48 the next day: 19 h 38 m, billed 19.5 h at 120.
        let ready = 0;
        let c = instance_charge(Some(ready), 19 * H + 38 * 60_000 + 33_000, 120);
        assert_eq!((c.blocks, c.cents), (39, 2340));
        assert_eq!(c.hours(), 19.5);
        assert_eq!(c.last_billed_at, Some(39 * BLOCK_MS));
    }

    #[test]
    fn partial_blocks_and_failed_creations_are_free() {
        assert_eq!(instance_charge(Some(0), 29 * 60_000, 100).cents, 0);
        assert_eq!(instance_charge(None, 100 * H, 100), Charge::default());
        assert_eq!(
            instance_charge(Some(10 * H), 5 * H, 100).cents,
            0,
            "clock skew never bills negative"
        );
    }

    #[test]
    fn odd_prices_round_half_up() {
        // One block at 45 ¢/h is 22.5 ¢: 23.
        assert_eq!(instance_charge(Some(0), BLOCK_MS, 45).cents, 23);
        assert_eq!(instance_charge(Some(0), 2 * BLOCK_MS, 45).cents, 45);
    }

    #[test]
    fn extra_ips_cost_three_dollars_a_month() {
        assert_eq!(ip_charge(&[(0, HOURS_PER_MONTH * H)], 300), 300);
        assert_eq!(
            ip_charge(&[(0, HOURS_PER_MONTH * H), (0, HOURS_PER_MONTH * H)], 300),
            600
        );
        assert_eq!(ip_charge(&[(0, 10 * 60_000)], 300), 0);
        assert_eq!(ip_charge(&[], 300), 0);
    }

    proptest! {
        /// Billing never decreases as time passes, and never exceeds the hourly price times the
        /// hours elapsed (rounded up by at most one cent).
        #[test]
        fn monotone_and_bounded(ms in 0i64..(400 * H), more in 0i64..(10 * H), price in 0i64..1000) {
            let a = instance_charge(Some(0), ms, price);
            let b = instance_charge(Some(0), ms + more, price);
            prop_assert!(b.cents >= a.cents);
            prop_assert!(a.cents as i128 * H as i128 <= price as i128 * ms as i128 + H as i128);
        }
    }
}
