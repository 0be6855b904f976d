//! The `sim` driver: hosts modelled in memory with finite capacity, per-operation latency and
//! failure injection (random, from a seeded generator, and scripted "fail the next N calls").
//! It backs the demo fleet and the control-plane tests.
//!
//! By default the sim's hosts live in the process's memory. With `state_file` set they live in
//! a file instead, shared by every process that names it and surviving `kill -9`, as a real
//! fleet outlives the control plane: each operation takes an exclusive lock on the file, reads
//! the world, changes it and writes it back (whole, through a rename, so it is never torn).

use crate::{ConsoleEndpoint, DriverError, DriverResult, Hypervisor, NicAddress, VmSpec, VmStats};
use async_trait::async_trait;
use lobster_core::capacity::Resources;
use lobster_core::firewall::Firewall;
use lobster_core::fleet::Host;
use lobster_core::instance::PowerStatus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Start,
    Shutdown,
    Stop,
    Reboot,
    Destroy,
    ApplyFirewall,
    SetIps,
    Backup,
    Restore,
    DeleteBackup,
    /// Reads: no latency of their own, but they can be held or made to fail.
    Stats,
    Console,
}

/// Per-operation latency in milliseconds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimDelays {
    pub create: u64,
    pub start: u64,
    pub shutdown: u64,
    pub stop: u64,
    pub reboot: u64,
    pub destroy: u64,
}

impl SimDelays {
    pub fn zero() -> Self {
        SimDelays {
            create: 0,
            start: 0,
            shutdown: 0,
            stop: 0,
            reboot: 0,
            destroy: 0,
        }
    }

    fn of(&self, op: Op) -> u64 {
        match op {
            Op::Create => self.create,
            Op::Start => self.start,
            Op::Shutdown => self.shutdown,
            Op::Stop => self.stop,
            Op::Reboot => self.reboot,
            Op::Destroy => self.destroy,
            Op::ApplyFirewall | Op::SetIps | Op::DeleteBackup => self.stop,
            Op::Backup | Op::Restore => self.create,
            Op::Stats | Op::Console => 0,
        }
    }
}

impl Default for SimDelays {
    /// Roughly what a small VM on a real host takes, scaled down so the demo feels alive.
    fn default() -> Self {
        SimDelays {
            create: 3000,
            start: 800,
            shutdown: 1500,
            stop: 200,
            reboot: 1500,
            destroy: 800,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    pub delays_ms: SimDelays,
    /// Probability (0..=1) that any call fails transiently before doing anything.
    pub failure_rate: f64,
    /// Seed for the failure generator, so a failing run can be replayed.
    pub seed: u64,
    /// Where the hosts' VMs and the backup storage live; `None` keeps them in memory.
    pub state_file: Option<PathBuf>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            delays_ms: SimDelays::default(),
            failure_rate: 0.0,
            seed: 1,
            state_file: None,
        }
    }
}

impl SimConfig {
    /// No latency, no random failures: what the test suites use.
    pub fn instant() -> Self {
        SimConfig {
            delays_ms: SimDelays::zero(),
            failure_rate: 0.0,
            seed: 1,
            state_file: None,
        }
    }
}

/// When a scripted failure strikes: before the call has any effect, or after it (the host did
/// the work but the answer was lost, as with a timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailWhen {
    Before,
    After,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimVm {
    pub spec: VmSpec,
    pub power: PowerStatus,
    pub boots: u32,
    /// The rule set the host enforces (None until one is applied).
    pub firewall: Option<Firewall>,
    /// Addresses pushed by `set_ips` (None until the first push).
    pub ips: Option<Vec<NicAddress>>,
    /// When the VM last booted, in Unix milliseconds (for uptime).
    pub booted_at: Option<u64>,
    /// The backup whose data the disk holds since the last restore.
    pub restored_from: Option<String>,
    /// How many times each operation reached this VM (`Create`, `Start`, ...): what a test
    /// reads to see that a task's work was done once.
    #[serde(default)]
    pub calls: HashMap<String, u32>,
}

impl SimVm {
    fn count(&mut self, op: Op) {
        *self.calls.entry(format!("{op:?}")).or_default() += 1;
    }
}

