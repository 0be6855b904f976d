//! A limit on requests per API key and minute, the same whichever server answers: the count
//! of each key's minute is in the database (`Store::rate_reserve`), and each server takes
//! shares of it as its requests need them, so that a request costs a database round trip
//! only when its server's share is spent. Shares shrink as the minute's limit is neared
//! (an eighth of what was left at the server's last reservation, at least 1 and at most
//! 100), so requests spread over several servers are refused close to the limit, never
//! past it: what a server reserved and did not use by the minute's end is lost, and a key
//! is refused up to that much early.
//!
//! Off (0) by default: the Blue Lobster API documents no limit, and its clients expect
//! none. The operator sets `[rate_limit] requests_per_minute`.

use crate::App;
use lobster_core::auth::Caller;
use lobster_core::Error;
use lobster_store::RATE_WINDOW_MS as MINUTE_MS;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Largest share one reservation takes.
const MOST_SHARE: i64 = 100;

/// Keys remembered before the ones of past minutes are forgotten.
const KEYS_KEPT: usize = 10_000;

#[derive(Default)]
pub(crate) struct Limiter {
    per_minute: AtomicU64,
    /// Each key's share of its current minute; the async lock makes the requests of one key
    /// that find the share spent wait for one reservation rather than each making one.
    keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Share>>>>,
    /// The minute the keys were last pruned in.
    pruned: AtomicI64,
}

/// What this server holds of one key's minute.
#[derive(Default)]
struct Share {
    window: i64,
    /// Requests reserved and not yet used.
    left: i64,
    /// Whether the minute's limit was reached (on any server): no more reservations.
    spent: bool,
    /// The window's count on every server at this server's last reservation (to size the
    /// next share).
    used: i64,
}

impl Limiter {
    fn share(&self, key_id: &str, window: i64) -> Arc<tokio::sync::Mutex<Share>> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        // Past minutes' keys are forgotten once there are many, at most once a minute (a
        // scan on every request would hold every request's lock).
        if keys.len() > KEYS_KEPT && self.pruned.swap(window, Ordering::Relaxed) != window {
            keys.retain(|_, s| s.try_lock().map_or(true, |s| s.window >= window));
        }
        keys.entry(key_id.to_string()).or_default().clone()
    }
}

impl App {
    /// Sets the limit on requests per API key and minute (0: none).
    pub fn set_rate_limit(&self, per_minute: u64) {
        self.rate.per_minute.store(per_minute, Ordering::Relaxed);
    }

    /// Counts one request of `caller`'s key: 429 `rate_limited` (with the seconds to the
    /// next minute) when its minute's limit is used, across every server.
    pub async fn rate_admit(&self, caller: &Caller) -> Result<(), Error> {
        let limit = self.rate.per_minute.load(Ordering::Relaxed) as i64;
        if limit == 0 {
            return Ok(());
        }
        let now = self.now();
        let window = now - now.rem_euclid(MINUTE_MS);
        let share = self.rate.share(&caller.key_id, window);
        let mut share = share.lock().await;
        // A request that read the time just before the minute turned, and waited here while
        // another began the next minute, counts in the next one: a share never goes back to
        // a minute it left (its count there may be gone from the database).
        let window = window.max(share.window);
        if share.window != window {
            *share = Share {
                window,
                ..Share::default()
            };
        }
        if share.left == 0 && !share.spent {
            let want = ((limit - share.used) / 8).clamp(1, MOST_SHARE);
            let (granted, used) = self
                .store
                .rate_reserve(&caller.key_id, window, want, limit)
                .await?;
            share.used = used;
            share.left = granted;
            share.spent = granted < want;
        }
        if share.left == 0 {
            let retry_after_s = ((window + MINUTE_MS - now + 999) / 1000).max(1) as u64;
            return Err(Error::RateLimited {
                message: format!(
                    "Rate limit exceeded: {limit} requests per minute per API key; try again in {retry_after_s} s"
                ),
                retry_after_s,
            });
        }
        share.left -= 1;
        Ok(())
    }
}
