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

/// The `VMInstance` schema plus `status` (the life-cycle state) and `iso_url`. A typed view
/// borrowing from the row: lists of thousands are written without building a `Value` per
/// instance (that was most of a list request's time).
#[derive(serde::Serialize)]
pub struct InstanceView<'a> {
    uuid: &'a str,
    name: &'a str,
    host_id: &'a str,
    region: &'a str,
    ip_address: Option<&'a str>,
    internal_ip: Option<&'a str>,
    cpu_cores: i64,
    memory: i64,
    storage: i64,
    gpu_count: i64,
    gpu_model: Option<&'a str>,
    power_status: &'a str,
    status: &'a str,
    created_at: String,
    metadata: Value,
    instance_type: Option<&'a str>,
    price_cents_per_hour: i64,
    team_id: Option<&'a str>,
    team_name: Option<&'a str>,
    access_type: &'static str,
    template_name: Option<&'a str>,
    template_display_name: Option<&'a str>,
    os_type: Option<&'a str>,
    vm_username: &'a str,
    iso_url: Option<&'a str>,
}

pub fn instance<'a>(app: &'a App, caller: &Caller, i: &'a InstanceRow) -> InstanceView<'a> {
    let tpl = i
        .template_name
        .as_deref()
        .and_then(|t| app.fleet().template(t));
    InstanceView {
        uuid: &i.id,
        name: &i.name,
        host_id: &i.host_id,
        region: &i.region,
        ip_address: i.ip_address.as_deref(),
        internal_ip: i.ip_address.as_deref(),
        cpu_cores: i.resources.cores,
        memory: i.resources.memory_gb,
        storage: i.resources.disk_gb,
        gpu_count: i.resources.gpus,
        gpu_model: i.gpu_model.as_deref(),
        power_status: &i.power_status,
        status: &i.status,
        created_at: ts(i.created_at),
        metadata: metadata(&i.metadata),
        instance_type: i.instance_type.as_deref(),
        price_cents_per_hour: i.price_cents_per_hour,
        team_id: i.team_id.as_deref(),
        team_name: i.team_name.as_deref(),
        access_type: if caller.team_id.is_some() {
            "team"
        } else {
            "owner"
        },
        template_name: i.template_name.as_deref(),
        template_display_name: tpl.map(|t| t.display_name.as_str()),
        os_type: i.os_type.as_deref(),
        vm_username: &i.username,
        iso_url: i.iso_url.as_deref(),
    }
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
