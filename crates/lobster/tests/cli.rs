//! The binary as an operator uses it: `lobster serve` in one process, `lobster admin` in
//! others on the same data directory while it runs, then a graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_lobster");

fn admin(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("admin")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("LOBSTER_DATABASE_URL")
        .env_remove("LOBSTER_CONFIG")
        .output()
        .expect("run lobster admin");
    assert!(
        out.status.success(),
        "admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Server {
    child: Child,
    base: String,
    lines: std::sync::mpsc::Receiver<String>,
}

fn serve(dir: &std::path::Path, bootstrap: Option<&str>) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("LOBSTER_CONFIG")
        .env_remove("LOBSTER_BOOTSTRAP_KEY");
    if let Some(k) = bootstrap {
        cmd.env("LOBSTER_BOOTSTRAP_KEY", k);
    }
    start(cmd)
}

fn start(mut cmd: Command) -> Server {
    cmd.env_remove("LOBSTER_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv().expect("serve printed nothing");
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    Server {
        child,
        base,
        lines: rx,
    }
}

impl Server {
    fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve exited with {status}");
        // Everything it printed: the reader ends when the child's stdout closes.
        self.lines.iter().collect()
    }
}

async fn status(base: &str, path: &str, key: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn operator_commands_work_beside_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let acc = admin(dir.path(), &["account", "create", "acme"]);
    assert!(acc.trim().starts_with("acc_"));
    let server = serve(dir.path(), None);

    // Key created while the server runs; the secret is alone on the last line.
    let out = admin(
        dir.path(),
        &["key", "create", "--account", "acme", "--role", "owner"],
    );
    let key = out.lines().last().unwrap().trim().to_string();
    assert!(key.starts_with("lob_"));
    assert_eq!(
        status(&server.base, "/api/v1/instances/available", &key).await,
        200
    );

    let listed = admin(dir.path(), &["account", "list"]);
    assert!(listed.contains("acme"));
    admin(dir.path(), &["team", "create", "--account", "acme", "ml"]);
    let team_key = admin(
        dir.path(),
        &[
            "key",
            "create",
            "--account",
            "acme",
            "--role",
            "viewer",
            "--team",
            "ml",
            "--expires-in-days",
            "30",
        ],
    );
    let team_key = team_key.lines().last().unwrap().trim().to_string();
    assert_eq!(
        status(&server.base, "/api/v1/instances", &team_key).await,
        200
    );

    let keys = admin(dir.path(), &["key", "list", "--account", "acme"]);
    assert_eq!(keys.lines().count(), 2);
    let key_id = keys
        .lines()
        .find(|l| l.contains("\towner\t"))
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    admin(dir.path(), &["key", "revoke", &key_id]);
    assert_eq!(status(&server.base, "/api/v1/instances", &key).await, 401);

    let rest = server.stop();
    assert!(
        rest.iter().any(|l| l.contains("lobster stopped")),
        "{rest:?}"
    );
}

#[tokio::test]
async fn bootstrap_key_and_start_banner() {
    let dir = tempfile::tempdir().unwrap();
    let key = "script-bootstrap-key-0123456789";
    let server = serve(dir.path(), Some(key));
    assert_eq!(status(&server.base, "/api/v1/resources", key).await, 200);
    let rest = server.stop();
    assert!(rest.iter().any(|l| l.contains("/docs")));
    // Restarting with the same key is fine (idempotent bootstrap), and the data persisted.
    let server = serve(dir.path(), Some(key));
    assert_eq!(status(&server.base, "/api/v1/instances", key).await, 200);
    server.stop();
    let accounts = admin(dir.path(), &["account", "list"]);
    assert_eq!(
        accounts.lines().filter(|l| l.contains("default")).count(),
        1
    );
}

/// A server that cannot listen stops before it touches anything: no database made, no fleet
/// synced, no task claimed (its workers used to start first and claim other servers' tasks).
#[test]
fn a_server_that_cannot_listen_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(dir.path())
        .env_remove("LOBSTER_CONFIG")
        .env_remove("LOBSTER_DATABASE_URL")
        .env_remove("LOBSTER_BOOTSTRAP_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(!dir.path().join("lobster.db").exists());
}

