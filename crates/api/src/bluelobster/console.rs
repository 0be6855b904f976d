//! Live statistics and VNC console tickets.

use super::views::ts;
use super::{Auth, BlResult, Ctx};
use axum::extract::Path;
use axum::Json;
use serde_json::{json, Value};

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 1000.0 / whole as f64).round() / 10.0
}

pub async fn instance_stats(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    let (inst, s) = ctx.0.instance_stats(&caller, &id).await?;
    let total = inst.resources.memory_gb as u64 * 1024 * 1024 * 1024;
    Ok(Json(json!({
        "instance_id": inst.id,
        "status": inst.power_status,
        "cpu": { "usage_percent": s.cpu_usage_percent, "cores": inst.resources.cores },
        "memory": {
            "used_bytes": s.memory_used_bytes,
            "total_bytes": total,
            "usage_percent": percent(s.memory_used_bytes, total),
        },
        "disk": { "read_bytes_sec": s.disk_read_bytes_sec, "write_bytes_sec": s.disk_write_bytes_sec },
        "network": { "in_bytes_sec": s.net_in_bytes_sec, "out_bytes_sec": s.net_out_bytes_sec },
        "uptime_seconds": s.uptime_seconds,
    })))
}

pub async fn instance_console(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    let (inst, t) = ctx.0.instance_console(&caller, &id).await?;
    Ok(Json(json!({
        "instance_id": inst.id,
        "ticket": t.ticket,
        "port": t.port,
        "host": t.host,
        "expires_at": ts(t.expires_at),
    })))
}
