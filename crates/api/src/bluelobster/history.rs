//! `POST /instances/log`: instance history with billing.

use super::body::{object, Fields};
use super::views::ts;
use super::{body_bytes, Auth, BlResult, Ctx};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::Json;
use lobster_core::clock::Timestamp;
use lobster_core::FieldError;
use serde_json::{json, Value};

/// ISO 8601 date-time; one without an offset is taken as UTC.
fn datetime(f: &mut Fields, name: &str, raw: Option<String>) -> Option<i64> {
    let s = raw?;
    let parsed =
        Timestamp::parse_rfc3339(&s).or_else(|| Timestamp::parse_rfc3339(&format!("{s}Z")));
    match parsed {
        Some(t) => Some(t.millis()),
        None => {
            f.errors.push(
                FieldError::new(
                    &["body", name],
                    "datetime_parsing",
                    "Input should be a valid datetime",
                )
                .with_input(json!(s)),
            );
            None
        }
    }
}

/// A display number in the range Proxmox uses for VM ids, stable per instance.
fn vmid(id: &str) -> u64 {
    100 + id
        .bytes()
        .fold(0u64, |a, b| a.wrapping_mul(131).wrapping_add(b as u64))
        % 900_000
}

pub async fn instance_log(
    ctx: Ctx,
    Auth(caller): Auth,
    body: Result<Bytes, BytesRejection>,
) -> BlResult<Json<Value>> {
    let obj = object(&body_bytes(body)?)?;
    let mut f = Fields::new(&obj);
    let (s, e) = (f.req_str("start_time"), f.req_str("end_time"));
    let start = datetime(&mut f, "start_time", s);
    let end = datetime(&mut f, "end_time", e);
    let only = f.opt_str("instance_id");
    f.finish()?;
    let (start, end) = (start.expect("checked"), end.expect("checked"));
    let entries = ctx
        .0
        .instance_log(&caller, start, end, only.as_deref())
        .await?;
    let pools = |region: &str| {
        ctx.0
            .fleet()
            .region(region)
            .map(|r| r.ip_pools.clone())
            .unwrap_or_default()
    };
    let instances: Vec<Value> = entries
        .iter()
        .map(|h| {
            let i = &h.instance;
            json!({
                "uuid": i.id,
                "name": i.name,
                "host_id": i.host_id,
                "region": i.region,
                "vmid": vmid(&i.id),
                "status": i.status,
                "ip_address": i.ip_address.as_deref().map(|a| lobster_core::ip::with_prefix(a, &pools(&i.region))),
                "cpu_cores": i.resources.cores,
                "memory_gb": i.resources.memory_gb,
                "disk_gb": i.resources.disk_gb,
                "gpu_count": i.resources.gpus,
                "instance_type": i.instance_type,
                "template_name": i.template_name,
                "price_cents_per_hour": i.price_cents_per_hour,
                "created_at": ts(i.created_at),
                "updated_at": ts(i.updated_at),
                "deleted_at": i.deleted_at.map(ts),
                "total_billed_cents": h.total_cents,
                "total_hours_billed": h.charge.hours(),
                "ip_billed_cents": h.ip_cents,
                "first_billed_at": h.charge.first_billed_at.map(ts),
                "last_billed_at": h.charge.last_billed_at.map(ts),
            })
        })
        .collect();
    Ok(Json(json!({
        "total_records": instances.len(),
        "time_range": { "start": ts(start), "end": ts(end) },
        "instances": instances,
    })))
}
