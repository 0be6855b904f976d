use crate::support::*;
use reqwest::StatusCode;
use serde_json::json;

fn ips(id: &str) -> String {
    format!("/api/v1/instances/{id}/ips")
}

#[tokio::test]
async fn primary_ip_is_listed_with_its_interface() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let b = alice.get_json(&ips(&id), StatusCode::OK).await;
    assert_eq!(b["instance_id"], json!(id));
    assert_eq!(b["ip_count"], 1);
    let p = &b["ips"][0];
    assert_eq!(p["ip_address"], alice.instance(&id).await["ip_address"]);
    assert_eq!(p["internal_ip"], p["ip_address"]);
    assert_eq!(
        (
            p["interface_name"].as_str(),
            p["is_primary"].as_bool(),
            p["bridge"].as_str()
        ),
        (Some("net0"), Some(true), Some("vmbr0"))
    );
    assert!(p["mac_address"].as_str().unwrap().starts_with("bc:24:11:"));
    assert!(p["assigned_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn assign_and_release_an_additional_ip() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let a = expect(alice.post(&ips(&id), json!({})).await, StatusCode::OK).await;
    let addr = a["ip"]["ip_address"].as_str().unwrap().to_string();
    assert_eq!(a["status"], "success");
    assert_eq!(
        a["message"],
        json!(format!(
            "IP {addr} assigned (configure as alias on primary interface)"
        ))
    );
    assert_eq!(
        (
            a["ip"]["interface_name"].as_str(),
            a["ip"]["is_primary"].as_bool()
        ),
        (Some("net1"), Some(false))
    );
    let b = alice.get_json(&ips(&id), StatusCode::OK).await;
    assert_eq!(b["ip_count"], 2);
    assert_eq!(b["ips"][0]["is_primary"], true, "primary first");
    app.drain().await;
    let host = alice.instance(&id).await["host_id"]
        .as_str()
        .unwrap()
        .to_string();
    let on_host = app.sim.vm(&host, &id).unwrap().ips.unwrap();
    assert_eq!(on_host.len(), 2);
    assert!(on_host
        .iter()
        .any(|n| n.address == addr && n.interface_name == "net1"));

    let r = expect(
        alice.delete(&format!("{}/{addr}", ips(&id))).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        r,
        json!({"status": "success", "message": format!("IP {addr} released from net1"), "released_ip": addr, "released_interface": "net1"})
    );
    app.drain().await;
    assert_eq!(app.sim.vm(&host, &id).unwrap().ips.unwrap().len(), 1);
    assert_eq!(
        alice.get_json(&ips(&id), StatusCode::OK).await["ip_count"],
        1
    );
    // The address went back to the pool, behind the addresses never used: the next
    // assignment takes one of those.
    let held = app.app.store().ip_assignments().await.unwrap();
    assert!(!held.iter().any(|(a, _)| *a == addr), "{held:?}");
    let again = expect(alice.post(&ips(&id), json!({})).await, StatusCode::OK).await;
    assert_ne!(again["ip"]["ip_address"], json!(addr));
}

/// An address one tenant's delete gives back does not go to the next tenant's launch: DNS
/// records, allowlists and peers may still point at it. It waits at the back of the pool.
#[tokio::test]
async fn an_address_alice_gives_back_is_not_the_one_bob_gets_next() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.tenant("alice").await, app.tenant("bob").await);
    let id = app.running(&alice, "v1_cpu_small").await;
    let addr = alice.instance(&id).await["ip_address"].clone();
    let r = alice.delete(&format!("/api/v1/instances/{id}")).await;
    expect(r, StatusCode::OK).await;
    app.drain().await;
    let held = app.app.store().ip_assignments().await.unwrap();
    assert!(held.is_empty(), "{held:?}");
    for _ in 0..3 {
        let got = bob.launch("v1_cpu_small", "us-east-1").await;
        assert!(got["assigned_ip"].is_string(), "{got}");
        assert_ne!(got["assigned_ip"], addr);
    }
}

