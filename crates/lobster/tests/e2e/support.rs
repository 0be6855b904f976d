//! `TestApp::spawn`: the real router on port 0 with a temporary SQLite file (or a fresh
//! PostgreSQL schema when `LOBSTER_TEST_POSTGRES_URL` is set), the `sim` driver with no
//! latency, and a manual clock. No background workers run: tests drain the task queue
//! explicitly, so every intermediate state can be observed deterministically.

use lobster_app::admin::NewKey;
use lobster_app::App;
use lobster_core::clock::{Clock, ManualClock, SharedClock, SystemClock};
use lobster_core::fleet::Fleet;
use lobster_driver::sim::{SimConfig, SimDriver};
use lobster_driver::timed::{CallLimits, Timed};
use lobster_engine::{Engine, EngineConfig};
use lobster_store::Store;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;

pub const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxvYnN0ZXI= test@lobster";

pub struct TestApp {
    pub base: String,
    pub app: Arc<App>,
    pub sim: Arc<SimDriver>,
    pub clock: Arc<ManualClock>,
    pub fleet: Fleet,
    pub url: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub fn engine_config() -> EngineConfig {
    EngineConfig {
        workers: 1,
        batch: 1,
        lease_ms: 30_000,
        poll_ms: 50,
        max_attempts: 3,
        handoff: 2,
        // The tests move a manual clock away from the database's.
        max_clock_skew_ms: None,
    }
}

async fn database_url(dir: &tempfile::TempDir) -> String {
    match std::env::var("LOBSTER_TEST_POSTGRES_URL") {
        Ok(base) if !base.is_empty() => fresh_pg_schema(&base).await,
        _ => format!("sqlite://{}/lobster.db", dir.path().display()),
    }
}

/// A new, uniquely named schema; the returned URL's connections use it.
pub async fn fresh_pg_schema(base: &str) -> String {
    sqlx::any::install_default_drivers();
    let schema = format!(
        "e2e_{}",
        &lobster_core::ids::new_uuid().replace('-', "")[..16]
    );
    let pool = sqlx::AnyPool::connect(base).await.expect("postgres");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .expect("schema");
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Fleet::demo(), engine_config()).await
    }

    pub async fn spawn_with(fleet: Fleet, engine: EngineConfig) -> TestApp {
        Self::spawn_limited(fleet, engine, CallLimits::default()).await
    }

    /// With driver calls bounded by `limits` (as `lobster serve` bounds them).
    pub async fn spawn_limited(fleet: Fleet, engine: EngineConfig, limits: CallLimits) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = database_url(&dir).await;
        Self::spawn_at(dir, &url, (fleet, engine), limits).await
    }

    /// Always on SQLite, whatever `LOBSTER_TEST_POSTGRES_URL` says.
    pub async fn spawn_sqlite() -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/lobster.db", dir.path().display());
        let setup = (Fleet::demo(), engine_config());
        Self::spawn_at(dir, &url, setup, CallLimits::default()).await
    }

    async fn spawn_at(
        dir: tempfile::TempDir,
        url: &str,
        (fleet, engine): (Fleet, EngineConfig),
        limits: CallLimits,
    ) -> TestApp {
        let store = Store::connect(url).await.expect("store");
        let sim = Arc::new(SimDriver::new(SimConfig::instant()));
        let clock = ManualClock::new(SystemClock.now());
        let shared: SharedClock = clock.clone();
        let driver = Arc::new(Timed::new(sim.clone(), limits));
        let app = App::new(store, driver, fleet.clone(), shared, engine)
            .await
            .expect("app");
        app.fleet_sync().await.expect("fleet sync");
        let base = serve(&app).await;
        TestApp {
            base,
            app,
            sim,
            clock,
            fleet,
            url: url.to_string(),
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// Launches an instance of type `ty` for `t` and runs its create task: a running
    /// instance to act on. Its id.
    pub async fn running(&self, t: &Tenant, ty: &str) -> String {
        let v = t.launch(ty, "us-east-1").await;
        self.drain().await;
        v["vm_uuid"].as_str().unwrap().to_string()
    }

    /// Runs every due task to completion.
    pub async fn drain(&self) -> usize {
        self.app.engine().run_until_idle().await.expect("drain")
    }

    /// A second server's app: its own connections to the same database, the same hosts.
    pub async fn second_app(&self) -> Arc<App> {
        let store = Store::connect(&self.url).await.expect("store");
        let clock: SharedClock = self.clock.clone();
        App::new(
            store,
            self.sim.clone(),
            self.fleet.clone(),
            clock,
            engine_config(),
        )
        .await
        .expect("app")
    }

    /// A second server answering HTTP: its app (own connections to the same database) and
    /// the base URL it serves on.
    pub async fn second_server(&self) -> (Arc<App>, String) {
        let app = self.second_app().await;
        let base = serve(&app).await;
        (app, base)
    }

    /// Another worker on the same database, as a second process would have.
    pub fn second_engine(&self) -> Arc<Engine> {
        self.engine_with_fleet(self.fleet.clone())
    }

    /// A worker whose process was configured with another fleet.
    pub fn engine_with_fleet(&self, fleet: Fleet) -> Arc<Engine> {
        let clock: SharedClock = self.clock.clone();
        Engine::new(
            self.app.store().clone(),
            self.sim.clone(),
            Arc::new(fleet),
            clock,
            engine_config(),
            Arc::new(tokio::sync::Notify::new()),
        )
    }

    /// A new account with an owner key.
    pub async fn tenant(&self, name: &str) -> Tenant {
        self.app.account_create(name).await.expect("account");
        self.key(name, "owner", false, None).await
    }

    /// An owner key with staff rights (the operator).
    pub async fn staff(&self, name: &str) -> Tenant {
        self.app.account_create(name).await.expect("account");
        self.key(name, "owner", true, None).await
    }

    pub async fn key(&self, account: &str, role: &str, staff: bool, team: Option<&str>) -> Tenant {
        let k = NewKey {
            account: account.into(),
            role: Some(role.into()),
            staff,
            team: team.map(Into::into),
            expires_in_days: None,
            name: None,
        };
        let (row, secret) = self.app.key_create(k).await.expect("key");
        Tenant {
            key: secret,
            key_id: row.id,
            base: self.base.clone(),
            client: self.client.clone(),
            clock: self.clock.clone(),
        }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Response {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            r = r.header("X-API-Key", k);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        r.send().await.expect("request")
    }

    /// Free capacity of a host, from the database.
    pub async fn host_free(&self, host: &str) -> lobster_core::capacity::Resources {
        let hosts = self.app.store().host_list().await.unwrap();
        hosts.iter().find(|h| h.id == host).expect("host").free()
    }
}

#[derive(Clone)]
pub struct Tenant {
    pub key: String,
    pub key_id: String,
    base: String,
    client: reqwest::Client,
    clock: Arc<ManualClock>,
}

impl Tenant {
    /// The same key, sent to the server at `base`.
    pub fn through(&self, base: &str) -> Tenant {
        Tenant {
            key: self.key.clone(),
            key_id: self.key_id.clone(),
            base: base.to_string(),
            client: self.client.clone(),
            clock: self.clock.clone(),
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", &self.key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.expect("request")
    }

    /// A GET with extra request headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("X-API-Key", &self.key);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.expect("request")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Response {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.call(Method::DELETE, path, None).await
    }

    /// GET and decode, asserting the status.
    pub async fn get_json(&self, path: &str, status: StatusCode) -> Value {
        let r = self.get(path).await;
        expect(r, status).await
    }

    /// Launches a standard instance and returns the response (asserting 200). The clock moves
    /// one second so that "newest first" is well defined.
    pub async fn launch(&self, instance_type: &str, region: &str) -> Value {
        let r = self
            .launch_body(
                json!({ "region": region, "instance_type": instance_type, "ssh_key": SSH_KEY }),
            )
            .await;
        expect(r, StatusCode::OK).await
    }

    pub async fn launch_body(&self, body: Value) -> Response {
        self.clock.advance_ms(1000);
        self.post("/api/v1/instances/launch-instance", body).await
    }

    pub async fn instance(&self, id: &str) -> Value {
        self.get_json(&format!("/api/v1/instances/{id}"), StatusCode::OK)
            .await
    }
}

/// Asserts the status (showing the body when it differs) and decodes the JSON body.
/// Serves `app`'s router on a port of its own; its base URL.
async fn serve(app: &Arc<App>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let router = lobster_api::router(app.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    format!("http://{addr}")
}

pub async fn expect(r: Response, status: StatusCode) -> Value {
    let got = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(got, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A fleet with one small CPU host, for capacity tests: room for exactly `slots` instances of
/// `v1_cpu_small` (2 cores, 8 GB, 100 GB).
pub fn tiny_fleet(slots: i64) -> Fleet {
    tiny_fleet_of(&[slots])
}

/// One region whose hosts `tiny-1`, `tiny-2`, … have room for the given numbers of
/// `v1_cpu_small` instances.
pub fn tiny_fleet_of(slots: &[i64]) -> Fleet {
    let mut f = Fleet::demo();
    f.regions.truncate(1);
    f.hosts = slots
        .iter()
        .enumerate()
        .map(|(i, &slots)| lobster_core::fleet::Host {
            id: format!("tiny-{}", i + 1),
            region: f.regions[0].name.clone(),
            cores: 2 * slots,
            memory_gb: 8 * slots,
            disk_gb: 100 * slots,
            gpus: 0,
            gpu_model: None,
            uri: None,
            hostname: None,
        })
        .collect();
    f
}

/// Waits (polling a condition, not for a time) until `f` holds.
pub async fn until(what: &str, f: impl Fn() -> bool) {
    let wait = async {
        while !f() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("never: {what}"));
}

/// A backup of instance `id` taken by `t` and run to its end; its volid.
pub async fn backup(app: &TestApp, t: &Tenant, id: &str) -> String {
    let b = expect(
        t.post(&format!("/api/v1/instances/{id}/backup"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    app.clock.advance_ms(1000);
    app.drain().await;
    b["volid"].as_str().unwrap().to_string()
}
