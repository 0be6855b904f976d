use crate::support::*;
use lobster_core::clock::{Clock, Timestamp};
use reqwest::StatusCode;
use serde_json::{json, Value};

const H: i64 = 3_600_000;

fn window(app: &TestApp, back_ms: i64) -> Value {
    let now = app.clock.now();
    json!({
        "start_time": Timestamp(now.millis() - back_ms).rfc3339(),
        "end_time": Timestamp(now.millis() + 60_000).rfc3339(),
    })
}

#[tokio::test]
async fn a_deleted_instance_is_billed_in_half_hours_from_ready_to_delete() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = alice.launch("gpu_4x_a5000", "us-east-1").await["vm_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    app.drain().await;
    // 19 h 38 m 33 s later it is deleted: billed 19.5 h at 240 ¢/h.
    app.clock.advance_ms(19 * H + 38 * 60_000 + 33_000);
    expect(
        alice.delete(&format!("/api/v1/instances/{id}")).await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
    let b = expect(
        alice
            .post("/api/v1/instances/log", window(&app, 2 * 86_400_000))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(b["total_records"], 1);
    let i = &b["instances"][0];
    assert_eq!(
        (i["uuid"].as_str(), i["status"].as_str()),
        (Some(id.as_str()), Some("deleted"))
    );
    assert_eq!(i["total_hours_billed"], 19.5);
    assert_eq!(i["total_billed_cents"], 4680);
    assert!(
        i["deleted_at"].is_string()
            && i["first_billed_at"].is_string()
            && i["last_billed_at"].is_string()
    );
    assert!(
        i["ip_address"].as_str().unwrap().ends_with("/24"),
        "CIDR notation"
    );
    assert!(i["vmid"].is_u64());
    for (k, v) in [
        ("cpu_cores", 32),
        ("memory_gb", 128),
        ("disk_gb", 1000),
        ("gpu_count", 4),
        ("price_cents_per_hour", 240),
    ] {
        assert_eq!(i[k], v, "{k}");
    }
    assert_eq!(
        (i["instance_type"].as_str(), i["template_name"].as_str()),
        (Some("gpu_4x_a5000"), Some("UBUNTU-22-04-NV"))
    );
}

#[tokio::test]
async fn live_instances_extra_ips_and_failed_creations() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    app.sim.fail_next(
        lobster_driver::sim::Op::Create,
        1,
        lobster_driver::sim::FailWhen::Before,
        false,
    );
    let failed = alice.launch("v1_cpu_small", "us-east-1").await["vm_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    app.drain().await;
    let live = alice.launch("v1_cpu_medium", "us-east-1").await["vm_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    app.drain().await;
    expect(
        alice
            .post(&format!("/api/v1/instances/{live}/ips"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    // Half a billing month later: 365 h at 6 ¢/h plus half of $3.00 for the extra address.
    app.clock.advance_ms(365 * H);
    let b = expect(
        alice
            .post("/api/v1/instances/log", window(&app, 89 * 86_400_000))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(b["total_records"], 2);
    let by_id = |id: &str| {
        b["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["uuid"] == id)
            .unwrap()
            .clone()
    };
    let l = by_id(&live);
    assert_eq!(l["status"], "rented");
    assert!(l["deleted_at"].is_null());
    assert_eq!(l["ip_billed_cents"], 150);
    assert_eq!(l["total_billed_cents"], 365 * 6 + 150);
    let f = by_id(&failed);
    assert_eq!(
        (f["status"].as_str(), f["total_billed_cents"].as_i64()),
        (Some("failed"), Some(0))
    );
    assert!(f["first_billed_at"].is_null());
    // Narrowed to one instance.
    let mut body = window(&app, 89 * 86_400_000);
    body["instance_id"] = json!(live);
    assert_eq!(
        expect(
            alice.post("/api/v1/instances/log", body).await,
            StatusCode::OK
        )
        .await["total_records"],
        1
    );
}

#[tokio::test]
async fn time_ranges_are_validated() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let r = expect(
        alice
            .post(
                "/api/v1/instances/log",
                json!({"start_time": "2024-02-01T00:00:00Z", "end_time": "2024-01-01T00:00:00Z"}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(r["error"], "invalid_time_range");
    let r = expect(
        alice
            .post(
                "/api/v1/instances/log",
                json!({"start_time": "2024-01-01T00:00:00Z", "end_time": "2024-05-01T00:00:00Z"}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        r,
        json!({"error": "invalid_time_range", "message": "Maximum time range is 90 days"})
    );
    let r = expect(
        alice
            .post(
                "/api/v1/instances/log",
                json!({"start_time": "yesterday", "end_time": "2024-05-01T00:00:00Z"}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        (
            r["detail"][0]["loc"].clone(),
            r["detail"][0]["type"].as_str()
        ),
        (json!(["body", "start_time"]), Some("datetime_parsing"))
    );
    let r = expect(
        alice.post("/api/v1/instances/log", json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(r["detail"].as_array().unwrap().len(), 2);
    // Offsets and naive times (taken as UTC) are accepted.
    let ok = alice
        .post(
            "/api/v1/instances/log",
            json!({"start_time": "2024-01-01T02:00:00+02:00", "end_time": "2024-01-31T23:59:59"}),
        )
        .await;
    assert_eq!(
        expect(ok, StatusCode::OK).await["time_range"],
        json!({"start": "2024-01-01T00:00:00Z", "end": "2024-01-31T23:59:59Z"})
    );
}

#[tokio::test]
async fn history_is_scoped() {
    let app = TestApp::spawn().await;
    let owner = app.tenant("acme").await;
    let team = app.app.team_create("acme", "ml").await.unwrap();
    let ml = app.key("acme", "member", false, Some(&team.id)).await;
    owner.launch("v1_cpu_small", "us-east-1").await;
    ml.launch("v1_cpu_small", "us-east-1").await;
    app.drain().await;
    let bob = app.tenant("bob").await;
    assert_eq!(
        expect(
            bob.post("/api/v1/instances/log", window(&app, H)).await,
            StatusCode::OK
        )
        .await["total_records"],
        0
    );
    assert_eq!(
        expect(
            ml.post("/api/v1/instances/log", window(&app, H)).await,
            StatusCode::OK
        )
        .await["total_records"],
        1
    );
    assert_eq!(
        expect(
            owner.post("/api/v1/instances/log", window(&app, H)).await,
            StatusCode::OK
        )
        .await["total_records"],
        2
    );
}
