//! Firewall endpoints: options, and rules addressed by position.

use super::body::{invalid, object, Fields};
use super::{body_bytes, Auth, BlError, BlResult, Ctx};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Path;
use axum::Json;
use lobster_app::firewall::FirewallOptions;
use lobster_core::firewall::{Firewall, Rule};
use lobster_core::FieldError;
use serde_json::{json, Value};

fn rule_json(pos: usize, r: &Rule) -> Value {
    let mut v = serde_json::to_value(r).expect("serialisable");
    v["pos"] = json!(pos);
    v
}

fn status_json(fw: &Firewall) -> Value {
    json!({
        "enabled": fw.enabled,
        "policy_in": fw.policy_in,
        "policy_out": fw.policy_out,
        "rules": fw.rules.iter().enumerate().map(|(i, r)| rule_json(i, r)).collect::<Vec<_>>(),
    })
}

/// `pos` is an integer path parameter; anything else is a 422 like FastAPI's.
fn pos_param(raw: &str) -> Result<i64, BlError> {
    super::int_text(raw).ok_or_else(|| {
        invalid(vec![FieldError::new(
            &["path", "pos"],
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
        )
        .with_input(json!(raw))])
    })
}

pub async fn firewall_get(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> BlResult<Json<Value>> {
    let fw = ctx.0.firewall_get(&caller, &id).await?;
    Ok(Json(status_json(&fw)))
}

pub async fn firewall_options_set(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> BlResult<Json<Value>> {
    let obj = object(&body_bytes(body)?)?;
    let mut f = Fields::new(&obj);
    let opts = FirewallOptions {
        enable: f.opt_bool("enable"),
        policy_in: f.opt_str("policy_in"),
        policy_out: f.opt_str("policy_out"),
    };
    f.finish()?;
    let fw = ctx.0.firewall_options_set(&caller, &id, opts).await?;
    Ok(Json(
        json!({ "status": "success", "message": "Firewall options updated", "firewall": status_json(&fw) }),
    ))
}

pub async fn firewall_rule_add(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> BlResult<Json<Value>> {
    let obj = object(&body_bytes(body)?)?;
    let mut f = Fields::new(&obj);
    let direction = f.req_str("type");
    let action = f.req_str("action");
    let proto = f.nullable_str("proto");
    let dport = f.opt_str("dport");
    let sport = f.opt_str("sport");
    let source = f.opt_str("source");
    let dest = f.opt_str("dest");
    let comment = f.opt_str("comment");
    let enable = f.nullable_int("enable");
    let pos = f.opt_int("pos");
    f.finish()?;
    let rule = Rule {
        direction: direction.expect("checked"),
        action: action.expect("checked"),
        // Not sent: the documented defaults. Sent as null: kept as null, and answered so.
        proto: proto.unwrap_or_else(|| Some("tcp".into())),
        dport,
        sport,
        source,
        dest,
        comment,
        enable: enable.unwrap_or(Some(1)),
    };
    let at = ctx
        .0
        .firewall_rule_add(&caller, &id, rule.clone(), pos)
        .await?;
    Ok(Json(
        json!({ "status": "success", "message": "Firewall rule added", "rule": rule_json(at as usize, &rule) }),
    ))
}

pub async fn firewall_rule_get(
    ctx: Ctx,
    Auth(caller): Auth,
    Path((id, pos)): Path<(String, String)>,
) -> BlResult<Json<Value>> {
    let pos = pos_param(&pos)?;
    let rule = ctx.0.firewall_rule_get(&caller, &id, pos).await?;
    Ok(Json(rule_json(pos as usize, &rule)))
}

pub async fn firewall_rule_delete(
    ctx: Ctx,
    Auth(caller): Auth,
    Path((id, pos)): Path<(String, String)>,
) -> BlResult<Json<Value>> {
    let pos = pos_param(&pos)?;
    ctx.0.firewall_rule_delete(&caller, &id, pos).await?;
    Ok(Json(
        json!({ "status": "success", "message": format!("Firewall rule at position {pos} deleted") }),
    ))
}
