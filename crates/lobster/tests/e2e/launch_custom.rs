use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn openapi_body() -> Value {
    json!({
        "name": "custom-gpu-instance", "host": "px1", "cores": 16, "memory": 64, "disk_size": 200, "gpu_count": 2,
        "instance_type": "gpu_2x_a4000", "template_name": "UBUNTU-22-04-NV", "username": "ubuntu", "ssh_key": SSH_KEY,
        "metadata": {"project": "ml-training"}
    })
}

#[tokio::test]
async fn launch_custom_is_staff_only() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let b = expect(
        alice
            .post("/api/v1/instances/launch-custom", openapi_body())
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        b,
        json!({"error": "forbidden", "message": "Staff permission required"})
    );
}

#[tokio::test]
async fn openapi_form_lands_on_the_named_host() {
    let app = TestApp::spawn().await;
    let op = app.staff("ops").await;
    let free = app.host_free("px1").await;
    let b = expect(
        op.post("/api/v1/instances/launch-custom", openapi_body())
            .await,
        StatusCode::OK,
    )
    .await;
    let id = b["vm_uuid"].as_str().unwrap();
    assert_eq!(b["data"]["instance_ids"], json!([id]));
    app.drain().await;
    let i = op.instance(id).await;
    assert_eq!(
        (
            i["host_id"].as_str(),
            i["cpu_cores"].as_i64(),
            i["memory"].as_i64()
        ),
        (Some("px1"), Some(16), Some(64))
    );
    assert_eq!(
        (
            i["storage"].as_i64(),
            i["gpu_count"].as_i64(),
            i["gpu_model"].as_str()
        ),
        (Some(200), Some(2), Some("A4000"))
    );
    assert_eq!(i["name"], "custom-gpu-instance");
    assert_eq!(i["instance_type"], "gpu_2x_a4000");
    assert_eq!(i["price_cents_per_hour"], 90);
    assert_eq!(i["metadata"], json!({"project": "ml-training"}));
    let after = app.host_free("px1").await;
    assert_eq!(
        (
            free.cores - after.cores,
            free.gpus - after.gpus,
            free.disk_gb - after.disk_gb
        ),
        (16, 2, 200)
    );
}

#[tokio::test]
async fn reference_form_lets_placement_pick_the_host() {
    let app = TestApp::spawn().await;
    let op = app.staff("ops").await;
    let body = json!({"region": "us-east-dev", "vcpus": 16, "memory_gib": 64, "storage_gib": 500, "gpu_count": 2,
                      "gpu_model": "A6000", "ssh_key": SSH_KEY, "name": "custom-ml-server"});
    let b = expect(
        op.post("/api/v1/instances/launch-custom", body).await,
        StatusCode::OK,
    )
    .await;
    let i = op.instance(b["vm_uuid"].as_str().unwrap()).await;
    assert_eq!(i["host_id"], "phl-gpu-01", "the A6000 host of the region");
    assert_eq!(i["vm_username"], "ubuntu");
    assert_eq!(i["template_name"], "UBUNTU-22-04-NV");
    assert!(i["price_cents_per_hour"].as_i64().unwrap() > 0);
    // gpu_model is required with GPUs.
    let body = json!({"region": "us-east-dev", "vcpus": 8, "memory_gib": 32, "storage_gib": 100, "gpu_count": 1, "ssh_key": SSH_KEY});
    let r = expect(
        op.post("/api/v1/instances/launch-custom", body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(r["detail"][0]["loc"], json!(["body", "gpu_model"]));
    // Unknown region.
    let body = json!({"region": "atlantis", "vcpus": 8, "memory_gib": 32, "storage_gib": 100, "gpu_count": 0, "ssh_key": SSH_KEY});
    let r = expect(
        op.post("/api/v1/instances/launch-custom", body).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(r["details"]["valid_regions"].is_array());
}

#[tokio::test]
async fn business_rules_are_400_with_details() {
    let app = TestApp::spawn().await;
    let op = app.staff("ops").await;
    let mut body = openapi_body();
    body["cores"] = json!(6);
    body["memory"] = json!(33);
    body["disk_size"] = json!(35);
    let b = expect(
        op.post("/api/v1/instances/launch-custom", body).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(b["error"], "invalid_request");
    assert_eq!(
        b["details"]["cores"],
        "Must be a power of 2 between 1 and 64"
    );
    assert_eq!(
        b["details"]["memory"],
        "Must be an even number between 8 and 512"
    );
    assert!(b["details"]["disk_size"].is_string());
    // Single core is a power of two.
    let mut body = openapi_body();
    body["cores"] = json!(1);
    body["gpu_count"] = json!(0);
    assert_eq!(
        op.post("/api/v1/instances/launch-custom", body)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn schema_ranges_are_422() {
    let app = TestApp::spawn().await;
    let op = app.staff("ops").await;
    for (field, v, kind) in [
        ("cores", json!(65), "less_than_equal"),
        ("cores", json!(0), "greater_than_equal"),
        ("memory", json!(4), "greater_than_equal"),
        ("disk_size", json!(5000), "less_than_equal"),
        ("gpu_count", json!(9), "less_than_equal"),
        ("cores", json!("many"), "int_parsing"),
        ("cores", json!(2.5), "int_from_float"),
        ("host", json!(""), "string_too_short"),
    ] {
        let mut body = openapi_body();
        body[field] = v;
        let r = expect(
            op.post("/api/v1/instances/launch-custom", body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(r["detail"][0]["loc"], json!(["body", field]));
        assert_eq!(r["detail"][0]["type"], kind, "{field}");
    }
    let mut body = openapi_body();
    body.as_object_mut().unwrap().remove("name");
    let r = expect(
        op.post("/api/v1/instances/launch-custom", body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(r["detail"][0]["type"], "missing");
}

#[tokio::test]
async fn host_without_room_is_409_with_available_resources() {
    let app = TestApp::spawn().await;
    let op = app.staff("ops").await;
    let mut body = openapi_body();
    body["gpu_count"] = json!(8); // px1 has 4 GPUs
    let b = expect(
        op.post("/api/v1/instances/launch-custom", body).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(b["error"], "resource_conflict");
    assert_eq!(
        b["message"],
        "Requested resources not available on specified host"
    );
    assert_eq!(
        b["available_resources"],
        json!({"cores": 128, "memory": 512, "storage": 4096, "gpus": 4})
    );
    let mut body = openapi_body();
    body["host"] = json!("nowhere-1");
    let b = expect(
        op.post("/api/v1/instances/launch-custom", body).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(b["details"]["valid_hosts"]
        .as_array()
        .unwrap()
        .contains(&json!("px1")));
}

#[tokio::test]
async fn windows_custom_launch_without_password_returns_credentials() {
    let app = TestApp::spawn().await;
    let op = app.staff("ops").await;
    let body = json!({"name": "windows-workstation", "host": "px1", "cores": 8, "memory": 16, "disk_size": 100,
                      "gpu_count": 1, "template_name": "WIN10", "username": "admin"});
    let b = expect(
        op.post("/api/v1/instances/launch-custom", body).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(b["credentials"]["username"], "admin");
    assert_eq!(b["credentials"]["password"].as_str().unwrap().len(), 16);
    assert!(b["credentials"]["note"]
        .as_str()
        .unwrap()
        .contains("only once"));
}
