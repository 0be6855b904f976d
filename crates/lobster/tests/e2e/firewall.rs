use crate::support::*;
use lobster_core::firewall::{Action, Direction, Packet};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn vm(app: &TestApp, t: &Tenant) -> (String, String) {
    let v = t.launch("v1_cpu_small", "us-east-1").await;
    app.drain().await;
    let id = v["vm_uuid"].as_str().unwrap().to_string();
    let host = t.instance(&id).await["host_id"]
        .as_str()
        .unwrap()
        .to_string();
    (id, host)
}

fn fw(id: &str) -> String {
    format!("/api/v1/instances/{id}/firewall")
}

/// One rule (SSH in), and the firewall on.
async fn allow_ssh(t: &Tenant, id: &str) {
    let rule = json!({"type": "in", "action": "ACCEPT", "dport": "22"});
    expect(
        t.post(&format!("{}/rules", fw(id)), rule).await,
        StatusCode::OK,
    )
    .await;
    expect(
        t.put(&fw(id), json!({"enable": true})).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn default_firewall_and_options() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let (id, _) = vm(&app, &alice).await;
    let b = alice.get_json(&fw(&id), StatusCode::OK).await;
    assert_eq!(
        b,
        json!({"enabled": false, "policy_in": "DROP", "policy_out": "ACCEPT", "rules": []})
    );
    let r = expect(
        alice
            .put(
                &fw(&id),
                json!({"enable": true, "policy_in": "DROP", "policy_out": "ACCEPT"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        r,
        json!({"status": "success", "message": "Firewall options updated",
        "firewall": {"enabled": true, "policy_in": "DROP", "policy_out": "ACCEPT", "rules": []}})
    );
    // Null or absent fields are left as they are.
    let r = expect(
        alice
            .put(&fw(&id), json!({"policy_out": "DROP", "enable": null}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (
            r["firewall"]["enabled"].as_bool(),
            r["firewall"]["policy_out"].as_str()
        ),
        (Some(true), Some("DROP"))
    );
    let bad = expect(
        alice.put(&fw(&id), json!({"policy_in": "REJECT"})).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(bad["error"], "invalid_policy");
    let bad = expect(
        alice.put(&fw(&id), json!({"enable": "yes"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(bad["detail"][0]["loc"], json!(["body", "enable"]));
}

#[tokio::test]
async fn rules_insert_at_zero_unless_pos_given_and_echo_exactly() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let (id, _) = vm(&app, &alice).await;
    let rules = format!("{}/rules", fw(&id));
    // A client adding rules in reverse order relies on insertion at position 0.
    for (dport, comment) in [("3306", "db"), ("80,443", "web"), ("22", "SSH access")] {
        let body = json!({"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": dport, "comment": comment});
        let r = expect(alice.post(&rules, body).await, StatusCode::OK).await;
        assert_eq!(r["status"], "success");
        assert_eq!(r["message"], "Firewall rule added");
        assert_eq!(
            r["rule"],
            json!({"pos": 0, "type": "in", "action": "ACCEPT", "proto": "tcp", "dport": dport, "comment": comment, "enable": 1})
        );
    }
    let b = alice.get_json(&fw(&id), StatusCode::OK).await;
    let order: Vec<_> = b["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["pos"].as_i64().unwrap(), r["dport"].as_str().unwrap()))
        .collect();
    assert_eq!(order, [(0, "22"), (1, "80,443"), (2, "3306")]);
    // Explicit position, defaults filled, absent optional fields stay absent.
    let r = expect(
        alice
            .post(
                &rules,
                json!({"type": "in", "action": "DROP", "source": "10.0.0.0/8", "pos": 3}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        r["rule"],
        json!({"pos": 3, "type": "in", "action": "DROP", "proto": "tcp", "source": "10.0.0.0/8", "enable": 1})
    );
    let one = alice.get_json(&format!("{rules}/3"), StatusCode::OK).await;
    assert_eq!(one, r["rule"]);
    // Sent as null, `proto` and `enable` come back null (a rule for every protocol, on), not
    // as the defaults a rule sent without them gets.
    let r = expect(
        alice
            .post(
                &rules,
                json!({"type": "in", "action": "ACCEPT", "proto": null, "enable": null, "dport": null, "comment": null, "source": "10.0.0.0/8", "pos": 4}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        r["rule"],
        json!({"pos": 4, "type": "in", "action": "ACCEPT", "proto": null, "source": "10.0.0.0/8", "enable": null})
    );
    let one = alice.get_json(&format!("{rules}/4"), StatusCode::OK).await;
    assert_eq!(one, r["rule"]);
    let listed = alice.get_json(&fw(&id), StatusCode::OK).await;
    assert_eq!(listed["rules"][4], r["rule"]);
    let r = expect(
        alice
            .post(&rules, json!({"type": "in", "action": "DROP", "pos": 9}))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(r["error"], "invalid_rule");
}

#[tokio::test]
async fn delete_shifts_later_rules_up() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let (id, _) = vm(&app, &alice).await;
    let rules = format!("{}/rules", fw(&id));
    for p in ["3", "2", "1"] {
        expect(
            alice
                .post(
                    &rules,
                    json!({"type": "in", "action": "ACCEPT", "dport": p}),
                )
                .await,
            StatusCode::OK,
        )
        .await;
    }
    let r = expect(alice.delete(&format!("{rules}/0")).await, StatusCode::OK).await;
    assert_eq!(
        r,
        json!({"status": "success", "message": "Firewall rule at position 0 deleted"})
    );
    let b = alice.get_json(&fw(&id), StatusCode::OK).await;
    let ports: Vec<_> = b["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dport"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["2", "3"]);
    assert_eq!(b["rules"][1]["pos"], 1);
    let nf = expect(
        alice.delete(&format!("{rules}/5")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(
        nf,
        json!({"error": "rule_not_found", "message": "Rule at position 5 not found"})
    );
    assert_eq!(
        alice.get(&format!("{rules}/-1")).await.status(),
        StatusCode::NOT_FOUND
    );
    // A whole number beyond i64 is a position like any other (FastAPI's integers have no
    // bound), not a 422.
    for pos in ["99999999999999999999", "-99999999999999999999"] {
        let r = alice.get(&format!("{rules}/{pos}")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{pos}");
    }
    let bad = expect(
        alice.get(&format!("{rules}/first")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(bad["detail"][0]["loc"], json!(["path", "pos"]));
}

#[tokio::test]
async fn invalid_rules_are_400_and_missing_fields_422() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let (id, _) = vm(&app, &alice).await;
    let rules = format!("{}/rules", fw(&id));
    let bad: Vec<Value> = vec![
        json!({"type": "sideways", "action": "ACCEPT"}),
        json!({"type": "in", "action": "ALLOW"}),
        json!({"type": "in", "action": "ACCEPT", "proto": "smoke"}),
        json!({"type": "in", "action": "ACCEPT", "dport": "0"}),
        json!({"type": "in", "action": "ACCEPT", "dport": "70000"}),
        json!({"type": "in", "action": "ACCEPT", "dport": "9000:8000"}),
        json!({"type": "in", "action": "ACCEPT", "proto": "icmp", "dport": "22"}),
        json!({"type": "in", "action": "ACCEPT", "source": "10.0.0.0/40"}),
        json!({"type": "in", "action": "ACCEPT", "dest": "not-an-ip"}),
        json!({"type": "in", "action": "ACCEPT", "enable": 2}),
    ];
    for b in bad {
        let r = expect(alice.post(&rules, b.clone()).await, StatusCode::BAD_REQUEST).await;
        assert_eq!(r["error"], "invalid_rule", "{b}");
    }
    let r = expect(
        alice.post(&rules, json!({"action": "ACCEPT"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(r["detail"][0]["loc"], json!(["body", "type"]));
    assert_eq!(
        alice.get_json(&fw(&id), StatusCode::OK).await["rules"],
        json!([])
    );
}

/// A rule's comment is bounded at 256 characters and an instance at 256 rules
/// (docs/compatibility.md); the bounds themselves are accepted.
#[tokio::test]
async fn comments_and_rules_are_bounded_at_256() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let (id, _) = vm(&app, &alice).await;
    let rules = format!("{}/rules", fw(&id));
    let rule = |comment: String| json!({"type": "in", "action": "ACCEPT", "comment": comment});
    let r = expect(
        alice.post(&rules, rule("c".repeat(257))).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(r["error"], "invalid_rule");
    for k in 0..256 {
        let comment = if k == 0 {
            "ü".repeat(256)
        } else {
            format!("r{k}")
        };
        let r = alice.post(&rules, rule(comment)).await;
        assert_eq!(r.status(), StatusCode::OK, "rule {k}");
    }
    let r = expect(
        alice.post(&rules, rule("one more".into())).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(r["error"], "invalid_rule");
    let b = alice.get_json(&fw(&id), StatusCode::OK).await;
    let listed = b["rules"].as_array().unwrap();
    assert_eq!(listed.len(), 256);
    assert_eq!(listed[255]["comment"], json!("ü".repeat(256)));
}

#[tokio::test]
async fn viewer_gets_the_specs_403_and_strangers_404() {
    let app = TestApp::spawn().await;
    let owner = app.tenant("acme").await;
    let viewer = app.key("acme", "viewer", false, None).await;
    let (id, _) = vm(&app, &owner).await;
    let msg = "Your team role 'viewer' cannot manage firewall. Required: owner, admin, or member";
    let r = expect(viewer.get(&fw(&id)).await, StatusCode::FORBIDDEN).await;
    assert_eq!(r, json!({"error": "forbidden", "message": msg}));
    assert_eq!(
        viewer.put(&fw(&id), json!({"enable": true})).await.status(),
        StatusCode::FORBIDDEN
    );
    let rules = format!("{}/rules", fw(&id));
    assert_eq!(
        viewer
            .post(&rules, json!({"type": "in", "action": "ACCEPT"}))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        viewer.delete(&format!("{rules}/0")).await.status(),
        StatusCode::FORBIDDEN
    );
    // Who may and which instance come before what the body says: a body the rules refuse
    // (400 `invalid_policy`/`invalid_rule` from a member) is still 403 for a viewer and 404
    // for another tenant.
    let bad_policy = json!({"policy_in": "accept"});
    let bad_rule = json!({"type": "in", "action": "ACCEPT", "proto": "TCP", "dport": "x"});
    let r = expect(
        viewer.put(&fw(&id), bad_policy.clone()).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(r, json!({"error": "forbidden", "message": msg}));
    let r = expect(
        viewer.post(&rules, bad_rule.clone()).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(r, json!({"error": "forbidden", "message": msg}));
    let bob = app.tenant("bob").await;
    let nf = expect(bob.get(&fw(&id)).await, StatusCode::NOT_FOUND).await;
    assert_eq!(nf["error"], "instance_not_found");
    assert_eq!(
        bob.post(&rules, json!({"type": "in", "action": "ACCEPT"}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let nf = expect(
        bob.put(&fw(&id), bad_policy.clone()).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(nf["error"], "instance_not_found");
    let nf = expect(
        bob.post(&rules, bad_rule.clone()).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(nf["error"], "instance_not_found");
    // The owner gets the rules' own answers, and nothing was written for any of them.
    let r = expect(
        owner.put(&fw(&id), bad_policy).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(r["error"], "invalid_policy");
    let r = expect(owner.post(&rules, bad_rule).await, StatusCode::BAD_REQUEST).await;
    assert_eq!(r["error"], "invalid_rule");
    let now = owner.get_json(&fw(&id), StatusCode::OK).await;
    assert_eq!(
        (now["policy_in"].clone(), now["rules"].clone()),
        (json!("DROP"), json!([]))
    );
}

fn packet(dport: u16, src: &str) -> Packet {
    Packet {
        direction: Direction::In,
        proto: "tcp".into(),
        source: src.parse().unwrap(),
        dest: "192.0.2.2".parse().unwrap(),
        sport: Some(50000),
        dport: Some(dport),
    }
}

#[tokio::test]
async fn the_driver_enforces_what_the_api_shows() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let (id, host) = vm(&app, &alice).await;
    let rules = format!("{}/rules", fw(&id));
    expect(
        alice
            .post(
                &rules,
                json!({"type": "in", "action": "ACCEPT", "dport": "3306", "source": "10.0.0.0/8"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    expect(
        alice
            .post(
                &rules,
                json!({"type": "in", "action": "ACCEPT", "dport": "22"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    expect(
        alice
            .put(&fw(&id), json!({"enable": true, "policy_in": "DROP"}))
            .await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
    let applied = app.sim.vm(&host, &id).unwrap().firewall.expect("applied");
    assert_eq!(applied, app.app.store().firewall_get(&id).await.unwrap());
    assert_eq!(applied.evaluate(&packet(22, "203.0.113.9")), Action::Accept);
    assert_eq!(applied.evaluate(&packet(3306, "10.1.2.3")), Action::Accept);
    assert_eq!(applied.evaluate(&packet(3306, "203.0.113.9")), Action::Drop);
    // Tasks of kind apply_firewall completed; the instance was never held by them.
    let tasks = alice
        .get_json("/api/v1/tasks?status=COMPLETED", StatusCode::OK)
        .await;
    let applied = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["operation"] == "apply_firewall")
        .expect("an apply_firewall task");
    let t = alice
        .get_json(
            &format!("/api/v1/tasks/{}", applied["task_id"].as_str().unwrap()),
            StatusCode::OK,
        )
        .await;
    let ip = alice.instance(&id).await["ip_address"].clone();
    assert!(ip.is_string(), "{ip}");
    assert_eq!(
        (t["ip_address"].clone(), t["params"]["ip_address"].clone()),
        (ip.clone(), ip)
    );
    assert_eq!(
        alice
            .post(&format!("/api/v1/instances/{id}/reboot"), json!({}))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_firewall_set_while_creating_is_applied_once_the_vm_exists() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    // The first create attempt fails, so the apply tasks run while the VM does not exist yet.
    app.sim.fail_next(
        lobster_driver::sim::Op::Create,
        1,
        lobster_driver::sim::FailWhen::Before,
        true,
    );
    let v = alice.launch("v1_cpu_small", "us-east-1").await;
    let id = v["vm_uuid"].as_str().unwrap();
    allow_ssh(&alice, id).await;
    app.drain().await;
    let waiting = alice
        .get_json("/api/v1/tasks?status=PENDING", StatusCode::OK)
        .await;
    let msgs: Vec<_> = waiting["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        msgs.iter().any(|m| m.contains("waiting for the VM")),
        "{msgs:?}"
    );
    // Waiting does not use up attempts, so the apply tasks finish once the VM exists.
    for _ in 0..(3 * engine_config().max_attempts) {
        app.clock.advance_ms(5_000);
        app.drain().await;
    }
    let host = alice.instance(id).await["host_id"]
        .as_str()
        .unwrap()
        .to_string();
    let applied = app.sim.vm(&host, id).unwrap().firewall.expect("applied");
    assert!(applied.enabled);
    assert_eq!(applied.rules.len(), 1);
    let failed = alice
        .get_json("/api/v1/tasks?status=FAILED", StatusCode::OK)
        .await;
    assert_eq!(failed["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rule_adds_lose_nothing() {
    let app = TestApp::spawn().await;
    let alice = std::sync::Arc::new(app.tenant("alice").await);
    let (id, _) = vm(&app, &alice).await;
    let mut hs = vec![];
    for i in 0..12 {
        let (a, path) = (alice.clone(), format!("{}/rules", fw(&id)));
        hs.push(tokio::spawn(async move {
            a.post(
                &path,
                json!({"type": "in", "action": "ACCEPT", "dport": format!("{}", 1000 + i)}),
            )
            .await
            .status()
        }));
    }
    for h in hs {
        assert_eq!(h.await.unwrap(), StatusCode::OK);
    }
    let b = alice.get_json(&fw(&id), StatusCode::OK).await;
    let mut ports: Vec<_> = b["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dport"].as_str().unwrap().to_string())
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 12);
}

/// A firewall configured while the VM is being built is on the VM when the instance is
/// first shown ready: the create's own end applies it (the apply tasks wait for the VM and
/// would come later).
#[tokio::test]
async fn a_firewall_set_while_creating_is_on_before_the_instance_is_ready() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let v = alice.launch("v1_cpu_small", "us-east-1").await;
    let id = v["vm_uuid"].as_str().unwrap();
    allow_ssh(&alice, id).await;
    let engine = app.app.engine();
    let store = app.app.store();
    // One task at a time until the instance is ready (the clock stands still, so apply
    // tasks that found the VM still being built are not due again).
    while store.instance_by_id(id).await.unwrap().unwrap().status == "creating" {
        assert!(engine.run_once().await.unwrap(), "the create task ran");
    }
    let inst = store.instance_by_id(id).await.unwrap().unwrap();
    assert_eq!(inst.status, "rented");
    let applied = app
        .sim
        .vm(&inst.host_id, id)
        .unwrap()
        .firewall
        .expect("applied by the create");
    assert_eq!(applied, store.firewall_get(id).await.unwrap());
    assert!(applied.enabled);
    assert_eq!(applied.rules.len(), 1);
}

/// Two rule changes, each with its own apply task: the first task reads the firewall before
/// the second change and its push lands after the second task's (the host answers it late).
/// The first task reads again after its push and pushes the newer firewall: the host ends
/// with what the API shows, not with the older set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_firewall_pushed_last_is_pushed_again() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let (id, host) = vm(&app, &alice).await;
    let rules = format!("{}/rules", fw(&id));
    let hold = app.sim.hold(lobster_driver::sim::Op::ApplyFirewall);
    let ssh = json!({"type": "in", "action": "ACCEPT", "dport": "22"});
    expect(alice.post(&rules, ssh).await, StatusCode::OK).await;
    let engine = app.app.engine().clone();
    let first = tokio::spawn(async move { engine.run_batch(1).await });
    until("the first push is in flight", || app.sim.held_calls() == 1).await;
    let web = json!({"type": "in", "action": "ACCEPT", "dport": "443"});
    expect(alice.post(&rules, web).await, StatusCode::OK).await;
    // The second task reads both rules and pushes them; then the first push lands.
    assert_eq!(app.app.engine().run_batch(1).await.unwrap(), 1);
    let both = app.app.store().firewall_get(&id).await.unwrap();
    assert_eq!(
        app.sim.vm(&host, &id).unwrap().firewall.as_ref(),
        Some(&both)
    );
    drop(hold);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    let applied = app.sim.vm(&host, &id).unwrap().firewall.expect("applied");
    assert_eq!(applied, both, "the host kept the older firewall");
    assert_eq!(applied.rules.len(), 2);
}
