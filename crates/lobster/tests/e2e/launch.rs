use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn launch_answers_both_documented_shapes_and_the_instance_is_visible_while_creating() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let body = json!({
        "region": "us-east-1", "instance_type": "gpu_1x_a5000", "ssh_key": SSH_KEY,
        "name": "my-gpu-instance", "metadata": {"project": "ml-training", "owner": "john.doe"}
    });
    let b = expect(alice.launch_body(body).await, StatusCode::OK).await;
    let id = b["vm_uuid"].as_str().unwrap().to_string();
    let task = b["task_id"].as_str().unwrap().to_string();
    // Reference docs' top-level fields.
    assert_eq!(b["status"], "PENDING");
    assert!(b["assigned_ip"].as_str().unwrap().starts_with("192.0.2."));
    // OpenAPI's data envelope.
    assert_eq!(b["data"]["instance_ids"], json!([id]));
    assert_eq!(b["data"]["task_id"], json!(task));
    assert_eq!(b["data"]["assigned_ip"], b["assigned_ip"]);
    assert_eq!(b["data"]["status"], "PENDING");
    assert!(b["data"]["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        b["data"]["next_steps"]["task_status_endpoint"],
        json!(format!("/api/v1/tasks/{task}"))
    );
    assert!(b.get("credentials").is_none());

    // Never 404 while being created.
    let i = alice.instance(&id).await;
    assert_eq!(i["status"], "creating");
    assert_eq!(i["power_status"], "stopped");
    let t = alice
        .get_json(&format!("/api/v1/tasks/{task}"), StatusCode::OK)
        .await;
    assert_eq!(t["status"], "PENDING");
    assert_eq!(t["operation"], "create_instance");
    assert_eq!(t["params"]["vm_uuid"], json!(id));
    assert_eq!(t["vm_uuid"], json!(id));

    assert_eq!(app.drain().await, 1);
    let i = alice.instance(&id).await;
    assert_eq!(i["status"], "rented");
    assert_eq!(i["power_status"], "running");
    // Every configured value echoed exactly, with the documented types.
    assert_eq!(i["name"], "my-gpu-instance");
    assert_eq!(
        i["metadata"],
        json!({"project": "ml-training", "owner": "john.doe"})
    );
    assert_eq!(i["instance_type"], "gpu_1x_a5000");
    assert_eq!(i["region"], "us-east-1");
    assert_eq!(i["host_id"], "wil-gpu-26");
    assert_eq!(i["cpu_cores"], 8);
    assert_eq!(i["memory"], 32);
    assert_eq!(i["storage"], 250);
    assert_eq!(i["gpu_count"], 1);
    assert_eq!(i["gpu_model"], "A5000");
    assert_eq!(i["price_cents_per_hour"], 60);
    assert_eq!(i["template_name"], "UBUNTU-22-04-NV");
    assert_eq!(i["vm_username"], "ubuntu");
    assert_eq!(i["ip_address"], b["assigned_ip"]);
    let t = alice
        .get_json(&format!("/api/v1/tasks/{task}"), StatusCode::OK)
        .await;
    assert_eq!(t["status"], "COMPLETED");
    assert_eq!(t["ip_address"], b["assigned_ip"]);

    // The driver got what the tenant asked for.
    let vm = app.sim.vm("wil-gpu-26", &id).unwrap();
    assert_eq!(vm.spec.ssh_keys, vec![SSH_KEY.to_string()]);
    assert_eq!(vm.spec.username, "ubuntu");
    assert_eq!(vm.spec.template.as_deref(), Some("UBUNTU-22-04-NV"));
}

