use crate::support::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn owner_moves_an_instance_into_and_out_of_a_team() {
    let app = TestApp::spawn().await;
    let owner = app.tenant("acme").await;
    let ml = app.app.team_create("acme", "ML Team").await.unwrap();
    let ml_key = app.key("acme", "member", false, Some(&ml.id)).await;
    let id = owner.launch("v1_cpu_small", "us-east-1").await["vm_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ml_key
            .get(&format!("/api/v1/instances/{id}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    let r = expect(
        owner
            .put(
                &format!("/api/v1/instances/{id}/team"),
                json!({"team_id": ml.id}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (r["success"].as_bool(), r["message"].as_str()),
        (Some(true), Some("Instance assigned to team"))
    );
    assert_eq!(
        (r["instance_id"].as_str(), r["team_id"].as_str()),
        (Some(id.as_str()), Some(ml.id.as_str()))
    );
    let i = owner.instance(&id).await;
    assert_eq!(
        (i["team_id"].as_str(), i["team_name"].as_str()),
        (Some(ml.id.as_str()), Some("ML Team"))
    );
    assert_eq!(ml_key.instance(&id).await["uuid"], json!(id));

    let t = owner
        .get_json(
            &format!("/api/v1/teams/{}/instances", ml.id),
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        (
            t["team_id"].as_str(),
            t["team_name"].as_str(),
            t["total"].as_i64()
        ),
        (Some(ml.id.as_str()), Some("ML Team"), Some(1))
    );
    assert_eq!(t["instances"][0]["uuid"], json!(id));
    assert!(t["instances"][0]["power_status"].is_string());
    assert_eq!(
        ml_key
            .get_json(
                &format!("/api/v1/teams/{}/instances", ml.id),
                StatusCode::OK
            )
            .await["total"],
        1
    );

    let r = expect(
        owner.delete(&format!("/api/v1/instances/{id}/team")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        r,
        json!({"success": true, "message": "Instance removed from team", "instance_id": id})
    );
    assert!(owner.instance(&id).await["team_id"].is_null());
    assert_eq!(
        ml_key
            .get(&format!("/api/v1/instances/{id}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        owner
            .get_json(
                &format!("/api/v1/teams/{}/instances", ml.id),
                StatusCode::OK
            )
            .await["total"],
        0
    );
}

#[tokio::test]
async fn only_account_wide_owners_and_admins_manage_teams() {
    let app = TestApp::spawn().await;
    let owner = app.tenant("acme").await;
    let team = app.app.team_create("acme", "ops").await.unwrap();
    let id = owner.launch("v1_cpu_small", "us-east-1").await["vm_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let admin = app.key("acme", "admin", false, None).await;
    assert_eq!(
        admin
            .put(
                &format!("/api/v1/instances/{id}/team"),
                json!({"team_id": team.id})
            )
            .await
            .status(),
        StatusCode::OK
    );
    for (role, scoped) in [("member", false), ("viewer", false), ("admin", true)] {
        let k = app
            .key("acme", role, false, scoped.then_some(team.id.as_str()))
            .await;
        let r = expect(
            k.put(
                &format!("/api/v1/instances/{id}/team"),
                json!({"team_id": team.id}),
            )
            .await,
            StatusCode::FORBIDDEN,
        )
        .await;
        assert_eq!(
            r["message"], "Only account owners/admins can assign VMs to teams",
            "{role}"
        );
        assert_eq!(
            k.delete(&format!("/api/v1/instances/{id}/team"))
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
    }
}

#[tokio::test]
async fn unknown_and_foreign_teams_are_404() {
    let app = TestApp::spawn().await;
    let owner = app.tenant("acme").await;
    let other = app.tenant("globex").await;
    let theirs = app.app.team_create("globex", "secret").await.unwrap();
    let ours = app.app.team_create("acme", "ours").await.unwrap();
    let id = owner.launch("v1_cpu_small", "us-east-1").await["vm_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let r = expect(
        owner
            .put(
                &format!("/api/v1/instances/{id}/team"),
                json!({"team_id": theirs.id}),
            )
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(r["error"], "team_not_found");
    assert_eq!(
        owner
            .get(&format!("/api/v1/teams/{}/instances", theirs.id))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        owner.get("/api/v1/teams/nope/instances").await.status(),
        StatusCode::NOT_FOUND
    );
    // Team names are not ids.
    let r = owner
        .put(
            &format!("/api/v1/instances/{id}/team"),
            json!({"team_id": "ours"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // A team-scoped key sees only its own team.
    let ours_key = app.key("acme", "member", false, Some(&ours.id)).await;
    let second = app.app.team_create("acme", "second").await.unwrap();
    assert_eq!(
        ours_key
            .get(&format!("/api/v1/teams/{}/instances", second.id))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        other
            .get(&format!("/api/v1/instances/{id}/team"))
            .await
            .status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    let r = expect(
        owner
            .put(&format!("/api/v1/instances/{id}/team"), json!({}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(r["detail"][0]["loc"], json!(["body", "team_id"]));
}
