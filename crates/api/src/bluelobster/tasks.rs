use super::body::invalid;
use super::views::{task, task_summary};
use super::{Auth, BlResult, Ctx};
use axum::extract::{Path, RawQuery};
use axum::Json;
use lobster_core::task::TaskStatus;
use lobster_core::FieldError;
use serde_json::{json, Value};

pub async fn task_get(
    ctx: Ctx,
    Auth(caller): Auth,
    Path(task_id): Path<String>,
) -> BlResult<Json<Value>> {
    let t = ctx.0.task_get(&caller, &task_id).await?;
    Ok(Json(task(&t)))
}

/// `limit` (capped to 0..=100), `days` (capped to 1..=7), `status` (a task state).
pub async fn task_list(
    ctx: Ctx,
    Auth(caller): Auth,
    RawQuery(q): RawQuery,
) -> BlResult<Json<Value>> {
    let (mut limit, mut days, mut status) = (50i64, 1i64, None);
    let mut errors = vec![];
    for (k, v) in form_pairs(q.as_deref().unwrap_or("")) {
        match k.as_str() {
            "limit" => limit = query_int(&mut errors, "limit", &v).unwrap_or(limit),
            "days" => days = query_int(&mut errors, "days", &v).unwrap_or(days),
            "status" if !v.is_empty() => match TaskStatus::parse(&v) {
                Some(s) => status = Some(s.as_str()),
                None => errors.push(
                    FieldError::new(
                        &["query", "status"],
                        "enum",
                        "Input should be 'PENDING', 'PROCESSING', 'COMPLETED' or 'FAILED'",
                    )
                    .with_input(json!(v)),
                ),
            },
            _ => {}
        }
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let (limit, days) = (limit.clamp(0, 100), days.clamp(1, 7));
    let (rows, total) = ctx.0.task_list(&caller, limit, days, status).await?;
    Ok(Json(json!({
        "tasks": rows.iter().map(task_summary).collect::<Vec<_>>(),
        "total": total,
        "limit": limit,
        "days": days,
    })))
}

/// Any integer is schema-valid (the contract sets no bounds); out-of-range values are capped
/// by the caller. Only non-integers are 422.
fn query_int(errors: &mut Vec<FieldError>, name: &str, v: &str) -> Option<i64> {
    match super::int_text(v) {
        Some(n) => Some(n),
        None => {
            errors.push(
                FieldError::new(
                    &["query", name],
                    "int_parsing",
                    "Input should be a valid integer, unable to parse string as an integer",
                )
                .with_input(json!(v)),
            );
            None
        }
    }
}

/// `application/x-www-form-urlencoded` pairs, percent-decoded.
pub(crate) fn form_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A query value decoded: `+` is a space, `%` and two hex digits a byte (`%+0` is not an
/// escape: decoded as one, it was a NUL the filter for `%00` never saw).
fn decode(s: &str) -> String {
    String::from_utf8_lossy(&super::percent_decoded(s, true)).into_owned()
}