/// A backup on the sim's storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimBackup {
    pub storage: String,
    pub vm: String,
    pub size_bytes: u64,
}

/// What the hypervisors and their storage hold: the part of the sim that outlives a control
/// plane process.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SimWorld {
    /// host id -> vm id -> vm
    pub hosts: HashMap<String, HashMap<String, SimVm>>,
    /// volid -> backup
    pub backups: HashMap<String, SimBackup>,
    /// host id -> what its VMs hold between them: kept as VMs come and go (through
    /// `vm_insert`/`vm_remove`) so that a create does not sum every VM of its host; a host
    /// missing here is summed on first use (a world just loaded from its file).
    #[serde(skip)]
    used: HashMap<String, Resources>,
}

fn no_vm(host: &Host, vm: &str) -> DriverError {
    DriverError::Permanent(format!("sim: no VM {vm} on {}", host.id))
}

impl SimWorld {
    /// What the VMs on `host` hold between them, from the tally.
    fn used(&mut self, host: &str) -> Resources {
        if let Some(u) = self.used.get(host) {
            return *u;
        }
        let u = used_of(self, host);
        self.used.insert(host.to_string(), u);
        u
    }

    fn vm_insert(&mut self, host: &str, vm: SimVm) {
        let r = vm.spec.resources;
        let old = self
            .hosts
            .entry(host.to_string())
            .or_default()
            .insert(vm.spec.id.clone(), vm);
        if let Some(u) = self.used.get_mut(host) {
            tally(u, &r, 1);
            if let Some(old) = old {
                tally(u, &old.spec.resources, -1);
            }
        }
    }

    fn vm_remove(&mut self, host: &str, vm: &str) {
        let gone = self.hosts.get_mut(host).and_then(|h| h.remove(vm));
        if let (Some(u), Some(gone)) = (self.used.get_mut(host), gone) {
            tally(u, &gone.spec.resources, -1);
        }
    }

    fn vm(&self, host: &Host, vm: &str) -> DriverResult<&SimVm> {
        self.hosts
            .get(&host.id)
            .and_then(|h| h.get(vm))
            .ok_or_else(|| no_vm(host, vm))
    }

    fn vm_mut(&mut self, host: &Host, vm: &str) -> DriverResult<&mut SimVm> {
        self.hosts
            .get_mut(&host.id)
            .and_then(|h| h.get_mut(vm))
            .ok_or_else(|| no_vm(host, vm))
    }

    /// Reads the world from `path` (empty when the file does not exist yet).
    pub fn load(path: &Path) -> DriverResult<SimWorld> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| DriverError::Permanent(format!("sim state {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SimWorld::default()),
            Err(e) => Err(io_error(path, e)),
        }
    }

    /// Replaces `path` whole: a reader (or a process killed mid-write) never sees half a file.
    /// No fsync: the file must survive the process, not the machine.
    fn save(&self, path: &Path) -> DriverResult<()> {
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(self).expect("the sim world serializes");
        std::fs::write(&tmp, bytes).map_err(|e| io_error(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
    }
}

fn io_error(path: &Path, e: std::io::Error) -> DriverError {
    DriverError::Transient(format!("sim state {}: {e}", path.display()))
}

/// Runs `f` on tokio's blocking pool (file locks and file I/O), passing on its panic.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> DriverResult<T> + Send + 'static,
) -> DriverResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(DriverError::Transient(format!("sim state: {e}"))),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct SimState {
    world: SimWorld,
    scripted: HashMap<Op, Vec<(FailWhen, bool)>>,
    /// Ops held by `hold`: the next call waits, after its latency, until the hold is dropped.
    held: HashMap<Op, tokio::sync::watch::Receiver<bool>>,
    /// Calls that reached a hold, since start.
    held_calls: usize,
}

/// Holds the calls of one op until dropped (`SimDriver::hold`).
pub struct SimHold {
    _open: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug)]
