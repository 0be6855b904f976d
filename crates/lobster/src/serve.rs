//! `lobster serve`: opens the store, syncs the fleet, starts the task workers and the HTTP
//! server, and shuts both down gracefully on SIGINT/SIGTERM.

use crate::config::Config;
use lobster_app::App;
use lobster_core::clock::{system_clock, SharedClock};
use lobster_core::instance::PowerStatus;
use lobster_driver::sim::{SimBackup, SimDriver};
use lobster_driver::timed::Timed;
use lobster_driver::Hypervisor;
use lobster_store::Store;
use std::sync::Arc;
use tokio::sync::watch;

/// The sim driver. An in-memory sim starts with the VMs and backups the database says exist,
/// as real hosts would still hold them; a `state_file` sim has kept its own.
async fn sim_driver(
    cfg: &Config,
    clock: SharedClock,
) -> Result<(Arc<App>, Arc<SimDriver>), String> {
    let sim = Arc::new(SimDriver::new(cfg.sim.clone()));
    let app = build(cfg, sim.clone(), clock).await?;
    if sim.is_durable() {
        return Ok((app, sim));
    }
    for i in app
        .store()
        .instance_all()
        .await
        .map_err(|e| e.to_string())?
    {
        if matches!(i.status.as_str(), "rented" | "terminating") {
            let power = PowerStatus::parse(&i.power_status).unwrap_or(PowerStatus::Stopped);
            sim.adopt(&i.host_id, lobster_engine::vm_spec(&i), power);
        }
    }
    for b in app.store().backup_all().await.map_err(|e| e.to_string())? {
        if matches!(b.status.as_str(), "available" | "deleting") {
            let backup = SimBackup {
                storage: b.storage,
                vm: b.instance_id,
                size_bytes: b.size_bytes as u64,
            };
            sim.adopt_backup(&b.volid, backup);
        }
    }
    Ok((app, sim))
}

/// Store, driver and app for `cfg`, without starting anything. Every driver call, the
/// engine's and the API's, is bounded by the configured limits.
pub async fn build(
    cfg: &Config,
    driver: Arc<dyn Hypervisor>,
    clock: SharedClock,
) -> Result<Arc<App>, String> {
    cfg.prepare_storage()?;
    let driver: Arc<dyn Hypervisor> = Arc::new(Timed::new(driver, cfg.driver_limits));
    let store = Store::connect(&cfg.database_url)
        .await
        .map_err(|e| e.to_string())?;
    let app = App::new(store, driver, cfg.fleet.clone(), clock, cfg.engine.clone())
        .await
        .map_err(|e| e.to_string())?;
    app.set_rate_limit(cfg.rate_limit_per_minute);
    Ok(app)
}

pub async fn run(cfg: Config) -> Result<(), String> {
    // The port and the signal handlers first: a server that cannot listen (a port taken, an
    // address mistyped) stops before it syncs the fleet or claims a task. Its workers would
    // otherwise have claimed other servers' tasks (an attempt each) and been cut off as the
    // process exited, leaving the leases to run out.
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Served from now on: 503 until the app is ready, then the API (`lobster_api::starting`).
    let ready = Arc::new(std::sync::OnceLock::new());
    let front = lobster_api::starting(Arc::clone(&ready));
    let stop = shutdown_signal();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, front)
            .with_graceful_shutdown(stop)
            .await
    });
    say_err(&format!(
        "lobster starting on http://{addr}: opening the database and syncing the fleet \
         (requests are answered 503 until it is ready)\n"
    ));
    let app = match cfg.driver.as_str() {
        "sim" => sim_driver(&cfg, system_clock()).await?.0,
        other => return Err(format!("unknown driver {other:?}: this build has `sim`")),
    };
    app.fleet_sync().await.map_err(|e| e.to_string())?;
    let bootstrap = std::env::var("LOBSTER_BOOTSTRAP_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    if let Some(key) = &bootstrap {
        app.bootstrap_key(key)
            .await
            .map_err(|e| format!("LOBSTER_BOOTSTRAP_KEY: {e}"))?;
    }
    if server.is_finished() {
        // Told to stop while it started: nothing was claimed, nothing to hand back.
        let served = (&mut server).await.map_err(|e| e.to_string())?;
        served.map_err(|e| e.to_string())?;
        app.store().close().await;
        say("lobster stopped\n");
        return Ok(());
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    // Measured before the first claim (a failed measure leaves claims on: the database
    // being away stops them anyway, and the watch measures again).
    if let Err(e) = app.engine().check_clock().await {
        tracing::warn!("measuring the clock against the database's: {e}");
    }
    let mut workers = app.engine().spawn(stop_rx.clone());
    workers.push(spawn_scheduler(
        Arc::clone(&app),
        cfg.scheduler_seconds,
        stop_rx.clone(),
    ));
    workers.push(spawn_stats_keeper(Arc::clone(&app), stop_rx));
    let _ = ready.set(lobster_api::router(Arc::clone(&app)));
    announce(&cfg, addr, bootstrap.is_some());
    let served = server.await.map_err(|e| e.to_string())?;
    tracing::info!("stopping task workers");
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    app.engine().release_handed().await;
    served.map_err(|e| e.to_string())?;
    app.store().close().await;
    say("lobster stopped\n");
    Ok(())
}

