//! The read cache across servers (PostgreSQL: two stores on one schema stand for two
//! servers) and its scoping (both backends). This server's own writes being read back at
//! once is `instance_reads_round_trip_every_column`.

use super::cache::Cache;
use super::contract_tests::{fresh_pg_schema, sample_instance, sample_key, stores};
use super::*;
use lobster_core::fleet::Fleet;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Waits (for a notification, not a fixed time) until `f` holds of the store's cache.
async fn until(store: &Store, what: &str, f: impl Fn(&Cache) -> bool) {
    let c = store.cache();
    loop {
        let changed = c.changed.notified();
        if f(c) {
            return;
        }
        tokio::time::timeout(Duration::from_secs(30), changed)
            .await
            .unwrap_or_else(|_| panic!("the read cache never reached: {what}"));
    }
}

fn scope(account: &str, team: Option<&str>) -> Scope {
    Scope {
        account_id: account.into(),
        team_id: team.map(String::from),
    }
}

async fn with_instance(store: &Store, id: &str) -> InstanceRow {
    store.fleet_sync(&Fleet::demo()).await.unwrap();
    store.account_create("a1", "acme", 0).await.unwrap();
    let row = sample_instance(id, "a1");
    let mut tx = store.begin().await.unwrap();
    tx.instance_insert(&row).await.unwrap();
    tx.commit().await.unwrap();
    row
}

/// On a fresh PostgreSQL schema holding instance `i1` (written, and its write announced,
/// before they start), `n` servers, all listening, with caches that outlive a slow test.
/// `None` without PostgreSQL.
async fn servers(n: usize) -> Option<Vec<Store>> {
    let base = std::env::var("LOBSTER_TEST_POSTGRES_URL").ok()?;
    let url = fresh_pg_schema(&base).await;
    let setup = Store::connect(&url).await.unwrap();
    with_instance(&setup, "i1").await;
    until(&setup, "announced", |c| {
        c.announced.load(Ordering::Acquire) == c.queued.load(Ordering::Acquire)
    })
    .await;
    let mut out = vec![setup];
    for _ in 0..n {
        let s = Store::connect(&url).await.unwrap();
        s.cache().set_ttl(Duration::from_secs(3600));
        until(&s, "listening", |c| c.listens.load(Ordering::Acquire) >= 1).await;
        out.push(s);
    }
    Some(out)
}

async fn two_servers() -> Option<(Store, Store)> {
    let mut s = servers(2).await?;
    let b = s.pop()?;
    Some((s.pop()?, b))
}

/// The first read of a row may come from a tenant who may not see it; the row it caches
/// must still be shown only to its own scope.
#[tokio::test]
async fn a_cached_instance_is_shown_only_to_its_scope() {
    for (store, _d) in stores().await {
        // PostgreSQL's cache is off until its listening connection is up.
        until(&store, "on", Cache::is_on).await;
        let row = with_instance(&store, "i1").await;
        let stranger = scope("a2", None);
        let other_team = scope("a1", Some("t9"));
        // The insert's own announcement comes back to this store once, and drops what it
        // kept; read until a read is kept (at once on SQLite).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            assert_eq!(store.instance_get(&stranger, "i1").await.unwrap(), None);
            if store.cache().instance("i1").is_some() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no read was kept");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(store.instance_get(&other_team, "i1").await.unwrap(), None);
        let own = store.instance_get(&scope("a1", None), "i1").await.unwrap();
        assert_eq!(own, Some(row));
        assert_eq!(store.instance_get(&stranger, "i1").await.unwrap(), None);
        assert!(store.instance_list(&stranger).await.unwrap().is_empty());
    }
}

/// A write on one server reaches the other's cache: its next read shows the write.
#[tokio::test]
async fn another_servers_write_reaches_this_servers_cache() {
    let Some((a, b)) = two_servers().await else {
        return;
    };
    let sc = scope("a1", None);
    assert_eq!(
        a.instance_get(&sc, "i1").await.unwrap().unwrap().name,
        "web-1"
    );
    assert_eq!(a.instance_list(&sc).await.unwrap().len(), 1);
    assert!(a.cache().instance("i1").is_some() && a.cache().list(&sc).is_some());
    let mut tx = b.begin().await.unwrap();
    tx.instance_rename("i1", "web-2", 2_000).await.unwrap();
    tx.commit().await.unwrap();
    until(&a, "i1 dropped", |c| c.instance("i1").is_none()).await;
    assert_eq!(
        a.instance_get(&sc, "i1").await.unwrap().unwrap().name,
        "web-2"
    );
    assert_eq!(a.instance_list(&sc).await.unwrap()[0].name, "web-2");
}