pub struct SimDriver {
    cfg: SimConfig,
    rng: Mutex<StdRng>,
    state: Mutex<SimState>,
    /// One change of a `state_file` world at a time in this process: so that at most one
    /// blocking thread per process waits for the file's lock (a pool of waiting threads
    /// could fill tokio's blocking pool and leave the holder's write no thread to run on).
    turn: tokio::sync::Mutex<()>,
}

impl SimDriver {
    pub fn new(cfg: SimConfig) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed);
        SimDriver {
            cfg,
            rng: Mutex::new(rng),
            state: Mutex::new(SimState::default()),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Makes the next `n` calls of `op` fail; `transient` decides whether retrying may help.
    pub fn fail_next(&self, op: Op, n: usize, when: FailWhen, transient: bool) {
        let mut st = self.state.lock().unwrap();
        st.scripted
            .entry(op)
            .or_default()
            .extend(std::iter::repeat_n((when, transient), n));
    }

    /// Holds the next call of `op` (after its latency, before it has any effect) until the
    /// returned hold is dropped: a step caught in flight, for tests (a host that hangs, or
    /// answers one call late). Later calls pass.
    pub fn hold(&self, op: Op) -> SimHold {
        let (open, closed) = tokio::sync::watch::channel(false);
        self.state.lock().unwrap().held.insert(op, closed);
        SimHold { _open: open }
    }

    /// Calls that reached a hold (`hold`) since start.
    pub fn held_calls(&self) -> usize {
        self.state.lock().unwrap().held_calls
    }

    /// Re-creates a VM the control plane knows about, as a real host would still have it after
    /// the control plane restarts (the sim keeps its hosts in memory only).
    /// (Only for the in-memory world; a `state_file` world keeps its VMs itself.)
    pub fn adopt(&self, host: &str, spec: VmSpec, power: PowerStatus) {
        let vm = SimVm {
            spec: spec.clone(),
            power,
            boots: u32::from(power == PowerStatus::Running),
            firewall: None,
            ips: None,
            booted_at: (power == PowerStatus::Running).then(now_ms),
            restored_from: None,
            calls: HashMap::new(),
        };
        self.state.lock().unwrap().world.vm_insert(host, vm);
    }

    /// Re-creates a backup the control plane knows about (after a restart).
    pub fn adopt_backup(&self, volid: &str, backup: SimBackup) {
        self.state
            .lock()
            .unwrap()
            .world
            .backups
            .insert(volid.to_string(), backup);
    }

    /// Whether the world outlives this process (then nothing needs adopting).
    pub fn is_durable(&self) -> bool {
        self.cfg.state_file.is_some()
    }

    /// A copy of everything the hosts and storage hold now.
    pub fn world(&self) -> SimWorld {
        self.read_now(|w| w.clone()).unwrap_or_default()
    }

    pub fn backups(&self) -> HashMap<String, SimBackup> {
        self.read_now(|w| w.backups.clone()).unwrap_or_default()
    }

    pub fn vm(&self, host: &str, vm: &str) -> Option<SimVm> {
        self.read_now(|w| w.hosts.get(host).and_then(|h| h.get(vm)).cloned())
            .ok()
            .flatten()
    }

    pub fn vm_count(&self) -> usize {
        self.read_now(|w| w.hosts.values().map(|h| h.len()).sum())
            .unwrap_or(0)
    }

    /// Resources the sim host has handed out, as the hypervisor itself would report.
    pub fn used_on(&self, host: &str) -> Resources {
        self.read_now(|w| used_of(w, host)).unwrap_or_default()
    }

    /// Runs `f` on the world without changing it, on the calling thread: for the inspection
    /// helpers above, which tests call; the driver's own calls use `read`. A `state_file`
    /// world is read without its lock: every write replaces the file whole (`save`), so a
    /// read sees the last write that landed, and never waits on a change in flight.
    fn read_now<T>(&self, f: impl FnOnce(&SimWorld) -> T) -> DriverResult<T> {
        match &self.cfg.state_file {
            None => Ok(f(&self.state.lock().unwrap().world)),
            Some(path) => Ok(f(&SimWorld::load(path)?)),
        }
    }

    /// Runs `f` on the world without changing it. A `state_file` world is read on the
    /// blocking pool (the disk never stalls a runtime thread), without its lock, as in
    /// `read_now`.
    async fn read<T>(&self, f: impl FnOnce(&SimWorld) -> T) -> DriverResult<T> {
        let Some(path) = &self.cfg.state_file else {
            return Ok(f(&self.state.lock().unwrap().world));
        };
        let path = path.clone();
        let world = blocking(move || SimWorld::load(&path)).await?;
        Ok(f(&world))
    }

    /// Runs `f` on the world and keeps what it changed, under the file's exclusive lock when
    /// the world is shared, so two processes never interleave one operation.
    ///
    /// With a `state_file` the lock, the read and the write run on the blocking pool (only
    /// `f` runs here). The lock is taken before the read and released only after the write
    /// has landed (the write's blocking task owns it), so writes land in the order of their
    /// reads and every read sees the last write: an older world can never replace a newer
    /// one, even when this future is dropped while its write is running (the write still
    /// finishes, and the next change waits for it). Dropped before the write, nothing is
    /// written and the lock is released.
    async fn change<T>(&self, f: impl FnOnce(&mut SimWorld) -> DriverResult<T>) -> DriverResult<T> {
        let Some(path) = &self.cfg.state_file else {
            return f(&mut self.state.lock().unwrap().world);
        };
        let _turn = self.turn.lock().await;
        let p = path.clone();
        let (lock, mut world) = blocking(move || {
            let lock = file_lock(&p)?;
            Ok((lock, SimWorld::load(&p)?))
        })
        .await?;
        let out = f(&mut world)?;
        let p = path.clone();
        blocking(move || {
            let saved = world.save(&p);
            drop(lock);
            saved
        })
        .await?;
        Ok(out)
    }

    fn scripted(&self, op: Op) -> Option<(FailWhen, bool)> {
        let mut st = self.state.lock().unwrap();
        let q = st.scripted.get_mut(&op)?;
        if q.is_empty() {
            None
        } else {
            Some(q.remove(0))
        }
    }

    /// Latency, then the chance of failing before the operation has any effect.
    async fn enter(&self, op: Op) -> DriverResult<Option<(FailWhen, bool)>> {
        let d = self.cfg.delays_ms.of(op);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        let held = {
            let mut st = self.state.lock().unwrap();
            // A hold dropped before any call reached it holds nothing.
            let held = st.held.remove(&op).filter(|h| h.has_changed().is_ok());
            st.held_calls += usize::from(held.is_some());
            held
        };
        if let Some(mut hold) = held {
            // Ends when the hold is dropped (its sender gone).
            let _ = hold.changed().await;
        }
        if self.cfg.failure_rate > 0.0 {
            let roll: f64 = self.rng.lock().unwrap().gen();
            if roll < self.cfg.failure_rate {
                return Err(DriverError::Transient(format!(
                    "sim: injected {op:?} failure"
                )));
            }
        }
        match self.scripted(op) {
            Some((FailWhen::Before, t)) => Err(failure(op, t)),
            other => Ok(other),
        }
    }

    async fn with_vm<T>(
        &self,
        host: &Host,
        vm: &str,
        f: impl FnOnce(&mut SimVm) -> T,
    ) -> DriverResult<T> {
        self.change(|w| Ok(f(w.vm_mut(host, vm)?))).await
    }

    async fn power(&self, op: Op, host: &Host, vm: &str, to: PowerStatus) -> DriverResult<()> {
        let after = self.enter(op).await?;
        self.with_vm(host, vm, |v| {
            v.count(op);
            if to == PowerStatus::Running && (v.power == PowerStatus::Stopped || op == Op::Reboot) {
                v.boots += 1;
                v.booted_at = Some(now_ms());
            }
            if to == PowerStatus::Stopped {
                v.booted_at = None;
            }
            v.power = to;
        })
        .await?;
        finish(op, after)
    }
}