#[tokio::test]
async fn template_defaults_by_shape_and_iso_url_reaches_the_driver() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let cpu = alice.launch("v1_cpu_small", "us-east-1").await;
    let gpu = alice.launch("gpu_1x_a4000", "igl").await;
    let iso = json!({"region": "us-east-1", "instance_type": "v1_cpu_medium", "ssh_key": SSH_KEY,
                     "template_name": "UBUNTU-22-04", "iso_url": "https://example.com/steamos.iso", "username": "gamer"});
    let iso = expect(alice.launch_body(iso).await, StatusCode::OK).await;
    app.drain().await;
    assert_eq!(
        alice.instance(cpu["vm_uuid"].as_str().unwrap()).await["template_name"],
        "UBUNTU-22-04"
    );
    assert_eq!(
        alice.instance(gpu["vm_uuid"].as_str().unwrap()).await["template_name"],
        "UBUNTU-22-04-NV"
    );
    let id = iso["vm_uuid"].as_str().unwrap();
    let i = alice.instance(id).await;
    assert_eq!(i["iso_url"], "https://example.com/steamos.iso");
    assert_eq!(i["vm_username"], "gamer");
    let host = i["host_id"].as_str().unwrap();
    assert_eq!(
        app.sim.vm(host, id).unwrap().spec.iso_url.as_deref(),
        Some("https://example.com/steamos.iso")
    );
}

async fn detail(r: reqwest::Response) -> Vec<(Value, String)> {
    let b = expect(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    b["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert!(d["msg"].is_string());
            (d["loc"].clone(), d["type"].as_str().unwrap().to_string())
        })
        .collect()
}

#[tokio::test]
async fn schema_violations_are_422_with_every_field_located() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"instance_type": "v1_cpu_small", "ssh_key": SSH_KEY}),
            "region",
            "missing",
        ),
        (
            json!({"region": "us-east-1", "ssh_key": SSH_KEY}),
            "instance_type",
            "missing",
        ),
        (
            json!({"region": 5, "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY}),
            "region",
            "string_type",
        ),
        (
            json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": "ssh-dss AAAA"}),
            "ssh_key",
            "string_pattern_mismatch",
        ),
        (
            json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "password": "short"}),
            "password",
            "string_too_short",
        ),
        (
            json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "password": "has space inside"}),
            "password",
            "string_pattern_mismatch",
        ),
        (
            json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY, "username": "9lives"}),
            "username",
            "string_pattern_mismatch",
        ),
        (
            json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY, "username": "a".repeat(33)}),
            "username",
            "string_too_long",
        ),
        (
            json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY, "name": "-bad"}),
            "name",
            "string_pattern_mismatch",
        ),
        (
            json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY, "name": "a".repeat(65)}),
            "name",
            "string_too_long",
        ),
        (
            json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY, "template_name": "ubuntu"}),
            "template_name",
            "string_pattern_mismatch",
        ),
        (
            json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY, "metadata": "x"}),
            "metadata",
            "dict_type",
        ),
    ];
    for (body, field, kind) in cases {
        let got = detail(alice.launch_body(body.clone()).await).await;
        assert_eq!(
            got,
            vec![(json!(["body", field]), kind.to_string())],
            "{body}"
        );
    }
    // Several problems are reported together.
    let got = detail(
        alice
            .launch_body(json!({"ssh_key": "nope", "username": ""}))
            .await,
    )
    .await;
    assert_eq!(got.len(), 4, "{got:?}");
    // Metadata values must be strings, located by key.
    let got = detail(alice.launch_body(json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY, "metadata": {"n": 1}})).await).await;
    assert_eq!(
        got,
        vec![(json!(["body", "metadata", "n"]), "string_type".to_string())]
    );
    assert_eq!(
        app.app.store().task_all().await.unwrap().len(),
        0,
        "nothing half-written"
    );
}

#[tokio::test]
async fn bodies_that_are_not_json_objects_are_422() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    for (body, kind) in [
        ("", "missing"),
        ("{not json", "json_invalid"),
        ("[1,2]", "model_attributes_type"),
        ("null", "model_attributes_type"),
    ] {
        let r = app
            .raw(
                Method::POST,
                "/api/v1/instances/launch-instance",
                Some(&alice.key),
                Some(body),
            )
            .await;
        let b = expect(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(b["detail"][0]["type"], kind, "{body:?}");
        assert_eq!(b["detail"][0]["loc"][0], "body");
    }
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let big = format!("{{\"region\":\"{}\"}}", "x".repeat(100_000));
    let r = app
        .raw(
            Method::POST,
            "/api/v1/instances/launch-instance",
            Some(&alice.key),
            Some(&big),
        )
        .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
}

