//! Team membership of instances.

use super::body::{object, Fields};
use super::views::instance;
use super::{body_bytes, Auth, BlResult, Ctx};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Path;
use axum::Json;
use serde_json::{json, Value};

/// Body `{"team_id": …}` (the reference's form; the OpenAPI document names no body).
pub async fn instance_team_set(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> BlResult<Json<Value>> {
    let obj = object(&body_bytes(body)?)?;
    let mut f = Fields::new(&obj);
    let team_id = f.req_str("team_id");
    f.finish()?;
    let (inst, team) = ctx
        .0
        .instance_team_set(&caller, &id, &team_id.expect("checked"))
        .await?;
    Ok(Json(json!({
        "success": true,
        "message": "Instance assigned to team",
        "instance_id": inst.id,
        "team_id": team.id,
        "team_name": team.name,
    })))
}

pub async fn instance_team_clear(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    let inst = ctx.0.instance_team_clear(&caller, &id).await?;
    Ok(Json(
        json!({ "success": true, "message": "Instance removed from team", "instance_id": inst.id }),
    ))
}

pub async fn team_instances(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(team_id): Path<String>,
) -> BlResult<Json<Value>> {
    let (team, list) = ctx.0.team_instances(&caller, &team_id).await?;
    Ok(Json(json!({
        "team_id": team.id,
        "team_name": team.name,
        "instances": list.iter().map(|i| instance(&ctx.0, &caller, i)).collect::<Vec<_>>(),
        "total": list.len(),
    })))
}
