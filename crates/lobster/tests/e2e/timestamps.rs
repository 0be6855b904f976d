//! DESIGN invariant 7 across the API: every timestamp an answer carries is UTC RFC 3339 with
//! `Z` (or null where the document allows it). The GET operations come from the served
//! OpenAPI document, so a new one is checked as soon as it is documented; the billing log
//! and the console ticket (POSTs that answer timestamps) are added by hand.

use crate::support::*;
use lobster_core::clock::{Clock, Timestamp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A key that names a timestamp: `*_at`, and the bare names the documents use.
fn is_time_key(k: &str) -> bool {
    k.ends_with("_at") || matches!(k, "timestamp" | "start_time" | "end_time")
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z`, and a date the clock can read back.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s.ends_with('Z')
        && (b.len() == 20 || (b[19] == b'.' && b[20..b.len() - 1].iter().all(u8::is_ascii_digit)));
    shape && Timestamp::parse_rfc3339(s).is_some()
}

/// Every time-named field under `v` that is neither null nor RFC 3339 UTC, by its path.
fn bad_times(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let here = format!("{at}.{k}");
                if is_time_key(k) && !x.is_null() && !x.as_str().is_some_and(is_rfc3339_utc) {
                    out.push(format!("{here} = {x}"));
                }
                bad_times(x, &here, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                bad_times(x, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn every_timestamp_in_every_answer_is_rfc3339_utc() {
    let app = TestApp::spawn().await;
    // Staff: `/resources` is staff-only.
    let alice = app.staff("acme").await;
    let team = app.app.team_create("acme", "ml").await.unwrap();
    let id = app.running(&alice, "v1_cpu_small").await;
    let task = alice.get_json("/api/v1/tasks", StatusCode::OK).await["tasks"][0]["task_id"]
        .as_str()
        .expect("a task")
        .to_string();
    backup(&app, &alice, &id).await;
    for (m, path, body) in [
        (
            Method::PUT,
            format!("/api/v1/instances/{id}/team"),
            json!({"team_id": team.id}),
        ),
        (
            Method::POST,
            format!("/api/v1/instances/{id}/ips"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/api/v1/instances/{id}/backup-schedule"),
            json!({"frequency": "daily", "hour_utc": 3}),
        ),
        (
            Method::POST,
            format!("/api/v1/instances/{id}/firewall/rules"),
            json!({"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22"}),
        ),
    ] {
        expect(alice.call(m, &path, Some(body)).await, StatusCode::OK).await;
    }
    app.drain().await;
    let doc = alice.get_json("/api/v1/openapi.json", StatusCode::OK).await;
    let mut answers: Vec<(String, Value)> = Vec::new();
    let mut gets = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if item.get("get").is_none() || path.ends_with("/openapi.json") {
            continue;
        }
        let filled = path
            .replace("{instance_id}", &id)
            .replace("{vm_uuid}", &id)
            .replace("{task_id}", &task)
            .replace("{team_id}", &team.id)
            .replace("{pos}", "0");
        assert!(
            !filled.contains('{'),
            "{path}: a parameter this test cannot fill"
        );
        let r = alice.get(&filled).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {filled}");
        answers.push((format!("GET {path}"), r.json().await.expect("JSON")));
        gets += 1;
    }
    assert!(
        gets >= 15,
        "only {gets} GET operations found in the served document"
    );
    let now = app.clock.now().millis();
    let log = json!({
        "start_time": Timestamp(now - 86_400_000).rfc3339(),
        "end_time": Timestamp(now + 60_000).rfc3339(),
    });
    answers.push((
        "POST /instances/log".into(),
        expect(
            alice.post("/api/v1/instances/log", log).await,
            StatusCode::OK,
        )
        .await,
    ));
    answers.push((
        "POST /instances/{id}/console".into(),
        expect(
            alice
                .post(&format!("/api/v1/instances/{id}/console"), json!({}))
                .await,
            StatusCode::OK,
        )
        .await,
    ));
    let mut bad = Vec::new();
    let mut seen = 0;
    for (what, v) in &answers {
        let mut out = Vec::new();
        bad_times(v, "", &mut out);
        seen += v.to_string().matches("_at\"").count();
        bad.extend(out.into_iter().map(|b| format!("{what}: {b}")));
    }
    assert!(
        seen >= 20,
        "only {seen} timestamp fields seen: the answers are not what this test expects"
    );
    assert!(
        bad.is_empty(),
        "timestamps that are not RFC 3339 UTC:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_tells_good_from_bad() {
    assert!(is_rfc3339_utc("2026-11-24T10:30:00Z"));
    assert!(is_rfc3339_utc("2026-11-24T10:30:00.123Z"));
    for bad in [
        "2026-11-24T10:30:00+00:00",
        "2026-11-24 10:30:00Z",
        "1764000000",
        "2026-11-24T10:30:00",
    ] {
        assert!(!is_rfc3339_utc(bad), "{bad}");
    }
    let mut out = Vec::new();
    bad_times(
        &json!({"a": {"created_at": 17, "b": [{"timestamp": "x"}]}, "updated_at": null}),
        "",
        &mut out,
    );
    assert_eq!(out, [".a.b[0].timestamp = \"x\"", ".a.created_at = 17"]);
}