#[tokio::test]
async fn primary_unknown_and_foreign_addresses() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let primary = alice.instance(&id).await["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    let r = expect(
        alice.delete(&format!("{}/{primary}", ips(&id))).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(r["error"], "cannot_release_primary");
    let r = expect(
        alice.delete(&format!("{}/203.0.113.77", ips(&id))).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(r["error"], "ip_not_found");
    let bob = app.tenant("bob").await;
    assert_eq!(bob.get(&ips(&id)).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        bob.post(&ips(&id), json!({})).await.status(),
        StatusCode::NOT_FOUND
    );
    let viewer = app.key("alice", "viewer", false, None).await;
    assert_eq!(viewer.get(&ips(&id)).await.status(), StatusCode::OK);
    assert_eq!(
        viewer.post(&ips(&id), json!({})).await.status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn assignment_needs_a_rented_instance_and_a_free_address() {
    let mut fleet = tiny_fleet(3);
    fleet.regions[0].ip_pools = vec!["10.20.0.1-10.20.0.3".into()];
    let app = TestApp::spawn_with(fleet, engine_config()).await;
    let alice = app.tenant("alice").await;
    let creating = alice.launch("v1_cpu_small", "us-east-1").await;
    let r = expect(
        alice
            .post(&ips(creating["vm_uuid"].as_str().unwrap()), json!({}))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(r["error"], "invalid_state");
    let id = app.running(&alice, "v1_cpu_small").await;
    expect(alice.post(&ips(&id), json!({})).await, StatusCode::OK).await;
    let r = expect(
        alice.post(&ips(&id), json!({})).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(r["error"], "no_ips_available");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_assignments_never_share_an_address() {
    let mut fleet = tiny_fleet(4);
    fleet.regions[0].ip_pools = vec!["10.30.0.1-10.30.0.9".into()];
    let app = TestApp::spawn_with(fleet, engine_config()).await;
    let alice = std::sync::Arc::new(app.tenant("alice").await);
    let mut vms = vec![];
    for _ in 0..4 {
        vms.push(
            alice.launch("v1_cpu_small", "us-east-1").await["vm_uuid"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    app.drain().await;
    // 4 primaries leave 5 free addresses for 12 concurrent requests.
    let mut hs = vec![];
    for i in 0..12 {
        let (a, id) = (alice.clone(), vms[i % 4].clone());
        hs.push(tokio::spawn(async move {
            a.post(&ips(&id), json!({})).await.status()
        }));
    }
    let mut ok = 0;
    for h in hs {
        match h.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::BAD_REQUEST => {}
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 5);
    let held = app.app.store().ip_assignments().await.unwrap();
    let mut addrs: Vec<_> = held.iter().map(|(a, _)| a.clone()).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 9);
}

#[tokio::test]
async fn deleting_the_instance_frees_every_address() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    expect(alice.post(&ips(&id), json!({})).await, StatusCode::OK).await;
    expect(alice.post(&ips(&id), json!({})).await, StatusCode::OK).await;
    app.drain().await;
    assert_eq!(app.app.store().ip_assignments().await.unwrap().len(), 3);
    expect(
        alice.delete(&format!("/api/v1/instances/{id}")).await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
    assert!(app.app.store().ip_assignments().await.unwrap().is_empty());
}

/// The MAC the API shows and the hypervisor is given for an address: `bc:24:11` and the
/// address's low 24 bits (computed here on its own, not with the server's function).
fn mac_of(address: &str) -> String {
    let o: Vec<u8> = address.split('.').map(|p| p.parse().unwrap()).collect();
    format!("bc:24:11:{:02x}:{:02x}:{:02x}", o[1], o[2], o[3])
}

/// Every interface of a region gets its own MAC: launches written together, launches alone
/// and additional addresses alike take the MAC of the address they hold, shown by the API
/// and pushed to the hypervisor. (Drawn from a hash of the instance id, MACs of 24 bits
/// clashed with even odds by 5,000 instances of a region.)
#[tokio::test]
async fn each_interface_takes_the_mac_of_its_address() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let mut sent = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let alice = alice.clone();
        sent.spawn(async move { alice.launch("v1_cpu_small", "us-east-1").await });
    }
    let launched = sent.join_all().await;
    let lone = app.running(&alice, "v1_cpu_small").await;
    let mut ids: Vec<String> = launched
        .iter()
        .map(|v| v["vm_uuid"].as_str().unwrap().to_string())
        .collect();
    ids.push(lone.clone());
    app.drain().await;
    expect(alice.post(&ips(&lone), json!({})).await, StatusCode::OK).await;
    app.drain().await;
    let mut macs = Vec::new();
    for id in &ids {
        let b = alice.get_json(&ips(id), StatusCode::OK).await;
        for ip in b["ips"].as_array().unwrap() {
            let address = ip["ip_address"].as_str().unwrap();
            assert_eq!(ip["mac_address"], json!(mac_of(address)), "{ip}");
            macs.push(mac_of(address));
        }
    }
    assert_eq!(macs.len(), ids.len() + 1);
    let n = macs.len();
    macs.sort();
    macs.dedup();
    assert_eq!(macs.len(), n, "a MAC given twice");
    let host = alice.instance(&lone).await["host_id"]
        .as_str()
        .unwrap()
        .to_string();
    let on_host = app.sim.vm(&host, &lone).unwrap().ips.unwrap();
    assert_eq!(on_host.len(), 2);
    for nic in on_host {
        assert_eq!(nic.mac_address, mac_of(&nic.address));
    }
}
