use crate::support::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn list_is_newest_first_and_only_mine() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.tenant("alice").await, app.tenant("bob").await);
    let a1 = alice.launch("v1_cpu_small", "us-east-1").await;
    let b1 = bob.launch("v1_cpu_small", "us-east-1").await;
    let a2 = alice.launch("v1_cpu_medium", "us-east-dev").await;
    let list = alice.get_json("/api/v1/instances", StatusCode::OK).await;
    let ids: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["uuid"].clone())
        .collect();
    assert_eq!(ids, vec![a2["vm_uuid"].clone(), a1["vm_uuid"].clone()]);
    let bob_list = bob.get_json("/api/v1/instances", StatusCode::OK).await;
    assert_eq!(bob_list.as_array().unwrap().len(), 1);
    assert_eq!(bob_list[0]["uuid"], b1["vm_uuid"]);
    // Documented field types.
    let i = &list[0];
    for f in [
        "cpu_cores",
        "memory",
        "storage",
        "gpu_count",
        "price_cents_per_hour",
    ] {
        assert!(i[f].is_i64(), "{f}");
    }
    for f in [
        "uuid",
        "name",
        "host_id",
        "created_at",
        "power_status",
        "region",
    ] {
        assert!(i[f].is_string(), "{f}");
    }
    assert!(i["gpu_model"].is_null(), "CPU instance has no GPU model");
}