/// A key revoked through one server stops working on the other.
#[tokio::test]
async fn a_key_revoked_on_another_server_stops_working_here() {
    let Some((a, b)) = two_servers().await else {
        return;
    };
    let key = sample_key();
    a.key_create(&key, "d1").await.unwrap();
    assert_eq!(a.key_by_digest("d1").await.unwrap(), Some(key));
    assert!(a.cache().key("d1").is_some(), "the read was kept");
    assert!(b.key_revoke("k1", 5).await.unwrap());
    until(&a, "key dropped", |c| c.key("d1").is_none()).await;
    let got = a.key_by_digest("d1").await.unwrap().unwrap();
    assert_eq!(got.revoked_at, Some(5));
}

/// Makes `a` deaf to other servers' notifications (as if they had not arrived yet), then
/// creates key `k1` (digest `d1`) and has `a` keep it.
async fn key_kept_by_a_deaf_server(a: &Store) {
    a.cache().deaf.store(true, Ordering::Release);
    until(a, "on", Cache::is_on).await;
    let key = sample_key();
    a.key_create(&key, "d1").await.unwrap();
    assert_eq!(a.key_by_digest("d1").await.unwrap(), Some(key));
    assert!(a.cache().key("d1").is_some(), "the read was kept");
}

/// A key revoked on another server is refused here on the next lookup even when the
/// notification has not arrived: the revocation answers only once every copy read before
/// its commit has aged out (DESIGN invariant 5, "the next request").
#[tokio::test]
async fn a_revocation_answers_only_once_no_server_can_still_let_the_key_in() {
    let Some((a, b)) = two_servers().await else {
        return;
    };
    // Production's time to live.
    a.cache().set_ttl(super::cache::TTL);
    key_kept_by_a_deaf_server(&a).await;
    assert!(b.key_revoke("k1", 5).await.unwrap());
    let got = a.key_by_digest("d1").await.unwrap().unwrap();
    assert_eq!(
        got.revoked_at,
        Some(5),
        "a revoked key let in after the revocation"
    );
}

/// The server that revokes a key drops its own copy at its commit, before its notification
/// comes back to it (`Tx::announce_keys_changed`).
#[tokio::test]
async fn a_key_revoked_here_is_dropped_here_at_once() {
    let Some((a, _b)) = two_servers().await else {
        return;
    };
    key_kept_by_a_deaf_server(&a).await;
    assert!(a.key_revoke("k1", 5).await.unwrap());
    assert!(a.cache().key("d1").is_none());
}

