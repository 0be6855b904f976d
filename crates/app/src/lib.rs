//! The service layer: commands and queries named `<resource>_<verb>`, shared by every dialect
//! and the CLI. Authorization, business validation, one store transaction per command, and
//! tasks enqueued inside that same transaction. The app never sees HTTP types.

pub mod admin;
pub mod auth;
pub mod backups;
pub mod catalog;
pub mod console;
pub mod firewall;
pub mod health;
pub mod history;
pub mod instances;
pub mod ips;
pub mod launch;
mod rate;
pub mod schedules;
mod seen_hosts;
mod settle;
pub mod tasks;
pub mod teams;

use lobster_core::clock::SharedClock;
use lobster_core::fleet::Fleet;
use lobster_core::task::TaskKind;
use lobster_driver::Hypervisor;
use lobster_engine::{Engine, EngineConfig};
use lobster_store::group::GroupCommit;
use lobster_store::{InstanceRow, Lease, NewTask, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

pub use launch::{Credentials, CustomTarget, LaunchCustom, LaunchInstance, Launched};
pub use lobster_core::{Error, FieldError};

pub struct App {
    store: Store,
    fleet: Arc<Fleet>,
    driver: Arc<dyn Hypervisor>,
    clock: SharedClock,
    engine: Arc<Engine>,
    /// Launches waiting to be written together (see `launch`).
    launches: GroupCommit<launch::Queued, launch::Written>,
    /// The hosts launches were last planned against (see `seen_hosts`).
    seen_hosts: seen_hosts::SeenHosts,
    /// Tasks against existing instances (power, delete) waiting to be queued together.
    enqueues: GroupCommit<instances::Enqueue, instances::Enqueued>,
    batched: Arc<Batched>,
    /// The hosts as the launch batches last read or wrote them (PostgreSQL's batches).
    host_view: Arc<launch::one_statement::HostView>,
    /// Requests per API key and minute, counted across servers (see `rate`).
    rate: rate::Limiter,
}

/// Commands written in batches of two or more since start (the rest were written alone).
#[derive(Default)]
pub(crate) struct Batched {
    pub(crate) launches: AtomicU64,
    pub(crate) enqueues: AtomicU64,
    /// Turns of one launch or command that the batch's write took (PostgreSQL's statement)
    /// rather than the lone path.
    pub(crate) lone: AtomicU64,
}

/// What a turn of a write queue writes with: the store, the engine's attempt limit for new
/// tasks, and the time the turn began (the time of everything it writes).
pub(crate) struct Turn {
    pub(crate) store: Store,
    pub(crate) max_attempts: i64,
    pub(crate) now: i64,
    pub(crate) batched: Arc<Batched>,
    pub(crate) host_view: Arc<launch::one_statement::HostView>,
    /// For handing new create tasks to this process's workers (`Engine::hand_off`).
    pub(crate) engine: Arc<Engine>,
}

impl Turn {
    /// Leases for `n` new tasks, so that they go straight to this process's workers
    /// (`Engine::handoff_lease`); None: write them pending.
    pub(crate) fn lease(&self, n: usize) -> Option<Lease> {
        self.engine.handoff_lease(n)
    }

    /// After the commit: the new tasks to this process's workers when they were written
    /// under `lease`; else the workers are told to claim them.
    pub(crate) fn hand_over(&self, lease: Option<Lease>, written: Vec<(NewTask, InstanceRow)>) {
        match lease {
            Some(l) => self.engine.hand_off(
                written
                    .into_iter()
                    .map(|(t, i)| (t.leased_row(&l), i))
                    .collect(),
            ),
            None if written.is_empty() => {}
            None => self.engine.queued(),
        }
    }
}

impl App {
    /// Builds the app and its task engine (whose workers the caller may spawn).
    pub async fn new(
        store: Store,
        driver: Arc<dyn Hypervisor>,
        fleet: Fleet,
        clock: SharedClock,
        engine_cfg: EngineConfig,
    ) -> Result<Arc<App>, Error> {
        fleet
            .validate()
            .map_err(|errs| Error::Internal(format!("invalid fleet: {}", errs.join("; "))))?;
        let fleet = Arc::new(fleet);
        let wake = Arc::new(Notify::new());
        let engine = Engine::new(
            store.clone(),
            Arc::clone(&driver),
            Arc::clone(&fleet),
            Arc::clone(&clock),
            engine_cfg,
            wake,
        );
        Ok(Arc::new(App {
            store,
            fleet,
            driver,
            clock,
            engine,
            launches: GroupCommit::new("launch", launch::MOST),
            seen_hosts: Default::default(),
            enqueues: GroupCommit::new("command", instances::MOST),
            batched: Default::default(),
            host_view: Default::default(),
            rate: Default::default(),
        }))
    }

    /// Makes the database's hosts and IP pools match the configured fleet. `serve` does this on
    /// start; operator commands do not, so they never disturb a running server's fleet.
    pub async fn fleet_sync(&self) -> Result<(), Error> {
        self.store.fleet_sync(&self.fleet).await
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now().millis()
    }

    /// A task that pushes one part of an instance's configuration (firewall, addresses) to
    /// its host; written in the same transaction as the change.
    pub(crate) fn config_task(&self, kind: TaskKind, inst: &InstanceRow, now: i64) -> NewTask {
        NewTask {
            id: lobster_core::ids::new_task_id(),
            account_id: inst.account_id.clone(),
            team_id: inst.team_id.clone(),
            instance_id: Some(inst.id.clone()),
            operation: kind.operation().into(),
            params: serde_json::json!({ "vm_uuid": inst.id, "host_id": inst.host_id, "account_id": inst.account_id, "ip_address": inst.ip_address })
                .to_string(),
            message: "Queued".into(),
            max_attempts: self.engine.config().max_attempts,
            now,
        }
    }

    /// Launches waiting for their turn to be written (see `launch`), and whether a turn is
    /// being written.
    pub fn launches_waiting(&self) -> (usize, bool) {
        (self.launches.waiting(), self.launches.writing())
    }

    /// Tasks against existing instances waiting for their turn to be queued, and whether
    /// a turn is being written.
    pub fn enqueues_waiting(&self) -> (usize, bool) {
        (self.enqueues.waiting(), self.enqueues.writing())
    }

    /// Lone launches and commands written by the batch's statement since start (PostgreSQL).
    pub fn lone_batch_writes(&self) -> u64 {
        self.batched.lone.load(Ordering::Relaxed)
    }

    /// Launches written in batches of two or more since start; the rest were written alone.
    pub fn launches_batched(&self) -> u64 {
        self.batched.launches.load(Ordering::Relaxed)
    }

    /// Tasks against existing instances queued in batches of two or more since start.
    pub fn enqueues_batched(&self) -> u64 {
        self.batched.enqueues.load(Ordering::Relaxed)
    }

    /// A turn of a write queue, beginning now.
    pub(crate) fn turn(&self) -> Turn {
        Turn {
            store: self.store.clone(),
            max_attempts: self.engine.config().max_attempts,
            now: self.now(),
            batched: Arc::clone(&self.batched),
            host_view: Arc::clone(&self.host_view),
            engine: Arc::clone(&self.engine),
        }
    }

    /// Wakes one idle worker (or the next to go idle); a worker that finds a full batch
    /// wakes the next, so a burst of work wakes as many as it needs. Waking every worker
    /// for every command had all of them look for work most would not find (on PostgreSQL
    /// a claim statement each: a fifth of its time while launching).
    pub(crate) fn wake_workers(&self) {
        self.engine.queued();
    }
}
