//! Request counts per API key and one-minute window, in the database so that a key's limit
//! holds across every server that answers it (`lobster_app::rate`).

use crate::{get_i64, Store};
use lobster_core::Error;

/// A window's length: one minute.
pub const WINDOW_MS: i64 = 60_000;

impl Store {
    /// Takes up to `want` requests from `key_id`'s window that began at `window` (ms), out
    /// of `limit`: how many were granted (0 when the window is spent), and the window's count
    /// after this reservation (on every server, granted or not). Counts are kept for
    /// the window's own minute and the next; a key's older windows go as its first
    /// reservation of a new one is made.
    pub async fn rate_reserve(
        &self,
        key_id: &str,
        window: i64,
        want: i64,
        limit: i64,
    ) -> Result<(i64, i64), Error> {
        let r = self
            .q(
                "INSERT INTO rate_windows (key_id, window_start, used) VALUES ($1, $2, $3)
                ON CONFLICT (key_id, window_start) DO UPDATE SET used = rate_windows.used + $3
                RETURNING used",
            )
            .bind(key_id)
            .bind(window)
            .bind(want)
            .fetch_one()
            .await?;
        let used = get_i64(&r, "used")?;
        if used == want {
            // The window's first reservation (on any server): the key's windows before the
            // last are done. Not the last: a server whose clock is a little behind may still
            // be counting in it, and must find its count there, not start it afresh.
            self.q("DELETE FROM rate_windows WHERE key_id = $1 AND window_start < $2")
                .bind(key_id)
                .bind(window - WINDOW_MS)
                .execute()
                .await?;
        }
        // What this reservation added past the limit is not granted (the count keeps it:
        // every later reservation in the window is then refused whole).
        Ok(((want - (used - limit).max(0)).clamp(0, want), used))
    }
}
