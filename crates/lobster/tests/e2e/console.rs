use crate::support::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn stats_come_from_the_driver_and_are_zero_when_stopped() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = alice.launch("gpu_1x_a4000", "igl").await["vm_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let creating = alice
        .get_json(&format!("/api/v1/instances/{id}/stats"), StatusCode::OK)
        .await;
    assert_eq!(creating["cpu"]["usage_percent"], 0.0);
    app.drain().await;
    let s = alice
        .get_json(&format!("/api/v1/instances/{id}/stats"), StatusCode::OK)
        .await;
    assert_eq!(s["instance_id"], json!(id));
    assert_eq!(s["status"], "running");
    assert_eq!(s["cpu"]["cores"], 8);
    assert!(s["cpu"]["usage_percent"].as_f64().unwrap() > 0.0);
    assert_eq!(s["memory"]["total_bytes"], 32u64 * 1024 * 1024 * 1024);
    let used = s["memory"]["used_bytes"].as_u64().unwrap();
    assert!(used > 0 && used < 32u64 * 1024 * 1024 * 1024);
    assert!(s["memory"]["usage_percent"].is_f64());
    for k in ["read_bytes_sec", "write_bytes_sec"] {
        assert!(s["disk"][k].is_u64(), "{k}");
    }
    assert!(s["network"]["in_bytes_sec"].is_u64());
    assert!(s["uptime_seconds"].is_u64());
    expect(
        alice
            .post(&format!("/api/v1/instances/{id}/shutdown"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
    let s = alice
        .get_json(&format!("/api/v1/instances/{id}/stats"), StatusCode::OK)
        .await;
    assert_eq!(s["status"], "stopped");
    assert_eq!(
        (
            s["cpu"]["usage_percent"].as_f64(),
            s["memory"]["used_bytes"].as_u64(),
            s["uptime_seconds"].as_u64()
        ),
        (Some(0.0), Some(0), Some(0))
    );
    let bob = app.tenant("bob").await;
    assert_eq!(
        bob.get(&format!("/api/v1/instances/{id}/stats"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn console_tickets_are_single_use_and_short_lived() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = alice.launch("v1_cpu_small", "us-east-1").await["vm_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let r = expect(
        alice
            .post(&format!("/api/v1/instances/{id}/console"), json!({}))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        r,
        json!({"error": "invalid_state", "message": "Instance must be running to access console"})
    );
    app.drain().await;
    let t = expect(
        alice
            .post(&format!("/api/v1/instances/{id}/console"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(t["instance_id"], json!(id));
    let ticket = t["ticket"].as_str().unwrap().to_string();
    assert!(ticket.starts_with("PVEVNC:"));
    assert!(t["port"].as_i64().unwrap() >= 5900);
    assert_eq!(t["host"], "wil-cpu-03.lobster.local");
    let expires =
        lobster_core::clock::Timestamp::parse_rfc3339(t["expires_at"].as_str().unwrap()).unwrap();
    let now = lobster_core::clock::Clock::now(&*app.clock);
    assert!(
        (29_000..=30_000).contains(&(expires.millis() - now.millis())),
        "about 30 s ahead"
    );
    // GET works too, and every call makes a new ticket.
    let t2 = alice
        .get_json(&format!("/api/v1/instances/{id}/console"), StatusCode::OK)
        .await;
    assert_ne!(t2["ticket"], t["ticket"]);
    // A proxy may use a ticket once; an expired one not at all.
    let used = app
        .app
        .console_ticket_redeem(&ticket)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (used.instance_id.as_str(), used.port),
        (id.as_str(), t["port"].as_i64().unwrap())
    );
    assert!(app
        .app
        .console_ticket_redeem(&ticket)
        .await
        .unwrap()
        .is_none());
    app.clock.advance_ms(31_000);
    assert!(app
        .app
        .console_ticket_redeem(t2["ticket"].as_str().unwrap())
        .await
        .unwrap()
        .is_none());
    // Stopped instances and viewers get none.
    let viewer = app.key("alice", "viewer", false, None).await;
    assert_eq!(
        viewer
            .post(&format!("/api/v1/instances/{id}/console"), json!({}))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    expect(
        alice
            .post(&format!("/api/v1/instances/{id}/force-shutdown"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
    assert_eq!(
        alice
            .post(&format!("/api/v1/instances/{id}/console"), json!({}))
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_ticket_from_one_server_is_redeemed_once_by_any_server() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let id = id.as_str();
    let t = alice
        .get_json(&format!("/api/v1/instances/{id}/console"), StatusCode::OK)
        .await;
    let ticket = t["ticket"].as_str().unwrap();
    // Two servers' proxies race for the same ticket: exactly one gets it.
    let other = app.second_app().await;
    let (a, b) = tokio::join!(
        app.app.console_ticket_redeem(ticket),
        other.console_ticket_redeem(ticket)
    );
    let won: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(won.len(), 1);
    assert_eq!(won[0].instance_id, id);
}

/// A host that does not answer a stats request within the read limit: the request is
/// answered 503 ("try again"), not left hanging; and a console request the host failed
/// for a passing reason is a 503 too, not "must be running" (the VM is running).
#[tokio::test]
async fn a_host_that_does_not_answer_a_read_is_a_503_not_a_hang() {
    use lobster_driver::sim::{FailWhen, Op};
    use std::time::Duration;
    let limits = lobster_driver::timed::CallLimits {
        read: Duration::from_millis(200),
        ..Default::default()
    };
    let fleet = lobster_core::fleet::Fleet::demo();
    let app = TestApp::spawn_limited(fleet, engine_config(), limits).await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let hold = app.sim.hold(Op::Stats);
    let r = alice.get(&format!("/api/v1/instances/{id}/stats")).await;
    let b = expect(r, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(b["error"], "service_unavailable");
    let msg = b["message"].as_str().unwrap();
    assert!(msg.contains("no answer within 200 ms"), "{msg}");
    assert_eq!(app.sim.held_calls(), 1);
    drop(hold);
    alice
        .get_json(&format!("/api/v1/instances/{id}/stats"), StatusCode::OK)
        .await;
    app.sim.fail_next(Op::Console, 1, FailWhen::Before, true);
    let r = alice
        .post(&format!("/api/v1/instances/{id}/console"), json!({}))
        .await;
    let b = expect(r, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(b["error"], "service_unavailable");
    let r = alice
        .post(&format!("/api/v1/instances/{id}/console"), json!({}))
        .await;
    expect(r, StatusCode::OK).await;
}