#[test]
fn admin_errors_are_reported_and_exit_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["admin", "--data-dir"])
        .arg(dir.path())
        .args(["key", "create", "--account", "ghost"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ghost"));
    let out = Command::new(BIN)
        .args(["admin", "--data-dir"])
        .arg(dir.path())
        .args(["account", "create", "acme"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(BIN)
        .args(["admin", "--data-dir"])
        .arg(dir.path())
        .args(["key", "create", "--account", "acme", "--role", "root"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("role"));
}

async fn call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut r = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .header("X-API-Key", key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// Polls (for a minute at most) until the task is final, as a client would.
async fn wait_task(base: &str, key: &str, task: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let t = call(
            base,
            reqwest::Method::GET,
            &format!("/api/v1/tasks/{task}"),
            key,
            None,
        )
        .await;
        let s = t["status"].as_str().unwrap().to_string();
        if s == "COMPLETED" || s == "FAILED" {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("task {task} did not finish");
}

#[tokio::test]
async fn instances_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fast.toml"),
        "[sim.delays_ms]\ncreate = 0\nstart = 0\nshutdown = 0\nstop = 0\nreboot = 0\ndestroy = 0\n",
    )
    .unwrap();
    let key = "restart-test-key-0123456789";
    let server = serve_with_config(dir.path(), key);
    let body = serde_json::json!({"region": "us-east-1", "instance_type": "v1_cpu_small",
        "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 me@x"});
    let l = call(
        &server.base,
        reqwest::Method::POST,
        "/api/v1/instances/launch-instance",
        key,
        Some(body),
    )
    .await;
    let id = l["vm_uuid"].as_str().unwrap().to_string();
    assert_eq!(
        wait_task(&server.base, key, l["task_id"].as_str().unwrap()).await,
        "COMPLETED"
    );
    server.stop();

    let server = serve_with_config(dir.path(), key);
    let i = call(
        &server.base,
        reqwest::Method::GET,
        &format!("/api/v1/instances/{id}"),
        key,
        None,
    )
    .await;
    assert_eq!(
        (i["status"].as_str(), i["power_status"].as_str()),
        (Some("rented"), Some("running"))
    );
    // The sim host still has the VM, so power operations work after the restart.
    let t = call(
        &server.base,
        reqwest::Method::POST,
        &format!("/api/v1/instances/{id}/reboot"),
        key,
        None,
    )
    .await;
    assert_eq!(
        wait_task(&server.base, key, t["task_id"].as_str().unwrap()).await,
        "COMPLETED"
    );
    server.stop();
}

fn serve_with_config(dir: &std::path::Path, key: &str) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .arg("--config")
        .arg(dir.join("fast.toml"))
        .env("LOBSTER_BOOTSTRAP_KEY", key);
    start(cmd)
}

/// A new, uniquely named PostgreSQL schema; the returned URL's connections use it.
async fn fresh_pg_schema(base: &str) -> String {
    sqlx::any::install_default_drivers();
    let schema = format!(
        "t_{}",
        lobster_core::ids::hex(&std::process::id().to_le_bytes())
    );
    let schema = format!(
        "{schema}{}",
        &lobster_core::ids::new_uuid().replace('-', "")[..8]
    );
    let pool = sqlx::AnyPool::connect(base).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

#[tokio::test]
async fn migrate_command_moves_a_data_dir_into_postgres() {
    let Ok(pg) = std::env::var("LOBSTER_TEST_POSTGRES_URL") else {
        eprintln!("skipped: LOBSTER_TEST_POSTGRES_URL is not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    admin(dir.path(), &["account", "create", "acme"]);
    let key = admin(
        dir.path(),
        &["key", "create", "--account", "acme", "--role", "owner"],
    );
    let key = key.lines().last().unwrap().trim().to_string();
    let url = fresh_pg_schema(&pg).await;
    let out = admin(dir.path(), &["migrate-sqlite-to-postgres", "--to", &url]);
    assert!(
        out.contains("migrated: every table's row count matches"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("accounts\tcopied 1")),
        "{out}"
    );
    // The same key works against a server on the new database.
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .env_remove("LOBSTER_CONFIG")
        .env_remove("LOBSTER_BOOTSTRAP_KEY");
    let server = start(cmd);
    assert_eq!(status(&server.base, "/api/v1/instances", &key).await, 200);
    server.stop();
    // Running it twice is refused.
    let again = Command::new(BIN)
        .args(["admin", "--data-dir"])
        .arg(dir.path())
        .args(["migrate-sqlite-to-postgres", "--to", &url])
        .output()
        .unwrap();
    assert!(!again.status.success());
}

/// A server answers from the moment it listens: while it starts (here its fleet sync waits
/// on the database, which another writer holds), every request gets 503 with `Retry-After`
/// in the Blue Lobster error shape, not a connection left waiting in the backlog; once
/// ready, the API. Its banner (stdout's first line) still comes when it is ready.
#[tokio::test]
async fn a_starting_server_answers_503_until_it_is_ready() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    admin(dir.path(), &["account", "create", "acme"]);
    let db = format!("sqlite://{}", dir.path().join("lobster.db").display());
    let mut hold = sqlx::SqliteConnection::connect(&db).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut hold)
        .await
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("LOBSTER_CONFIG")
        .env_remove("LOBSTER_DATABASE_URL")
        .env_remove("LOBSTER_BOOTSTRAP_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let starting = err
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("lobster starting on "))
        .expect("no starting line");
    std::thread::spawn(move || err.for_each(drop));
    let base = starting
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    let answer = reqwest::get(format!("{base}/api/v1/health")).await.unwrap();
    assert_eq!(answer.status().as_u16(), 503);
    assert_eq!(answer.headers()["retry-after"], "1");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "service_unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("starting"),
        "{body}"
    );

    sqlx::query("ROLLBACK").execute(&mut hold).await.unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = out.next().unwrap().unwrap();
    assert!(banner.starts_with("lobster listening on "), "{banner}");
    std::thread::spawn(move || out.for_each(drop));
    let answer = reqwest::get(format!("{base}/api/v1/health")).await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
}
