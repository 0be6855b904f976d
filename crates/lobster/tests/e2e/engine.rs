//! Durability: crashed workers, lost answers, failed creates.

use crate::support::*;
use lobster_driver::sim::{FailWhen, Op};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_task_whose_worker_died_is_reclaimed_and_finishes() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let (id, task) = (
        vm["vm_uuid"].as_str().unwrap(),
        vm["task_id"].as_str().unwrap(),
    );
    // A worker claims the task and dies without finishing.
    let dead = app.second_engine();
    let claimed = dead.claim_and_abandon().await.unwrap().unwrap();
    assert_eq!(claimed.id, task);
    let t = alice
        .get_json(&format!("/api/v1/tasks/{task}"), StatusCode::OK)
        .await;
    assert_eq!(t["status"], "PROCESSING");
    // Before the lease runs out nobody else may take it.
    assert_eq!(app.drain().await, 0);
    app.clock.advance_ms(engine_config().lease_ms + 1);
    assert_eq!(app.drain().await, 1);
    let t = alice
        .get_json(&format!("/api/v1/tasks/{task}"), StatusCode::OK)
        .await;
    assert_eq!(t["status"], "COMPLETED");
    assert_eq!(alice.instance(id).await["status"], "rented");
}

/// A busy queue does not starve a task whose worker died: claims skip the look for expired
/// leases only between looks one poll interval apart, and a look takes them first.
#[tokio::test]
async fn an_expired_lease_is_taken_back_while_pending_tasks_wait() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let orphan = vm["task_id"].as_str().unwrap();
    let dead = app.second_engine();
    assert_eq!(dead.claim_and_abandon().await.unwrap().unwrap().id, orphan);
    let mut waiting = vec![];
    for _ in 0..3 {
        let v = alice.launch("v1_cpu_small", "us-east-1").await;
        waiting.push(v["task_id"].as_str().unwrap().to_string());
    }
    app.clock.advance_ms(engine_config().lease_ms + 1);
    let engine = app.app.engine();
    assert!(engine.run_once().await.unwrap());
    let status = |id: String| {
        let alice = &alice;
        async move {
            alice
                .get_json(&format!("/api/v1/tasks/{id}"), StatusCode::OK)
                .await["status"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(status(orphan.to_string()).await, "COMPLETED");
    for t in &waiting {
        assert_eq!(status(t.clone()).await, "PENDING");
    }
    // Until the next look, claims take pending tasks in order.
    assert!(engine.run_once().await.unwrap());
    assert_eq!(status(waiting[0].clone()).await, "COMPLETED");
    assert_eq!(app.drain().await, 2);
}

#[tokio::test]
async fn a_lost_answer_after_the_vm_was_built_does_not_build_it_twice() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    app.sim.fail_next(Op::Create, 1, FailWhen::After, true);
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let (id, task) = (
        vm["vm_uuid"].as_str().unwrap(),
        vm["task_id"].as_str().unwrap(),
    );
    assert_eq!(
        app.drain().await,
        1,
        "first attempt fails and is scheduled for retry"
    );
    let t = alice
        .get_json(&format!("/api/v1/tasks/{task}"), StatusCode::OK)
        .await;
    assert_eq!(t["status"], "PENDING");
    assert!(t["message"].as_str().unwrap().contains("will retry"));
    app.clock.advance_ms(60_000);
    assert_eq!(app.drain().await, 1);
    assert_eq!(alice.instance(id).await["status"], "rented");
    assert_eq!(app.sim.vm_count(), 1);
}

#[tokio::test]
async fn a_failed_create_releases_its_capacity_and_ip() {
    let app = TestApp::spawn_with(tiny_fleet(1), engine_config()).await;
    let alice = app.tenant("alice").await;
    let free = app.host_free("tiny-1").await;
    app.sim.fail_next(Op::Start, 1, FailWhen::Before, false);
    let body = json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY, "name": "web-1"});
    let vm = expect(alice.launch_body(body.clone()).await, StatusCode::OK).await;
    let (id, task) = (
        vm["vm_uuid"].as_str().unwrap(),
        vm["task_id"].as_str().unwrap(),
    );
    assert_eq!(app.host_free("tiny-1").await.cores, 0);
    app.drain().await;
    let t = alice
        .get_json(&format!("/api/v1/tasks/{task}"), StatusCode::OK)
        .await;
    assert_eq!(t["status"], "FAILED");
    assert!(t["message"].as_str().unwrap().contains("start"));
    assert_eq!(
        alice.get(&format!("/api/v1/instances/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.host_free("tiny-1").await, free);
    assert!(app.app.store().ip_assignments().await.unwrap().is_empty());
    assert_eq!(app.sim.vm_count(), 0, "the half-built VM was cleaned up");
    // The room is usable again and the name is free; the address is back in the pool, at
    // its back (see `released_addresses_are_taken_last_and_the_longest_free_first`).
    let again = expect(alice.launch_body(body).await, StatusCode::OK).await;
    assert_eq!(again["name"], vm["name"]);
    assert_ne!(again["assigned_ip"], vm["assigned_ip"]);
}

#[tokio::test]
async fn transient_failures_are_retried_until_attempts_run_out() {
    let app = TestApp::spawn_with(tiny_fleet(1), engine_config()).await;
    let alice = app.tenant("alice").await;
    let attempts = engine_config().max_attempts as usize;
    app.sim
        .fail_next(Op::Create, attempts, FailWhen::Before, true);
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let task = vm["task_id"].as_str().unwrap();
    for _ in 0..attempts {
        assert_eq!(app.drain().await, 1);
        app.clock.advance_ms(60_000);
    }
    let t = alice
        .get_json(&format!("/api/v1/tasks/{task}"), StatusCode::OK)
        .await;
    assert_eq!(t["status"], "FAILED");
    assert_eq!(app.host_free("tiny-1").await.cores, 2);
    assert_eq!(app.drain().await, 0);
}

#[tokio::test]
async fn transient_failures_then_success() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    app.sim.fail_next(Op::Create, 2, FailWhen::Before, true);
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    for _ in 0..3 {
        app.drain().await;
        app.clock.advance_ms(60_000);
    }
    assert_eq!(
        alice.instance(vm["vm_uuid"].as_str().unwrap()).await["status"],
        "rented"
    );
}

#[tokio::test]
async fn a_failed_delete_leaves_the_instance_rented_for_another_try() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let id = id.as_str();
    app.sim.fail_next(Op::Destroy, 1, FailWhen::Before, false);
    let r = alice.delete(&format!("/api/v1/instances/{id}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    app.drain().await;
    assert_eq!(alice.instance(id).await["status"], "rented");
    assert_eq!(
        alice
            .delete(&format!("/api/v1/instances/{id}"))
            .await
            .status(),
        StatusCode::OK
    );
    app.drain().await;
    assert_eq!(
        alice.get(&format!("/api/v1/instances/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn workers_in_the_background_finish_launches_without_being_driven() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let workers = app.app.engine().spawn(rx);
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let task = vm["task_id"].as_str().unwrap();
    // Poll the task like a client would (for a minute at most).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut status = String::new();
    while std::time::Instant::now() < deadline {
        let t = alice
            .get_json(&format!("/api/v1/tasks/{task}"), StatusCode::OK)
            .await;
        status = t["status"].as_str().unwrap().to_string();
        if status == "COMPLETED" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(status, "COMPLETED");
    stop.send(true).unwrap();
    for w in workers {
        w.await.unwrap();
    }
}

#[tokio::test]
async fn reclaimed_delete_and_power_tasks_finish() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let a = alice.launch("v1_cpu_small", "us-east-1").await;
    let b = alice.launch("v1_cpu_small", "us-east-1").await;
    let (a, b) = (
        a["vm_uuid"].as_str().unwrap().to_string(),
        b["vm_uuid"].as_str().unwrap().to_string(),
    );
    app.drain().await;
    let free = app.host_free("wil-cpu-03").await;
    let del = expect(
        alice.delete(&format!("/api/v1/instances/{a}")).await,
        StatusCode::OK,
    )
    .await;
    let dead = app.second_engine();
    assert_eq!(
        dead.claim_and_abandon().await.unwrap().unwrap().id,
        del["task_id"].as_str().unwrap()
    );
    let pow = expect(
        alice
            .post(
                &format!("/api/v1/instances/{b}/shutdown"),
                serde_json::json!({}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        dead.claim_and_abandon().await.unwrap().unwrap().id,
        pow["task_id"].as_str().unwrap()
    );
    assert_eq!(app.drain().await, 0, "both are leased to the dead worker");
    app.clock.advance_ms(engine_config().lease_ms + 1);
    assert_eq!(app.drain().await, 2);
    assert_eq!(
        alice.get(&format!("/api/v1/instances/{a}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(alice.instance(&b).await["power_status"], "stopped");
    let after = app.host_free("wil-cpu-03").await;
    assert_eq!(after.cores, free.cores + 2, "released exactly once");
}

#[tokio::test]
async fn deleting_an_instance_on_a_host_removed_from_the_config_releases_it() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let vm = alice.launch("gpu_1x_a4000", "igl").await;
    let id = vm["vm_uuid"].as_str().unwrap();
    app.drain().await;
    // The operator removes igl-gpu-01; a worker with the new configuration runs the delete.
    let mut fleet = app.fleet.clone();
    fleet.hosts.retain(|h| h.id != "igl-gpu-01");
    let worker = app.engine_with_fleet(fleet);
    assert_eq!(
        alice
            .delete(&format!("/api/v1/instances/{id}"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(worker.run_until_idle().await.unwrap(), 1);
    assert_eq!(
        alice.get(&format!("/api/v1/instances/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert!(app.app.store().ip_assignments().await.unwrap().is_empty());
    // A power operation there fails cleanly and leaves the instance usable.
    let vm = alice.launch("gpu_1x_a4000", "igl").await;
    let id = vm["vm_uuid"].as_str().unwrap();
    app.drain().await;
    let mut fleet = app.fleet.clone();
    fleet.hosts.retain(|h| h.id != "igl-gpu-01");
    let worker = app.engine_with_fleet(fleet);
    let t = expect(
        alice
            .post(
                &format!("/api/v1/instances/{id}/reboot"),
                serde_json::json!({}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    worker.run_until_idle().await.unwrap();
    let t = alice
        .get_json(
            &format!("/api/v1/tasks/{}", t["task_id"].as_str().unwrap()),
            StatusCode::OK,
        )
        .await;
    assert_eq!(t["status"], "FAILED");
    assert_eq!(alice.instance(id).await["status"], "rented");
}

/// Drains, then moves past any retry backoff, until no task is due.
async fn settle(app: &TestApp) {
    for _ in 0..20 {
        app.drain().await;
        app.clock.advance_ms(60_000);
    }
}

#[tokio::test]
async fn a_backup_that_fails_after_writing_leaves_nothing_on_the_storage() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let id = id.as_str();
    // Every attempt writes the backup and then loses the answer.
    let attempts = engine_config().max_attempts as usize;
    app.sim
        .fail_next(Op::Backup, attempts, FailWhen::After, true);
    let b = expect(
        alice
            .post(&format!("/api/v1/instances/{id}/backup"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    settle(&app).await;
    let t = alice
        .get_json(
            &format!("/api/v1/tasks/{}", b["task_id"].as_str().unwrap()),
            StatusCode::OK,
        )
        .await;
    assert_eq!(t["status"], "FAILED");
    assert!(
        app.sim.backups().is_empty(),
        "the partial backup was removed"
    );
    let l = alice
        .get_json(&format!("/api/v1/instances/{id}/backups"), StatusCode::OK)
        .await;
    assert_eq!(l["total"], 0);
    assert_eq!(alice.instance(id).await["status"], "rented");
}

#[tokio::test]
async fn a_delete_whose_answers_were_lost_asks_the_host_and_finishes() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let id = id.as_str();
    let attempts = engine_config().max_attempts as usize;
    app.sim
        .fail_next(Op::Destroy, attempts, FailWhen::After, true);
    let r = alice.delete(&format!("/api/v1/instances/{id}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    settle(&app).await;
    assert_eq!(app.sim.vm_count(), 0);
    assert_eq!(
        alice.get(&format!("/api/v1/instances/{id}")).await.status(),
        StatusCode::NOT_FOUND,
        "the VM is gone, so the instance is deleted, not left rented"
    );
    assert!(app.app.store().ip_assignments().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_backup_delete_whose_answers_were_lost_asks_the_storage_and_finishes() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let id = id.as_str();
    let b = expect(
        alice
            .post(&format!("/api/v1/instances/{id}/backup"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    settle(&app).await;
    assert_eq!(app.sim.backups().len(), 1);
    let attempts = engine_config().max_attempts as usize;
    app.sim
        .fail_next(Op::DeleteBackup, attempts, FailWhen::After, true);
    let volid = b["volid"].as_str().unwrap();
    let r = alice
        .delete(&format!("/api/v1/backups?volid={volid}"))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    settle(&app).await;
    assert!(app.sim.backups().is_empty());
    let l = alice
        .get_json(&format!("/api/v1/instances/{id}/backups"), StatusCode::OK)
        .await;
    assert_eq!(l["total"], 0, "{l}");
}

/// A worker claims a batch and runs it side by side; the creates that end together are
/// written together, each exactly once, and a member that fails is retried on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_creates_runs_side_by_side_and_each_ends_once() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    app.sim.fail_next(Op::Create, 1, FailWhen::Before, true);
    let mut ids = vec![];
    for _ in 0..10 {
        let v = alice.launch("v1_cpu_small", "us-east-1").await;
        ids.push(v["vm_uuid"].as_str().unwrap().to_string());
    }
    let engine = app.app.engine();
    assert_eq!(engine.run_batch(16).await.unwrap(), 10);
    let mut states = vec![];
    for id in &ids {
        states.push(
            alice.instance(id).await["status"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        states.iter().filter(|s| *s == "rented").count(),
        9,
        "{states:?}"
    );
    assert_eq!(states.iter().filter(|s| *s == "creating").count(), 1);
    // The failed one is due again after its back-off.
    app.clock.advance_ms(60_000);
    app.drain().await;
    let store = app.app.store();
    for id in &ids {
        let i = store.instance_by_id(id).await.unwrap().unwrap();
        assert_eq!(
            (i.status.as_str(), i.power_status.as_str()),
            ("rented", "running")
        );
    }
    let tasks = store.task_all().await.unwrap();
    assert_eq!(tasks.len(), 10, "one task per launch");
    assert!(tasks.iter().all(|t| t.status == "COMPLETED"));
    assert_eq!(tasks.iter().map(|t| t.attempts).sum::<i64>(), 11);

    // Their deletes, in one batch too: each ends once, giving back what it held.
    for id in &ids {
        let r = alice.delete(&format!("/api/v1/instances/{id}")).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(engine.run_batch(16).await.unwrap(), 10);
    for id in &ids {
        let i = store.instance_by_id(id).await.unwrap().unwrap();
        assert_eq!(i.status, "deleted");
    }
    assert_eq!(app.sim.vm_count(), 0);
    assert!(store.ip_assignments().await.unwrap().is_empty());
    let hosts = store.host_list().await.unwrap();
    assert!(
        hosts.iter().all(|h| h.used == Default::default()),
        "{hosts:?}"
    );
}

/// Makes the app's engine take hand-offs, as `serve` does by spawning its workers; these
/// workers stop at once, and the test runs the tasks by draining.
fn accept_handoffs(app: &TestApp) {
    let (_stop, stopped) = tokio::sync::watch::channel(true);
    drop(app.app.engine().spawn(stopped));
}

async fn task_row(app: &TestApp, id: &str) -> lobster_store::TaskRow {
    app.app.store().task_by_id(id).await.unwrap().unwrap()
}

fn task_of(vm: &serde_json::Value) -> String {
    vm["task_id"].as_str().unwrap().to_string()
}

/// A launch writes its create task already leased to its own process's workers and hands
/// it over in memory: no other server can take it, and it runs without a claim.
#[tokio::test]
async fn a_launch_hands_its_create_task_to_its_own_workers() {
    let app = TestApp::spawn().await;
    accept_handoffs(&app);
    let alice = app.tenant("alice").await;
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let task = task_of(&vm);
    let t = task_row(&app, &task).await;
    assert_eq!((t.status.as_str(), t.attempts), ("PROCESSING", 1));
    assert!(app.app.engine().owns(t.lease_owner.as_deref().unwrap()));
    assert!(!app.second_engine().run_once().await.unwrap());
    assert_eq!(app.drain().await, 1);
    assert_eq!(app.app.engine().handed_runs(), 1);
    let t = task_row(&app, &task).await;
    assert_eq!((t.status.as_str(), t.attempts), ("COMPLETED", 1));
    let id = vm["vm_uuid"].as_str().unwrap();
    assert_eq!(alice.instance(id).await["status"], "rented");
}

/// Beyond the hand-off's bound (2 in tests) a launch writes its task pending, for any
/// server to claim.
#[tokio::test]
async fn launches_beyond_the_handoff_bound_are_queued_for_any_server() {
    let app = TestApp::spawn().await;
    accept_handoffs(&app);
    let alice = app.tenant("alice").await;
    let mut tasks = vec![];
    for _ in 0..3 {
        tasks.push(task_of(&alice.launch("v1_cpu_small", "us-east-1").await));
    }
    let mut status = vec![];
    for t in &tasks {
        status.push(task_row(&app, t).await.status);
    }
    assert_eq!(status, ["PROCESSING", "PROCESSING", "PENDING"]);
    assert_eq!(app.drain().await, 3);
    assert_eq!(app.app.engine().handed_runs(), 2);
    for t in &tasks {
        assert_eq!(task_row(&app, t).await.status, "COMPLETED");
    }
}

/// On shutdown the handed tasks no worker started go back to the queue, their attempt
/// refunded, for the next server to run at once rather than after their lease.
#[tokio::test]
async fn handed_tasks_not_started_are_released_at_shutdown() {
    let app = TestApp::spawn().await;
    accept_handoffs(&app);
    let alice = app.tenant("alice").await;
    let task = task_of(&alice.launch("v1_cpu_small", "us-east-1").await);
    app.app.engine().release_handed().await;
    let t = task_row(&app, &task).await;
    assert_eq!((t.status.as_str(), t.attempts), ("PENDING", 0));
    assert_eq!(t.lease_owner, None);
    // Released, the engine takes no more hand-offs.
    let later = task_of(&alice.launch("v1_cpu_small", "us-east-1").await);
    assert_eq!(task_row(&app, &later).await.status, "PENDING");
    let other = app.second_engine();
    assert_eq!(other.run_until_idle().await.unwrap(), 2);
    let t = task_row(&app, &task).await;
    assert_eq!((t.status.as_str(), t.attempts), ("COMPLETED", 1));
}

/// A handed task whose lease ran out while it waited is reclaimed from the database and
/// runs exactly once; its stale copy in memory is dropped (its lease end moved).
#[tokio::test]
async fn a_handed_task_whose_lease_ran_out_is_reclaimed_once() {
    let app = TestApp::spawn().await;
    accept_handoffs(&app);
    let alice = app.tenant("alice").await;
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let task = task_of(&vm);
    app.clock.advance_ms(engine_config().lease_ms + 1);
    assert_eq!(app.drain().await, 1);
    assert_eq!(app.app.engine().handed_runs(), 0);
    let t = task_row(&app, &task).await;
    assert_eq!((t.status.as_str(), t.attempts), ("COMPLETED", 2));
    assert_eq!(app.sim.vm_count(), 1);
}

/// A handed task that waited a third of its lease, still untouched, has its lease renewed
/// and runs from memory, once, on its first attempt.
#[tokio::test]
async fn a_handed_task_that_waited_long_is_renewed_and_runs_once() {
    let app = TestApp::spawn().await;
    accept_handoffs(&app);
    let alice = app.tenant("alice").await;
    let task = task_of(&alice.launch("v1_cpu_small", "us-east-1").await);
    let lease = engine_config().lease_ms;
    app.clock.advance_ms(lease / 2);
    assert_eq!(app.drain().await, 1);
    assert_eq!(app.app.engine().handed_runs(), 1);
    let t = task_row(&app, &task).await;
    assert_eq!((t.status.as_str(), t.attempts), ("COMPLETED", 1));
    assert!(t.finished_at.is_some());
    assert_eq!(app.sim.vm_count(), 1);
}

/// Work queued in the database (a delete) is claimed even while handed-over launches wait:
/// a stream of launches cannot starve it.
#[tokio::test]
async fn queued_work_is_claimed_while_handed_launches_wait() {
    let app = TestApp::spawn().await;
    accept_handoffs(&app);
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let waiting = [
        task_of(&alice.launch("v1_cpu_small", "us-east-1").await),
        task_of(&alice.launch("v1_cpu_small", "us-east-1").await),
    ];
    let gone = expect(
        alice.delete(&format!("/api/v1/instances/{id}")).await,
        StatusCode::OK,
    )
    .await;
    assert!(app.app.engine().run_once().await.unwrap());
    let deleted = task_row(&app, gone["task_id"].as_str().unwrap()).await;
    assert_eq!(deleted.status, "COMPLETED");
    for t in &waiting {
        assert_eq!(task_row(&app, t).await.status, "PROCESSING");
    }
    assert_eq!(app.drain().await, 2);
}

/// Deletes and power operations are handed over as launches are.
#[tokio::test]
async fn deletes_and_power_operations_are_handed_over_too() {
    let app = TestApp::spawn().await;
    accept_handoffs(&app);
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let engine = app.app.engine();
    assert_eq!(engine.handed_runs(), 1);
    let off = expect(
        alice
            .post(&format!("/api/v1/instances/{id}/shutdown"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    let t = task_row(&app, off["task_id"].as_str().unwrap()).await;
    assert!(engine.owns(t.lease_owner.as_deref().unwrap()));
    assert_eq!(app.drain().await, 1);
    let gone = expect(
        alice.delete(&format!("/api/v1/instances/{id}")).await,
        StatusCode::OK,
    )
    .await;
    let t = task_row(&app, gone["task_id"].as_str().unwrap()).await;
    assert_eq!((t.status.as_str(), t.attempts), ("PROCESSING", 1));
    assert_eq!(app.drain().await, 1);
    assert_eq!(engine.handed_runs(), 3);
    let t = task_row(&app, gone["task_id"].as_str().unwrap()).await;
    assert_eq!(t.status, "COMPLETED");
    assert_eq!(app.sim.vm_count(), 0);
}

/// Workers go on claiming while the database's queue gives them full batches, without
/// waiting for the poll interval (here an hour: a worker that went to sleep with tasks left
/// would never finish them in this test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_in_the_database_is_worked_through_without_polling() {
    let cfg = lobster_engine::EngineConfig {
        batch: 2,
        poll_ms: 3_600_000,
        ..engine_config()
    };
    let app = TestApp::spawn_with(lobster_core::fleet::Fleet::demo(), cfg).await;
    let alice = app.tenant("alice").await;
    // Written before any worker runs: queued in the database, not handed over.
    for _ in 0..7 {
        alice.launch("v1_cpu_small", "us-east-1").await;
    }
    let store = app.app.store();
    assert_eq!(store.task_open_count().await.unwrap(), 7);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = app.app.engine().spawn(stopped);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while store.task_open_count().await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "tasks were left in the database"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.send_replace(true);
    for w in workers {
        w.await.unwrap();
    }
}

/// A run whose heartbeats cannot renew its lease (here the task's row is held: on a real
/// deployment, a database out of reach) stops before the lease it last renewed runs out,
/// and leaves its task to be reclaimed. Went on, it would still be running when this
/// server's own claim took the task again, under the same owner: two runs of one create
/// that no beat or end could tell apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_cannot_be_renewed_stops_before_it_runs_out() {
    let cfg = lobster_engine::EngineConfig {
        lease_ms: 600,
        ..engine_config()
    };
    let app = TestApp::spawn_with(lobster_core::fleet::Fleet::demo(), cfg.clone()).await;
    let alice = app.tenant("alice").await;
    let hold = app.sim.hold(Op::Create);
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let (id, task) = (vm["vm_uuid"].as_str().unwrap().to_string(), task_of(&vm));
    let engine = app.app.engine().clone();
    let run = tokio::spawn(async move { engine.run_batch(1).await });
    until("the create is in flight", || app.sim.held_calls() == 1).await;
    // Heartbeats now wait for the task's row (PostgreSQL) or the write lock (SQLite).
    let mut holder = app.app.store().begin().await.unwrap();
    let params = task_row(&app, &task).await.params;
    holder.task_params(&task, &params).await.unwrap();
    // The lease's clock reaches the point where only a renewal would leave the run a third
    // of a lease to go on with.
    app.clock.advance_ms(cfg.lease_ms - cfg.lease_ms / 3);
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(30), run).await;
    let ran = stopped.expect("the run went on with its lease unrenewed");
    assert_eq!(ran.unwrap().unwrap(), 1);
    holder.rollback().await.unwrap();
    drop(hold);
    assert_eq!(task_row(&app, &task).await.status, "PROCESSING");
    assert_eq!(app.sim.vm_count(), 0, "stopped before the VM was built");
    // Once the lease has run out, a claim takes the task and finishes it, once. (A beat
    // given up on while it waited for the row may still land once the row is free,
    // renewing the lease from where the clock stood then: two leases cover it. Until it
    // has landed, its lock on the row makes claims pass the task over.)
    app.clock.advance_ms(2 * cfg.lease_ms);
    let mut looks = 0;
    loop {
        // A poll interval each time, so that each drain looks for expired leases again.
        app.clock.advance_ms(cfg.poll_ms as i64 + 1);
        app.drain().await;
        let t = task_row(&app, &task).await;
        if t.status == "COMPLETED" {
            break;
        }
        looks += 1;
        assert!(looks < 1_000, "never reclaimed: {t:?}");
        // The writes given up on land on the database's own time.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(alice.instance(&id).await["status"], json!("rented"));
    assert_eq!(app.sim.vm_count(), 1);
}

/// Each claim leases under an owner of its own. A run whose lease ran out while a driver
/// call hung, and whose task this same server then took again, must not write its end
/// over the new run's lease: under one owner per server the two runs' writes could not be
/// told apart, and the old run would finish a task another run still holds.
#[tokio::test]
async fn a_run_that_lost_its_lease_to_its_own_server_cannot_end_the_task() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let first_hold = app.sim.hold(Op::Create);
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let (id, task) = (vm["vm_uuid"].as_str().unwrap().to_string(), task_of(&vm));
    let engine = app.app.engine().clone();
    let e = engine.clone();
    let first = tokio::spawn(async move { e.run_batch(1).await });
    until("the first run's create is in flight", || {
        app.sim.held_calls() == 1
    })
    .await;
    let first_owner = task_row(&app, &task).await.lease_owner.unwrap();
    // The first run's lease runs out (its beats are a third of a lease away in real time);
    // the same server's next claim takes the task again.
    app.clock.advance_ms(engine_config().lease_ms + 1);
    let second_hold = app.sim.hold(Op::Create);
    let e = engine.clone();
    let second = tokio::spawn(async move { e.run_batch(1).await });
    until("the second run's create is in flight", || {
        app.sim.held_calls() == 2
    })
    .await;
    let second_owner = task_row(&app, &task).await.lease_owner.unwrap();
    assert_ne!(first_owner, second_owner);
    assert!(engine.owns(&first_owner) && engine.owns(&second_owner));
    // The first run's call comes back and it tries to end the task: refused.
    drop(first_hold);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    let t = task_row(&app, &task).await;
    assert_eq!(
        (t.status.as_str(), t.lease_owner.as_deref()),
        ("PROCESSING", Some(second_owner.as_str())),
        "the first run wrote its end over the second run's lease"
    );
    assert_eq!(alice.instance(&id).await["status"], json!("creating"));
    // The second run ends it, once.
    drop(second_hold);
    assert_eq!(second.await.unwrap().unwrap(), 1);
    let t = task_row(&app, &task).await;
    assert_eq!((t.status.as_str(), t.attempts), ("COMPLETED", 2));
    assert_eq!(alice.instance(&id).await["status"], json!("rented"));
    assert_eq!(app.sim.vm_count(), 1);
}

/// A host that never answers a call must not hold the task's run (and its lease) forever:
/// the call is given up after its limit as a transient failure, the task goes back to the
/// queue to be tried again, and the next attempt, answered, completes it.
#[tokio::test]
async fn a_driver_call_left_unanswered_is_given_up_and_tried_again() {
    let limit = std::time::Duration::from_millis(200);
    let limits = lobster_driver::timed::CallLimits {
        read: limit,
        change: limit,
        long: limit,
    };
    let fleet = lobster_core::fleet::Fleet::demo();
    let app = TestApp::spawn_limited(fleet, engine_config(), limits).await;
    let alice = app.tenant("alice").await;
    let hold = app.sim.hold(Op::Create);
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let (id, task) = (vm["vm_uuid"].as_str().unwrap().to_string(), task_of(&vm));
    // The run returns although the hold is still in place.
    let run = app.app.engine().run_batch(1);
    let ran = tokio::time::timeout(std::time::Duration::from_secs(30), run).await;
    assert_eq!(ran.expect("the run waited on the call").unwrap(), 1);
    assert_eq!(app.sim.held_calls(), 1);
    let t = task_row(&app, &task).await;
    assert_eq!((t.status.as_str(), t.attempts), ("PENDING", 1));
    let msg = t.message.unwrap();
    assert!(
        msg.contains("create on ") && msg.contains("no answer within 200 ms"),
        "{msg}"
    );
    assert_eq!(alice.instance(&id).await["status"], json!("creating"));
    drop(hold);
    // Past the retry's backoff, the next attempt completes it.
    app.clock.advance_ms(60_000);
    app.drain().await;
    let t = task_row(&app, &task).await;
    assert_eq!((t.status.as_str(), t.attempts), ("COMPLETED", 2));
    assert_eq!(alice.instance(&id).await["status"], json!("rented"));
    assert_eq!(app.sim.vm_count(), 1);
}

/// Leases are judged by each server's own clock, so a server whose clock is far off the
/// database's (the clock all servers share) would take tasks other servers still run, or
/// write leases others take too soon. Such a server takes no leases: its launches write
/// their tasks pending for the other servers, its workers claim nothing, and health says
/// the task engine is degraded, until its clock is right again.
#[tokio::test]
async fn a_server_whose_clock_is_off_the_databases_takes_no_leases() {
    let cfg = lobster_engine::EngineConfig {
        max_clock_skew_ms: Some(5_000),
        ..engine_config()
    };
    let app = TestApp::spawn_with(lobster_core::fleet::Fleet::demo(), cfg).await;
    accept_handoffs(&app);
    let engine = app.app.engine().clone();
    // The test's manual clock starts at the system's time, which the database reads too.
    let skew = engine.check_clock().await.unwrap();
    assert!(skew.abs() <= 5_000 && engine.clock_ok(), "{skew}");
    let alice = app.tenant("alice").await;
    let handed = alice.launch("v1_cpu_small", "us-east-1").await;
    let handed_task = task_of(&handed);
    let t = task_row(&app, &handed_task).await;
    assert!(
        engine.owns(t.lease_owner.as_deref().unwrap()),
        "handed over"
    );
    // The clock falls a minute behind. (Behind rather than ahead so that the tasks it
    // writes are due at once for the servers whose clocks are right: one written ahead is
    // due only when their clocks reach its time.)
    app.clock.advance_ms(-60_000);
    let skew = engine.check_clock().await.unwrap();
    assert!(skew < -50_000 && !engine.clock_ok(), "{skew}");
    assert_eq!(engine.clock_skew_ms(), skew);
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let (id, task) = (vm["vm_uuid"].as_str().unwrap().to_string(), task_of(&vm));
    let t = task_row(&app, &task).await;
    assert_eq!(
        (t.status.as_str(), t.lease_owner.as_deref()),
        ("PENDING", None),
        "no hand-off lease"
    );
    assert_eq!(engine.run_batch(4).await.unwrap(), 0, "ran nothing");
    // What was handed over before is back in the queue, for the other servers.
    let t = task_row(&app, &handed_task).await;
    assert_eq!(
        (t.status.as_str(), t.lease_owner.as_deref(), t.attempts),
        ("PENDING", None, 0)
    );
    // Health, with a worker loop running (it claims nothing either).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let loops = engine.spawn(stopped);
    until("a worker loop has started", || engine.last_poll().is_some()).await;
    let health = expect(
        app.raw(reqwest::Method::GET, "/api/v1/health", None, None)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(health["components"]["task_engine"], "degraded");
    stop.send(true).unwrap();
    for l in loops {
        l.await.unwrap();
    }
    assert_eq!(task_row(&app, &task).await.status, "PENDING");
    // The clock is set right: leases are taken again.
    app.clock.advance_ms(60_000);
    engine.check_clock().await.unwrap();
    assert!(engine.clock_ok());
    app.drain().await;
    for t in [&task, &handed_task] {
        assert_eq!(task_row(&app, t).await.status, "COMPLETED");
    }
    assert_eq!(alice.instance(&id).await["status"], json!("rented"));
}

/// A run in flight when its server's clock is found off stops at its next heartbeat: the
/// lease it would renew, in a clock that is off, could look expired to the other servers.
#[tokio::test]
async fn a_run_stops_when_its_servers_clock_is_found_off() {
    // Beats every 2 s: long enough that a loaded machine's slow beats cannot stop the run
    // by themselves (the lease fence), so that only the clock check can, within the wait.
    let cfg = lobster_engine::EngineConfig {
        lease_ms: 6_000,
        max_clock_skew_ms: Some(5_000),
        ..engine_config()
    };
    let app = TestApp::spawn_with(lobster_core::fleet::Fleet::demo(), cfg).await;
    let engine = app.app.engine().clone();
    engine.check_clock().await.unwrap();
    let alice = app.tenant("alice").await;
    let hold = app.sim.hold(Op::Create);
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let task = task_of(&vm);
    let e = engine.clone();
    let run = tokio::spawn(async move { e.run_batch(1).await });
    until("the create is in flight", || app.sim.held_calls() == 1).await;
    app.clock.advance_ms(-60_000);
    engine.check_clock().await.unwrap();
    assert!(!engine.clock_ok());
    // The create is still held: only the heartbeat can end the run.
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(30), run).await;
    let ran = stopped.expect("the run went on with the clock off");
    assert_eq!(ran.unwrap().unwrap(), 1);
    drop(hold);
    assert_eq!(task_row(&app, &task).await.status, "PROCESSING");
    assert_eq!(app.sim.vm_count(), 0, "stopped before the VM was built");
}