/// A body that cannot be read (here a chunk whose size is not a number) is a 400 in the
/// dialect's shape, not the 413 kept for bodies over the limit; nothing is launched.
#[tokio::test]
async fn an_unreadable_body_is_400_not_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let addr = app.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/instances/launch-instance HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         zz\r\n{{}}\r\n0\r\n\r\n",
        alice.key
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(body).expect(body);
    assert_eq!(v["error"], "invalid_input", "{v}");
    let listed = alice.get_json("/api/v1/instances", StatusCode::OK).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
}

#[tokio::test]
async fn an_authentication_method_is_required_for_linux() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let r = alice
        .launch_body(json!({"region": "us-east-1", "instance_type": "v1_cpu_small"}))
        .await;
    let got = detail(r).await;
    assert_eq!(got, vec![(json!(["body"]), "value_error".to_string())]);
    // A password alone is enough.
    let r = alice.launch_body(json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "password": "Sup3r-secret"})).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_type_or_region_is_400_with_valid_values() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    for (t, r) in [("gpu_9x_h100", "us-east-1"), ("v1_cpu_small", "mars-1")] {
        let b = expect(
            alice
                .launch_body(json!({"region": r, "instance_type": t, "ssh_key": SSH_KEY}))
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(b["error"], "invalid_request");
        assert!(b["details"]["valid_instance_types"]
            .as_array()
            .unwrap()
            .contains(&json!("gpu_1x_a4000")));
        assert!(b["details"]["valid_regions"]
            .as_array()
            .unwrap()
            .contains(&json!("us-east-dev")));
    }
    let b = expect(
        alice.launch_body(json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY, "template_name": "DEBIAN-12"})).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(b["details"]["valid_templates"]
        .as_array()
        .unwrap()
        .contains(&json!("WIN10")));
}

#[tokio::test]
async fn no_capacity_in_region_is_409_and_nothing_is_reserved() {
    let app = TestApp::spawn_with(tiny_fleet(1), engine_config()).await;
    let alice = app.tenant("alice").await;
    alice.launch("v1_cpu_small", "us-east-1").await;
    let before = app.host_free("tiny-1").await;
    let b = expect(
        alice
            .launch_body(
                json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY}),
            )
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(
        b,
        json!({"error": "resource_conflict", "message": "Requested resources not available in specified region"})
    );
    assert_eq!(app.host_free("tiny-1").await, before);
    // A GPU type the region has no host for is a conflict too, not a 500.
    let r = alice
        .launch_body(
            json!({"region": "us-east-1", "instance_type": "gpu_1x_a4000", "ssh_key": SSH_KEY}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
}

/// Launches plan on the hosts as read a moment ago, but are refused for want of room only
/// on a fresh read: room given back since the last read is found.
#[tokio::test]
async fn a_launch_finds_room_given_back_since_the_hosts_were_last_read() {
    let app = TestApp::spawn_with(tiny_fleet_of(&[1, 1]), engine_config()).await;
    // Every launch reads the hosts afresh until both are full…
    app.app.hold_host_reads(std::time::Duration::ZERO);
    let alice = app.tenant("alice").await;
    let first = app.running(&alice, "v1_cpu_small").await;
    app.running(&alice, "v1_cpu_small").await;
    let body = json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY});
    expect(alice.launch_body(body.clone()).await, StatusCode::CONFLICT).await;
    // …and from here on launches plan on that read, which shows no room.
    app.app
        .hold_host_reads(std::time::Duration::from_secs(3600));
    let r = alice.delete(&format!("/api/v1/instances/{first}")).await;
    assert!(r.status().is_success(), "{}", r.status());
    app.drain().await;
    assert_eq!(
        app.host_free("tiny-1").await.cores + app.host_free("tiny-2").await.cores,
        2
    );
    expect(alice.launch_body(body).await, StatusCode::OK).await;
}

