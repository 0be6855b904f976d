//! Time as integer milliseconds since the Unix epoch, with an injectable clock so that tests
//! can move time (lease expiry, schedules) without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn plus_ms(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// RFC 3339 in UTC with a `Z` suffix and whole seconds (DESIGN invariant 7).
    pub fn rfc3339(self) -> String {
        let secs = self.0.div_euclid(1000);
        let dt = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        dt.format(&Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
    }

    /// RFC 3339 in UTC with milliseconds (`2024-01-15T10:30:00.123Z`), for identifiers that
    /// must differ between two events in the same second.
    pub fn rfc3339_millis(self) -> String {
        let base = self.rfc3339();
        format!(
            "{}.{:03}Z",
            base.trim_end_matches('Z'),
            self.0.rem_euclid(1000)
        )
    }

    /// Parses RFC 3339 / ISO 8601 date-times with an offset (`Z` or `+hh:mm`).
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let dt = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        Some(Timestamp((dt.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        Timestamp(ms)
    }
}

/// A clock that only moves when told to; shared between the store, engine and tests.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: Timestamp) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicI64::new(start.0)))
    }

    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

pub type SharedClock = Arc<dyn Clock>;

pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_z() {
        assert_eq!(
            Timestamp(1_705_314_600_000).rfc3339(),
            "2024-01-15T10:30:00Z"
        );
    }

    #[test]
    fn millis_format() {
        assert_eq!(
            Timestamp(1_705_314_600_042).rfc3339_millis(),
            "2024-01-15T10:30:00.042Z"
        );
    }

    #[test]
    fn parses_offsets() {
        let a = Timestamp::parse_rfc3339("2024-01-15T10:30:00Z").unwrap();
        let b = Timestamp::parse_rfc3339("2024-01-15T12:30:00+02:00").unwrap();
        assert_eq!(a, b);
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Timestamp(1000));
        assert_eq!(c.now(), Timestamp(1000));
        c.advance_ms(500);
        assert_eq!(c.now(), Timestamp(1500));
    }
}
