//! Blue Lobster v1 (`/api/v1`, `X-API-Key`). Contract: `bluelobster-openapi.json`.

mod backups;
mod body;
mod catalog;
mod console;
mod error;
mod firewall;
mod health;
mod history;
mod instances;
mod ips;
mod launch;
pub mod openapi;
mod schedules;
mod tasks;
mod teams;
mod views;

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::Router;
use lobster_app::App;
use lobster_core::auth::Caller;
use lobster_core::Error;
use std::sync::Arc;

pub use error::{BlError, BlResult};

/// Largest request body accepted; launch bodies are a few hundred bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

pub type Ctx = axum::extract::State<Arc<App>>;

/// The caller, authenticated from `X-API-Key`.
pub struct Auth(pub Caller);

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = BlError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let key = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .ok_or(BlError(Error::Unauthorized))?;
        let caller = app.authenticate(key).await?;
        app.rate_admit(&caller).await?;
        Ok(Auth(caller))
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/openapi.json", get(openapi::document))
        .route("/tasks", get(tasks::task_list))
        .route("/tasks/{task_id}", get(tasks::task_get))
        .route("/resources", get(catalog::resources))
        .route(
            "/instances",
            // The kept list bodies go to the list handler alone, not into every request.
            get(instances::instance_list).layer(axum::Extension(instances::Lists::default())),
        )
        .route(
            "/instances/available",
            get(catalog::instance_types_available),
        )
        .route("/instances/templates", get(catalog::templates))
        .route("/instances/launch-instance", post(launch::instance_launch))
        .route(
            "/instances/launch-custom",
            post(launch::instance_launch_custom),
        )
        .route(
            "/instances/{instance_id}",
            get(instances::instance_get).delete(instances::instance_delete),
        )
        .route(
            "/instances/{instance_id}/rename",
            put(instances::instance_rename),
        )
        .route(
            "/instances/{instance_id}/reboot",
            post(instances::instance_reboot),
        )
        .route(
            "/instances/{instance_id}/shutdown",
            post(instances::instance_shutdown),
        )
        .route(
            "/instances/{instance_id}/force-shutdown",
            post(instances::instance_force_shutdown),
        )
        .route(
            "/instances/{instance_id}/power-on",
            post(instances::instance_power_on),
        )
        .route(
            "/instances/{instance_id}/power-cycle",
            post(instances::instance_power_cycle),
        )
        .route(
            "/instances/{instance_id}/firewall",
            get(firewall::firewall_get).put(firewall::firewall_options_set),
        )
        .route(
            "/instances/{instance_id}/firewall/rules",
            post(firewall::firewall_rule_add),
        )
        .route(
            "/instances/{instance_id}/firewall/rules/{pos}",
            get(firewall::firewall_rule_get).delete(firewall::firewall_rule_delete),
        )
        .route(
            "/instances/{instance_id}/ips",
            get(ips::instance_ips).post(ips::instance_ip_assign),
        )
        .route(
            "/instances/{instance_id}/ips/{ip_address}",
            delete(ips::instance_ip_release),
        )
        .route(
            "/instances/{instance_id}/team",
            put(teams::instance_team_set).delete(teams::instance_team_clear),
        )
        .route("/teams/{team_id}/instances", get(teams::team_instances))
        .route(
            "/instances/{instance_id}/stats",
            get(console::instance_stats),
        )
        .route(
            "/instances/{instance_id}/console",
            post(console::instance_console).get(console::instance_console),
        )
        .route(
            "/instances/{instance_id}/backup",
            post(backups::backup_create),
        )
        .route(
            "/instances/{instance_id}/backups",
            get(backups::backup_list_instance),
        )
        .route(
            "/instances/{instance_id}/restore",
            post(backups::backup_restore_instance),
        )
        .route(
            "/backups",
            get(backups::backup_list).delete(backups::backup_delete),
        )
        .route("/backups/restore", post(backups::backup_restore))
        .route("/backups/storage", get(backups::backup_storage))
        .route("/backups/notes", put(backups::backup_notes_set))
        .route(
            "/instances/{vm_uuid}/backup-schedule",
            get(schedules::schedule_get)
                .post(schedules::schedule_set)
                .delete(schedules::schedule_delete),
        )
        .route("/instances/log", post(history::instance_log))
        .layer(axum::middleware::map_response(json_method_not_allowed))
        .layer(axum::middleware::from_fn(refuse_bad_uri))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

/// A path or query that decodes to a NUL character (`%00`) is 400: PostgreSQL cannot take
/// one in text, so it would otherwise end as a 500 wherever it reached a query. So is a
/// path that does not decode to UTF-8 (`%FF`): axum would answer it in plain text, outside
/// the dialect's error shape.
async fn refuse_bad_uri(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let uri = req.uri();
    let nul = |s: &str| {
        s.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%00"))
    };
    let refused = if nul(uri.path()) || uri.query().is_some_and(nul) {
        Some("NUL characters are not allowed")
    } else if std::str::from_utf8(&percent_decoded(uri.path(), false)).is_err() {
        Some("The path is not valid UTF-8 once decoded")
    } else {
        None
    };
    if let Some(message) = refused {
        let e = Error::bad_request("invalid_input", message);
        return axum::response::IntoResponse::into_response(BlError(e));
    }
    next.run(req).await
}

/// An integer written as text (a query, a path, a JSON string), as the contract's FastAPI
/// reads one: surrounding blanks ignored, and a whole number beyond i64 taken as the bound on
/// its side (Python's integers have no bound; each field's own range then caps it). None when
/// the text is not a whole number.
pub(crate) fn int_text(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Some(n);
    }
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let whole = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    whole.then_some(if negative { i64::MIN } else { i64::MAX })
}

/// `s` with each `%` and two hex digits decoded (anything else kept as it is, a `%` with a
/// sign too), as axum decodes path parameters; `+` as a space too when `plus_is_space` (a
/// form-encoded query).
pub(crate) fn percent_decoded(s: &str, plus_is_space: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// axum answers a wrong method with 405 and the `Allow` header; this keeps the header and
/// gives the body the dialect's error shape.
async fn json_method_not_allowed(res: axum::response::Response) -> axum::response::Response {
    if res.status() != StatusCode::METHOD_NOT_ALLOWED {
        return res;
    }
    let (mut parts, _) = res.into_parts();
    let body =
        serde_json::json!({ "error": "method_not_allowed", "message": "Method not allowed" })
            .to_string();
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(body))
}

/// Reads a body; a body over the limit is 413 in the dialect's shape, and one that could not
/// be read at all (a malformed chunk, a connection cut short) is 400, not 413.
pub(crate) fn body_bytes(
    b: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, BlError> {
    use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
    b.map_err(|e| match &e {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            BlError(Error::TooLarge(e.body_text()))
        }
        _ => BlError(Error::bad_request("invalid_input", e.body_text())),
    })
}
