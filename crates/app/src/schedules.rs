//! Backup schedules: settings per instance, and the scheduler tick that takes due backups and
//! prunes scheduled backups beyond the retention count. The tick runs on the app's clock, so
//! tests move time instead of waiting.

use crate::App;
use lobster_core::auth::{Caller, Permission, Role};
use lobster_core::clock::Timestamp;
use lobster_core::schedule::{Frequency, Schedule};
use lobster_core::Error;
use lobster_store::schedules::ScheduleRow;
use lobster_store::{InstanceRow, Scope};

/// A schedule as a client sent it (either documented body form).
#[derive(Debug, Clone, Default)]
pub struct ScheduleInput {
    pub enabled: Option<bool>,
    pub frequency: String,
    pub hour: i64,
    pub minute: i64,
    pub day_of_week: Option<i64>,
    pub day_of_month: Option<i64>,
    pub retention_count: Option<i64>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::bad_request("invalid_schedule", msg)
}

fn to_schedule(r: &ScheduleRow) -> Option<Schedule> {
    Some(Schedule {
        enabled: r.enabled,
        frequency: Frequency::parse(&r.frequency)?,
        hour: r.hour_utc as u8,
        minute: r.minute_utc as u8,
        day_of_week: r.day_of_week.unwrap_or(DEFAULT_DAY_OF_WEEK) as u8,
        day_of_month: r.day_of_month.unwrap_or(DEFAULT_DAY_OF_MONTH) as u8,
        retention_count: r.retention_count,
    })
}

use lobster_core::schedule::{DEFAULT_DAY_OF_MONTH, DEFAULT_DAY_OF_WEEK};

fn small(v: i64, what: &str) -> Result<u8, Error> {
    u8::try_from(v).map_err(|_| invalid(format!("{what} is out of range")))
}

impl App {
    fn schedule_from(input: &ScheduleInput) -> Result<Schedule, Error> {
        let frequency = Frequency::parse(&input.frequency).ok_or_else(|| {
            invalid(format!(
                "frequency must be daily, weekly or monthly, not {:?}",
                input.frequency
            ))
        })?;
        let s = Schedule {
            enabled: input.enabled.unwrap_or(true),
            frequency,
            hour: small(input.hour, "hour_utc")?,
            minute: small(input.minute, "time_utc")?,
            day_of_week: small(
                input.day_of_week.unwrap_or(DEFAULT_DAY_OF_WEEK),
                "day_of_week",
            )?,
            day_of_month: small(
                input.day_of_month.unwrap_or(DEFAULT_DAY_OF_MONTH),
                "day_of_month",
            )?,
            retention_count: input.retention_count.unwrap_or(7),
        };
        s.validate().map_err(invalid)?;
        Ok(s)
    }

