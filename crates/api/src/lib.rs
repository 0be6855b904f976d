//! HTTP dialects over the app layer. Each dialect module owns its wire types, routing, auth
//! extraction and error shape; handlers parse, call the app, and map the answer.

pub mod bluelobster;
mod docs;
pub mod rendered;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
use lobster_app::App;
use std::sync::Arc;

/// The whole HTTP surface: Blue Lobster v1 under `/api/v1`, the OpenAPI document and `/docs`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .nest("/api/v1", bluelobster::router(app))
        .merge(docs::router())
        .fallback(not_found)
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "not_found", "message": "Not found" })),
    )
}
