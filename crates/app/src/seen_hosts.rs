//! The hosts as launches plan against them: read at most `MAX_AGE` ago.
//!
//! Why: every launch orders the fleet's hosts by room to choose its candidates. On
//! PostgreSQL that read was a round trip per launch: 10,000 of the 13,000 statements of a
//! burst of 10,000 launches. The candidates are only an order of preference: the launch's
//! transaction re-reads the candidates' rows and reserves conditionally (room and status), so
//! a list read a moment ago can neither overbook nor place on a host drained since. What it
//! could do is leave out a host whose room came back since; so a launch is refused for want
//! of room only after planning on a fresh read (`App::instance_launch`).

use lobster_core::Error;
use lobster_store::{HostRow, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Long enough that a burst of launches reads the hosts a few times a second, short enough
/// that a new or restored host is planned on at once in practice.
const MAX_AGE: Duration = Duration::from_millis(100);

pub(crate) struct SeenHosts {
    last: Mutex<Option<(Instant, Arc<Vec<HostRow>>)>>,
    /// `MAX_AGE` in milliseconds (tests hold reads longer, to plan on a stale one for sure).
    max_age_ms: AtomicU64,
}

impl Default for SeenHosts {
    fn default() -> Self {
        SeenHosts {
            last: Mutex::new(None),
            max_age_ms: AtomicU64::new(MAX_AGE.as_millis() as u64),
        }
    }
}

impl SeenHosts {
    /// The hosts read within the maximum age, if any.
    pub(crate) fn recent(&self) -> Option<Arc<Vec<HostRow>>> {
        let max_age = Duration::from_millis(self.max_age_ms.load(Ordering::Relaxed));
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (at, hosts) = last.as_ref()?;
        (at.elapsed() < max_age).then(|| hosts.clone())
    }

    pub(crate) fn hold(&self, max_age: Duration) {
        self.max_age_ms
            .store(max_age.as_millis() as u64, Ordering::Relaxed);
    }

    /// The hosts as they are now (kept for the launches that follow).
    pub(crate) async fn fresh(&self, store: &Store) -> Result<Arc<Vec<HostRow>>, Error> {
        let at = Instant::now();
        let hosts = Arc::new(store.host_list().await?);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, hosts.clone()));
        Ok(hosts)
    }
}
