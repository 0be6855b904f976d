//! Instance IP addresses.

use super::views::ts;
use super::{Auth, BlResult, Ctx};
use axum::extract::Path;
use axum::Json;
use lobster_store::IpRow;
use serde_json::{json, Value};

/// Every address sits on the one public bridge.
const BRIDGE: &str = "vmbr0";

fn ip_json(r: &IpRow) -> Value {
    json!({
        "ip_address": r.address,
        "internal_ip": r.address,
        "interface_name": r.interface_name,
        "is_primary": r.is_primary,
        "bridge": BRIDGE,
        "mac_address": r.mac_address,
        "assigned_at": ts(r.assigned_at),
    })
}

pub async fn instance_ips(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    let (inst, ips) = ctx.0.instance_ips(&caller, &id).await?;
    Ok(Json(json!({
        "instance_id": inst.id,
        "ip_count": ips.len(),
        "ips": ips.iter().map(ip_json).collect::<Vec<_>>(),
    })))
}

pub async fn instance_ip_assign(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    let ip = ctx.0.instance_ip_assign(&caller, &id).await?;
    Ok(Json(json!({
        "status": "success",
        "message": format!("IP {} assigned (configure as alias on primary interface)", ip.address),
        "ip": ip_json(&ip),
    })))
}

pub async fn instance_ip_release(
    ctx: Ctx,
    Auth(caller): Auth,
    Path((id, address)): Path<(String, String)>,
) -> BlResult<Json<Value>> {
    let ip = ctx.0.instance_ip_release(&caller, &id, &address).await?;
    Ok(Json(json!({
        "status": "success",
        "message": format!("IP {} released from {}", ip.address, ip.interface_name),
        "released_ip": ip.address,
        "released_interface": ip.interface_name,
    })))
}