#[tokio::test]
async fn exhausted_ip_pool_is_409_and_capacity_is_not_kept() {
    let mut fleet = tiny_fleet(3);
    fleet.regions[0].ip_pools = vec!["10.77.0.5-10.77.0.5".into()];
    let app = TestApp::spawn_with(fleet, engine_config()).await;
    let alice = app.tenant("alice").await;
    let first = alice.launch("v1_cpu_small", "us-east-1").await;
    assert_eq!(first["assigned_ip"], "10.77.0.5");
    let free = app.host_free("tiny-1").await;
    let r = alice
        .launch_body(
            json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY}),
        )
        .await;
    assert_eq!(
        expect(r, StatusCode::CONFLICT).await["error"],
        "resource_conflict"
    );
    assert_eq!(
        app.host_free("tiny-1").await,
        free,
        "the transaction rolled back"
    );
}

#[tokio::test]
async fn windows_gets_a_one_time_generated_password() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let b = expect(
        alice.launch_body(json!({"region": "us-east-1", "instance_type": "gpu_1x_a5000", "template_name": "WIN10"})).await,
        StatusCode::OK,
    )
    .await;
    let pw = b["credentials"]["password"].as_str().unwrap().to_string();
    assert_eq!(pw.len(), 16);
    assert_eq!(b["credentials"]["username"], "bluelobster");
    assert_eq!(b["data"]["credentials"]["password"], json!(pw));
    let id = b["vm_uuid"].as_str().unwrap();
    app.drain().await;
    // The driver received it for cloud-init...
    let i = alice.instance(id).await;
    assert_eq!(
        app.sim
            .vm(i["host_id"].as_str().unwrap(), id)
            .unwrap()
            .spec
            .password
            .as_deref(),
        Some(pw.as_str())
    );
    // ...and it is never shown again, nor kept once the VM exists.
    for body in [
        alice.get("/api/v1/instances").await.text().await.unwrap(),
        i.to_string(),
    ] {
        assert!(!body.contains(&pw));
    }
    let row = app.app.store().instance_by_id(id).await.unwrap().unwrap();
    assert_eq!(row.password, None);
    // A Windows launch with its own password gets no credentials block.
    let b = expect(
        alice.launch_body(json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "template_name": "WIN10", "password": "MyOwn-Passw0rd"})).await,
        StatusCode::OK,
    )
    .await;
    assert!(b.get("credentials").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_concurrent_launches_against_room_for_k_place_exactly_k() {
    let (n, k) = (24, 5);
    let app = TestApp::spawn_with(tiny_fleet(k), engine_config()).await;
    let alice = std::sync::Arc::new(app.tenant("alice").await);
    let mut handles = vec![];
    for _ in 0..n {
        let a = alice.clone();
        handles.push(tokio::spawn(async move {
            a.post(
                "/api/v1/instances/launch-instance",
                json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY}),
            )
            .await
            .status()
        }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, k);
    assert_eq!(app.host_free("tiny-1").await.cores, 0);
    app.drain().await;
    assert_eq!(app.sim.vm_count(), k as usize);
    assert_eq!(app.sim.used_on("tiny-1").cores, 2 * k);
    let ips = app.app.store().ip_assignments().await.unwrap();
    let mut addrs: Vec<_> = ips.iter().map(|(a, _)| a.clone()).collect();
    addrs.dedup();
    assert_eq!(addrs.len(), k as usize);
}

/// Launches read the hosts before their transaction, so concurrent ones race for the best
/// host; a launch that finds it full moves to the next candidate. Every instance and its
/// create task must then name the host that holds its reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_launches_that_lose_the_best_host_move_to_the_next() {
    let n = 24;
    let app = TestApp::spawn_with(tiny_fleet_of(&[3, 2]), engine_config()).await;
    let alice = std::sync::Arc::new(app.tenant("alice").await);
    let handles = launches_in_background(&alice, small_launches(n));
    let mut placed = vec![];
    for h in handles {
        match h.await.unwrap() {
            (StatusCode::OK, b) => placed.push(b),
            (StatusCode::CONFLICT, _) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(placed.len(), 5);
    let store = app.app.store();
    for b in &placed {
        let (id, row, params) = row_and_task_params(store, b).await;
        assert_eq!(params["host_id"], json!(row.host_id), "task of {id}");
    }
    assert_eq!(app.host_free("tiny-1").await.cores, 0);
    assert_eq!(app.host_free("tiny-2").await.cores, 0);
    app.drain().await;
    // Each VM was built where its capacity was reserved.
    assert_eq!(app.sim.used_on("tiny-1").cores, 6);
    assert_eq!(app.sim.used_on("tiny-2").cores, 4);
}

/// On PostgreSQL a launch does not queue behind another transaction that holds the best
/// host's row: it takes the next host with room. (SQLite has one writer at a time, so there
/// is no such transaction to pass; the test is PostgreSQL's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_passes_over_a_host_another_transaction_holds() {
    let app = TestApp::spawn_with(tiny_fleet_of(&[4, 2]), engine_config()).await;
    let store = app.app.store();
    if store.backend() != lobster_store::Backend::Postgres {
        return;
    }
    let alice = app.tenant("alice").await;
    // tiny-2 is the best fit (least room); hold its row as a launch mid-commit would.
    let mut holder = store.begin().await.unwrap();
    let nothing = lobster_core::capacity::Resources::default();
    assert!(holder.host_reserve("tiny-2", &nothing).await.unwrap());
    let host_of_launch = || async {
        let b = alice.launch("v1_cpu_small", "us-east-1").await;
        let id = b["vm_uuid"].as_str().unwrap().to_string();
        store.instance_by_id(&id).await.unwrap().unwrap().host_id
    };
    assert_eq!(host_of_launch().await, "tiny-1");
    holder.rollback().await.unwrap();
    // With the row free again, the best fit is taken as before.
    assert_eq!(host_of_launch().await, "tiny-2");
}

/// A launch that names nothing gets the type's name and its own id: unique by construction,
/// so an unnamed launch never meets a 409 for a name it did not choose.
#[tokio::test]
async fn unnamed_launches_get_names_that_carry_their_ids() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    for _ in 0..3 {
        let body =
            json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY});
        let b = expect(alice.launch_body(body).await, StatusCode::OK).await;
        let id = b["vm_uuid"].as_str().unwrap();
        let i = alice.instance(id).await;
        assert_eq!(i["name"], json!(format!("v1-cpu-small-{id}")));
    }
}

