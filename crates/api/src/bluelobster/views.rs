//! Core/app values mapped to Blue Lobster wire shapes.

use lobster_app::App;
use lobster_core::auth::Caller;
use lobster_core::clock::Timestamp;
use lobster_store::{InstanceRow, TaskRow};
use serde_json::{json, Value};

pub fn ts(ms: i64) -> String {
    Timestamp(ms).rfc3339()
}

fn metadata(raw: &Option<String>) -> Value {
    raw.as_deref()
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or(Value::Null)
}

/// The `VMInstance` schema plus `status` (the life-cycle state) and `iso_url`.
pub fn instance(app: &App, caller: &Caller, i: &InstanceRow) -> Value {
    let tpl = i
        .template_name
        .as_deref()
        .and_then(|t| app.fleet().template(t));
    json!({
        "uuid": i.id,
        "name": i.name,
        "host_id": i.host_id,
        "region": i.region,
        "ip_address": i.ip_address,
        "internal_ip": i.ip_address,
        "cpu_cores": i.resources.cores,
        "memory": i.resources.memory_gb,
        "storage": i.resources.disk_gb,
        "gpu_count": i.resources.gpus,
        "gpu_model": i.gpu_model,
        "power_status": i.power_status,
        "status": i.status,
        "created_at": ts(i.created_at),
        "metadata": metadata(&i.metadata),
        "instance_type": i.instance_type,
        "price_cents_per_hour": i.price_cents_per_hour,
        "team_id": i.team_id,
        "team_name": i.team_name,
        "access_type": if caller.team_id.is_some() { "team" } else { "owner" },
        "template_name": i.template_name,
        "template_display_name": tpl.map(|t| t.display_name.clone()),
        "os_type": i.os_type,
        "vm_username": i.username,
        "iso_url": i.iso_url,
    })
}

fn params(t: &TaskRow) -> Value {
    serde_json::from_str(&t.params).unwrap_or_else(|_| json!({}))
}

pub fn task(t: &TaskRow) -> Value {
    let p = params(t);
    json!({
        "task_id": t.id,
        "status": t.status,
        "operation": t.operation,
        "params": p,
        "vm_uuid": p.get("vm_uuid").cloned().unwrap_or(Value::Null),
        "ip_address": p.get("ip_address").cloned().unwrap_or(Value::Null),
        "created_at": ts(t.created_at),
        "updated_at": ts(t.updated_at),
        "message": t.message,
        "account_id": t.account_id,
    })
}

pub fn task_summary(t: &TaskRow) -> Value {
    let p = params(t);
    json!({
        "task_id": t.id,
        "status": t.status,
        "operation": t.operation,
        "vm_uuid": p.get("vm_uuid").cloned().unwrap_or(Value::Null),
        "created_at": ts(t.created_at),
        "updated_at": ts(t.updated_at),
        "message": t.message,
    })
}
