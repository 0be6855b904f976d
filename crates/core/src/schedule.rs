//! Backup schedules: validated settings and the next time one fires. Pure date arithmetic in
//! UTC; days of the week count from Monday = 0, days of the month beyond a month's end fire on
//! its last day.

use crate::clock::Timestamp;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, Weekday};

/// When a weekly schedule gives no day: Monday.
pub const DEFAULT_DAY_OF_WEEK: i64 = 0;
/// When a monthly schedule gives no day: the 1st.
pub const DEFAULT_DAY_OF_MONTH: i64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frequency {
    Daily,
    Weekly,
    Monthly,
}

impl Frequency {
    pub fn parse(s: &str) -> Option<Frequency> {
        match s {
            "daily" => Some(Frequency::Daily),
            "weekly" => Some(Frequency::Weekly),
            "monthly" => Some(Frequency::Monthly),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Frequency::Daily => "daily",
            Frequency::Weekly => "weekly",
            Frequency::Monthly => "monthly",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub enabled: bool,
    pub frequency: Frequency,
    pub hour: u8,
    pub minute: u8,
    /// 0 = Monday … 6 = Sunday (weekly only).
    pub day_of_week: u8,
    /// 1 … 31 (monthly only).
    pub day_of_month: u8,
    pub retention_count: i64,
}

/// Parses `HH:MM` (24-hour, UTC), two digits each and nothing else: the answer writes the
/// time back as `HH:MM`, so anything else ("3:00", "+3:00") would come back changed.
pub fn parse_time_utc(s: &str) -> Option<(u8, u8)> {
    let (h, m) = s.split_once(':')?;
    let two_digits = |p: &str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return None;
    }
    let (h, m) = (h.parse::<u8>().ok()?, m.parse::<u8>().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

fn weekday(n: u8) -> Weekday {
    match n {
        0 => Weekday::Monday,
        1 => Weekday::Tuesday,
        2 => Weekday::Wednesday,
        3 => Weekday::Thursday,
        4 => Weekday::Friday,
        5 => Weekday::Saturday,
        _ => Weekday::Sunday,
    }
}

fn at(date: Date, hour: u8, minute: u8) -> Timestamp {
    let t = Time::from_hms(hour, minute, 0).expect("validated time");
    let dt = PrimitiveDateTime::new(date, t).assume_utc();
    Timestamp((dt.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn month_day(year: i32, month: Month, day: u8) -> Date {
    let last = time::util::days_in_month(month, year);
    Date::from_calendar_date(year, month, day.min(last)).expect("valid day")
}

impl Schedule {
    /// Checks ranges; the message names the first problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.hour > 23 || self.minute > 59 {
            return Err("time must be between 00:00 and 23:59 UTC".into());
        }
        if self.day_of_week > 6 {
            return Err("day_of_week must be 0 (Monday) to 6 (Sunday)".into());
        }
        if !(1..=31).contains(&self.day_of_month) {
            return Err("day_of_month must be 1 to 31".into());
        }
        if !(1..=100).contains(&self.retention_count) {
            return Err("retention_count must be 1 to 100".into());
        }
        Ok(())
    }

    /// The first firing strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Timestamp {
        let now = OffsetDateTime::from_unix_timestamp(after.millis().div_euclid(1000))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let today = now.date();
        let candidate = |d: Date| at(d, self.hour, self.minute);
        match self.frequency {
            Frequency::Daily => {
                let t = candidate(today);
                if t > after {
                    t
                } else {
                    candidate(today.next_day().expect("date in range"))
                }
            }
            Frequency::Weekly => {
                let want = weekday(self.day_of_week);
                let mut d = today;
                while d.weekday() != want {
                    d = d.next_day().expect("date in range");
                }
                let t = candidate(d);
                if t > after {
                    t
                } else {
                    candidate(d + time::Duration::days(7))
                }
            }
            Frequency::Monthly => {
                let t = candidate(month_day(today.year(), today.month(), self.day_of_month));
                if t > after {
                    return t;
                }
                let (y, m) = match today.month() {
                    Month::December => (today.year() + 1, Month::January),
                    m => (today.year(), m.next()),
                };
                candidate(month_day(y, m, self.day_of_month))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn sched(frequency: Frequency, hour: u8, dow: u8, dom: u8) -> Schedule {
        Schedule {
            enabled: true,
            frequency,
            hour,
            minute: 0,
            day_of_week: dow,
            day_of_month: dom,
            retention_count: 7,
        }
    }

    #[test]
    fn daily() {
        let s = sched(Frequency::Daily, 3, 0, 1);
        assert_eq!(
            s.next_after(ts("2024-01-15T02:59:59Z")),
            ts("2024-01-15T03:00:00Z")
        );
        assert_eq!(
            s.next_after(ts("2024-01-15T03:00:00Z")),
            ts("2024-01-16T03:00:00Z")
        );
        assert_eq!(
            s.next_after(ts("2024-12-31T23:00:00Z")),
            ts("2025-01-01T03:00:00Z")
        );
    }

    #[test]
    fn weekly_counts_from_monday() {
        // 2024-01-15 is a Monday.
        let s = sched(Frequency::Weekly, 3, 2, 1);
        assert_eq!(
            s.next_after(ts("2024-01-15T10:00:00Z")),
            ts("2024-01-17T03:00:00Z")
        );
        assert_eq!(
            s.next_after(ts("2024-01-17T03:00:00Z")),
            ts("2024-01-24T03:00:00Z")
        );
        let sunday = sched(Frequency::Weekly, 0, 6, 1);
        assert_eq!(
            sunday.next_after(ts("2024-01-15T00:00:00Z")),
            ts("2024-01-21T00:00:00Z")
        );
    }

    #[test]
    fn monthly_clamps_to_month_end() {
        let s = sched(Frequency::Monthly, 3, 0, 31);
        assert_eq!(
            s.next_after(ts("2024-01-31T03:00:00Z")),
            ts("2024-02-29T03:00:00Z")
        );
        assert_eq!(
            s.next_after(ts("2024-02-10T00:00:00Z")),
            ts("2024-02-29T03:00:00Z")
        );
        assert_eq!(
            s.next_after(ts("2024-12-31T04:00:00Z")),
            ts("2025-01-31T03:00:00Z")
        );
        let first = sched(Frequency::Monthly, 3, 0, 1);
        assert_eq!(
            first.next_after(ts("2024-01-15T00:00:00Z")),
            ts("2024-02-01T03:00:00Z")
        );
    }

    #[test]
    fn time_parsing_and_validation() {
        assert_eq!(parse_time_utc("03:00"), Some((3, 0)));
        assert_eq!(parse_time_utc("23:59"), Some((23, 59)));
        for bad in [
            "24:00", "3", "03:0", "aa:bb", "12:60", "003:00", "3:00", "+3:00", "03:+0", " 3:00",
        ] {
            assert_eq!(parse_time_utc(bad), None, "{bad}");
        }
        assert!(sched(Frequency::Daily, 24, 0, 1).validate().is_err());
        assert!(sched(Frequency::Weekly, 1, 7, 1).validate().is_err());
        assert!(sched(Frequency::Monthly, 1, 0, 0).validate().is_err());
        let mut s = sched(Frequency::Daily, 1, 0, 1);
        s.retention_count = 0;
        assert!(s.validate().is_err());
        assert_eq!(Frequency::parse("hourly"), None);
    }

    proptest! {
        /// The next firing is after `now`, within one period, at the configured time.
        #[test]
        fn next_is_soon_and_on_time(secs in 0i64..4_000_000_000, hour in 0u8..24, dow in 0u8..7, dom in 1u8..32, f in 0u8..3) {
            let freq = [Frequency::Daily, Frequency::Weekly, Frequency::Monthly][f as usize];
            let s = sched(freq, hour, dow, dom);
            let now = Timestamp(secs * 1000);
            let next = s.next_after(now);
            prop_assert!(next > now);
            let max_days = match freq { Frequency::Daily => 1, Frequency::Weekly => 7, Frequency::Monthly => 62 };
            prop_assert!(next.millis() - now.millis() <= max_days * 86_400_000);
            let dt = OffsetDateTime::from_unix_timestamp(next.millis() / 1000).unwrap();
            prop_assert_eq!((dt.hour(), dt.minute()), (hour, 0));
            if freq == Frequency::Weekly {
                prop_assert_eq!(dt.weekday(), weekday(dow));
            }
        }
    }
}