/// Sends `n` launches while the first one's write is held up (SQLite: the writer is busy;
/// PostgreSQL: every host's row is held), waits until the other `n - 1` are queued behind
/// it, then lets the write go: those `n - 1` are written as one batch.
async fn launches_behind_a_held_write(
    app: &TestApp,
    alice: &std::sync::Arc<Tenant>,
    n: usize,
) -> Vec<(StatusCode, Value)> {
    launches_of_behind_a_held_write(app, alice, small_launches(n).collect()).await
}

/// `launches_behind_a_held_write` with these bodies, the first sent alone.
async fn launches_of_behind_a_held_write(
    app: &TestApp,
    alice: &std::sync::Arc<Tenant>,
    bodies: Vec<Value>,
) -> Vec<(StatusCode, Value)> {
    let n = bodies.len();
    let store = app.app.store();
    let mut holder = store.begin().await.unwrap();
    let nothing = lobster_core::capacity::Resources::default();
    for h in ["tiny-1", "tiny-2"] {
        assert!(holder.host_reserve(h, &nothing).await.unwrap());
    }
    // The first launch alone takes the turn (and waits for the write); only then do the
    // others arrive, so they all queue for the next turn. Sent together, two could be
    // queued before the first took the turn, and be written as its batch.
    let mut bodies = bodies.into_iter();
    let mut handles = launches_in_background(alice, bodies.by_ref().take(1));
    until("the first launch takes the turn", || {
        app.app.launches_waiting() == (0, true)
    })
    .await;
    handles.extend(launches_in_background(alice, bodies));
    until("the others queue behind it", || {
        app.app.launches_waiting() == (n - 1, true)
    })
    .await;
    holder.rollback().await.unwrap();
    let mut out = vec![];
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Launches that arrive while another is written queue and are written together, in one
/// transaction: each still gets its own address, host, task and reservation, exactly as a
/// launch written alone would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_queued_behind_a_write_are_written_as_one_batch() {
    let n = 12;
    let app = TestApp::spawn_with(tiny_fleet_of(&[8, 8]), engine_config()).await;
    let alice = std::sync::Arc::new(app.tenant("alice").await);
    let answers = launches_behind_a_held_write(&app, &alice, n).await;
    assert!(
        answers.iter().all(|(s, _)| *s == StatusCode::OK),
        "{answers:?}"
    );
    assert_eq!(app.app.launches_batched(), n as u64 - 1);
    let store = app.app.store();
    let mut addresses = vec![];
    let mut cores = std::collections::BTreeMap::new();
    for (_, b) in &answers {
        let (id, row, params) = row_and_task_params(store, b).await;
        assert_eq!(json!(row.ip_address), b["assigned_ip"]);
        assert_eq!(row.status, "creating");
        assert_eq!(params["host_id"], json!(row.host_id), "task of {id}");
        assert_eq!(params["ip_address"], json!(row.ip_address), "task of {id}");
        addresses.push(row.ip_address.unwrap());
        *cores.entry(row.host_id).or_insert(0) += row.resources.cores;
    }
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), n);
    for (host, used) in &cores {
        assert_eq!(16 - app.host_free(host).await.cores, *used, "{host}");
    }
    app.drain().await;
    assert_eq!(app.sim.vm_count(), n);
    for (host, used) in &cores {
        assert_eq!(app.sim.used_on(host).cores, *used, "{host}");
    }
    for (_, b) in &answers {
        let i = alice.instance(b["vm_uuid"].as_str().unwrap()).await;
        assert_eq!(i["status"], json!("rented"));
    }
}

