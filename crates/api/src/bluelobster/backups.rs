//! Backup endpoints, per instance and account-wide.

use super::body::{invalid, object, Fields};
use super::tasks::form_pairs;
use super::views::ts;
use super::{body_bytes, Auth, BlResult, Ctx};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery};
use axum::Json;
use lobster_app::backups::{RestoreName, GIB};
use lobster_core::{Error, FieldError};
use lobster_store::BackupRow;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Sizes as the spec writes them: binary units labelled GB/MB/KB, one decimal.
pub fn size_human(bytes: i64) -> String {
    let b = bytes as f64;
    let (v, unit) = if bytes >= GIB {
        (b / GIB as f64, "GB")
    } else if bytes >= 1024 * 1024 {
        (b / (1024.0 * 1024.0), "MB")
    } else {
        (b / 1024.0, "KB")
    };
    format!("{v:.1} {unit}")
}

fn backup_json(b: &BackupRow) -> Value {
    json!({
        "volid": b.volid,
        "instance_id": b.instance_id,
        "instance_name": b.instance_name,
        "size_bytes": b.size_bytes,
        "size_human": size_human(b.size_bytes),
        "created_at": ts(b.created_at),
        "format": b.format,
        "notes": b.notes,
        "storage": b.storage,
    })
}

fn query(q: Option<String>) -> HashMap<String, String> {
    form_pairs(q.as_deref().unwrap_or("")).into_iter().collect()
}

fn required_query(
    q: &HashMap<String, String>,
    name: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match q.get(name) {
        Some(v) => Some(v.clone()),
        None => {
            errors.push(FieldError::new(
                &["query", name],
                "missing",
                "Field required",
            ));
            None
        }
    }
}

/// Reads an optional JSON object body: empty means `{}`.
fn optional_object(bytes: &Bytes) -> Result<Map<String, Value>, super::BlError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    object(bytes)
}

pub async fn backup_create(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    let q = ctx.0.backup_create(&caller, &id).await?;
    Ok(Json(
        json!({ "message": "Backup started", "task_id": q.task_id, "instance_id": q.instance.id, "volid": q.volid }),
    ))
}

pub async fn backup_list_instance(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    let l = ctx.0.backup_list_instance(&caller, &id).await?;
    let backup_in_progress = l.backup_in_progress.as_ref().map(|b| {
        json!({ "task_id": b.task_id, "volid": b.volid, "started_at": ts(b.created_at), "status": "running" })
    });
    let restore_in_progress = l.restore_in_progress.as_ref().map(|t| {
        let volid = serde_json::from_str::<Value>(&t.params).ok().and_then(|p| p.get("volid").cloned());
        json!({ "task_id": t.id, "backup_volid": volid, "started_at": ts(t.created_at), "status": t.status })
    });
    Ok(Json(json!({
        "instance_id": l.instance.id,
        "storage": l.storage,
        "backups": l.backups.iter().map(backup_json).collect::<Vec<_>>(),
        "total": l.backups.len(),
        "backup_in_progress": backup_in_progress,
        "restore_in_progress": restore_in_progress,
    })))
}

/// Body `{"backup_volid": …}`; a missing volid is the spec's 400, not a 422.
pub async fn backup_restore_instance(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> BlResult<Json<Value>> {
    let obj = optional_object(&body_bytes(body)?)?;
    let mut f = Fields::new(&obj);
    let volid = f.opt_str("backup_volid");
    f.finish()?;
    let volid = volid
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::bad_request("missing_backup_volid", "backup_volid is required"))?;
    let q = ctx
        .0
        .backup_restore(&caller, &id, &volid, RestoreName::default())
        .await?;
    Ok(Json(
        json!({ "message": "Restore started", "task_id": q.task_id, "instance_id": q.instance.id, "backup_volid": q.volid }),
    ))
}

pub async fn backup_list(ctx: Ctx, Auth(caller): Auth) -> BlResult<Json<Value>> {
    let list = ctx.0.backup_list(&caller).await?;
    Ok(Json(
        json!({ "backups": list.iter().map(backup_json).collect::<Vec<_>>(), "total": list.len() }),
    ))
}

pub async fn backup_delete(
    ctx: Ctx,
    Auth(caller): Auth,
    RawQuery(q): RawQuery,
) -> BlResult<Json<Value>> {
    let q = query(q);
    let mut errors = vec![];
    let volid = required_query(&q, "volid", &mut errors);
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let (task_id, b) = ctx
        .0
        .backup_delete(&caller, &volid.expect("checked"))
        .await?;
    Ok(Json(
        json!({ "success": true, "message": "Backup deletion started", "task_id": task_id, "volid": b.volid }),
    ))
}

