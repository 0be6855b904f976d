//! A PostgreSQL that goes silent (PostgreSQL only): its connections stay open, but nothing
//! comes back. Every kind of statement is given up after the bound and answered 503, and the
//! connections they held are closed, so that once the database answers again the store
//! works again at once, on new connections, instead of waiting on the silent ones for good.

use crate::contract_tests::fresh_pg_schema;
use crate::Store;
use lobster_core::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to PostgreSQL that can be made silent: while silent it still reads from
/// both sides (so no one's writes block) but passes nothing on, as a host that froze would.
struct Proxy {
    port: u16,
    silent: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = Arc::new(AtomicBool::new(false));
        let quiet = silent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pass(cr, sw, quiet.clone()));
                tokio::spawn(pass(sr, cw, quiet.clone()));
            }
        });
        Proxy { port, silent }
    }

    fn silence(&self, on: bool) {
        self.silent.store(on, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either side closes, dropping what arrives while silent.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// `url` with its host and port replaced by the proxy's.
fn through(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (auth_host, path) = rest.split_once('/').unwrap();
    let user = auth_host.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!(
        "{scheme}://{}127.0.0.1:{port}/{path}",
        user.unwrap_or_default()
    )
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let host = rest.split('/').next().unwrap();
    let host = host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host);
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    }
}

fn unavailable(r: Result<impl std::fmt::Debug, Error>) {
    match r {
        Err(Error::Unanswered { message, .. }) => {
            assert!(message.contains("no answer within"), "{message}")
        }
        other => panic!("expected 503 for a silent database, got {other:?}"),
    }
}

#[tokio::test]
async fn a_silent_database_is_given_up_on_and_its_connections_closed() {
    let Ok(base) = std::env::var("LOBSTER_TEST_POSTGRES_URL") else {
        return;
    };
    // Without its bounds the store would wait for good: fail instead.
    tokio::time::timeout(Duration::from_secs(120), silent_database(base))
        .await
        .expect("the store waited on the silent database");
}

async fn silent_database(base: String) {
    let url = fresh_pg_schema(&base).await;
    let proxy = Proxy::start(host_port(&url)).await;
    let store = Store::connect_uncached(&through(&url, proxy.port))
        .await
        .unwrap();
    store.set_statement_bound(Duration::from_millis(300));
    // Every connection of the main pool open, so that the silence catches them mid-statement.
    let warm = store.read_pool().clone();
    let held: Vec<_> = futures_util::future::join_all((0..16).map(|_| warm.acquire()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(warm.size(), 16);
    drop(held);
    assert_eq!(store.task_open_count().await.unwrap(), 0);
    proxy.silence(true);
    // More at once than the main pool has connections (16): each is given up on, and the
    // ones that waited for a connection are not held behind the silent ones either.
    let reads: Vec<_> = (0..24)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.task_open_count().await })
        })
        .collect();
    for r in reads {
        unavailable(r.await.unwrap());
    }
    // A write on the pool, a transaction, and a batch statement (its own connections).
    unavailable(store.task_heartbeat("t", "w", 1).await);
    unavailable(store.begin().await.map(|_| ()));
    let item = crate::Created {
        task_id: "t".into(),
        instance_id: "i".into(),
        firewall_version: -1,
        owner: "w".into(),
    };
    unavailable(store.task_finish_created("done", 1, &[item]).await);
    // A statement inside a transaction begun before the silence.
    proxy.silence(false);
    let mut tx = store.begin().await.unwrap();
    proxy.silence(true);
    unavailable(tx.task_params("t", "{}").await);
    drop(tx);
    // The database answers again: so does the store, through new connections. (A longer
    // bound now: sixteen new connections on a loaded machine take a while; connections
    // left waiting on the silence would still fail this.)
    proxy.silence(false);
    store.set_statement_bound(Duration::from_secs(10));
    let again: Vec<_> = (0..24)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.task_open_count().await })
        })
        .collect();
    for r in again {
        assert_eq!(r.await.unwrap().unwrap(), 0);
    }
    assert!(!store.task_heartbeat("t", "w", 1).await.unwrap());
    let mut tx = store.begin().await.unwrap();
    tx.task_params("t", "{}").await.unwrap();
    tx.commit().await.unwrap();
}

/// A connection that goes back to the pool inside a transaction block (a BEGIN given up on
/// after the server ran it: sqlx 0.8.6 does not know it began) is closed, never handed to
/// the next user, whose writes would run inside that transaction.
#[tokio::test]
async fn a_connection_left_inside_a_transaction_is_not_reused() {
    let Ok(base) = std::env::var("LOBSTER_TEST_POSTGRES_URL") else {
        return;
    };
    let store = Store::connect_uncached(&fresh_pg_schema(&base).await)
        .await
        .unwrap();
    let pool = store.read_pool().clone();
    let alive = |pid: i32| {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(store.reader())
    };
    // A connection used as usual goes back to the pool and stays open.
    let mut c = pool.acquire().await.unwrap();
    let kept: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *c)
        .await
        .unwrap();
    drop(c);
    soon("a healthy connection went back to the pool", async {
        while pool.num_idle() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        alive(kept).await.unwrap(),
        1,
        "a healthy connection was closed"
    );
    // One left inside a transaction block is closed: the server ends its backend.
    let mut c = pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *c)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut *c).await.unwrap();
    drop(c);
    soon(
        "the connection left inside a transaction was closed",
        async {
            while alive(pid).await.unwrap() != 0 {
                tokio::task::yield_now().await;
            }
        },
    )
    .await;
}

/// `f`, which must end within 30 s.
async fn soon(what: &str, f: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("never: {what}"))
}

#[test]
fn urls_are_rewritten_through_the_proxy() {
    let url = "postgres://postgres@127.0.0.1:5432/test?options=x";
    assert_eq!(
        through(url, 9),
        "postgres://postgres@127.0.0.1:9/test?options=x"
    );
    assert_eq!(host_port(url), "127.0.0.1:5432");
    assert_eq!(host_port("postgres://db/x"), "db:5432");
}