/// A batch places what fits; the launches it has no room for are tried alone and get the
/// documented 409, and nothing of theirs is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_runs_out_of_room_refuses_the_rest_with_409() {
    let n = 12;
    let app = TestApp::spawn_with(tiny_fleet_of(&[3, 2]), engine_config()).await;
    let alice = std::sync::Arc::new(app.tenant("alice").await);
    let answers = launches_behind_a_held_write(&app, &alice, n).await;
    let ok = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(ok, 5, "{answers:?}");
    for (s, b) in &answers {
        if *s != StatusCode::OK {
            assert_eq!(*s, StatusCode::CONFLICT);
            assert_eq!(b["error"], json!("resource_conflict"), "{b}");
        }
    }
    assert_eq!(app.app.launches_batched(), 4);
    assert_eq!(app.host_free("tiny-1").await.cores, 0);
    assert_eq!(app.host_free("tiny-2").await.cores, 0);
    let ips = app.app.store().ip_assignments().await.unwrap();
    assert_eq!(ips.len(), 5);
    app.drain().await;
    assert_eq!(app.sim.vm_count(), 5);
}

/// Batches place on the hosts as last read plus their own reservations (on PostgreSQL:
/// `HostView`): a view showing room another server has taken since is caught by the
/// statement and placed again on a fresh read, never overbooked; a view showing no room
/// where room was given back since is read again before its launches are sent alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_placed_on_hosts_read_earlier_land_only_where_there_is_room() {
    let app = TestApp::spawn_with(tiny_fleet_of(&[3, 2]), engine_config()).await;
    let alice = std::sync::Arc::new(app.tenant("alice").await);
    let slot = lobster_core::capacity::Resources {
        cores: 2,
        memory_gb: 8,
        disk_gb: 100,
        gpus: 0,
    };
    // Another server's writes, as far as this one knows.
    let elsewhere = |host: &'static str, reserve: bool| {
        let store = app.app.store().clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            match reserve {
                true => assert!(tx.host_reserve(host, &slot).await.unwrap()),
                false => tx.host_release(host, &slot).await.unwrap(),
            }
            tx.commit().await.unwrap();
        }
    };
    let statuses = |answers: Vec<(StatusCode, Value)>| -> Vec<StatusCode> {
        answers.into_iter().map(|(s, _)| s).collect()
    };
    let (ok, conflict) = (StatusCode::OK, StatusCode::CONFLICT);
    let free = || async {
        let mut out = vec![];
        for h in ["tiny-1", "tiny-2"] {
            out.push((h, app.host_free(h).await.cores / 2));
        }
        out
    };
    let total = |f: &[(&str, i64)]| f.iter().map(|(_, n)| n).sum::<i64>();
    // One alone, two in a batch: two of the five slots left.
    let got = statuses(launches_behind_a_held_write(&app, &alice, 3).await);
    assert_eq!(got, [ok, ok, ok]);
    let left = free().await;
    assert_eq!(total(&left), 2);
    let batched = app.app.launches_batched();
    // A slot taken behind this server's back (the batch's view still shows it), and the
    // last one by the launch sent alone: the batch's view shows two slots there are not.
    let (with_room, _) = *left.iter().find(|(_, n)| *n > 0).unwrap();
    elsewhere(with_room, true).await;
    let got = statuses(launches_behind_a_held_write(&app, &alice, 3).await);
    assert_eq!(got, [ok, conflict, conflict]);
    assert_eq!(
        app.app.launches_batched(),
        batched,
        "the batch placed nothing"
    );
    assert_eq!(total(&free().await), 0, "not overbooked");
    // Two slots given back behind its back: the batch, whose view shows none, reads again.
    elsewhere("tiny-1", false).await;
    elsewhere("tiny-1", false).await;
    let mut got = statuses(launches_behind_a_held_write(&app, &alice, 3).await);
    got[1..].sort();
    assert_eq!(got, [ok, ok, conflict]);
    assert_eq!(
        app.app.launches_batched(),
        batched + 1,
        "the batch placed one"
    );
    assert_eq!(total(&free().await), 0);
}

