//! Backup schedules, one per instance. Firing is claimed by moving `next_run_at` forward with
//! a conditional UPDATE, so with several servers each occurrence fires exactly once.

use crate::{db_err, get_i64, get_opt_i64, get_str, Store, Tx};
use lobster_core::schedule::{DEFAULT_DAY_OF_MONTH, DEFAULT_DAY_OF_WEEK};
use lobster_core::Error;

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    pub instance_id: String,
    pub account_id: String,
    pub enabled: bool,
    pub frequency: String,
    pub hour_utc: i64,
    pub minute_utc: i64,
    /// As the client gave them (None: not given; the schedule's defaults apply).
    pub day_of_week: Option<i64>,
    pub day_of_month: Option<i64>,
    pub retention_count: i64,
    pub next_run_at: Option<i64>,
    pub last_run_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLS: &str =
    "instance_id, account_id, enabled, frequency, hour_utc, minute_utc, day_of_week, day_of_month,
    retention_count, next_run_at, last_run_at, created_at, updated_at";

fn row(r: &impl crate::exec::Named) -> Result<ScheduleRow, Error> {
    Ok(ScheduleRow {
        instance_id: get_str(r, "instance_id")?,
        account_id: get_str(r, "account_id")?,
        enabled: get_i64(r, "enabled")? != 0,
        frequency: get_str(r, "frequency")?,
        hour_utc: get_i64(r, "hour_utc")?,
        minute_utc: get_i64(r, "minute_utc")?,
        day_of_week: get_opt_i64(r, "day_of_week")?,
        day_of_month: get_opt_i64(r, "day_of_month")?,
        retention_count: get_i64(r, "retention_count")?,
        next_run_at: get_opt_i64(r, "next_run_at")?,
        last_run_at: get_opt_i64(r, "last_run_at")?,
        created_at: get_i64(r, "created_at")?,
        updated_at: get_i64(r, "updated_at")?,
    })
}

impl Store {
    pub async fn schedule_get(&self, instance_id: &str) -> Result<Option<ScheduleRow>, Error> {
        let sql = format!("SELECT {COLS} FROM backup_schedules WHERE instance_id = $1");
        let r = sqlx::query(&sql)
            .bind(instance_id)
            .fetch_optional(self.reader())
            .await
            .map_err(db_err)?;
        r.as_ref().map(row).transpose()
    }