/// Query `volid, target_vm_uuid, new_name, add_restore_prefix, backup_source_name` (OpenAPI),
/// or the reference's body `{volid, target_instance_id}`.
pub async fn backup_restore(
    ctx: Ctx,
    Auth(caller): Auth,
    RawQuery(q): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> BlResult<Json<Value>> {
    let q = query(q);
    let obj = optional_object(&body_bytes(body)?)?;
    let mut f = Fields::new(&obj);
    let body_volid = f.opt_str("volid");
    let body_target = f.opt_str("target_instance_id");
    f.finish()?;
    let mut errors = vec![];
    let volid = q.get("volid").cloned().or(body_volid);
    let target = q.get("target_vm_uuid").cloned().or(body_target);
    if volid.is_none() {
        errors.push(FieldError::new(
            &["query", "volid"],
            "missing",
            "Field required",
        ));
    }
    if target.is_none() {
        errors.push(FieldError::new(
            &["query", "target_vm_uuid"],
            "missing",
            "Field required",
        ));
    }
    let prefix = match q.get("add_restore_prefix").map(|v| v.to_ascii_lowercase()) {
        None => false,
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => true,
        Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => false,
        Some(v) => {
            errors.push(
                FieldError::new(
                    &["query", "add_restore_prefix"],
                    "bool_parsing",
                    "Input should be a valid boolean, unable to interpret input",
                )
                .with_input(json!(v)),
            );
            false
        }
    };
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let (volid, target) = (volid.expect("checked"), target.expect("checked"));
    let name = RestoreName {
        new_name: q.get("new_name").cloned(),
        prefix,
        source_name: q.get("backup_source_name").cloned(),
    };
    let q = ctx.0.backup_restore(&caller, &target, &volid, name).await?;
    Ok(Json(json!({
        "message": "Restore started",
        "task_id": q.task_id,
        "target_instance_id": q.instance.id,
        "backup_volid": q.volid,
        "new_name": q.new_name,
    })))
}

pub async fn backup_storage(ctx: Ctx, Auth(caller): Auth) -> BlResult<Json<Value>> {
    let u = ctx.0.backup_storage(&caller).await?;
    let gb = |b: i64| (b as f64 / GIB as f64 * 100.0).round() / 100.0;
    let usage = if u.free_tier_bytes > 0 {
        (u.total_bytes as f64 * 1000.0 / u.free_tier_bytes as f64).round() / 10.0
    } else {
        0.0
    };
    Ok(Json(json!({
        "total_bytes": u.total_bytes,
        "total_gb": gb(u.total_bytes),
        "total_formatted": format!("{:.2} GB", u.total_bytes as f64 / GIB as f64),
        "free_tier_bytes": u.free_tier_bytes,
        "free_tier_gb": gb(u.free_tier_bytes),
        "billable_bytes": u.billable_bytes,
        "billable_gb": gb(u.billable_bytes),
        "backup_count": u.backup_count,
        "monthly_cost_cents": u.monthly_cost_cents,
        "monthly_cost_formatted": format!("${}.{:02}/mo", u.monthly_cost_cents / 100, u.monthly_cost_cents % 100),
        "is_free": u.billable_bytes == 0,
        "usage_percent": usage,
    })))
}

pub async fn backup_notes_set(
    ctx: Ctx,
    Auth(caller): Auth,
    RawQuery(q): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> BlResult<Json<Value>> {
    let q = query(q);
    let mut errors = vec![];
    let volid = required_query(&q, "volid", &mut errors);
    let bytes = body_bytes(body)?;
    let obj = match object(&bytes) {
        Ok(o) => Some(o),
        Err(super::BlError(Error::Invalid(mut e))) => {
            errors.append(&mut e);
            None
        }
        Err(e) => return Err(e),
    };
    let mut notes = None;
    if let Some(obj) = &obj {
        let mut f = Fields::new(obj);
        notes = f.req_str("notes");
        errors.append(&mut f.errors);
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let volid = volid.expect("checked");
    ctx.0
        .backup_notes_set(&caller, &volid, &notes.expect("checked"))
        .await?;
    Ok(Json(
        json!({ "success": true, "message": "Notes updated", "volid": volid }),
    ))
}