/// A batch whose write fails on a name (two launches of one name, one of a name already
/// live) writes nothing as a batch; each launch then goes alone and gets a lone launch's
/// answer: one of the two twins and every other launch are created, the rest 409, and
/// nothing of the refused ones is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_on_a_name_answers_each_launch_as_if_alone() {
    let app = TestApp::spawn_with(tiny_fleet_of(&[8, 8]), engine_config()).await;
    let alice = std::sync::Arc::new(app.tenant("alice").await);
    let named = |name: &str| json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY, "name": name});
    let (s, _) = launches_in_background(&alice, std::iter::once(named("taken")))
        .pop()
        .unwrap()
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    let mut bodies = vec![named("first")];
    bodies.extend(["twin", "twin", "taken", "free-1", "free-2"].map(named));
    let answers = launches_of_behind_a_held_write(&app, &alice, bodies).await;
    // In the order sent: first, twin, twin, taken, free-1, free-2.
    let status: Vec<StatusCode> = answers.iter().map(|(s, _)| *s).collect();
    let (ok, conflict) = (StatusCode::OK, StatusCode::CONFLICT);
    assert_eq!(
        [status[0], status[3], status[4], status[5]],
        [ok, conflict, ok, ok],
        "{answers:?}"
    );
    let mut twins = [status[1], status[2]];
    twins.sort();
    assert_eq!(twins, [ok, conflict], "{answers:?}");
    for (s, b) in &answers {
        if *s != ok {
            assert_eq!(b["error"], json!("resource_conflict"), "{b}");
        }
    }
    // The one taken before and the four created now; no address or core of the refused.
    let ips = app.app.store().ip_assignments().await.unwrap();
    assert_eq!(ips.len(), 5);
    let mut cores = 0;
    for h in ["tiny-1", "tiny-2"] {
        cores += 16 - app.host_free(h).await.cores;
    }
    assert_eq!(cores, 5 * 2);
}

