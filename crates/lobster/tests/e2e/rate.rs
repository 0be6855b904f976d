//! The limit on requests per API key and minute (`[rate_limit]`), across servers.

use crate::support::*;
use reqwest::StatusCode;

const MINUTE_MS: i64 = 60_000;

/// Moves the test clock to the start of the next minute, so that a test's requests all fall
/// in one window.
fn to_next_minute(app: &TestApp) {
    use lobster_core::clock::Clock;
    let now = app.clock.now().millis();
    app.clock.advance_ms(MINUTE_MS - now.rem_euclid(MINUTE_MS));
}

#[tokio::test]
async fn without_a_limit_nothing_is_refused() {
    let app = TestApp::spawn().await;
    let alice = app.tenant("alice").await;
    for _ in 0..50 {
        expect(alice.get("/api/v1/instances").await, StatusCode::OK).await;
    }
}

/// Two servers on one database, both limiting keys to `limit` requests a minute, the clock
/// at a minute's start; a tenant's key as sent to each.
async fn two_servers_limited(limit: u64) -> (TestApp, [Tenant; 2]) {
    let app = TestApp::spawn().await;
    let (second, base) = app.second_server().await;
    app.app.set_rate_limit(limit);
    second.set_rate_limit(limit);
    to_next_minute(&app);
    let alice = app.tenant("alice").await;
    let servers = [alice.clone(), alice.through(&base)];
    (app, servers)
}

#[tokio::test]
async fn a_keys_limit_holds_whichever_server_answers() {
    let (app, servers) = two_servers_limited(10).await;
    let bob = app.tenant("bob").await;
    // Ten requests, alternating between the servers: all answered.
    for i in 0..10 {
        let r = servers[i % 2].get("/api/v1/instances").await;
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
    }
    // The eleventh is refused on either server, in the dialect's shape, with Retry-After.
    for s in &servers {
        let r = s.get("/api/v1/instances").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "rate_limited", "{body}");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("10 requests per minute"));
    }
    // Another key has its own count.
    expect(bob.get("/api/v1/instances").await, StatusCode::OK).await;
    // The next minute starts afresh.
    to_next_minute(&app);
    for s in &servers {
        expect(s.get("/api/v1/instances").await, StatusCode::OK).await;
    }
}

#[tokio::test]
async fn concurrent_requests_over_two_servers_never_pass_the_limit() {
    let (_app, servers) = two_servers_limited(40).await;
    let mut sent = tokio::task::JoinSet::new();
    for i in 0..60 {
        let t = servers[i % 2].clone();
        sent.spawn(async move { t.get("/api/v1/tasks").await.status() });
    }
    let answers = sent.join_all().await;
    let ok = answers.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = answers
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // Never past the limit; short of it only by what a server reserved and did not use.
    assert_eq!(ok + refused, 60, "{answers:?}");
    assert!(ok <= 40, "{ok} answered past the limit of 40");
    assert!(ok >= 30, "only {ok} of 40 answered");
}
