use crate::support::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn task_list_newest_first_with_filters() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let first = alice.launch("v1_cpu_small", "us-east-1").await;
    app.drain().await;
    let second = alice.launch("v1_cpu_small", "us-east-1").await;
    let b = alice.get_json("/api/v1/tasks", StatusCode::OK).await;
    assert_eq!(
        (b["total"].as_i64(), b["limit"].as_i64(), b["days"].as_i64()),
        (Some(2), Some(50), Some(1))
    );
    let ids: Vec<_> = b["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![second["task_id"].clone(), first["task_id"].clone()]
    );
    let t = &b["tasks"][0];
    assert_eq!(t["status"], "PENDING");
    assert_eq!(t["operation"], "create_instance");
    assert!(t["created_at"].as_str().unwrap().ends_with('Z'));

    let done = alice
        .get_json("/api/v1/tasks?status=COMPLETED", StatusCode::OK)
        .await;
    assert_eq!(done["total"], 1);
    assert_eq!(done["tasks"][0]["task_id"], first["task_id"]);
    let pending = alice
        .get_json("/api/v1/tasks?status=pending", StatusCode::OK)
        .await;
    assert_eq!(pending["tasks"][0]["task_id"], second["task_id"]);
    let one = alice
        .get_json("/api/v1/tasks?limit=1", StatusCode::OK)
        .await;
    assert_eq!(
        (
            one["tasks"].as_array().unwrap().len(),
            one["total"].as_i64()
        ),
        (1, Some(2))
    );
}

#[tokio::test]
async fn task_list_limits_are_capped_and_validated() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let b = alice
        .get_json(
            "/api/v1/tasks?limit=1000&days=30&_mark_section=x",
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        (b["limit"].as_i64(), b["days"].as_i64()),
        (Some(100), Some(7))
    );
    let b = alice
        .get_json("/api/v1/tasks?limit=-5&days=-1", StatusCode::OK)
        .await;
    assert_eq!(
        (b["limit"].as_i64(), b["days"].as_i64()),
        (Some(0), Some(1))
    );
    assert_eq!(b["tasks"], json!([]));
    // Whole numbers beyond i64 are capped like any other (FastAPI's integers have no bound).
    let b = alice
        .get_json(
            "/api/v1/tasks?limit=99999999999999999999&days=-99999999999999999999",
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        (b["limit"].as_i64(), b["days"].as_i64()),
        (Some(100), Some(1))
    );
    for q in [
        "limit=abc",
        "days=1.5",
        "status=DONE",
        "limit=1e3",
        "limit=--5",
    ] {
        let r = expect(
            alice.get(&format!("/api/v1/tasks?{q}")).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(r["detail"][0]["loc"][0], "query", "{q}");
    }
}

#[tokio::test]
async fn days_window_excludes_older_tasks() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    alice.launch("v1_cpu_small", "us-east-1").await;
    app.clock.advance_ms(2 * 86_400_000);
    alice.launch("v1_cpu_small", "us-east-1").await;
    assert_eq!(
        alice.get_json("/api/v1/tasks", StatusCode::OK).await["total"],
        1
    );
    assert_eq!(
        alice.get_json("/api/v1/tasks?days=3", StatusCode::OK).await["total"],
        2
    );
}

#[tokio::test]
async fn task_get_shape() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let vm = alice.launch("gpu_1x_a6000", "us-east-dev").await;
    let t = alice
        .get_json(
            &format!("/api/v1/tasks/{}", vm["task_id"].as_str().unwrap()),
            StatusCode::OK,
        )
        .await;
    assert_eq!(t["params"]["host_id"], "phl-gpu-01");
    assert!(t["params"]["account_id"].is_string());
    assert_eq!(t["account_id"], t["params"]["account_id"]);
    assert!(t["updated_at"].is_string());
    assert!(t["message"].is_string());
    let missing = expect(
        alice.get("/api/v1/tasks/task_nope").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(
        missing,
        json!({"error": "task_not_found", "message": "Task not found", "task_id": "task_nope"})
    );
}
