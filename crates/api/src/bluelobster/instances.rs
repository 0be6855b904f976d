use super::body::{object, Fields};
use super::views::instance;
use super::{body_bytes, Auth, BlResult, Ctx};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Path;
use axum::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use lobster_app::instances::Queued;
use lobster_core::instance::PowerOp;
use serde_json::{json, Value};

/// Rendered list bodies (see `crate::rendered`).
pub type Lists = std::sync::Arc<crate::rendered::Rendered<Vec<lobster_store::InstanceRow>>>;

pub async fn instance_list(
    ctx: Ctx,
    Extension(lists): Extension<Lists>,
    Auth(caller): Auth,
    headers: HeaderMap,
) -> BlResult<Response> {
    let rows = ctx.0.instance_list(&caller).await?;
    // What of the view depends on the caller: `access_type`.
    let variant = caller.team_id.is_some() as u8;
    let gzip = headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(crate::rendered::accepts_gzip);
    let body = lists.body_for(&rows, variant, gzip, |rows| {
        let views: Vec<_> = rows.iter().map(|i| instance(&ctx.0, &caller, i)).collect();
        Bytes::from(serde_json::to_vec(&views).expect("instance views serialize"))
    });
    let json = (CONTENT_TYPE, "application/json");
    let vary = (VARY, "accept-encoding");
    Ok(match body.gzip {
        true => ([json, vary, (CONTENT_ENCODING, "gzip")], body.bytes).into_response(),
        false => ([json, vary], body.bytes).into_response(),
    })
}

pub async fn instance_get(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> BlResult<Response> {
    let row = ctx.0.instance_get(&caller, &id).await?;
    Ok(Json(instance(&ctx.0, &caller, &row)).into_response())
}

fn queued(q: &Queued, message: &str) -> Json<Value> {
    Json(json!({
        "task_id": q.task_id,
        "status": "PENDING",
        "message": message,
        "instance_id": q.instance.id,
        "host": q.instance.host_id,
    }))
}

pub async fn instance_delete(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    let q = ctx.0.instance_delete(&caller, &id).await?;
    Ok(queued(&q, "Instance deletion queued"))
}

async fn power(ctx: Ctx, caller: Auth, id: String, op: PowerOp) -> BlResult<Json<Value>> {
    let q = ctx.0.instance_power(&caller.0, &id, op).await?;
    Ok(queued(&q, op.queued_message()))
}

// Power endpoints take no body; any body (or none) is accepted and ignored.
pub async fn instance_reboot(ctx: Ctx, a: Auth, Path(id): Path<String>) -> BlResult<Json<Value>> {
    power(ctx, a, id, PowerOp::Reboot).await
}

pub async fn instance_shutdown(ctx: Ctx, a: Auth, Path(id): Path<String>) -> BlResult<Json<Value>> {
    power(ctx, a, id, PowerOp::Shutdown).await
}

pub async fn instance_force_shutdown(
    ctx: Ctx,
    a: Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    power(ctx, a, id, PowerOp::ForceShutdown).await
}

pub async fn instance_power_on(ctx: Ctx, a: Auth, Path(id): Path<String>) -> BlResult<Json<Value>> {
    power(ctx, a, id, PowerOp::PowerOn).await
}

pub async fn instance_power_cycle(
    ctx: Ctx,
    a: Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    power(ctx, a, id, PowerOp::PowerCycle).await
}

/// Body `{"name": …}`; the name rules are business rules (400 `invalid_name`), its presence
/// and type are schema (422).
pub async fn instance_rename(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, super::BlError> {
    let bytes = body_bytes(body)?;
    let obj = object(&bytes)?;
    let mut f = Fields::new(&obj);
    let name = f.req_str("name");
    f.finish()?;
    let name = name.expect("checked");
    let row = ctx.0.instance_rename(&caller, &id, &name).await?;
    Ok(Json(json!({
        "message": "Instance renamed successfully",
        "instance_id": row.id,
        "new_name": row.name,
    }))
    .into_response())
}
