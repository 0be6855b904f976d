use super::views::ts;
use super::Ctx;
use axum::Json;
use serde_json::{json, Value};

/// No key needed: load balancers and monitors call it.
pub async fn health(ctx: Ctx) -> Json<Value> {
    let h = ctx.0.health().await;
    Json(json!({
        "status": h.status,
        "timestamp": ts(h.timestamp),
        "components": {
            "api": "operational",
            "database": h.database,
            "task_engine": h.task_engine,
            "driver": h.driver,
        }
    }))
}