/// SQLite: a key this server keeps stops working on the next lookup after another process
/// (the admin CLI; here a second store on the same file) revokes it.
#[tokio::test]
async fn a_key_revoked_by_another_process_is_not_served_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let (a, cli) = (
        Store::connect(&url).await.unwrap(),
        Store::connect(&url).await.unwrap(),
    );
    a.cache().set_ttl(Duration::from_secs(3600));
    let key = sample_key();
    a.account_create("a1", "acme", 0).await.unwrap();
    a.key_create(&key, "d1").await.unwrap();
    // Writes (the creation, the stores' checkpoints of it) drop kept keys until they end.
    let mut kept = false;
    for _ in 0..1_000 {
        assert_eq!(a.key_by_digest("d1").await.unwrap(), Some(key.clone()));
        kept = a.cache().key("d1").is_some();
        if kept {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(kept, "the key was never kept");
    assert!(cli.key_revoke("k1", 5).await.unwrap());
    let got = a.key_by_digest("d1").await.unwrap().unwrap();
    assert_eq!(
        got.revoked_at,
        Some(5),
        "the next lookup sees the revocation"
    );
    // The revocation also wrote the signal that covers a read made before its commit was
    // visible (see `watch`).
    assert!(dir.path().join("t.db-keys").exists());
}

/// SQLite through a symbolic link: the revocation's signal lands beside the real file, where
/// the serving process's watch is, not beside the link.
#[tokio::test]
async fn a_revocation_through_a_linked_path_signals_beside_the_real_file() {
    let (real, links) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let link = links.path().join("lobster.db");
    std::os::unix::fs::symlink(real.path().join("t.db"), &link).unwrap();
    let url = format!("sqlite://{}", link.display());
    let (a, cli) = (
        Store::connect(&url).await.unwrap(),
        Store::connect(&url).await.unwrap(),
    );
    a.account_create("a1", "acme", 0).await.unwrap();
    a.key_create(&sample_key(), "d1").await.unwrap();
    assert!(cli.key_revoke("k1", 5).await.unwrap());
    assert!(
        real.path().join("t.db-keys").exists(),
        "no signal beside the real file"
    );
    let got = a.key_by_digest("d1").await.unwrap().unwrap();
    assert_eq!(got.revoked_at, Some(5));
}

/// While the listening connection is down, invalidations are missed: when it is back, the
/// cache starts empty rather than serve what it held.
#[tokio::test]
async fn a_lost_listening_connection_empties_the_cache() {
    let Some(a) = servers(1).await.and_then(|mut s| s.pop()) else {
        return;
    };
    let sc = scope("a1", None);
    a.instance_get(&sc, "i1").await.unwrap();
    // A write no server announces (as if its notification were lost)…
    sqlx::query("UPDATE instances SET name = 'web-2' WHERE id = 'i1'")
        .execute(a.writer())
        .await
        .unwrap();
    // …is not seen while the cache holds the row (so these reads do come from memory)…
    assert_eq!(
        a.instance_get(&sc, "i1").await.unwrap().unwrap().name,
        "web-1"
    );
    let listen = format!("LISTEN \"{}\"", a.channel().unwrap());
    let killed: i64 = sqlx::query_scalar(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = $1",
    )
    .bind(&listen)
    .fetch_one(a.writer())
    .await
    .unwrap();
    // At least this store's; a store dropped just before may not have unlistened yet.
    assert!(killed >= 1, "{killed}");
    until(&a, "listening again", |c| {
        c.listens.load(Ordering::Acquire) >= 2
    })
    .await;
    // …and is seen once the connection that could have missed its notification is back.
    assert_eq!(
        a.instance_get(&sc, "i1").await.unwrap().unwrap().name,
        "web-2"
    );
}

/// One server alone on a database sends no announcements (no one would hear them); once a
/// second server says hello, the first announces again and the second's cache hears it.
#[tokio::test]
async fn a_server_announces_only_while_another_listens() {
    let Ok(base) = std::env::var("LOBSTER_TEST_POSTGRES_URL") else {
        return;
    };
    let url = fresh_pg_schema(&base).await;
    let a = Store::connect(&url).await.unwrap();
    with_instance(&a, "i1").await;
    until(&a, "on", |c| c.listens.load(Ordering::Acquire) >= 1).await;
    a.cache().pretend_listening_for(Duration::from_secs(3600));
    assert!(a.cache().alone(), "no other server has said hello");
    let sent = a.cache().sent.load(Ordering::Acquire);
    let unsent = a.cache().unsent.load(Ordering::Acquire);
    let rename = |name: &'static str| {
        let a = a.clone();
        async move {
            let mut tx = a.begin().await.unwrap();
            tx.instance_rename("i1", name, 2_000).await.unwrap();
            tx.commit().await.unwrap();
            until(&a, "announced", |c| {
                c.announced.load(Ordering::Acquire) == c.queued.load(Ordering::Acquire)
            })
            .await;
        }
    };
    rename("web-2").await;
    assert_eq!(a.cache().sent.load(Ordering::Acquire), sent, "sent alone");
    assert!(a.cache().unsent.load(Ordering::Acquire) > unsent);

    let b = Store::connect(&url).await.unwrap();
    b.cache().set_ttl(Duration::from_secs(3600));
    until(&a, "hears b", |c| !c.alone()).await;
    until(&b, "on", |c| c.listens.load(Ordering::Acquire) >= 1).await;
    let sc = scope("a1", None);
    assert_eq!(
        b.instance_get(&sc, "i1").await.unwrap().unwrap().name,
        "web-2"
    );
    assert!(b.cache().instance("i1").is_some(), "b keeps its read");
    rename("web-3").await;
    assert!(a.cache().sent.load(Ordering::Acquire) > sent, "a announced");
    until(&b, "i1 dropped", |c| c.instance("i1").is_none()).await;
    assert_eq!(
        b.instance_get(&sc, "i1").await.unwrap().unwrap().name,
        "web-3"
    );
}

/// A server that starts listening keeps nothing until the others have had `GRACE` to hear
/// its hello (else a write they commit meanwhile, unannounced, could be served stale).
#[tokio::test]
async fn a_new_server_caches_only_after_its_hello_had_time_to_be_heard() {
    let Some(s) = servers(1).await.and_then(|mut s| s.pop()) else {
        return;
    };
    let kept = s.cache().grace_kept().expect("on after a hello");
    assert!(kept >= super::cache::GRACE, "{kept:?}");
}
