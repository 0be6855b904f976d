use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// An app, tenant alice, a running instance of hers and its host.
async fn running_instance() -> (TestApp, Tenant, String, String) {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let host = alice.instance(&id).await["host_id"]
        .as_str()
        .unwrap()
        .to_string();
    (app, alice, id, host)
}

/// `op` (a power endpoint) on instance `id`, answered with `status`; the answer's body.
async fn power(t: &Tenant, id: &str, op: &str, status: StatusCode) -> serde_json::Value {
    expect(
        t.post(&format!("/api/v1/instances/{id}/{op}"), json!({}))
            .await,
        status,
    )
    .await
}

#[tokio::test]
async fn each_power_operation_queues_a_task_and_settles_the_power_status() {
    let (app, alice, id, host) = running_instance().await;
    let steps = [
        (
            "shutdown",
            "VM shutdown queued",
            "stopped",
            "shutdown_instance",
        ),
        (
            "power-on",
            "VM power on queued",
            "running",
            "power_on_instance",
        ),
        (
            "force-shutdown",
            "VM force shutdown queued",
            "stopped",
            "force_shutdown_instance",
        ),
        ("reboot", "VM reboot queued", "running", "reboot_instance"),
        (
            "power-cycle",
            "VM power cycle queued",
            "running",
            "power_cycle_instance",
        ),
    ];
    for (op, msg, after, operation) in steps {
        let b = power(&alice, &id, op, StatusCode::OK).await;
        assert_eq!(b["status"], "PENDING", "{op}");
        assert_eq!(b["message"], msg);
        assert_eq!(b["instance_id"], json!(id));
        assert_eq!(b["host"], json!(host));
        let task = b["task_id"].as_str().unwrap();
        assert_eq!(app.drain().await, 1);
        let i = alice.instance(&id).await;
        assert_eq!(i["power_status"], after, "{op}");
        assert_eq!(i["status"], "rented");
        let t = alice
            .get_json(&format!("/api/v1/tasks/{task}"), StatusCode::OK)
            .await;
        assert_eq!(
            (t["status"].as_str(), t["operation"].as_str()),
            (Some("COMPLETED"), Some(operation))
        );
        let vm = app.sim.vm(&host, &id).unwrap();
        assert_eq!(vm.power.as_str(), after);
    }
}

/// The contract documents no error for powering on a running instance or shutting down a
/// stopped one ("Instance must be in stopped state" is a best practice): each is queued, its
/// task completes, and the power state is what was asked (docs/compatibility.md).
#[tokio::test]
async fn power_on_while_running_and_shutdown_while_stopped_complete_and_change_nothing() {
    let (app, alice, id, host) = running_instance().await;
    for (op, settled) in [
        ("power-on", "running"),
        ("shutdown", "stopped"),
        ("shutdown", "stopped"),
        ("force-shutdown", "stopped"),
        ("power-on", "running"),
    ] {
        let b = power(&alice, &id, op, StatusCode::OK).await;
        assert_eq!(app.drain().await, 1, "{op}");
        let t = alice
            .get_json(
                &format!("/api/v1/tasks/{}", b["task_id"].as_str().unwrap()),
                StatusCode::OK,
            )
            .await;
        assert_eq!(t["status"], "COMPLETED", "{op}: {t}");
        assert_eq!(alice.instance(&id).await["power_status"], settled, "{op}");
        assert_eq!(
            app.sim.vm(&host, &id).unwrap().power.as_str(),
            settled,
            "{op}"
        );
    }
}