    /// Creates or replaces the schedule; true when it was created. The insert itself tells
    /// (a read before it could not: two PUTs at once would both have answered "created").
    pub async fn schedule_put(&self, s: &ScheduleRow) -> Result<bool, Error> {
        // A schedule deleted between the insert that found it and the update is inserted
        // again: at most once more each time someone deletes it meanwhile.
        loop {
            let created = self
                .schedule_bind(
                    "INSERT INTO backup_schedules (instance_id, account_id, enabled, frequency, hour_utc,
                       minute_utc, day_of_week, day_of_month, retention_count, next_run_at, last_run_at,
                       created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, $11, $11)
                     ON CONFLICT (instance_id) DO NOTHING",
                    s,
                )
                .await?;
            if created == 1 {
                return Ok(true);
            }
            // The armed occurrence is kept when the schedule stays on and either it is due
            // and not yet taken (a PUT just after 02:00, before the scheduler's tick, must
            // not cancel that night's backup), or its timing is unchanged (re-arming from this
            // server's clock could bring back an occurrence another server already took).
            // The timing compares as it fires, not as sent: a daily schedule's days do not
            // count, and a day not given is its default.
            let sql = format!(
                "UPDATE backup_schedules SET account_id = $2, enabled = $3, frequency = $4,
                   hour_utc = $5, minute_utc = $6, day_of_week = $7, day_of_month = $8,
                   retention_count = $9, updated_at = $11,
                   next_run_at = CASE
                     WHEN $3 = 1 AND enabled = 1 AND next_run_at IS NOT NULL
                       AND (next_run_at <= $11
                            OR (frequency = $4 AND hour_utc = $5 AND minute_utc = $6
                                AND (frequency = 'daily'
                                     OR (frequency = 'weekly'
                                         AND COALESCE(day_of_week, {dow}) = COALESCE($7, {dow}))
                                     OR (frequency = 'monthly'
                                         AND COALESCE(day_of_month, {dom}) = COALESCE($8, {dom})))))
                     THEN next_run_at ELSE $10 END
                 WHERE instance_id = $1",
                dow = DEFAULT_DAY_OF_WEEK,
                dom = DEFAULT_DAY_OF_MONTH,
            );
            let updated = self.schedule_bind(&sql, s).await?;
            if updated == 1 {
                return Ok(false);
            }
        }
    }

    /// Runs `sql` with the schedule's columns bound as `schedule_put` numbers them.
    async fn schedule_bind(&self, sql: &str, s: &ScheduleRow) -> Result<u64, Error> {
        self.q(sql)
            .bind(&s.instance_id)
            .bind(&s.account_id)
            .bind(s.enabled as i64)
            .bind(&s.frequency)
            .bind(s.hour_utc)
            .bind(s.minute_utc)
            .bind(s.day_of_week)
            .bind(s.day_of_month)
            .bind(s.retention_count)
            .bind(s.next_run_at)
            .bind(s.updated_at)
            .execute()
            .await
    }

    pub async fn schedule_delete(&self, instance_id: &str) -> Result<bool, Error> {
        let r = self
            .q("DELETE FROM backup_schedules WHERE instance_id = $1")
            .bind(instance_id)
            .execute()
            .await?;
        Ok(r > 0)
    }

    /// Enabled schedules whose next run is due.
    pub async fn schedule_due(&self, now: i64) -> Result<Vec<ScheduleRow>, Error> {
        let sql = format!(
            "SELECT {COLS} FROM backup_schedules WHERE enabled = 1 AND next_run_at IS NOT NULL AND next_run_at <= $1
             ORDER BY next_run_at"
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .fetch_all(self.reader())
            .await
            .map_err(db_err)?;
        rows.iter().map(row).collect()
    }

    pub async fn schedule_enabled(&self) -> Result<Vec<ScheduleRow>, Error> {
        let sql = format!("SELECT {COLS} FROM backup_schedules WHERE enabled = 1");
        let rows = sqlx::query(&sql)
            .fetch_all(self.reader())
            .await
            .map_err(db_err)?;
        rows.iter().map(row).collect()
    }
}

impl Tx {
    /// Takes this occurrence: true for exactly one caller per `expected` value. In the
    /// transaction that queues its backup, so the two commit together.
    pub async fn schedule_claim(
        &mut self,
        read: &ScheduleRow,
        expected: i64,
        next: i64,
        now: i64,
    ) -> Result<bool, Error> {
        // Only while the timing is still the one `next` was computed from: a PUT since the
        // read that changed it keeps the due occurrence (see `schedule_put`) and is claimed
        // by the next tick, which reads the new timing, instead of arming the old one.
        let r = self
            .q(
                "UPDATE backup_schedules SET next_run_at = $1, last_run_at = $2
                 WHERE instance_id = $3 AND next_run_at = $4
                   AND frequency = $5 AND hour_utc = $6 AND minute_utc = $7
                   AND (day_of_week = $8 OR (day_of_week IS NULL AND $8 IS NULL))
                   AND (day_of_month = $9 OR (day_of_month IS NULL AND $9 IS NULL))",
            )
            .bind(next)
            .bind(now)
            .bind(&read.instance_id)
            .bind(expected)
            .bind(&read.frequency)
            .bind(read.hour_utc)
            .bind(read.minute_utc)
            .bind(read.day_of_week)
            .bind(read.day_of_month)
            .execute()
            .await?;
        Ok(r == 1)
    }
}
