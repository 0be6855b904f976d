//! `launch-instance` and `launch-custom`: both documented request forms are accepted, and the
//! answer carries both documented response shapes (see docs/compatibility.md).

use super::body::{object, Fields};
use super::views::ts;
use super::{body_bytes, Auth, BlError, Ctx};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lobster_app::{CustomTarget, LaunchCustom, LaunchInstance, Launched};
use lobster_core::capacity::Resources;
use lobster_core::validate;
use lobster_core::FieldError;
use serde_json::{json, Map, Value};

const ISO_URL_MAX: usize = 2048;

fn iso_url(f: &mut Fields) -> Option<String> {
    let v = f.opt_str("iso_url");
    f.check("iso_url", v, |s| validate::length(s, 1, ISO_URL_MAX))
}

/// Fields both launch forms share: credentials, naming, OS source and metadata.
struct Common {
    ssh_key: Option<String>,
    password: Option<String>,
    username: Option<String>,
    template_name: Option<String>,
    iso_url: Option<String>,
    metadata: Option<std::collections::BTreeMap<String, String>>,
}

fn common(f: &mut Fields) -> Common {
    let v = f.opt_str("ssh_key");
    let ssh_key = f.check("ssh_key", v, validate::ssh_key);
    let v = f.opt_str("password");
    let password = f.check("password", v, validate::password);
    let v = f.opt_str("username");
    let username = f.check("username", v, validate::username);
    let v = f.opt_str("template_name");
    let template_name = f.check("template_name", v, validate::template_name);
    let iso_url = iso_url(f);
    let metadata = f.opt_string_map("metadata");
    Common {
        ssh_key,
        password,
        username,
        template_name,
        iso_url,
        metadata,
    }
}

pub async fn instance_launch(
    ctx: Ctx,
    Auth(caller): Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, BlError> {
    let bytes = body_bytes(body)?;
    let obj = object(&bytes)?;
    let mut f = Fields::new(&obj);
    let region = f.req_str("region");
    let instance_type = f.req_str("instance_type");
    let c = common(&mut f);
    let v = f.opt_str("name");
    let name = f.check("name", v, validate::instance_name);
    f.finish()?;
    let cmd = LaunchInstance {
        region: region.expect("checked"),
        instance_type: instance_type.expect("checked"),
        ssh_key: c.ssh_key,
        password: c.password,
        username: c.username,
        name,
        metadata: c.metadata,
        template_name: c.template_name,
        iso_url: c.iso_url,
    };
    let launched = ctx.0.instance_launch(&caller, cmd).await?;
    Ok(launched_response(&launched).into_response())
}

pub async fn instance_launch_custom(
    ctx: Ctx,
    Auth(caller): Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, BlError> {
    let bytes = body_bytes(body)?;
    let obj = object(&bytes)?;
    let cmd = if is_reference_form(&obj) {
        reference_form(&obj)?
    } else {
        openapi_form(&obj)?
    };
    let launched = ctx.0.instance_launch_custom(&caller, cmd).await?;
    Ok(launched_response(&launched).into_response())
}

/// The reference document's body names a region and `vcpus`/`memory_gib`/`storage_gib`;
/// the OpenAPI body names a host and `cores`/`memory`/`disk_size`.
fn is_reference_form(obj: &Map<String, Value>) -> bool {
    let any = |keys: &[&str]| keys.iter().any(|k| obj.contains_key(*k));
    !any(&["host", "cores", "memory", "disk_size"])
        && any(&["region", "vcpus", "memory_gib", "storage_gib"])
}

fn openapi_form(obj: &Map<String, Value>) -> Result<LaunchCustom, BlError> {
    let mut f = Fields::new(obj);
    let v = f.req_str("name");
    let name = f.check("name", v, validate::instance_name);
    let instance_type = f.opt_str("instance_type");
    let v = f.req_str("host");
    let host = f.check("host", v, |s| validate::length(s, 1, 100));
    let cores = f.req_int("cores", 1, 64);
    let memory = f.req_int("memory", 8, 512);
    let disk = f.req_int("disk_size", 30, 4096);
    let gpus = f.req_int("gpu_count", 0, 8);
    let c = common(&mut f);
    f.finish()?;
    let r = Resources {
        cores: cores.expect("checked"),
        memory_gb: memory.expect("checked"),
        disk_gb: disk.expect("checked"),
        gpus: gpus.expect("checked"),
    };
    Ok(custom(
        CustomTarget::Host(host.expect("checked")),
        r,
        instance_type,
        name,
        c,
    ))
}

fn reference_form(obj: &Map<String, Value>) -> Result<LaunchCustom, BlError> {
    let mut f = Fields::new(obj);
    let region = f.req_str("region");
    let cores = f.req_int("vcpus", 1, 64);
    let memory = f.req_int("memory_gib", 8, 512);
    let disk = f.req_int("storage_gib", 30, 4096);
    let gpus = f.req_int("gpu_count", 0, 8);
    let gpu_model = f.opt_str("gpu_model");
    if gpus.is_some_and(|g| g > 0) && gpu_model.is_none() {
        f.errors.push(FieldError::new(
            &["body", "gpu_model"],
            "missing",
            "Field required when gpu_count > 0",
        ));
    }
    let v = f.opt_str("name");
    let name = f.check("name", v, validate::instance_name);
    let instance_type = f.opt_str("instance_type");
    let c = common(&mut f);
    f.finish()?;
    let r = Resources {
        cores: cores.expect("checked"),
        memory_gb: memory.expect("checked"),
        disk_gb: disk.expect("checked"),
        gpus: gpus.expect("checked"),
    };
    Ok(custom(
        CustomTarget::Region {
            region: region.expect("checked"),
            gpu_model,
        },
        r,
        instance_type,
        name,
        c,
    ))
}

fn custom(
    target: CustomTarget,
    resources: Resources,
    instance_type: Option<String>,
    name: Option<String>,
    c: Common,
) -> LaunchCustom {
    LaunchCustom {
        target,
        resources,
        instance_type,
        name,
        username: c.username,
        template_name: c.template_name,
        iso_url: c.iso_url,
        ssh_key: c.ssh_key,
        password: c.password,
        metadata: c.metadata,
    }
}

/// The OpenAPI `data{…}` envelope and the reference's top-level fields, together.
fn launched_response(l: &Launched) -> Json<Value> {
    let i = &l.instance;
    let next_steps = json!({
        "description": "Your Instance creation request has been queued. Please check the task status endpoint to monitor progress.",
        "task_status_endpoint": format!("/api/v1/tasks/{}", l.task_id),
        "expected_states": {
            "PENDING": "Task is queued for processing",
            "PROCESSING": "Instance is being created",
            "COMPLETED": "Instance creation successful - instance details will be available",
            "FAILED": "Instance creation failed - check error message for details"
        }
    });
    let timestamp = ts(i.created_at);
    let mut data = json!({
        "instance_ids": [i.id],
        "task_id": l.task_id,
        "assigned_ip": i.ip_address,
        "status": "PENDING",
        "timestamp": timestamp,
        "next_steps": next_steps,
    });
    let mut top = json!({
        "task_id": l.task_id,
        "vm_uuid": i.id,
        "assigned_ip": i.ip_address,
        "status": "PENDING",
        "timestamp": timestamp,
        "next_steps": next_steps,
    });
    if let Some(c) = &l.credentials {
        let creds = json!({
            "username": c.username,
            "password": c.password,
            "note": "This password is shown only once. Store it securely. You can use it for RDP/VNC access."
        });
        data["credentials"] = creds.clone();
        top["credentials"] = creds;
    }
    top["data"] = data;
    Json(top)
}