#[tokio::test]
async fn a_second_operation_while_one_runs_is_409() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    assert_eq!(
        alice
            .post(&format!("/api/v1/instances/{id}/reboot"), json!({}))
            .await
            .status(),
        StatusCode::OK
    );
    for op in ["reboot", "shutdown", "power-on"] {
        let b = power(&alice, &id, op, StatusCode::CONFLICT).await;
        assert_eq!(
            b,
            json!({"error": "operation_in_progress", "message": "Another operation is in progress on this Instance"})
        );
    }
    assert_eq!(
        expect(
            alice.delete(&format!("/api/v1/instances/{id}")).await,
            StatusCode::CONFLICT
        )
        .await["error"],
        "operation_in_progress"
    );
    assert_eq!(app.drain().await, 1, "only the first was queued");
    assert_eq!(
        alice
            .post(&format!("/api/v1/instances/{id}/shutdown"), json!({}))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn concurrent_power_requests_queue_exactly_one() {
    let app = TestApp::spawn().await;
    let alice = std::sync::Arc::new(app.tenant("alice").await);
    let id = app.running(&alice, "v1_cpu_small").await;
    let mut hs = vec![];
    for _ in 0..10 {
        let (a, id) = (alice.clone(), id.clone());
        hs.push(tokio::spawn(async move {
            a.post(&format!("/api/v1/instances/{id}/reboot"), json!({}))
                .await
                .status()
        }));
    }
    let mut ok = 0;
    for h in hs {
        if h.await.unwrap() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(app.drain().await, 1);
}

#[tokio::test]
async fn power_posts_accept_an_empty_or_any_body() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let r = app
        .raw(
            Method::POST,
            &format!("/api/v1/instances/{id}/shutdown"),
            Some(&alice.key),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.drain().await;
    let r = app
        .raw(
            Method::POST,
            &format!("/api/v1/instances/{id}/power-on"),
            Some(&alice.key),
            Some(""),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.drain().await;
    let r = app
        .raw(
            Method::POST,
            &format!("/api/v1/instances/{id}/reboot"),
            Some(&alice.key),
            Some("{\"force\": true}"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn power_on_unknown_instance_is_404() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let b = expect(
        alice
            .post("/api/v1/instances/nope/power-on", json!({}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(b["error"], "instance_not_found");
}

#[tokio::test]
async fn a_failed_power_operation_leaves_the_real_power_state() {
    use lobster_driver::sim::{FailWhen, Op};
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    app.sim.fail_next(Op::Shutdown, 1, FailWhen::Before, false);
    let b = expect(
        alice
            .post(&format!("/api/v1/instances/{id}/shutdown"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
    let t = alice
        .get_json(
            &format!("/api/v1/tasks/{}", b["task_id"].as_str().unwrap()),
            StatusCode::OK,
        )
        .await;
    assert_eq!(t["status"], "FAILED");
    assert!(t["message"].as_str().unwrap().contains("scripted"));
    let i = alice.instance(&id).await;
    assert_eq!(
        (i["status"].as_str(), i["power_status"].as_str()),
        (Some("rented"), Some("running"))
    );
    // The instance is free for the next operation.
    assert_eq!(
        alice
            .post(&format!("/api/v1/instances/{id}/shutdown"), json!({}))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn power_on_a_terminating_instance_is_409() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    assert_eq!(
        alice
            .delete(&format!("/api/v1/instances/{id}"))
            .await
            .status(),
        StatusCode::OK
    );
    let b = expect(
        alice
            .post(&format!("/api/v1/instances/{id}/power-on"), json!({}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(b["error"], "operation_in_progress");
}

/// The 409's code: the contract's backup and restore endpoints say `task_in_progress`, the
/// power endpoints and delete `operation_in_progress`.
fn refusal(op: &str) -> &'static str {
    match op {
        "backup" | "restore" => "task_in_progress",
        _ => "operation_in_progress",
    }
}

/// DESIGN invariant 3 over every pair of the instance's task-making operations: while one
/// is queued, each other one (and itself again) is refused with 409, nothing more is queued,
/// and once the first has run the instance takes commands again.
#[tokio::test]
async fn while_any_operation_is_queued_every_other_one_is_409_and_queues_nothing() {
    let (app, alice, id, _) = running_instance().await;
    let volid = backup(&app, &alice, &id).await;
    let ops: Vec<(&str, Method, String, serde_json::Value)> = vec![
        (
            "reboot",
            Method::POST,
            format!("/api/v1/instances/{id}/reboot"),
            json!({}),
        ),
        (
            "shutdown",
            Method::POST,
            format!("/api/v1/instances/{id}/shutdown"),
            json!({}),
        ),
        (
            "force-shutdown",
            Method::POST,
            format!("/api/v1/instances/{id}/force-shutdown"),
            json!({}),
        ),
        (
            "power-on",
            Method::POST,
            format!("/api/v1/instances/{id}/power-on"),
            json!({}),
        ),
        (
            "power-cycle",
            Method::POST,
            format!("/api/v1/instances/{id}/power-cycle"),
            json!({}),
        ),
        (
            "backup",
            Method::POST,
            format!("/api/v1/instances/{id}/backup"),
            json!({}),
        ),
        (
            "restore",
            Method::POST,
            format!("/api/v1/instances/{id}/restore"),
            json!({"backup_volid": volid}),
        ),
    ];
    for (first, m, path, body) in &ops {
        let r = alice.call(m.clone(), path, Some(body.clone())).await;
        assert_eq!(r.status(), StatusCode::OK, "{first} first");
        for (second, m2, path2, body2) in &ops {
            let b = expect(
                alice.call(m2.clone(), path2, Some(body2.clone())).await,
                StatusCode::CONFLICT,
            )
            .await;
            assert_eq!(b["error"], refusal(second), "{second} while {first}: {b}");
        }
        let del = expect(
            alice.delete(&format!("/api/v1/instances/{id}")).await,
            StatusCode::CONFLICT,
        )
        .await;
        assert_eq!(
            del["error"], "operation_in_progress",
            "delete while {first}"
        );
        assert_eq!(app.drain().await, 1, "only {first} was queued");
        assert_eq!(
            alice.instance(&id).await["status"],
            "rented",
            "after {first}"
        );
    }
    // A delete, queued first, holds the instance against everything else too.
    expect(
        alice.delete(&format!("/api/v1/instances/{id}")).await,
        StatusCode::OK,
    )
    .await;
    for (second, m2, path2, body2) in &ops {
        let b = expect(
            alice.call(m2.clone(), path2, Some(body2.clone())).await,
            StatusCode::CONFLICT,
        )
        .await;
        assert_eq!(b["error"], refusal(second), "{second} while deleting: {b}");
    }
    assert_eq!(app.drain().await, 1, "only the delete was queued");
}
