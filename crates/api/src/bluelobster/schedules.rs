//! Backup schedules. Both documented bodies are accepted:
//! `{frequency, hour_utc, day_of_week, day_of_month}` and `{enabled, frequency, time_utc, retention_count}`.

use super::body::{object, Fields};
use super::views::ts;
use super::{body_bytes, Auth, BlResult, Ctx};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Path;
use axum::Json;
use lobster_app::schedules::ScheduleInput;
use lobster_core::schedule::parse_time_utc;
use lobster_core::{Error, FieldError};
use lobster_store::schedules::ScheduleRow;
use serde_json::{json, Value};

fn schedule_json(s: &ScheduleRow) -> Value {
    json!({
        "enabled": s.enabled,
        "frequency": s.frequency,
        "time_utc": format!("{:02}:{:02}", s.hour_utc, s.minute_utc),
        "hour_utc": s.hour_utc,
        "day_of_week": s.day_of_week,
        "day_of_month": s.day_of_month,
        "retention_count": s.retention_count,
    })
}

pub async fn schedule_get(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    let (inst, s) = ctx.0.schedule_get(&caller, &id).await?;
    let mut v = schedule_json(&s);
    v["instance_id"] = json!(inst.id);
    v["last_backup"] = json!(s.last_run_at.map(ts));
    v["next_backup"] = json!(s.next_run_at.filter(|_| s.enabled).map(ts));
    Ok(Json(v))
}

pub async fn schedule_set(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> BlResult<Json<Value>> {
    let obj = object(&body_bytes(body)?)?;
    let mut f = Fields::new(&obj);
    let frequency = f.req_str("frequency");
    let hour = f.opt_int("hour_utc");
    let time_utc = f.opt_str("time_utc");
    let input = ScheduleInput {
        enabled: f.opt_bool("enabled"),
        frequency: String::new(),
        hour: 0,
        minute: 0,
        day_of_week: f.opt_int("day_of_week"),
        day_of_month: f.opt_int("day_of_month"),
        retention_count: f.opt_int("retention_count"),
    };
    if hour.is_none() && time_utc.is_none() {
        f.errors.push(FieldError::new(
            &["body", "hour_utc"],
            "missing",
            "Field required (or time_utc)",
        ));
    }
    f.finish()?;
    let (hour, minute) = match time_utc {
        Some(t) => parse_time_utc(&t)
            .map(|(h, m)| (h as i64, m as i64))
            .ok_or_else(|| {
                Error::bad_request(
                    "invalid_schedule",
                    format!("time_utc must be HH:MM in UTC, not {t:?}"),
                )
            })?,
        None => (hour.expect("checked"), 0),
    };
    let input = ScheduleInput {
        frequency: frequency.expect("checked"),
        hour,
        minute,
        ..input
    };
    let (s, created) = ctx.0.schedule_set(&caller, &id, input).await?;
    Ok(Json(json!({
        "success": true,
        "message": if created { "Backup schedule created" } else { "Backup schedule updated" },
        "instance_id": s.instance_id,
        "schedule": schedule_json(&s),
        "next_backup": s.next_run_at.filter(|_| s.enabled).map(ts),
    })))
}

pub async fn schedule_delete(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    let inst = ctx.0.schedule_delete(&caller, &id).await?;
    Ok(Json(
        json!({ "success": true, "message": "Backup schedule deleted", "instance_id": inst.id }),
    ))
}
