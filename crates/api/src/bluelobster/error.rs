//! The Blue Lobster error shapes: `{"error": code, "message": …}` for business errors and
//! FastAPI's `{"detail": [{loc, msg, type}]}` for request-schema violations (422).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lobster_core::{Error, FieldError, Loc};
use serde_json::{json, Map, Value};

#[derive(Debug)]
pub struct BlError(pub Error);

impl From<Error> for BlError {
    fn from(e: Error) -> Self {
        BlError(e)
    }
}

pub type BlResult<T> = Result<T, BlError>;

fn detail(errors: &[FieldError]) -> Value {
    let items: Vec<Value> = errors
        .iter()
        .map(|e| {
            let loc: Vec<Value> = e
                .loc
                .iter()
                .map(|l| match l {
                    Loc::Key(k) => json!(k),
                    Loc::Index(i) => json!(i),
                })
                .collect();
            let mut o = json!({ "loc": loc, "msg": e.msg, "type": e.kind });
            if let Some(input) = &e.input {
                o["input"] = input.clone();
            }
            o
        })
        .collect();
    json!({ "detail": items })
}

fn body(code: &str, message: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("error".into(), json!(code));
    m.insert("message".into(), json!(message));
    m
}

impl IntoResponse for BlError {
    fn into_response(self) -> Response {
        if let Error::RateLimited {
            message,
            retry_after_s,
        } = &self.0
        {
            let b = Value::Object(body("rate_limited", message));
            let retry = [(axum::http::header::RETRY_AFTER, retry_after_s.to_string())];
            return (StatusCode::TOO_MANY_REQUESTS, retry, Json(b)).into_response();
        }
        let (status, value) = match self.0 {
            Error::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                Value::Object(body("unauthorized", "Invalid or missing API key")),
            ),
            Error::Forbidden { message } => (
                StatusCode::FORBIDDEN,
                Value::Object(body("forbidden", &message)),
            ),
            Error::NotFound {
                kind: "instance",
                id,
            } => (
                StatusCode::NOT_FOUND,
                Value::Object(body(
                    "instance_not_found",
                    &format!("Instance {id} not found"),
                )),
            ),
            Error::NotFound { kind: "task", id } => {
                let mut m = body("task_not_found", "Task not found");
                m.insert("task_id".into(), json!(id));
                (StatusCode::NOT_FOUND, Value::Object(m))
            }
            Error::NotFound { kind: "rule", id } => (
                StatusCode::NOT_FOUND,
                Value::Object(body(
                    "rule_not_found",
                    &format!("Rule at position {id} not found"),
                )),
            ),
            Error::NotFound { kind: "ip", id } => (
                StatusCode::NOT_FOUND,
                Value::Object(body(
                    "ip_not_found",
                    &format!("IP {id} is not assigned to this instance"),
                )),
            ),
            Error::NotFound { kind: "team", id } => (
                StatusCode::NOT_FOUND,
                Value::Object(body("team_not_found", &format!("Team {id} not found"))),
            ),
            Error::NotFound { kind: "backup", id } => (
                StatusCode::NOT_FOUND,
                Value::Object(body("backup_not_found", &format!("Backup {id} not found"))),
            ),
            Error::NotFound {
                kind: "schedule",
                id,
            } => (
                StatusCode::NOT_FOUND,
                Value::Object(body(
                    "schedule_not_found",
                    &format!("No backup schedule for instance {id}"),
                )),
            ),
            Error::NotFound { kind, id } => (
                StatusCode::NOT_FOUND,
                Value::Object(body("not_found", &format!("{kind} {id} not found"))),
            ),
            Error::Invalid(errors) => (StatusCode::UNPROCESSABLE_ENTITY, detail(&errors)),
            Error::BadRequest {
                code,
                message,
                details,
            } => {
                let mut m = body(code, &message);
                if let Some(d) = details {
                    m.insert("details".into(), d);
                }
                (StatusCode::BAD_REQUEST, Value::Object(m))
            }
            // The spec puts conflict context (e.g. `available_resources`) beside the message.
            Error::Conflict {
                code,
                message,
                details,
            } => {
                let mut m = body(code, &message);
                if let Some(Value::Object(d)) = details {
                    m.extend(d);
                }
                (StatusCode::CONFLICT, Value::Object(m))
            }
            Error::Unprocessable { code, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Value::Object(body(code, &message)),
            ),
            Error::TooLarge(msg) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Value::Object(body("payload_too_large", &msg)),
            ),
            Error::RateLimited { message, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                Value::Object(body("rate_limited", &message)),
            ),
            Error::Unavailable(msg) | Error::Unanswered { message: msg, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Value::Object(body("service_unavailable", &msg)),
            ),
            Error::Internal(msg) => {
                tracing::error!("internal error: {msg}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Value::Object(body("internal_error", "Internal server error")),
                )
            }
        };
        (status, Json(value)).into_response()
    }
}
