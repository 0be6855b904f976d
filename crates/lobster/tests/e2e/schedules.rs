use crate::support::*;
use lobster_core::clock::{Clock, Timestamp};
use reqwest::StatusCode;
use serde_json::json;

fn path(id: &str) -> String {
    format!("/api/v1/instances/{id}/backup-schedule")
}

#[tokio::test]
async fn both_body_forms_create_and_update() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let nf = expect(alice.get(&path(&id)).await, StatusCode::NOT_FOUND).await;
    assert_eq!(nf["error"], "schedule_not_found");
    let r = expect(
        alice
            .post(
                &path(&id),
                json!({"frequency": "weekly", "hour_utc": 4, "day_of_week": 6}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (r["success"].as_bool(), r["message"].as_str()),
        (Some(true), Some("Backup schedule created"))
    );
    assert_eq!(
        r["schedule"],
        json!({"enabled": true, "frequency": "weekly", "time_utc": "04:00", "hour_utc": 4,
        "day_of_week": 6, "day_of_month": null, "retention_count": 7})
    );
    let g = alice.get_json(&path(&id), StatusCode::OK).await;
    assert_eq!(g["instance_id"], json!(id));
    assert!(g["last_backup"].is_null());
    let next = Timestamp::parse_rfc3339(g["next_backup"].as_str().unwrap()).unwrap();
    assert!(next > app.clock.now());
    assert!(g["next_backup"].as_str().unwrap().contains("T04:00:00Z"));
    let r = expect(alice.post(&path(&id), json!({"enabled": true, "frequency": "daily", "time_utc": "03:30", "retention_count": 3})).await, StatusCode::OK).await;
    assert_eq!(r["message"], "Backup schedule updated");
    assert_eq!(
        (
            r["schedule"]["time_utc"].as_str(),
            r["schedule"]["retention_count"].as_i64()
        ),
        (Some("03:30"), Some(3))
    );
    let r = expect(
        alice
            .post(
                &path(&id),
                json!({"enabled": false, "frequency": "daily", "time_utc": "03:30"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(
        r["next_backup"].is_null(),
        "a disabled schedule never fires"
    );
    let d = expect(alice.delete(&path(&id)).await, StatusCode::OK).await;
    assert_eq!(
        d,
        json!({"success": true, "message": "Backup schedule deleted", "instance_id": id})
    );
    assert_eq!(
        alice.delete(&path(&id)).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn nonsense_is_400_and_missing_fields_422() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    for body in [
        json!({"frequency": "hourly", "hour_utc": 3}),
        json!({"frequency": "daily", "hour_utc": 24}),
        json!({"frequency": "daily", "hour_utc": -1}),
        json!({"frequency": "daily", "time_utc": "25:00"}),
        // Answered back as "03:00", it would not be what was sent.
        json!({"frequency": "daily", "time_utc": "3:00"}),
        json!({"frequency": "weekly", "hour_utc": 3, "day_of_week": 7}),
        json!({"frequency": "monthly", "hour_utc": 3, "day_of_month": 32}),
        json!({"frequency": "daily", "hour_utc": 3, "retention_count": 0}),
    ] {
        let r = expect(
            alice.post(&path(&id), body.clone()).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(r["error"], "invalid_schedule", "{body}");
    }
    let r = expect(
        alice.post(&path(&id), json!({"hour_utc": 3})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(r["detail"][0]["loc"], json!(["body", "frequency"]));
    let r = expect(
        alice.post(&path(&id), json!({"frequency": "daily"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(r["detail"][0]["loc"], json!(["body", "hour_utc"]));
    assert_eq!(
        alice.get(&path(&id)).await.status(),
        StatusCode::NOT_FOUND,
        "nothing was stored"
    );
    let bob = app.tenant("bob").await;
    assert_eq!(
        bob.post(&path(&id), json!({"frequency": "daily", "hour_utc": 3}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

/// Moves the manual clock to just past the schedule's next firing.
async fn to_next_firing(app: &TestApp, t: &Tenant, id: &str) {
    let g = t.get_json(&path(id), StatusCode::OK).await;
    let next = Timestamp::parse_rfc3339(g["next_backup"].as_str().unwrap()).unwrap();
    let now = app.clock.now();
    app.clock.advance_ms(next.millis() - now.millis() + 1000);
}

#[tokio::test]
async fn the_scheduler_fires_once_when_due() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    expect(
        alice
            .post(&path(&id), json!({"frequency": "daily", "hour_utc": 3}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(app.app.schedules_run_due().await.unwrap(), 0, "not due yet");
    to_next_firing(&app, &alice, &id).await;
    // Two servers ticking at once: the occurrence fires once.
    let (a, b) = tokio::join!(app.app.schedules_run_due(), app.app.schedules_run_due());
    assert_eq!(a.unwrap() + b.unwrap(), 1);
    app.drain().await;
    let l = alice
        .get_json(&format!("/api/v1/instances/{id}/backups"), StatusCode::OK)
        .await;
    assert_eq!(l["total"], 1);
    let g = alice.get_json(&path(&id), StatusCode::OK).await;
    assert!(g["last_backup"].is_string());
    let next = Timestamp::parse_rfc3339(g["next_backup"].as_str().unwrap()).unwrap();
    assert!(next > app.clock.now());
    assert_eq!(app.app.schedules_run_due().await.unwrap(), 0);
}

/// A running instance of a new tenant with a daily schedule at 03:00, the clock just past
/// its next firing.
async fn due_daily(app: TestApp) -> (TestApp, Tenant, String) {
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let daily = json!({"frequency": "daily", "hour_utc": 3});
    expect(alice.post(&path(&id), daily).await, StatusCode::OK).await;
    to_next_firing(&app, &alice, &id).await;
    (app, alice, id)
}

/// Scheduled backups of `id` so far.
async fn backups_taken(app: &TestApp, t: &Tenant, id: &str) -> i64 {
    app.drain().await;
    let l = t
        .get_json(&format!("/api/v1/instances/{id}/backups"), StatusCode::OK)
        .await;
    l["total"].as_i64().unwrap()
}

#[tokio::test]
async fn a_put_after_the_due_time_keeps_that_occurrence() {
    let (app, alice, id) = due_daily(TestApp::spawn().await).await;
    // Due, and before the scheduler's tick a client writes the schedule again: once with
    // only the retention changed, then with another hour. Neither cancels what is due.
    for body in [
        json!({"frequency": "daily", "hour_utc": 3, "retention_count": 3}),
        json!({"frequency": "daily", "hour_utc": 5}),
    ] {
        let r = expect(alice.post(&path(&id), body).await, StatusCode::OK).await;
        let next = Timestamp::parse_rfc3339(r["next_backup"].as_str().unwrap()).unwrap();
        assert!(
            next < app.clock.now(),
            "the due occurrence was re-armed: {r}"
        );
    }
    assert_eq!(app.app.schedules_run_due().await.unwrap(), 1);
    assert_eq!(backups_taken(&app, &alice, &id).await, 1);
    // Then the new hour rules: the next occurrence is at 05:00.
    let g = alice.get_json(&path(&id), StatusCode::OK).await;
    let next = Timestamp::parse_rfc3339(g["next_backup"].as_str().unwrap()).unwrap();
    assert!(next > app.clock.now());
    assert!(
        g["next_backup"].as_str().unwrap().contains("T05:00:00"),
        "{g}"
    );
    // Switched off, nothing is due, however late.
    let off = json!({"frequency": "daily", "hour_utc": 5, "enabled": false});
    expect(alice.post(&path(&id), off).await, StatusCode::OK).await;
    app.clock.advance_ms(3 * 86_400_000);
    assert_eq!(app.app.schedules_run_due().await.unwrap(), 0);
}

#[tokio::test]
async fn a_put_with_the_same_timing_does_not_bring_back_a_taken_occurrence() {
    let (app, alice, id) = due_daily(TestApp::spawn().await).await;
    let daily = json!({"frequency": "daily", "hour_utc": 3});
    assert_eq!(app.app.schedules_run_due().await.unwrap(), 1);
    assert_eq!(backups_taken(&app, &alice, &id).await, 1);
    // A server whose clock is a little behind (here: the same clock set back) is asked to
    // write the same schedule: it must not re-arm the occurrence just taken.
    app.clock.advance_ms(-5_000);
    let r = expect(alice.post(&path(&id), daily).await, StatusCode::OK).await;
    let next = Timestamp::parse_rfc3339(r["next_backup"].as_str().unwrap()).unwrap();
    assert!(
        next.millis() > app.clock.now().millis() + 3_600_000,
        "re-armed: {r}"
    );
    app.clock.advance_ms(5_000);
    assert_eq!(app.app.schedules_run_due().await.unwrap(), 0);
    assert_eq!(backups_taken(&app, &alice, &id).await, 1);
}

#[tokio::test]
async fn the_same_timing_written_another_way_keeps_the_armed_occurrence() {
    let (app, alice, id) = due_daily(TestApp::spawn().await).await;
    assert_eq!(app.app.schedules_run_due().await.unwrap(), 1);
    app.drain().await;
    // Set back 5 s, as a server whose clock is behind: a daily schedule with a day (days do
    // not count for it) is the same timing, and must not re-arm what was just taken.
    app.clock.advance_ms(-5_000);
    let same = json!({"frequency": "daily", "hour_utc": 3, "day_of_week": 4});
    let r = expect(alice.post(&path(&id), same).await, StatusCode::OK).await;
    let next = Timestamp::parse_rfc3339(r["next_backup"].as_str().unwrap()).unwrap();
    assert!(
        next.millis() > app.clock.now().millis() + 3_600_000,
        "re-armed: {r}"
    );
    assert_eq!(r["schedule"]["day_of_week"], 4, "answered as given");
    // A weekly schedule: no day and Monday (0) are one timing.
    let weekly = json!({"frequency": "weekly", "hour_utc": 3});
    expect(alice.post(&path(&id), weekly).await, StatusCode::OK).await;
    let monday = json!({"frequency": "weekly", "hour_utc": 3, "day_of_week": 0});
    let before = alice.get_json(&path(&id), StatusCode::OK).await["next_backup"].clone();
    let r = expect(alice.post(&path(&id), monday).await, StatusCode::OK).await;
    assert_eq!(r["next_backup"], before);
}

#[tokio::test]
async fn a_server_whose_clock_is_off_takes_no_schedule() {
    let cfg = lobster_engine::EngineConfig {
        max_clock_skew_ms: Some(5_000),
        ..engine_config()
    };
    // Due by this server's clock, which has run ahead of the database's.
    let app = TestApp::spawn_with(lobster_core::fleet::Fleet::demo(), cfg).await;
    let (app, alice, id) = due_daily(app).await;
    let engine = app.app.engine().clone();
    engine.check_clock().await.unwrap();
    assert!(!engine.clock_ok());
    assert_eq!(app.app.schedules_run_due().await.unwrap(), 0);
    assert_eq!(backups_taken(&app, &alice, &id).await, 0);
}

#[tokio::test]
async fn retention_prunes_only_scheduled_backups_beyond_the_count() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let manual = expect(
        alice
            .post(&format!("/api/v1/instances/{id}/backup"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
    expect(
        alice
            .post(
                &path(&id),
                json!({"frequency": "daily", "time_utc": "02:00", "retention_count": 2}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    for _ in 0..4 {
        to_next_firing(&app, &alice, &id).await;
        assert_eq!(app.app.schedules_run_due().await.unwrap(), 1);
        app.drain().await;
    }
    // The last tick pruned what was beyond the count once its backup had completed.
    app.app.schedules_run_due().await.unwrap();
    app.drain().await;
    let all = app.app.store().backup_all().await.unwrap();
    let live_scheduled = all
        .iter()
        .filter(|b| b.origin == "schedule" && b.status == "available")
        .count();
    assert_eq!(live_scheduled, 2);
    assert_eq!(
        all.iter()
            .filter(|b| b.origin == "schedule" && b.status == "deleted")
            .count(),
        2
    );
    let manual_row = all
        .iter()
        .find(|b| b.volid == manual["volid"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        manual_row.status, "available",
        "manual backups are never pruned"
    );
    assert_eq!(app.sim.backups().len(), 3);
}

#[tokio::test]
async fn a_busy_instance_skips_the_occurrence_without_failing() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    expect(
        alice
            .post(&path(&id), json!({"frequency": "daily", "hour_utc": 1}))
            .await,
        StatusCode::OK,
    )
    .await;
    to_next_firing(&app, &alice, &id).await;
    expect(
        alice
            .post(&format!("/api/v1/instances/{id}/reboot"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(app.app.schedules_run_due().await.unwrap(), 0);
    app.drain().await;
    let g = alice.get_json(&path(&id), StatusCode::OK).await;
    let next = Timestamp::parse_rfc3339(g["next_backup"].as_str().unwrap()).unwrap();
    assert!(
        next > app.clock.now(),
        "the schedule moved on to the next occurrence"
    );
}

/// Eight PUTs of a new schedule at once: exactly one answers "created", the others
/// "updated" (each answer is what its own write did).
#[tokio::test]
async fn concurrent_puts_create_the_schedule_once() {
    let app = TestApp::spawn().await;
    let alice = std::sync::Arc::new(app.tenant("alice").await);
    let id = app.running(&alice, "v1_cpu_small").await;
    let puts: Vec<_> = (0..8)
        .map(|k| {
            let (a, p) = (alice.clone(), path(&id));
            let body = json!({"frequency": "daily", "hour_utc": k, "retention_count": 2});
            tokio::spawn(async move { expect(a.post(&p, body).await, StatusCode::OK).await })
        })
        .collect();
    let mut created = 0;
    for put in puts {
        match put.await.unwrap()["message"].as_str() {
            Some("Backup schedule created") => created += 1,
            Some("Backup schedule updated") => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(created, 1);
}

/// Makes the database refuse (or accept again) every new backup row, as a failing database
/// would, from a connection of the test's own.
async fn refuse_backups(url: &str, refuse: bool) {
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(url).await.unwrap();
    let postgres = url.starts_with("postgres");
    let statements: &[&str] = match (postgres, refuse) {
        (false, true) => &["CREATE TRIGGER refuse_backups BEFORE INSERT ON backups
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"],
        (false, false) => &["DROP TRIGGER refuse_backups"],
        (true, true) => &[
            "CREATE FUNCTION refuse_backup() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
            "CREATE TRIGGER refuse_backups BEFORE INSERT ON backups
             FOR EACH ROW EXECUTE FUNCTION refuse_backup()",
        ],
        (true, false) => &["DROP TRIGGER refuse_backups ON backups"],
    };
    for s in statements {
        sqlx::query(s).execute(&db).await.unwrap();
    }
    db.close().await;
}

/// An occurrence whose backup the database failed to queue stays due: the occurrence is
/// claimed in the transaction that queues its backup, so the next tick takes it.
#[tokio::test]
async fn an_occurrence_the_database_failed_to_queue_stays_due() {
    let (app, alice, id) = due_daily(TestApp::spawn().await).await;
    refuse_backups(&app.url, true).await;
    assert_eq!(app.app.schedules_run_due().await.unwrap(), 0);
    refuse_backups(&app.url, false).await;
    assert_eq!(app.app.schedules_run_due().await.unwrap(), 1);
    app.drain().await;
    let l = alice
        .get_json(&format!("/api/v1/instances/{id}/backups"), StatusCode::OK)
        .await;
    assert_eq!(l["total"], 1);
}

/// What a schedule was given is what it answers: days not given (or given as null) come back
/// null, days given come back as given, whatever the frequency; a weekly schedule without a
/// day still fires, on Mondays.
#[tokio::test]
async fn a_schedule_answers_its_days_as_given() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    let id = app.running(&alice, "v1_cpu_small").await;
    let sent = json!({"frequency": "weekly", "hour_utc": 3, "day_of_week": null});
    let r = expect(alice.post(&path(&id), sent).await, StatusCode::OK).await;
    assert_eq!(r["schedule"]["day_of_week"], json!(null));
    assert_eq!(r["schedule"]["day_of_month"], json!(null));
    let g = alice.get_json(&path(&id), StatusCode::OK).await;
    assert_eq!(
        (&g["day_of_week"], &g["day_of_month"]),
        (&json!(null), &json!(null))
    );
    let next = Timestamp::parse_rfc3339(g["next_backup"].as_str().unwrap()).unwrap();
    // 1970-01-01 was a Thursday: three days after a Monday.
    let days = next.millis().div_euclid(86_400_000);
    assert_eq!((days + 3) % 7, 0, "not a Monday: {g}");
    let sent =
        json!({"frequency": "daily", "time_utc": "05:15", "day_of_week": 2, "day_of_month": 9});
    let r = expect(alice.post(&path(&id), sent).await, StatusCode::OK).await;
    assert_eq!(
        (
            &r["schedule"]["time_utc"],
            &r["schedule"]["day_of_week"],
            &r["schedule"]["day_of_month"]
        ),
        (&json!("05:15"), &json!(2), &json!(9))
    );
}
