//! HTTP dialects over the app layer. Each dialect module owns its wire types, routing, auth
//! extraction and error shape; handlers parse, call the app, and map the answer.

pub mod bluelobster;
mod docs;
pub mod rendered;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use lobster_app::App;
use std::sync::{Arc, OnceLock};

/// The whole HTTP surface: Blue Lobster v1 under `/api/v1`, the OpenAPI document and `/docs`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .nest("/api/v1", bluelobster::router(app))
        .merge(docs::router())
        .fallback(not_found)
}

/// What a server serves from the moment it listens: 503 (the Blue Lobster error shape, with
/// `Retry-After: 1`) until `ready` holds the router, then that router. Why: a server starts
/// by migrating its database and syncing its fleet, seconds on a large one; a client that
/// connected meanwhile used to wait in the listen backlog, and a health check could not tell
/// a starting server from a hung one.
pub fn starting(ready: Arc<OnceLock<Router>>) -> Router {
    Router::new().fallback(move |req: axum::extract::Request| {
        let ready = Arc::clone(&ready);
        async move {
            let Some(router) = ready.get() else {
                return starting_answer();
            };
            use tower::ServiceExt;
            match router.clone().oneshot(req).await {
                Ok(answer) => answer,
                Err(never) => match never {},
            }
        }
    })
}

fn starting_answer() -> Response {
    let refusal = bluelobster::BlError(lobster_core::Error::Unavailable(
        "The server is starting; try again shortly".into(),
    ));
    let mut answer = refusal.into_response();
    answer.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    answer
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "not_found", "message": "Not found" })),
    )
}