/// Takes due scheduled backups every `every` seconds until shutdown.
fn spawn_scheduler(
    app: Arc<App>,
    every: u64,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(every)) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = app.schedules_run_due().await {
                tracing::error!("backup scheduler: {e}");
            }
        }
    })
}

/// Keeps PostgreSQL's planner statistics within half the size of the tables they describe (see
/// `Store::stats_refresh`): looked at every second, so that a table growing by hundreds of
/// rows a second is never planned from much staler numbers. A failing look (a role that may
/// not ANALYZE, the database away) is retried ever less often, up to once a minute, so the
/// log is not a warning a second.
fn spawn_stats_keeper(
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if app.store().backend() != lobster_store::Backend::Postgres {
            return;
        }
        let mut wait = STATS_EVERY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            let looked = app.store().stats_refresh().await;
            match &looked {
                Ok(t) if !t.is_empty() => tracing::debug!("analyzed {}", t.join(", ")),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    "planner statistics (next look in {:?}): {e}",
                    stats_wait(wait, false)
                ),
            }
            wait = stats_wait(wait, looked.is_ok());
        }
    })
}

const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const STATS_AT_MOST: std::time::Duration = std::time::Duration::from_secs(60);

/// The wait before the stats keeper's next look: doubled after a failure, up to a minute;
/// back to a second after a success.
fn stats_wait(wait: std::time::Duration, ok: bool) -> std::time::Duration {
    if ok {
        STATS_EVERY
    } else {
        (wait * 2).min(STATS_AT_MOST)
    }
}

/// Tells the operator where to look. Written with errors ignored: a server whose stdout was
/// closed (a supervisor that read the first line and left) must keep serving, not panic.
fn announce(cfg: &Config, addr: std::net::SocketAddr, bootstrapped: bool) {
    let db = if cfg.database_url.starts_with("sqlite:") {
        cfg.database_url.clone()
    } else {
        "postgres".into()
    };
    let mut text = format!(
        "lobster listening on http://{addr} (driver {}, database {db})\nAPI docs: http://{addr}/docs\n",
        cfg.driver
    );
    if bootstrapped {
        text.push_str("LOBSTER_BOOTSTRAP_KEY is an owner+staff key of account `default`.\n");
    } else {
        let at = admin_target(cfg);
        text.push_str(&format!(
            "Get an API key:\n  lobster admin {at} account create acme\n  \
             lobster admin {at} key create --account acme --role owner\n"
        ));
    }
    say(&text);
}

/// How `lobster admin` reaches this server's database: its data directory when the database
/// is the one there, else the database's URL (a password in it shown as `***`).
fn admin_target(cfg: &Config) -> String {
    let dd = cfg.data_dir.display();
    if cfg.database_url == format!("sqlite://{dd}/lobster.db") {
        return format!("--data-dir {dd}");
    }
    format!("--database-url '{}'", redacted(&cfg.database_url))
}

/// `url` with the password of its user part, if any, replaced by `***`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.split_once('@') {
        Some((auth, host)) if !auth.contains('/') => (auth, host),
        _ => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// A line for the operator on stderr (the log's stream; stdout's first line stays the
/// banner of a server that is ready), written with errors ignored as `say` is.
fn say_err(text: &str) {
    use std::io::Write;
    let mut out = std::io::stderr().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: the banner goes out before `axum::serve` polls it, and a
/// SIGTERM in between used to kill the process outright instead of stopping it gracefully.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(int) => {},
            _ = wait(term) => {},
        }
        tracing::info!("shutdown signal received");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_keeper_backs_off_on_failure_and_recovers_on_success() {
        let mut wait = STATS_EVERY;
        let mut waits = vec![];
        for _ in 0..8 {
            wait = stats_wait(wait, false);
            waits.push(wait.as_secs());
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(stats_wait(wait, true), STATS_EVERY);
    }

    /// The banner's admin commands reach the server's own database: its data directory's
    /// file, else its URL without the password.
    #[test]
    fn the_banner_names_the_database_the_server_uses() {
        let mut cfg = crate::config::load(&Default::default(), None, None).unwrap();
        assert_eq!(admin_target(&cfg), "--data-dir lobster-data");
        cfg.database_url = "sqlite:///srv/other.db".into();
        assert_eq!(
            admin_target(&cfg),
            "--database-url 'sqlite:///srv/other.db'"
        );
        cfg.database_url = "postgres://lob:s3cret@db:5432/lobster?sslmode=require".into();
        assert_eq!(
            admin_target(&cfg),
            "--database-url 'postgres://lob:***@db:5432/lobster?sslmode=require'"
        );
        assert_eq!(redacted("postgres://lob@db/x"), "postgres://lob@db/x");
    }
}