/// `r` added to (`sign` 1) or taken from (-1) `used`.
fn tally(used: &mut Resources, r: &Resources, sign: i64) {
    used.cores += sign * r.cores;
    used.memory_gb += sign * r.memory_gb;
    used.disk_gb += sign * r.disk_gb;
    used.gpus += sign * r.gpus;
}

/// What the VMs on `host` hold between them, summed.
fn used_of(w: &SimWorld, host: &str) -> Resources {
    let mut used = Resources::default();
    for vm in w.hosts.get(host).into_iter().flat_map(|h| h.values()) {
        used.cores += vm.spec.resources.cores;
        used.memory_gb += vm.spec.resources.memory_gb;
        used.disk_gb += vm.spec.resources.disk_gb;
        used.gpus += vm.spec.resources.gpus;
    }
    used
}

/// An exclusive advisory lock on `<state_file>.lock` (a separate file: the state file
/// itself is replaced by rename on every write), taken by changes only: reads need none.
/// Released when the returned file is dropped.
fn file_lock(path: &Path) -> DriverResult<std::fs::File> {
    let lock_path = path.with_extension("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_error(&lock_path, e))?;
    f.lock().map_err(|e| io_error(&lock_path, e))?;
    Ok(f)
}

fn failure(op: Op, transient: bool) -> DriverError {
    let msg = format!("sim: scripted {op:?} failure");
    if transient {
        DriverError::Transient(msg)
    } else {
        DriverError::Permanent(msg)
    }
}

fn finish(op: Op, after: Option<(FailWhen, bool)>) -> DriverResult<()> {
    match after {
        Some((FailWhen::After, t)) => Err(failure(op, t)),
        _ => Ok(()),
    }
}

#[async_trait]
impl Hypervisor for SimDriver {
    fn kind(&self) -> &'static str {
        "sim"
    }

    async fn health(&self) -> DriverResult<()> {
        Ok(())
    }

    async fn create(&self, host: &Host, spec: &VmSpec) -> DriverResult<()> {
        let after = self.enter(Op::Create).await?;
        self.change(|w| {
            if let Some(vm) = w.hosts.get_mut(&host.id).and_then(|h| h.get_mut(&spec.id)) {
                vm.count(Op::Create);
            } else {
                // A real hypervisor refuses what it cannot hold; the control plane must never
                // ask for it, and tests rely on this check to catch overbooking.
                let mut used = w.used(&host.id);
                tally(&mut used, &spec.resources, 1);
                if !used.fits_in(&host.capacity()) {
                    return Err(DriverError::Permanent(format!(
                        "sim: host {} is out of capacity",
                        host.id
                    )));
                }
                let vm = SimVm {
                    spec: spec.clone(),
                    power: PowerStatus::Stopped,
                    boots: 0,
                    firewall: None,
                    ips: None,
                    booted_at: None,
                    restored_from: None,
                    calls: HashMap::from([("Create".to_string(), 1)]),
                };
                w.vm_insert(&host.id, vm);
            }
            Ok(())
        })
        .await?;
        finish(Op::Create, after)
    }

    async fn start(&self, host: &Host, vm: &str) -> DriverResult<()> {
        self.power(Op::Start, host, vm, PowerStatus::Running).await
    }

    async fn shutdown(&self, host: &Host, vm: &str) -> DriverResult<()> {
        self.power(Op::Shutdown, host, vm, PowerStatus::Stopped)
            .await
    }

    async fn stop(&self, host: &Host, vm: &str) -> DriverResult<()> {
        self.power(Op::Stop, host, vm, PowerStatus::Stopped).await
    }

    async fn reboot(&self, host: &Host, vm: &str) -> DriverResult<()> {
        self.power(Op::Reboot, host, vm, PowerStatus::Running).await
    }

    async fn destroy(&self, host: &Host, vm: &str) -> DriverResult<()> {
        let after = self.enter(Op::Destroy).await?;
        self.change(|w| {
            w.vm_remove(&host.id, vm);
            Ok(())
        })
        .await?;
        finish(Op::Destroy, after)
    }

    async fn apply_firewall(&self, host: &Host, vm: &str, fw: &Firewall) -> DriverResult<()> {
        let after = self.enter(Op::ApplyFirewall).await?;
        self.with_vm(host, vm, |v| v.firewall = Some(fw.clone()))
            .await?;
        finish(Op::ApplyFirewall, after)
    }

    async fn set_ips(&self, host: &Host, vm: &str, ips: &[NicAddress]) -> DriverResult<()> {
        let after = self.enter(Op::SetIps).await?;
        self.with_vm(host, vm, |v| v.ips = Some(ips.to_vec()))
            .await?;
        finish(Op::SetIps, after)
    }

    async fn backup(&self, host: &Host, vm: &str, storage: &str, volid: &str) -> DriverResult<u64> {
        let after = self.enter(Op::Backup).await?;
        let size = self
            .change(|w| {
                let disk = w.vm_mut(host, vm)?.spec.resources.disk_gb as u64;
                let seed = volid
                    .bytes()
                    .fold(3u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
                // A used fraction of the disk (30-70 %), deduplicated as PBS would.
                let size = disk * 1024 * 1024 * 1024 / 100 * (30 + seed % 41);
                Ok(w.backups
                    .entry(volid.to_string())
                    .or_insert(SimBackup {
                        storage: storage.into(),
                        vm: vm.into(),
                        size_bytes: size,
                    })
                    .size_bytes)
            })
            .await?;
        finish(Op::Backup, after)?;
        Ok(size)
    }

    async fn restore(
        &self,
        host: &Host,
        vm: &str,
        _storage: &str,
        volid: &str,
    ) -> DriverResult<()> {
        let after = self.enter(Op::Restore).await?;
        self.change(|w| {
            if !w.backups.contains_key(volid) {
                return Err(DriverError::Permanent(format!("sim: no backup {volid}")));
            }
            let v = w.vm_mut(host, vm)?;
            v.count(Op::Restore);
            v.restored_from = Some(volid.to_string());
            v.power = PowerStatus::Running;
            v.boots += 1;
            v.booted_at = Some(now_ms());
            Ok(())
        })
        .await?;
        finish(Op::Restore, after)
    }

    async fn delete_backup(&self, _storage: &str, volid: &str) -> DriverResult<()> {
        let after = self.enter(Op::DeleteBackup).await?;
        self.change(|w| Ok(w.backups.remove(volid).map(drop)))
            .await?;
        finish(Op::DeleteBackup, after)
    }

    async fn backup_exists(&self, _storage: &str, volid: &str) -> DriverResult<bool> {
        self.read(|w| w.backups.contains_key(volid)).await
    }

    /// Plausible, steady numbers derived from the VM's id: a guest under constant load.
    async fn stats(&self, host: &Host, vm: &str) -> DriverResult<VmStats> {
        let after = self.enter(Op::Stats).await?;
        let stats = self
            .read(|w| {
                let v = w.vm(host, vm)?;
                let Some(booted) = v.booted_at.filter(|_| v.power == PowerStatus::Running) else {
                    return Ok(VmStats::default());
                };
                let seed = v
                    .spec
                    .id
                    .bytes()
                    .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
                let mem_total = v.spec.resources.memory_gb as u64 * 1024 * 1024 * 1024;
                Ok(VmStats {
                    cpu_usage_percent: (seed % 900) as f64 / 10.0 + 5.0,
                    memory_used_bytes: mem_total / 100 * (20 + seed % 60),
                    disk_read_bytes_sec: 1024 * (seed % 2048),
                    disk_write_bytes_sec: 512 * (seed % 2048),
                    net_in_bytes_sec: 100 * (seed % 4096),
                    net_out_bytes_sec: 50 * (seed % 4096),
                    uptime_seconds: now_ms().saturating_sub(booted) / 1000,
                })
            })
            .await??;
        finish(Op::Stats, after)?;
        Ok(stats)
    }

    async fn console(&self, host: &Host, vm: &str) -> DriverResult<ConsoleEndpoint> {
        let after = self.enter(Op::Console).await?;
        let power = self.read(|w| w.vm(host, vm).map(|v| v.power)).await??;
        if power != PowerStatus::Running {
            return Err(DriverError::Permanent(format!(
                "sim: VM {vm} is not running"
            )));
        }
        let port = 5900 + (vm.bytes().map(u16::from).sum::<u16>() % 100);
        finish(Op::Console, after)?;
        Ok(ConsoleEndpoint {
            host: host.hostname.clone().unwrap_or_else(|| host.id.clone()),
            port,
        })
    }

    async fn power_state(&self, host: &Host, vm: &str) -> DriverResult<Option<PowerStatus>> {
        self.read(|w| w.vm(host, vm).ok().map(|v| v.power)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lobster_core::fleet::Fleet;

    fn spec(id: &str, cores: i64) -> VmSpec {
        VmSpec {
            id: id.into(),
            hostname: id.into(),
            resources: Resources {
                cores,
                memory_gb: 8,
                disk_gb: 40,
                gpus: 0,
            },
            gpu_model: None,
            template: Some("UBUNTU-22-04".into()),
            iso_url: None,
            username: "ubuntu".into(),
            ssh_keys: vec![],
            password: None,
            ip_address: None,
        }
    }

    fn host() -> Host {
        Fleet::demo().host("wil-cpu-03").unwrap().clone()
    }

    #[tokio::test]
    async fn create_is_idempotent_and_starts_stopped() {
        let d = SimDriver::new(SimConfig::instant());
        let h = host();
        d.create(&h, &spec("a", 4)).await.unwrap();
        d.create(&h, &spec("a", 4)).await.unwrap();
        assert_eq!(d.vm_count(), 1);
        assert_eq!(
            d.power_state(&h, "a").await.unwrap(),
            Some(PowerStatus::Stopped)
        );
        d.start(&h, "a").await.unwrap();
        assert_eq!(
            d.power_state(&h, "a").await.unwrap(),
            Some(PowerStatus::Running)
        );
    }

    #[tokio::test]
    async fn refuses_beyond_capacity() {
        let d = SimDriver::new(SimConfig::instant());
        let h = host(); // 64 cores
        d.create(&h, &spec("a", 48)).await.unwrap();
        let e = d.create(&h, &spec("b", 32)).await.unwrap_err();
        assert!(!e.is_transient());
        assert_eq!(d.used_on(&h.id).cores, 48);
    }

    #[tokio::test]
    async fn room_freed_by_a_destroy_is_room_again_and_adopted_vms_count() {
        let d = SimDriver::new(SimConfig::instant());
        let h = host(); // 64 cores
        d.adopt(&h.id, spec("x", 16), PowerStatus::Running);
        d.create(&h, &spec("a", 32)).await.unwrap();
        // The tally holds 48 now; a VM adopted after it was started is counted too.
        d.adopt(&h.id, spec("y", 8), PowerStatus::Running);
        assert!(d.create(&h, &spec("b", 16)).await.is_err(), "56 + 16 > 64");
        d.destroy(&h, "a").await.unwrap();
        d.destroy(&h, "a").await.unwrap();
        d.create(&h, &spec("b", 40)).await.unwrap();
        assert_eq!(d.used_on(&h.id).cores, 64);
        assert!(d.create(&h, &spec("c", 1)).await.is_err(), "full");
    }

    #[tokio::test]
    async fn destroy_is_idempotent() {
        let d = SimDriver::new(SimConfig::instant());
        let h = host();
        d.create(&h, &spec("a", 4)).await.unwrap();
        d.destroy(&h, "a").await.unwrap();
        d.destroy(&h, "a").await.unwrap();
        assert_eq!(d.power_state(&h, "a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn scripted_failures_before_and_after() {
        let d = SimDriver::new(SimConfig::instant());
        let h = host();
        d.fail_next(Op::Create, 1, FailWhen::Before, true);
        assert!(d
            .create(&h, &spec("a", 4))
            .await
            .unwrap_err()
            .is_transient());
        assert_eq!(d.vm_count(), 0, "failed before: no effect");
        d.fail_next(Op::Create, 1, FailWhen::After, true);
        assert!(d.create(&h, &spec("a", 4)).await.is_err());
        assert_eq!(d.vm_count(), 1, "failed after: the work happened");
        d.create(&h, &spec("a", 4)).await.unwrap();
    }

    #[tokio::test]
    async fn random_failures_follow_the_seed() {
        let cfg = SimConfig {
            failure_rate: 0.5,
            ..SimConfig::instant()
        };
        let run = || async {
            let d = SimDriver::new(cfg.clone());
            let mut out = vec![];
            for i in 0..20 {
                out.push(d.create(&host(), &spec(&format!("v{i}"), 1)).await.is_ok());
            }
            out
        };
        let a = run().await;
        assert_eq!(a, run().await);
        assert!(a.iter().any(|x| *x) && a.iter().any(|x| !*x));
    }

    #[tokio::test]
    async fn power_on_unknown_vm_is_permanent_error() {
        let d = SimDriver::new(SimConfig::instant());
        assert!(!d.start(&host(), "ghost").await.unwrap_err().is_transient());
    }

    #[tokio::test]
    async fn a_state_file_is_shared_and_outlives_the_driver() {
        let dir = std::env::temp_dir().join(format!("sim-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = SimConfig {
            state_file: Some(dir.join("world.json")),
            ..SimConfig::instant()
        };
        let (a, b) = (SimDriver::new(cfg.clone()), SimDriver::new(cfg.clone()));
        let h = host();
        a.create(&h, &spec("x", 40)).await.unwrap();
        b.start(&h, "x").await.unwrap();
        assert_eq!(
            a.power_state(&h, "x").await.unwrap(),
            Some(PowerStatus::Running)
        );
        // The second driver sees the first one's VM when it checks capacity.
        assert!(!b
            .create(&h, &spec("y", 40))
            .await
            .unwrap_err()
            .is_transient());
        a.backup(&h, "x", "pbs", "vol-1").await.unwrap();
        drop((a, b));
        let c = SimDriver::new(cfg);
        assert_eq!(c.vm_count(), 1);
        assert!(c.backups().contains_key("vol-1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Changes to a `state_file` world from many tasks of two drivers at once, on a runtime
    /// with several threads: each write is the world its change read plus one backup, so a
    /// write that landed after a newer one (or a read that missed a write still under way)
    /// would lose backups. Every one is there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_changes_to_a_state_file_lose_no_write() {
        let dir = std::env::temp_dir().join(format!("sim-state-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = SimConfig {
            state_file: Some(dir.join("world.json")),
            ..SimConfig::instant()
        };
        let drivers = [
            std::sync::Arc::new(SimDriver::new(cfg.clone())),
            std::sync::Arc::new(SimDriver::new(cfg.clone())),
        ];
        let h = host();
        drivers[0].create(&h, &spec("x", 4)).await.unwrap();
        let n = 64;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (d, h) = (std::sync::Arc::clone(&drivers[i % 2]), h.clone());
                tokio::spawn(async move {
                    d.backup(&h, "x", "pbs", &format!("vol-{i}")).await.unwrap();
                    // A read between writes sees every write that came before it.
                    assert!(d.backup_exists("pbs", &format!("vol-{i}")).await.unwrap());
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let backups = SimDriver::new(cfg).backups();
        assert_eq!(backups.len(), n, "{:?}", backups.keys());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Many changes of one `state_file` world at once, with a single blocking thread: a
    /// change waiting for the file's lock must not hold that thread while the lock's holder
    /// needs it to write and let go (that was a deadlock: every waiting change held a
    /// blocking thread, and with the pool full the holder's write never ran).
    #[test]
    fn changes_queued_for_the_file_lock_leave_the_holder_a_thread_to_write_on() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("sim-state-turns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = SimConfig {
            state_file: Some(dir.join("world.json")),
            ..SimConfig::instant()
        };
        let d = std::sync::Arc::new(SimDriver::new(cfg));
        let h = host();
        let all = rt.block_on(async {
            let runs: Vec<_> = (0..16)
                .map(|i| {
                    let (d, h) = (std::sync::Arc::clone(&d), h.clone());
                    tokio::spawn(async move { d.create(&h, &spec(&format!("vm-{i}"), 1)).await })
                })
                .collect();
            let all = async {
                for r in runs {
                    r.await.unwrap().unwrap();
                }
            };
            tokio::time::timeout(Duration::from_secs(60), all).await
        });
        // Not waiting for blocking threads that may be stuck.
        rt.shutdown_background();
        assert!(all.is_ok(), "the changes deadlocked");
        assert_eq!(d.vm_count(), 16);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
