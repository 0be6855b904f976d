//! Leases are written and judged in each server's own clock: a lease's end is its writer's
//! time plus the lease, and a claim takes a task whose lease's end is before the claimer's
//! time. Between servers whose clocks differ by more than the margin a run keeps before its
//! lease's end (a third of a lease), one would take tasks another is still running. So each
//! server measures its clock against the database's, the one clock they all share, and
//! takes no lease (no claim, no hand-off) while it is more than `max_clock_skew_ms` apart,
//! and stops its runs at their next heartbeat (their leases, renewed by a clock that is off,
//! could look expired to the others): the work goes to the servers whose clocks are right,
//! and health says "degraded".

use crate::Engine;
use lobster_core::Error;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// How often a running server measures its clock again.
const EVERY: Duration = Duration::from_secs(10);

impl Engine {
    /// Measures this server's clock against the database's and decides whether it may take
    /// leases; the difference (this server's minus the database's, in ms). With no bound
    /// configured nothing is asked and leases are always taken.
    pub async fn check_clock(&self) -> Result<i64, Error> {
        let Some(most) = self.cfg.max_clock_skew_ms else {
            return Ok(0);
        };
        let before = self.clock.now().millis();
        let db = self.store.db_clock_ms().await?;
        let after = self.clock.now().millis();
        // The database read its clock somewhere in the round trip: take the middle, which
        // is off by at most half the trip. A slow trip (a wait for a pooled connection)
        // says too little: the last decision stands.
        if after - before > most / 2 {
            tracing::warn!(
                "measuring the clock took {} ms: measure ignored",
                after - before
            );
            return Ok(self.clock_skew_ms());
        }
        let skew = before + (after - before) / 2 - db;
        self.clock_skew.store(skew, Ordering::Relaxed);
        let ok = skew.abs() <= most;
        let was = self.clock_ok.swap(ok, Ordering::Relaxed);
        match (was, ok) {
            (true, false) => tracing::error!(
                "this server's clock is {skew} ms off the database's (at most {most} ms): it takes no task leases until the clock is set right"
            ),
            (false, true) => {
                tracing::info!("this server's clock is {skew} ms off the database's: taking task leases again")
            }
            _ => {}
        }
        Ok(skew)
    }

    /// Whether this server's clock was within bounds when last measured.
    pub fn clock_ok(&self) -> bool {
        self.clock_ok.load(Ordering::Relaxed)
    }

    /// This server's clock minus the database's when last measured, in ms.
    pub fn clock_skew_ms(&self) -> i64 {
        self.clock_skew.load(Ordering::Relaxed)
    }

    /// Measures the clock every `EVERY` until `stop` turns true. A failed measure keeps
    /// the last decision (the database being away stops claims by itself).
    pub(crate) async fn watch_clock(&self, mut stop: watch::Receiver<bool>) {
        if self.cfg.max_clock_skew_ms.is_none() {
            return;
        }
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.check_clock().await {
                tracing::warn!("measuring the clock against the database's: {e}");
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                changed = stop.changed() => {
                    if changed.is_err() {
                        return; // no one can stop it any more: the server is going
                    }
                }
            }
        }
    }
}