#[tokio::test]
async fn another_tenant_gets_404_for_everything_of_mine() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.tenant("alice").await, app.tenant("bob").await);
    let vm = alice.launch("gpu_1x_a4000", "us-east-dev").await;
    let (id, task) = (
        vm["vm_uuid"].as_str().unwrap(),
        vm["task_id"].as_str().unwrap(),
    );
    app.drain().await;
    let b = expect(
        bob.get(&format!("/api/v1/instances/{id}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(
        b,
        json!({"error": "instance_not_found", "message": format!("Instance {id} not found")})
    );
    assert_eq!(
        bob.delete(&format!("/api/v1/instances/{id}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        bob.post(&format!("/api/v1/instances/{id}/reboot"), json!({}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        bob.put(
            &format!("/api/v1/instances/{id}/rename"),
            json!({"name": "stolen"})
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );
    let t = expect(
        bob.get(&format!("/api/v1/tasks/{task}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(t["error"], "task_not_found");
    assert_eq!(t["task_id"], json!(task));
    assert_eq!(
        bob.get_json("/api/v1/tasks?days=7", StatusCode::OK).await["total"],
        0
    );
    // Alice's instance is untouched.
    assert_eq!(alice.instance(id).await["status"], "rented");
    assert_eq!(alice.instance(id).await["name"], vm_name(&alice, id).await);
}

async fn vm_name(t: &Tenant, id: &str) -> String {
    t.instance(id).await["name"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn unknown_instance_is_404_naming_the_id() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let b = expect(
        alice.get("/api/v1/instances/vm-nope").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(b["message"], "Instance vm-nope not found");
}

#[tokio::test]
async fn delete_releases_capacity_and_ip_exactly_once() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let free0 = app.host_free("px1").await;
    let vm = alice.launch("gpu_2x_a4000", "us-east-dev").await;
    let id = vm["vm_uuid"].as_str().unwrap();
    app.drain().await;
    assert_eq!(app.host_free("px1").await.gpus, free0.gpus - 2);

    let b = expect(
        alice.delete(&format!("/api/v1/instances/{id}")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(b["status"], "PENDING");
    assert_eq!(b["message"], "Instance deletion queued");
    assert_eq!(b["instance_id"], json!(id));
    assert_eq!(b["host"], "px1");
    assert!(b["task_id"].as_str().unwrap().starts_with("task_"));
    assert_eq!(alice.instance(id).await["status"], "terminating");
    let again = expect(
        alice.delete(&format!("/api/v1/instances/{id}")).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        again,
        json!({"error": "invalid_state", "message": "VM is not in 'rented' status: terminating"})
    );

    app.drain().await;
    assert_eq!(
        alice.get(&format!("/api/v1/instances/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.host_free("px1").await, free0);
    assert!(app.app.store().ip_assignments().await.unwrap().is_empty());
    assert!(app.sim.vm("px1", id).is_none());
    let t = alice
        .get_json(
            &format!("/api/v1/tasks/{}", b["task_id"].as_str().unwrap()),
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        (t["status"].as_str(), t["operation"].as_str()),
        (Some("COMPLETED"), Some("delete_instance"))
    );
    // Gone for good: deleting again is 404, and the capacity was released once only.
    assert_eq!(
        alice
            .delete(&format!("/api/v1/instances/{id}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.host_free("px1").await, free0);
}

#[tokio::test]
async fn delete_while_creating_is_409() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let vm = alice.launch("v1_cpu_small", "us-east-1").await;
    let b = expect(
        alice
            .delete(&format!(
                "/api/v1/instances/{}",
                vm["vm_uuid"].as_str().unwrap()
            ))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(b["error"], "operation_in_progress");
}

/// A lone command on PostgreSQL is written by the one statement a batch takes (one round
/// trip, where its own transaction takes five: under load every other write carried a
/// single command, docs/benchmarks.md, session 20); on SQLite it has its own transaction.
/// What the statement does not take still gets a lone command's answer.
#[tokio::test]
async fn a_lone_command_takes_the_batch_statement_on_postgres() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let bob = app.tenant("bob").await;
    let pg = app.app.store().backend() == lobster_store::Backend::Postgres;
    let id = alice.launch("v1_cpu_small", "us-east-1").await["vm_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/v1/instances/{id}");
    // Still creating: refused, nothing batched.
    let busy = expect(alice.delete(&path).await, StatusCode::CONFLICT).await;
    assert_eq!(busy["error"], "operation_in_progress");
    app.drain().await;
    let theirs = expect(bob.delete(&path).await, StatusCode::NOT_FOUND).await;
    assert_eq!(theirs["message"], format!("Instance {id} not found"));
    // The lone launch: the batch's statement on PostgreSQL too.
    assert_eq!(app.app.lone_batch_writes(), u64::from(pg));
    let queued = expect(alice.delete(&path).await, StatusCode::OK).await;
    assert_eq!(queued["message"], "Instance deletion queued");
    assert_eq!(app.app.lone_batch_writes(), 2 * u64::from(pg));
    let again = expect(alice.delete(&path).await, StatusCode::BAD_REQUEST).await;
    assert_eq!(again["error"], "invalid_state");
    assert_eq!(app.app.lone_batch_writes(), 2 * u64::from(pg));
    assert_eq!(app.app.enqueues_batched(), 0);
    app.drain().await;
    expect(alice.get(&path).await, StatusCode::NOT_FOUND).await;
    assert_eq!(app.sim.vm_count(), 0);
}

/// A command whose batch was written but answered as failed (PostgreSQL: the connection
/// lost after the commit, and the look that would have found it lost too) goes alone, finds
/// the instance held by its own task and answers it queued: not a 409 for a command that runs.
#[tokio::test]
async fn a_command_whose_written_batch_was_answered_as_failed_is_answered_as_queued() {
    let app = TestApp::spawn().await;
    let store = app.app.store().clone();
    if store.backend() != lobster_store::Backend::Postgres {
        return; // only PostgreSQL writes a batch in one statement whose answer can be lost
    }
    let alice = app.tenant("alice").await;
    let id = alice.launch("v1_cpu_small", "us-east-1").await["vm_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    app.drain().await;
    store.lose_next_batch_answer();
    let path = format!("/api/v1/instances/{id}");
    let queued = expect(alice.delete(&path).await, StatusCode::OK).await;
    assert_eq!(queued["message"], "Instance deletion queued");
    let task = queued["task_id"].as_str().unwrap();
    let row = store.instance_by_id(&id).await.unwrap().unwrap();
    assert_eq!(row.active_task_id.as_deref(), Some(task));
    assert_eq!(row.status, "terminating");
    let t = store.task_by_id(task).await.unwrap().unwrap();
    assert_eq!(t.operation, "delete_instance");
}

#[tokio::test]
async fn rename_rules() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let a = alice.launch("v1_cpu_small", "us-east-1").await;
    let b = alice.launch("v1_cpu_small", "us-east-1").await;
    let (a, b) = (
        a["vm_uuid"].as_str().unwrap(),
        b["vm_uuid"].as_str().unwrap(),
    );
    // Allowed while creating: only the display name changes.
    let r = expect(
        alice
            .put(
                &format!("/api/v1/instances/{a}/rename"),
                json!({"name": "my_prod-1"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        r,
        json!({"message": "Instance renamed successfully", "instance_id": a, "new_name": "my_prod-1"})
    );
    assert_eq!(alice.instance(a).await["name"], "my_prod-1");
    for bad in ["ab", "has space", "dots.not.ok", &"x".repeat(65)] {
        let r = expect(
            alice
                .put(
                    &format!("/api/v1/instances/{a}/rename"),
                    json!({"name": bad}),
                )
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(r["error"], "invalid_name", "{bad}");
    }
    let dup = expect(
        alice
            .put(
                &format!("/api/v1/instances/{b}/rename"),
                json!({"name": "my_prod-1"}),
            )
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(dup["error"], "resource_conflict");
    // Renaming to its own current name is fine.
    assert_eq!(
        alice
            .put(
                &format!("/api/v1/instances/{a}/rename"),
                json!({"name": "my_prod-1"})
            )
            .await
            .status(),
        StatusCode::OK
    );
    let r = expect(
        alice
            .put(&format!("/api/v1/instances/{a}/rename"), json!({}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(r["detail"][0]["loc"], json!(["body", "name"]));
    let r = expect(
        alice
            .put(&format!("/api/v1/instances/{a}/rename"), json!({"name": 7}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(r["detail"][0]["type"], "string_type");
    // Another tenant may use the same name.
    let bob = app.tenant("bob").await;
    let c = bob.launch("v1_cpu_small", "us-east-1").await;
    let c = c["vm_uuid"].as_str().unwrap();
    assert_eq!(
        bob.put(
            &format!("/api/v1/instances/{c}/rename"),
            json!({"name": "my_prod-1"})
        )
        .await
        .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn concurrent_renames_to_one_name_let_exactly_one_win() {
    let app = TestApp::spawn().await;
    let alice = std::sync::Arc::new(app.tenant("alice").await);
    let mut ids = vec![];
    for _ in 0..6 {
        ids.push(
            alice.launch("v1_cpu_small", "us-east-1").await["vm_uuid"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut hs = vec![];
    for id in ids {
        let a = alice.clone();
        hs.push(tokio::spawn(async move {
            a.put(
                &format!("/api/v1/instances/{id}/rename"),
                json!({"name": "the-one"}),
            )
            .await
            .status()
        }));
    }
    let mut ok = 0;
    for h in hs {
        match h.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => {}
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn launching_with_a_name_in_use_is_409_and_reserves_nothing() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let body = json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY, "name": "web-1"});
    let vm = expect(alice.launch_body(body.clone()).await, StatusCode::OK).await;
    let free = app.host_free("wil-cpu-03").await;
    let b = expect(alice.launch_body(body.clone()).await, StatusCode::CONFLICT).await;
    assert_eq!(b["error"], "resource_conflict");
    assert_eq!(app.host_free("wil-cpu-03").await, free);
    // Still in use while it is being deleted; free once it is gone.
    app.drain().await;
    let first = vm["vm_uuid"].as_str().unwrap();
    let deleting = alice.delete(&format!("/api/v1/instances/{first}")).await;
    assert_eq!(deleting.status(), StatusCode::OK);
    expect(alice.launch_body(body.clone()).await, StatusCode::CONFLICT).await;
    app.drain().await;
    expect(alice.launch_body(body).await, StatusCode::OK).await;
}

#[tokio::test]
async fn team_scoped_key_cannot_touch_other_instances_of_the_account() {
    let app = TestApp::spawn().await;
    let owner = app.tenant("acme").await;
    app.app.team_create("acme", "ml").await.unwrap();
    let ml = app.key("acme", "admin", false, Some("ml")).await;
    let vm = owner.launch("v1_cpu_small", "us-east-1").await;
    let (id, task) = (
        vm["vm_uuid"].as_str().unwrap(),
        vm["task_id"].as_str().unwrap(),
    );
    app.drain().await;
    assert_eq!(
        ml.delete(&format!("/api/v1/instances/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ml.post(&format!("/api/v1/instances/{id}/reboot"), json!({}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ml.put(
            &format!("/api/v1/instances/{id}/rename"),
            json!({"name": "mine-now"})
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ml.get(&format!("/api/v1/tasks/{task}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ml.get_json("/api/v1/tasks", StatusCode::OK).await["total"],
        0
    );
    assert_eq!(owner.instance(id).await["status"], "rented");
    assert_eq!(app.drain().await, 0);
}

/// Deletes and power commands that arrive while another is written are queued together, in
/// one transaction; each the batch could not take gets the answer it would alone: 404 for
/// an unknown instance or another tenant's, 400 for one already terminating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_queued_behind_a_write_are_written_as_one_batch() {
    let app = TestApp::spawn().await;
    let alice = std::sync::Arc::new(app.tenant("alice").await);
    let bob = std::sync::Arc::new(app.tenant("bob").await);
    let mut ids = vec![];
    for _ in 0..6 {
        let b = alice.launch("v1_cpu_small", "us-east-1").await;
        ids.push(b["vm_uuid"].as_str().unwrap().to_string());
    }
    let bobs = bob.launch("v1_cpu_small", "us-east-1").await["vm_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    app.drain().await;
    // The first command's write waits on this transaction (SQLite: the writer is busy;
    // PostgreSQL: its instance's row is held).
    let store = app.app.store();
    let mut holder = store.begin().await.unwrap();
    holder.instance_rename(&ids[0], "held", 1).await.unwrap();
    let send = |who: &std::sync::Arc<Tenant>, path: String, delete: bool| {
        let who = who.clone();
        tokio::spawn(async move {
            let r = if delete {
                who.delete(&path).await
            } else {
                who.post(&path, json!({})).await
            };
            r.status()
        })
    };
    let first = send(&alice, format!("/api/v1/instances/{}", ids[0]), true);
    until("the first command is being written", || {
        app.app.enqueues_waiting() == (0, true)
    })
    .await;
    let mut rest = vec![];
    for id in &ids[1..5] {
        rest.push(send(&alice, format!("/api/v1/instances/{id}"), true));
    }
    let shutdown = format!("/api/v1/instances/{}/shutdown", ids[5]);
    rest.push(send(&alice, shutdown, false));
    rest.push(send(&alice, format!("/api/v1/instances/{}", ids[1]), true));
    rest.push(send(&alice, format!("/api/v1/instances/{bobs}"), true));
    rest.push(send(&alice, "/api/v1/instances/no-such-vm".into(), true));
    until("the rest are queued", || {
        app.app.enqueues_waiting().0 == rest.len()
    })
    .await;
    holder.rollback().await.unwrap();
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    let mut got = vec![];
    for r in rest {
        got.push(r.await.unwrap());
    }
    use StatusCode as S;
    // ids[1] was deleted twice: whichever came first was queued, the other found it
    // terminating.
    let mut twice = [got[0], got[5]];
    twice.sort();
    assert_eq!(twice, [S::OK, S::BAD_REQUEST], "{got:?}");
    assert_eq!(got[1..5], [S::OK; 4], "{got:?}");
    assert_eq!(got[6..], [S::NOT_FOUND; 2], "{got:?}");
    assert_eq!(app.app.enqueues_batched(), 5);
    // Each queued task names its own instance and runs: the deleted are gone, the one shut
    // down is stopped, and bob's is untouched.
    app.drain().await;
    for id in &ids[..5] {
        alice
            .get_json(&format!("/api/v1/instances/{id}"), StatusCode::NOT_FOUND)
            .await;
    }
    let stopped = alice.instance(&ids[5]).await;
    assert_eq!(stopped["power_status"], json!("stopped"));
    let theirs = bob.instance(&bobs).await;
    assert_eq!(theirs["power_status"], json!("running"));
    assert_eq!(app.sim.vm_count(), 2);
}

/// A list's body is written once and served again while nothing in it changes; every change
/// (a rename, a launch, a delete) shows in the next list, and each scope gets its own body.
#[tokio::test]
async fn a_kept_list_body_follows_every_change() {
    let app = TestApp::spawn().await;
    let owner = app.tenant("acme").await;
    app.app.team_create("acme", "ml").await.unwrap();
    let ml = app.key("acme", "member", false, Some("ml")).await;
    let a = owner.launch("v1_cpu_small", "us-east-1").await;
    let t = ml.launch("v1_cpu_small", "us-east-1").await;
    app.drain().await;
    let names = |list: &serde_json::Value| -> Vec<(String, String)> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let s = |f: &str| i[f].as_str().unwrap().to_string();
                (s("name"), s("access_type"))
            })
            .collect()
    };
    let first = owner.get_json("/api/v1/instances", StatusCode::OK).await;
    let again = owner.get_json("/api/v1/instances", StatusCode::OK).await;
    assert_eq!(first, again);
    assert_eq!(names(&first).len(), 2);
    assert!(names(&first).iter().all(|(_, a)| a == "owner"));
    let team = ml.get_json("/api/v1/instances", StatusCode::OK).await;
    assert_eq!(names(&team).len(), 1);
    assert_eq!(team[0]["access_type"], json!("team"));
    let a_id = a["vm_uuid"].as_str().unwrap();
    let r = owner
        .put(
            &format!("/api/v1/instances/{a_id}/rename"),
            json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let after = owner.get_json("/api/v1/instances", StatusCode::OK).await;
    assert!(names(&after).contains(&("renamed".into(), "owner".into())));
    let b = owner.launch("v1_cpu_small", "us-east-1").await;
    let listed = owner.get_json("/api/v1/instances", StatusCode::OK).await;
    assert_eq!(listed[0]["uuid"], b["vm_uuid"]);
    assert_eq!(names(&listed).len(), 3);
    let t_id = t["vm_uuid"].as_str().unwrap();
    let r = ml.delete(&format!("/api/v1/instances/{t_id}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    app.drain().await;
    let team = ml.get_json("/api/v1/instances", StatusCode::OK).await;
    assert_eq!(team, json!([]));
    let listed = owner.get_json("/api/v1/instances", StatusCode::OK).await;
    assert_eq!(names(&listed).len(), 2);
}

/// The list's answer, gzipped when the client accepts it (the body it decodes to is the plain
/// one) and plain otherwise; it follows a change like the plain body does.
#[tokio::test]
async fn a_long_list_is_gzipped_for_clients_that_accept_it() {
    use std::io::Read;
    let app = TestApp::spawn().await;
    let owner = app.tenant("acme").await;
    for _ in 0..40 {
        owner.launch("v1_cpu_small", "us-east-1").await;
    }
    app.drain().await;
    // Only a kept body is gzipped (a body for one request alone goes as it is).
    app.app.store().read_cache_on().await;
    let header = |r: &reqwest::Response, h: &str| {
        r.headers().get(h).map(|v| v.to_str().unwrap().to_string())
    };
    let gunzip = |b: &[u8]| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let list = "/api/v1/instances";
    let plain = owner.get(list).await;
    assert_eq!(header(&plain, "content-encoding"), None);
    assert_eq!(header(&plain, "vary").as_deref(), Some("accept-encoding"));
    let plain = plain.bytes().await.unwrap();
    assert!(
        plain.len() >= 16 << 10,
        "long enough to compress: {}",
        plain.len()
    );
    for accept in ["gzip, deflate, br", "br;q=1.0, gzip;q=0.8"] {
        let gz = owner.get_with(list, &[("accept-encoding", accept)]).await;
        assert_eq!(gz.status(), StatusCode::OK);
        assert_eq!(header(&gz, "content-encoding").as_deref(), Some("gzip"));
        assert_eq!(
            header(&gz, "content-type").as_deref(),
            Some("application/json")
        );
        let gz = gz.bytes().await.unwrap();
        assert!(
            gz.len() * 4 < plain.len(),
            "{} of {}",
            gz.len(),
            plain.len()
        );
        assert_eq!(gunzip(&gz), plain);
    }
    let refused = owner
        .get_with(list, &[("accept-encoding", "gzip;q=0, identity")])
        .await;
    assert_eq!(header(&refused, "content-encoding"), None);
    assert_eq!(refused.bytes().await.unwrap(), plain);
    // A change: the answer is of the new list. (Gzipped when the server keeps the new
    // list's body; on PostgreSQL a list read while the cache is catching up with a
    // notification is not kept, and goes plain: decoded as its header says.)
    let more = owner.launch("v1_cpu_small", "us-east-1").await;
    let gz = owner.get_with(list, &[("accept-encoding", "gzip")]).await;
    let zipped = header(&gz, "content-encoding").as_deref() == Some("gzip");
    let body = gz.bytes().await.unwrap();
    let body = if zipped { gunzip(&body) } else { body.to_vec() };
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 41);
    assert_eq!(listed[0]["uuid"], more["vm_uuid"]);
}