/// A launch batch that was written but answered as failed (its connection lost after the
/// commit, and the look that would have found it lost too) sends its launch alone, which
/// finds its instance written and answers it: not a 409 for its own name, not a second
/// instance planned again under a new id.
#[tokio::test]
async fn a_launch_whose_written_batch_was_answered_as_failed_is_answered_as_written() {
    let app = TestApp::spawn().await;
    let store = app.app.store().clone();
    if store.backend() != lobster_store::Backend::Postgres {
        return; // only PostgreSQL writes a batch in one statement whose answer can be lost
    }
    let alice = app.tenant("alice").await;
    store.lose_next_batch_answer();
    let body = json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY, "name": "once"});
    let b = expect(alice.launch_body(body).await, StatusCode::OK).await;
    let id = b["vm_uuid"].as_str().unwrap();
    assert_eq!(listed_ids(&alice).await, [id]);
    let row = store.instance_by_id(id).await.unwrap().unwrap();
    assert_eq!(json!(row.ip_address), b["assigned_ip"]);
    assert_eq!(store.ip_assignments().await.unwrap().len(), 1);
}

/// The same when the batch took the region's last free address: the launch sent alone finds
/// no address for itself, and must look for its instance before it refuses (it was answered
/// 409 while its instance existed, and would run and be billed).
#[tokio::test]
async fn a_written_batch_that_took_the_last_address_is_answered_as_written() {
    let mut fleet = tiny_fleet(3);
    fleet.regions[0].ip_pools = vec!["10.77.0.5-10.77.0.5".into()];
    let app = TestApp::spawn_with(fleet, engine_config()).await;
    let store = app.app.store().clone();
    if store.backend() != lobster_store::Backend::Postgres {
        return; // only PostgreSQL writes a batch in one statement whose answer can be lost
    }
    let alice = app.tenant("alice").await;
    store.lose_next_batch_answer();
    let body = json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY});
    let b = expect(alice.launch_body(body).await, StatusCode::OK).await;
    assert_eq!(b["assigned_ip"], "10.77.0.5");
    assert_eq!(listed_ids(&alice).await, [b["vm_uuid"].as_str().unwrap()]);
}

/// The ids of the instances `t` lists, in the list's order.
async fn listed_ids(t: &Tenant) -> Vec<String> {
    let list = t.get_json("/api/v1/instances", StatusCode::OK).await;
    let ids = list.as_array().unwrap().iter();
    ids.filter_map(|i| i["uuid"].as_str().map(String::from))
        .collect()
}

/// `n` launch bodies of a small instance.
fn small_launches(n: usize) -> impl Iterator<Item = Value> {
    (0..n).map(
        |_| json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY}),
    )
}

/// Launches with these bodies sent at once; each one's status and body.
fn launches_in_background(
    who: &std::sync::Arc<Tenant>,
    bodies: impl Iterator<Item = Value>,
) -> Vec<tokio::task::JoinHandle<(StatusCode, Value)>> {
    bodies
        .map(|body| {
            let a = who.clone();
            tokio::spawn(async move {
                let r = a.post("/api/v1/instances/launch-instance", body).await;
                (r.status(), r.json::<Value>().await.unwrap())
            })
        })
        .collect()
}

/// A launch answer's instance as stored, and its create task's parameters.
async fn row_and_task_params(
    store: &lobster_store::Store,
    launched: &Value,
) -> (String, lobster_store::InstanceRow, Value) {
    let id = launched["vm_uuid"].as_str().unwrap().to_string();
    let row = store.instance_by_id(&id).await.unwrap().unwrap();
    let task = store
        .task_by_id(launched["task_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    (id, row, serde_json::from_str(&task.params).unwrap())
}
