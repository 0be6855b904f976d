//! Moving a SQLite deployment to PostgreSQL. Runs when `LOBSTER_TEST_POSTGRES_URL` is set
//! (CI sets it); without a PostgreSQL there is nothing to move to.

use crate::support::*;
use lobster_store::Store;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_sqlite_deployment_moves_to_postgres_without_loss() {
    let Ok(pg) = std::env::var("LOBSTER_TEST_POSTGRES_URL") else {
        eprintln!("skipped: LOBSTER_TEST_POSTGRES_URL is not set");
        return;
    };
    let app = TestApp::spawn_sqlite().await;
    let alice = app.tenant("alice").await;
    app.app.team_create("alice", "ml").await.unwrap();
    let id = alice.launch("gpu_1x_a4000", "igl").await["vm_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    alice.launch("v1_cpu_small", "us-east-1").await;
    app.drain().await;
    expect(
        alice
            .post(
                &format!("/api/v1/instances/{id}/firewall/rules"),
                json!({"type": "in", "action": "ACCEPT", "dport": "22"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    expect(
        alice
            .post(&format!("/api/v1/instances/{id}/ips"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    expect(
        alice
            .post(&format!("/api/v1/instances/{id}/backup"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    expect(
        alice
            .post(
                &format!("/api/v1/instances/{id}/backup-schedule"),
                json!({"frequency": "daily", "hour_utc": 3}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
    // A task still pending moves too, and finishes on the new database.
    let pending = expect(
        alice
            .post(&format!("/api/v1/instances/{id}/reboot"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;

    let target = Store::connect(&fresh_pg_schema(&pg).await).await.unwrap();
    let src = app.app.store();
    let copied = src.copy_to(&target).await.unwrap();
    assert_eq!(
        src.table_counts().await.unwrap(),
        target.table_counts().await.unwrap()
    );
    let copied_of = |t: &str| copied.iter().find(|(c, _)| *c == t).unwrap().1;
    assert_eq!(copied_of("instances"), 2);
    // The demo fleet's addresses are more than one insert's 500 rows: copied in several.
    assert!(copied_of("ip_addresses") > 500, "{copied:?}");
    assert_eq!(
        src.instance_all().await.unwrap(),
        target.instance_all().await.unwrap()
    );
    assert_eq!(
        src.task_all().await.unwrap(),
        target.task_all().await.unwrap()
    );
    assert_eq!(
        src.key_list(None).await.unwrap(),
        target.key_list(None).await.unwrap()
    );
    assert_eq!(
        src.backup_all().await.unwrap(),
        target.backup_all().await.unwrap()
    );
    assert_eq!(
        src.host_list().await.unwrap(),
        target.host_list().await.unwrap()
    );
    assert_eq!(
        src.ip_assignments().await.unwrap(),
        target.ip_assignments().await.unwrap()
    );
    assert_eq!(
        src.firewall_get(&id).await.unwrap(),
        target.firewall_get(&id).await.unwrap()
    );
    assert_eq!(
        src.schedule_get(&id).await.unwrap(),
        target.schedule_get(&id).await.unwrap()
    );
    let task = pending["task_id"].as_str().unwrap();
    assert_eq!(
        target.task_by_id(task).await.unwrap().unwrap().status,
        "PENDING"
    );
    // A second copy into a database that already holds data is refused, and writes nothing.
    let before = target.table_counts().await.unwrap();
    assert!(src.copy_to(&target).await.is_err());
    assert_eq!(target.table_counts().await.unwrap(), before);
}
