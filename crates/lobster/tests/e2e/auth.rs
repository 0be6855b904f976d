use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn missing_or_wrong_key_is_401_in_the_spec_shape() {
    let app = TestApp::spawn().await;
    for key in [None, Some("lob_not-a-real-key"), Some("")] {
        let r = app.raw(Method::GET, "/api/v1/instances", key, None).await;
        let body = expect(r, StatusCode::UNAUTHORIZED).await;
        assert_eq!(
            body,
            json!({"error": "unauthorized", "message": "Invalid or missing API key"})
        );
    }
}

#[tokio::test]
async fn auth_is_checked_before_the_body() {
    let app = TestApp::spawn().await;
    let r = app
        .raw(
            Method::POST,
            "/api/v1/instances/launch-instance",
            None,
            Some("not json"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn revoked_key_stops_working_on_the_next_request() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    alice.get_json("/api/v1/instances", StatusCode::OK).await;
    app.app.key_revoke(&alice.key_id).await.unwrap();
    expect(
        alice.get("/api/v1/instances").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn expired_key_is_401() {
    let app = TestApp::spawn().await;
    app.app.account_create("acme").await.unwrap();
    let k = lobster_app::admin::NewKey {
        account: "acme".into(),
        role: Some("owner".into()),
        expires_in_days: Some(1),
        ..Default::default()
    };
    let (_, secret) = app.app.key_create(k).await.unwrap();
    let ok = app
        .raw(Method::GET, "/api/v1/instances", Some(&secret), None)
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    app.clock.advance_ms(86_400_000 + 1);
    let r = app
        .raw(Method::GET, "/api/v1/instances", Some(&secret), None)
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn keys_are_stored_only_as_digests() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let keys = app.app.key_list(Some("alice")).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(alice.key.starts_with(&keys[0].prefix));
    assert!(keys[0].prefix.len() < alice.key.len());
    // The digest column is the SHA-256 of the secret, never the secret itself.
    let digest = lobster_app::auth::key_digest(&alice.key);
    assert_eq!(digest.len(), 64);
    assert!(app
        .app
        .store()
        .key_by_digest(&digest)
        .await
        .unwrap()
        .is_some());
    assert!(app
        .app
        .store()
        .key_by_digest(&alice.key)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn viewer_can_read_but_not_mutate() {
    let app = TestApp::spawn().await;
    let owner = app.tenant("acme").await;
    let viewer = app.key("acme", "viewer", false, None).await;
    let vm = owner.launch("v1_cpu_small", "us-east-1").await;
    app.drain().await;
    let id = vm["vm_uuid"].as_str().unwrap();
    viewer
        .get_json(&format!("/api/v1/instances/{id}"), StatusCode::OK)
        .await;
    viewer.get_json("/api/v1/tasks", StatusCode::OK).await;
    let launch = viewer
        .launch_body(
            json!({"region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY}),
        )
        .await;
    let b = expect(launch, StatusCode::FORBIDDEN).await;
    assert_eq!(b["error"], "forbidden");
    for op in [
        "reboot",
        "shutdown",
        "force-shutdown",
        "power-on",
        "power-cycle",
    ] {
        let r = viewer
            .post(&format!("/api/v1/instances/{id}/{op}"), json!({}))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{op}");
    }
    assert_eq!(
        viewer
            .delete(&format!("/api/v1/instances/{id}"))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let r = viewer
        .put(
            &format!("/api/v1/instances/{id}/rename"),
            json!({"name": "new-name"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Nothing was queued by the refused calls.
    assert_eq!(app.drain().await, 0);
}

#[tokio::test]
async fn member_can_launch_and_delete() {
    let app = TestApp::spawn().await;
    app.app.account_create("acme").await.unwrap();
    let member = app.key("acme", "member", false, None).await;
    let vm = member.launch("v1_cpu_small", "us-east-1").await;
    app.drain().await;
    let r = member
        .delete(&format!(
            "/api/v1/instances/{}",
            vm["vm_uuid"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn bootstrap_key_is_idempotent_owner_and_staff() {
    let app = TestApp::spawn().await;
    let key = "bootstrap-secret-0123456789";
    app.app.bootstrap_key(key).await.unwrap();
    app.app.bootstrap_key(key).await.unwrap();
    assert_eq!(app.app.key_list(Some("default")).await.unwrap().len(), 1);
    let r = app
        .raw(Method::GET, "/api/v1/resources", Some(key), None)
        .await;
    assert_eq!(r.status(), StatusCode::OK, "staff endpoint");
    // Revoked, it is refused at the next start rather than announced as a working key.
    let id = app.app.key_list(Some("default")).await.unwrap()[0]
        .id
        .clone();
    app.app.key_revoke(&id).await.unwrap();
    let err = app.app.bootstrap_key(key).await.unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    assert!(app.app.bootstrap_key("short").await.is_err());
    // Keys `authenticate` could never match are refused, not stored.
    for unusable in [
        " padded-bootstrap-key ".to_string(),
        "x".repeat(257),
        "bootstrap key with spaces".to_string(),
        "clé-de-démarrage-1234".to_string(),
    ] {
        assert!(
            app.app.bootstrap_key(&unusable).await.is_err(),
            "{unusable:?}"
        );
    }
}

#[tokio::test]
async fn team_scoped_key_sees_only_its_team() {
    let app = TestApp::spawn().await;
    let owner = app.tenant("acme").await;
    let team = app.app.team_create("acme", "ml").await.unwrap();
    let ml = app.key("acme", "member", false, Some("ml")).await;
    let own_vm = owner.launch("v1_cpu_small", "us-east-1").await;
    let team_vm = ml.launch("v1_cpu_small", "us-east-1").await;
    app.drain().await;
    let listed = ml.get_json("/api/v1/instances", StatusCode::OK).await;
    let ids: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["uuid"].clone())
        .collect();
    assert_eq!(ids, vec![team_vm["vm_uuid"].clone()]);
    assert_eq!(listed[0]["team_id"], json!(team.id));
    assert_eq!(listed[0]["team_name"], "ml");
    assert_eq!(listed[0]["access_type"], "team");
    let r = ml
        .get(&format!(
            "/api/v1/instances/{}",
            own_vm["vm_uuid"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The account-wide key sees both.
    assert_eq!(
        owner
            .get_json("/api/v1/instances", StatusCode::OK)
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
