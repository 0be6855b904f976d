//! The two PostgreSQL tasks behind the read cache (see `cache`): one listens for other
//! servers' invalidations and hellos, one says this server's hellos and announces its
//! invalidations (while another server listens).

use crate::cache::{Cache, HELLO_EVERY};
use crate::db_err;
use lobster_core::Error;
use sqlx::postgres::PgListener;
use sqlx::{AnyConnection, AnyPool, Connection, Executor};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Stops the tasks when the last clone of the store that started them is dropped (or
/// `Store::close` is called).
pub(crate) struct Stop(watch::Sender<bool>);

impl Stop {
    pub(crate) fn now(&self) {
        self.0.send_replace(true);
    }
}

/// The channel is per schema: test runs (and deployments) sharing a database but not a
/// schema do not hear each other.
async fn channel(pool: &AnyPool) -> Result<String, Error> {
    let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(pool)
        .await
        .map_err(db_err)?;
    Ok(channel_for(&schema))
}

/// `lobster_cache:<schema>`, or for a schema whose name would make it longer than the 63
/// bytes PostgreSQL allows a channel, `lobster_cache:` and a digest of the name: `LISTEN`
/// would cut the long name short while `pg_notify` refuses it, so the cache would come on
/// and hear nothing, and every key revocation (which announces) would fail.
fn channel_for(schema: &str) -> String {
    let plain = format!("lobster_cache:{schema}");
    if plain.len() <= 63 {
        return plain;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(schema.as_bytes());
    format!("lobster_cache:{}", lobster_core::ids::hex(&digest[..16]))
}

/// Starts announcing and, when `listen_too`, listening (a store without a listening connection
/// keeps its cache off for good: one for tools that read beside the servers); returns their
/// stop and the channel.
pub(crate) async fn start(
    url: &str,
    pool: &AnyPool,
    cache: Arc<Cache>,
    listen_too: bool,
) -> Result<(Stop, String), Error> {
    let channel = channel(pool).await?;
    let (tx, rx) = watch::channel(false);
    if listen_too {
        tokio::spawn(listen(
            url.to_string(),
            channel.clone(),
            cache.clone(),
            rx.clone(),
        ));
    }
    tokio::spawn(announce(url.to_string(), channel.clone(), cache, rx));
    Ok((Stop(tx), channel))
}

/// Resolves when the store is stopped or dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn listen(url: String, channel: String, cache: Arc<Cache>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = listen_once(&url, &channel, &cache) => {}
            _ = stopped(&mut stop) => return,
        }
        // The connection is gone: nothing may be served from memory until it is back.
        cache.switch_off();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Listens until the connection fails.
async fn listen_once(url: &str, channel: &str, cache: &Cache) {
    let mut listener = match PgListener::connect(url).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("read cache: cannot connect to listen: {e}");
            return;
        }
    };
    if let Err(e) = listener.listen(channel).await {
        tracing::warn!("read cache: LISTEN failed: {e}");
        return;
    }
    // Everything committed before LISTEN took effect is in the database: the cache starts
    // from empty, once the others have heard this server's hello (`Cache::listening`).
    cache.listening();
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => cache.receive(n.payload()),
            Ok(None) => {
                tracing::warn!("read cache: listening connection lost");
                return;
            }
            Err(e) => {
                tracing::warn!("read cache: listening connection failed: {e}");
                return;
            }
        }
    }
}

/// Announces on a connection of its own whose commits do not wait for the disk: a
/// notification needs no durability (after a crash there is nothing cached to invalidate),
/// and a synchronous commit would cost every announcement a WAL flush, competing with the
/// writes it announces.
async fn announce(
    url: String,
    channel: String,
    cache: Arc<Cache>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn: Option<AnyConnection> = None;
    let mut hellos = tokio::time::interval(HELLO_EVERY);
    hellos.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hello = tokio::select! {
            _ = cache.outbox_ready.notified() => false,
            _ = cache.hello_now.notified() => true,
            _ = hellos.tick() => true,
            _ = stopped(&mut stop) => return,
        };
        if hello {
            say_hello(&mut conn, &url, &channel, &cache).await;
        }
        // Whatever queued while the last batch was being sent goes out together, unless no
        // other server listens (see `Cache::alone`).
        let alone = cache.alone();
        for (payload, n) in cache.take_outbox() {
            if alone {
                cache.unsent.fetch_add(n, Ordering::AcqRel);
            } else if let Err(e) = send(&mut conn, &url, &channel, &payload).await {
                // Other servers' entries for these rows now expire by TTL instead.
                tracing::warn!("read cache: cannot announce invalidations: {e}");
                conn = None;
            } else {
                cache.sent.fetch_add(1, Ordering::AcqRel);
            }
            cache.announced(n);
        }
    }
}

/// Tells the others this server listens; after the first hello of a listening connection,
/// its cache comes on once they have had `GRACE` to hear it.
async fn say_hello(conn: &mut Option<AnyConnection>, url: &str, channel: &str, cache: &Arc<Cache>) {
    let Some((payload, generation)) = cache.hello() else {
        return;
    };
    if let Err(e) = send(conn, url, channel, &payload).await {
        // The cache stays off (or others stop announcing to it, bounded by TTL).
        tracing::warn!("read cache: cannot say hello: {e}");
        *conn = None;
        return;
    }
    if let Some(grace) = cache.said_hello(generation) {
        let cache = cache.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            cache.switch_on(generation);
        });
    }
}

async fn send(
    conn: &mut Option<AnyConnection>,
    url: &str,
    channel: &str,
    payload: &str,
) -> Result<(), sqlx::Error> {
    if conn.is_none() {
        let mut c = AnyConnection::connect(url).await?;
        c.execute("SET synchronous_commit = off").await?;
        *conn = Some(c);
    }
    let c = conn.as_mut().expect("connected above");
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(c)
        .await?;
    Ok(())
}

#[cfg(test)]
mod channel_tests {
    use super::channel_for;

    #[test]
    fn a_channel_fits_postgres_limit_whatever_the_schema() {
        assert_eq!(channel_for("public"), "lobster_cache:public");
        let long = "s".repeat(60);
        let c = channel_for(&long);
        assert!(c.len() <= 63 && c.starts_with("lobster_cache:"), "{c}");
        assert_ne!(
            c,
            channel_for(&"s".repeat(61)),
            "distinct schemas, distinct channels"
        );
        let wide = "é".repeat(30); // 60 bytes
        assert!(channel_for(&wide).len() <= 63);
    }
}
