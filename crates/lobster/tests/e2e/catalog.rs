use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn health_reports_components_without_a_key() {
    let app = TestApp::spawn().await;
    let r = app.raw(Method::GET, "/api/v1/health", None, None).await;
    let b = expect(r, StatusCode::OK).await;
    assert_eq!(b["components"]["api"], "operational");
    assert_eq!(b["components"]["database"], "operational");
    assert_eq!(b["components"]["driver"], "operational");
    // The test app runs no background workers, and health says so.
    assert_eq!(b["components"]["task_engine"], "stopped");
    assert_eq!(b["status"], "degraded");
    assert!(b["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn health_is_healthy_with_workers_running() {
    let app = TestApp::spawn().await;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let _w = app.app.engine().spawn(rx);
    // Wait (by polling the endpoint, not sleeping) until a worker loop has started.
    let mut status = String::new();
    for _ in 0..200 {
        let b = expect(
            app.raw(Method::GET, "/api/v1/health", None, None).await,
            StatusCode::OK,
        )
        .await;
        status = b["status"].as_str().unwrap().to_string();
        if status == "healthy" {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(status, "healthy");
}

#[tokio::test]
async fn available_lists_types_with_specs_price_and_regions() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let b = alice
        .get_json("/api/v1/instances/available", StatusCode::OK)
        .await;
    let data = b["data"].as_array().unwrap();
    let names: Vec<_> = data.iter().map(|d| d["id"].as_str().unwrap()).collect();
    for t in [
        "v1_cpu_small",
        "v1_cpu_medium",
        "gpu_1x_a4000",
        "gpu_1x_a5000",
        "gpu_1x_a6000",
        "gpu_2x_a4000",
        "gpu_4x_a5000",
    ] {
        assert!(names.contains(&t), "{t}");
    }
    let a4000 = data.iter().find(|d| d["id"] == "gpu_1x_a4000").unwrap();
    assert_eq!(a4000["instance_type"]["price_cents_per_hour"], 45);
    assert_eq!(
        a4000["instance_type"]["specs"],
        json!({"vcpus": 8, "memory_gib": 32, "storage_gib": 250, "gpus": 1, "gpu_model": "A4000"})
    );
    let regions: Vec<_> = a4000["regions_with_capacity_available"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        regions,
        ["us-east-dev", "igl"],
        "A4000 hosts are px1 and igl-gpu-01"
    );
    let r0 = &a4000["regions_with_capacity_available"][0];
    assert_eq!(
        r0["location"],
        json!({"city": "Philadelphia", "state": "PA", "country": "US"})
    );
}

#[tokio::test]
async fn available_drops_a_region_once_it_is_full() {
    let app = TestApp::spawn_with(tiny_fleet(1), engine_config()).await;
    let alice = app.tenant("alice").await;
    let regions = |b: serde_json::Value| {
        b["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == "v1_cpu_small")
            .unwrap()["regions_with_capacity_available"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(
        regions(
            alice
                .get_json("/api/v1/instances/available", StatusCode::OK)
                .await
        ),
        1
    );
    alice.launch("v1_cpu_small", "us-east-1").await;
    assert_eq!(
        regions(
            alice
                .get_json("/api/v1/instances/available", StatusCode::OK)
                .await
        ),
        0
    );
}

#[tokio::test]
async fn templates_are_listed() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let b = alice
        .get_json("/api/v1/instances/templates", StatusCode::OK)
        .await;
    assert_eq!(b["total"], 4);
    let win = b["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "WIN10")
        .unwrap();
    assert_eq!(win["os_type"], "windows");
    assert!(win["vmid"].is_i64());
    assert!(win["has_nvidia"].is_boolean());
}

#[tokio::test]
async fn resources_are_staff_only_and_follow_reservations() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let r = alice.get("/api/v1/resources").await;
    assert_eq!(
        expect(r, StatusCode::FORBIDDEN).await["message"],
        "Staff permission required"
    );
    let op = app.staff("operator").await;
    let before = op.get_json("/api/v1/resources", StatusCode::OK).await;
    let px1 = &before["hosts"]["px1"];
    assert_eq!(px1["region"], "us-east-dev");
    assert_eq!(px1["city"], "Philadelphia");
    assert_eq!(px1["gpu_model"], "A4000");
    assert_eq!(px1["gpus_available"], 4);
    alice.launch("gpu_2x_a4000", "us-east-dev").await;
    let after = op.get_json("/api/v1/resources", StatusCode::OK).await;
    assert_eq!(after["hosts"]["px1"]["gpus_available"], 2);
    assert_eq!(
        after["hosts"]["px1"]["cores_available"],
        px1["cores_available"].as_i64().unwrap() - 16
    );
}

#[tokio::test]
async fn openapi_and_docs_are_served() {
    let app = TestApp::spawn().await;
    let doc = expect(
        app.raw(Method::GET, "/api/v1/openapi.json", None, None)
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(doc["paths"]["/api/v1/instances/launch-instance"]["post"].is_object());
    assert!(doc["paths"]["/api/v1/resources"]["get"].is_object());
    // Codes the contract omits but the server can answer (a write failed by a deadlock).
    let launch = &doc["paths"]["/api/v1/instances/launch-instance"]["post"]["responses"];
    assert!(launch["503"].is_object() && launch["413"].is_object());
    assert!(doc["paths"]["/api/v1/backups"]["delete"]["responses"]["503"].is_object());
    let page = app.raw(Method::GET, "/docs", None, None).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("/api/v1/openapi.json"));
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let b = expect(alice.get("/api/v1/nope").await, StatusCode::NOT_FOUND).await;
    assert_eq!(b["error"], "not_found");
    let b = expect(
        alice.call(Method::PATCH, "/api/v1/instances", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    assert_eq!(b["error"], "method_not_allowed");
}