    pub async fn schedule_get(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(InstanceRow, ScheduleRow), Error> {
        let inst = self.instance_get(caller, id).await?;
        let s = self
            .store
            .schedule_get(&inst.id)
            .await?
            .ok_or_else(|| Error::not_found("schedule", id))?;
        Ok((inst, s))
    }

    /// Creates or replaces the instance's schedule; true when it was created.
    pub async fn schedule_set(
        &self,
        caller: &Caller,
        id: &str,
        input: ScheduleInput,
    ) -> Result<(ScheduleRow, bool), Error> {
        caller.require(Permission::InstanceWrite)?;
        let inst = self.instance_get(caller, id).await?;
        let s = Self::schedule_from(&input)?;
        let now = self.now();
        let row = ScheduleRow {
            instance_id: inst.id.clone(),
            account_id: inst.account_id.clone(),
            enabled: s.enabled,
            frequency: s.frequency.as_str().into(),
            hour_utc: s.hour as i64,
            minute_utc: s.minute as i64,
            // As given: answered back as sent, null when not sent.
            day_of_week: input.day_of_week,
            day_of_month: input.day_of_month,
            retention_count: s.retention_count,
            next_run_at: s.enabled.then(|| s.next_after(Timestamp(now)).millis()),
            last_run_at: None,
            created_at: now,
            updated_at: now,
        };
        let created = self.store.schedule_put(&row).await?;
        let stored = self.store.schedule_get(&inst.id).await?.unwrap_or(row);
        Ok((stored, created))
    }

    pub async fn schedule_delete(&self, caller: &Caller, id: &str) -> Result<InstanceRow, Error> {
        caller.require(Permission::InstanceWrite)?;
        let inst = self.instance_get(caller, id).await?;
        if !self.store.schedule_delete(&inst.id).await? {
            return Err(Error::not_found("schedule", id));
        }
        Ok(inst)
    }

    /// One scheduler tick: takes every due backup (each occurrence claimed by exactly one
    /// process), then prunes scheduled backups beyond each schedule's retention count.
    /// Returns how many backups were started.
    pub async fn schedules_run_due(&self) -> Result<usize, Error> {
        // A clock found off the database's would fire occurrences early (or, read back by a
        // server whose clock is right, twice): as with task leases, none is taken meanwhile.
        if !self.engine.clock_ok() {
            tracing::warn!(
                "backup scheduler: this server's clock is off the database's; no schedule taken"
            );
            return Ok(0);
        }
        let now = self.now();
        let mut started = 0;
        for row in self.store.schedule_due(now).await? {
            let (Some(s), Some(expected)) = (to_schedule(&row), row.next_run_at) else {
                continue;
            };
            let next = s.next_after(Timestamp(now)).millis();
            let occurrence = (expected, next, now);
            match self.schedule_fire(&row, occurrence).await {
                Ok(true) => started += 1,
                Ok(false) => {} // another server took this occurrence
                // The instance cannot be backed up now (busy, gone): this occurrence is
                // skipped, as a missed one would be.
                Err(
                    e
                    @ (Error::Conflict { .. } | Error::BadRequest { .. } | Error::NotFound { .. }),
                ) => {
                    tracing::warn!(instance = %row.instance_id, "scheduled backup skipped: {e}");
                    let mut tx = self.store.begin().await?;
                    tx.schedule_claim(&row, expected, next, now).await?;
                    tx.commit().await?;
                }
                // Anything else (the database) left the occurrence due: the next tick tries
                // it again.
                Err(e) => {
                    tracing::warn!(instance = %row.instance_id, "scheduled backup not taken yet: {e}")
                }
            }
        }
        for row in self.store.schedule_enabled().await? {
            self.schedule_prune(&row).await?;
        }
        Ok(started)
    }

    /// Claims the schedule's occurrence `(expected, next, now)` and queues its backup in one
    /// transaction, so that a failure or a crash between the two cannot consume the
    /// occurrence without a backup. False when another server took it first.
    async fn schedule_fire(
        &self,
        row: &ScheduleRow,
        (expected, next, now): (i64, i64, i64),
    ) -> Result<bool, Error> {
        let mut tx = self.store.begin().await?;
        if !tx.schedule_claim(row, expected, next, now).await? {
            return Ok(false);
        }
        let caller = system_caller(&row.account_id);
        self.backup_take_in(&mut tx, &caller, &row.instance_id, "schedule")
            .await?;
        tx.commit().await?;
        self.wake_workers();
        Ok(true)
    }

    async fn schedule_prune(&self, row: &ScheduleRow) -> Result<(), Error> {
        let sc = Scope {
            account_id: row.account_id.clone(),
            team_id: None,
        };
        let kept = self
            .store
            .backup_list(&sc, Some(&row.instance_id), &["available"])
            .await?;
        let caller = system_caller(&row.account_id);
        let excess = kept
            .iter()
            .filter(|b| b.origin == "schedule")
            .skip(row.retention_count.max(1) as usize);
        for b in excess {
            if let Err(e) = self.backup_delete(&caller, &b.volid).await {
                tracing::warn!(volid = %b.volid, "pruning skipped: {e}");
            }
        }
        Ok(())
    }
}

/// The scheduler acts for the account that owns the schedule.
fn system_caller(account_id: &str) -> Caller {
    Caller {
        account_id: account_id.into(),
        key_id: "scheduler".into(),
        role: Role::Owner,
        team_id: None,
        staff: false,
    }
}
