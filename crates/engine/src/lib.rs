//! The durable task engine. Workers claim tasks with a lease, heartbeat while a driver call
//! runs, retry transient failures with backoff, and finish a task in the same transaction as
//! the state change it makes — only while they still hold the lease. A worker that dies
//! leaves its task to be reclaimed when the lease expires (DESIGN invariant 2).

mod backups;
mod clock_check;
mod finisher;
mod handoff;
mod steps;

pub use steps::spec as vm_spec;

use lobster_core::clock::SharedClock;
use lobster_core::fleet::Fleet;
use lobster_core::task::backoff_ms;
use lobster_core::Error;
use lobster_driver::{DriverError, Hypervisor};
use lobster_store::{InstanceRow, Store, TaskRow};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub workers: usize,
    /// How many tasks a worker claims at once (one claim statement) and runs side by side;
    /// it claims again when all of them have ended.
    pub batch: usize,
    pub lease_ms: i64,
    /// How often idle workers look for due retries and expired leases.
    pub poll_ms: u64,
    pub max_attempts: i64,
    /// New tasks waiting for or running on this process's workers at most when a command
    /// hands one over (see `handoff`; also bounded by twice `workers × batch`); a command
    /// beyond it writes its task pending, for any server to claim.
    pub handoff: usize,
    /// The most this server's clock may differ from the database's while it takes leases
    /// (see `check_clock`); None checks nothing (tests that move a manual clock).
    pub max_clock_skew_ms: Option<i64>,
}

impl EngineConfig {
    /// The clock bound for a lease of `lease_ms`: an eighth of it. A measure is off by at
    /// most a quarter of the bound (`check_clock` ignores slower ones), so two servers that
    /// each passed differ by at most 2.5 eighths of a lease, inside the third a run keeps
    /// between itself and its lease's end (see `Engine::heartbeat`): no server judges
    /// another's running lease expired.
    pub fn clock_bound(lease_ms: i64) -> Option<i64> {
        Some((lease_ms / 8).max(1))
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 4,
            batch: 16,
            lease_ms: 30_000,
            poll_ms: 500,
            max_attempts: 5,
            handoff: 256,
            max_clock_skew_ms: EngineConfig::clock_bound(30_000),
        }
    }
}

pub struct Engine {
    store: Store,
    driver: Arc<dyn Hypervisor>,
    fleet: Arc<Fleet>,
    clock: SharedClock,
    cfg: EngineConfig,
    worker_id: String,
    /// Numbers this server's leases (see `new_owner`).
    leases: AtomicU64,
    wake: Arc<Notify>,
    /// When a worker loop last looked for work (health reporting); 0 = never.
    last_poll: AtomicI64,
    /// When a claim next looks for expired leases even though pending tasks are waiting.
    next_expiry_look: AtomicI64,
    /// Writes the ends of create tasks that finish together in one go.
    finisher: finisher::Finisher,
    /// New tasks handed over by this process's commands (see `handoff`).
    handoff: handoff::Handoff,
    /// Work was queued in the database by this process since a worker last claimed.
    queued: AtomicBool,
    /// When a worker last claimed from the database.
    last_claim: AtomicI64,
    /// The last claim took all it asked for: more may be waiting in the database.
    backlog: AtomicBool,
    /// This server's clock minus the database's, as last measured (`check_clock`).
    clock_skew: AtomicI64,
    /// The last measure was within `max_clock_skew_ms`: leases may be taken.
    clock_ok: AtomicBool,
}

/// The lease a run holds its task under: the owner it was claimed or handed over with (see
/// `Engine::new_owner`). A task without one matches no lease, so its run's writes are
/// refused as a lost lease's would be.
pub(crate) fn owner_of(task: &TaskRow) -> &str {
    task.lease_owner.as_deref().unwrap_or("")
}

/// Milliseconds until a task's first heartbeat, given how much of its lease is `left`:
/// when two thirds of the lease remain, so that one failed beat still leaves a second
/// before the lease ends, however long the task waited before it started.
fn first_beat_after(left: i64, lease_ms: i64) -> i64 {
    let third = (lease_ms / 3).max(1);
    (left - 2 * third).clamp(0, third)
}

/// Why a worker claims from the database (see `Engine::run_batch`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Due {
    No,
    /// This process queued work there.
    Queued,
    /// A poll interval passed since the last claim.
    Polled,
}

/// How a task run ended, before it is written down.
pub(crate) enum Outcome {
    Done(String),
    /// Retry later (transient failure, attempts left).
    Retry(String),
    /// Give up: run the task's compensation and mark it FAILED.
    Fail(String),
    /// Already written down by the run itself (a create's end, inside the heartbeat's cover).
    Recorded,
    /// Not runnable yet (e.g. its VM is still being built): try again later, attempt refunded.
    Wait(String),
}

impl Engine {
    pub fn new(
        store: Store,
        driver: Arc<dyn Hypervisor>,
        fleet: Arc<Fleet>,
        clock: SharedClock,
        cfg: EngineConfig,
        wake: Arc<Notify>,
    ) -> Arc<Engine> {
        let worker_id = format!("w-{}", lobster_core::ids::new_uuid());
        Arc::new(Engine {
            store,
            driver,
            fleet,
            clock,
            cfg,
            worker_id,
            leases: AtomicU64::new(0),
            wake,
            last_poll: AtomicI64::new(0),
            next_expiry_look: AtomicI64::new(0),
            finisher: finisher::Finisher::default(),
            handoff: Default::default(),
            queued: AtomicBool::new(false),
            last_claim: AtomicI64::new(0),
            backlog: AtomicBool::new(true),
            clock_skew: AtomicI64::new(0),
            clock_ok: AtomicBool::new(true),
        })
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// A lease owner of its own for one claim or hand-off: this server's id and a number.
    /// A task's run holds it under the owner it was taken with, so that two runs of one task
    /// (a lease ran out and a claim, this server's own included, took the task again) hold
    /// it under different owners: neither run's beats or ends can touch the other's lease,
    /// even an end written long after its lease ran out.
    pub(crate) fn new_owner(&self) -> String {
        let n = self.leases.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.worker_id)
    }

    /// Whether a task's lease owner is one of this server's (tests and health).
    pub fn owns(&self, owner: &str) -> bool {
        owner
            .strip_prefix(self.worker_id.as_str())
            .is_some_and(|n| n.starts_with('.'))
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Milliseconds since a worker loop last polled, or None when no loop runs.
    pub fn last_poll(&self) -> Option<i64> {
        match self.last_poll.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Claims and runs one task; false when nothing was claimable.
    pub async fn run_once(self: &Arc<Self>) -> Result<bool, Error> {
        Ok(self.run_batch(1).await? > 0)
    }

    /// Tells the workers that tasks were queued in the database: one wakes, and the next
    /// batch a worker takes claims from the database even if handed tasks are waiting.
    pub fn queued(&self) {
        self.queued.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Claims up to `limit` tasks and runs them side by side until all have ended; how
    /// many it ran. Handed-over tasks come first (they carry their instances); the rest are
    /// claimed from the database, their instances read with one query.
    pub async fn run_batch(self: &Arc<Self>, limit: usize) -> Result<usize, Error> {
        // When claims are due, half the batch is theirs (with batches of one, turn about;
        // work this process queued in the database goes first), so that a stream of hand-offs
        // cannot hold back the database's queue; what the claim leaves goes to hand-offs.
        if !self.clock_ok() {
            // No leases while the clock is off: what waits here goes back to the queue, for
            // the servers whose clocks are right.
            self.give_back_handed().await;
            return Ok(0);
        }
        let due = self.claim_due();
        let room = match due {
            Due::No => limit,
            Due::Queued => limit / 2,
            Due::Polled if limit == 1 => {
                usize::from(self.handoff.handed_next.fetch_xor(true, Ordering::Relaxed))
            }
            Due::Polled => limit / 2,
        };
        // The hand-offs are taken after the claim, not before it: a claim can wait (the
        // pool's 30 s for a connection), and a handed task held meanwhile could see its lease
        // run out and a claim take it again. Its writes would then be refused (each claim
        // leases under an owner of its own), but its driver calls would run twice.
        let handed_now = self.handoff_waiting().min(room);
        let mut tasks = Vec::with_capacity(limit);
        let mut insts: HashMap<String, InstanceRow> = HashMap::new();
        let rest = limit - handed_now;
        // A worker woken for a hand-off another took first claims only when the database
        // may hold more (its last claim came back full): else it would run an empty claim
        // per wake-up (on PostgreSQL two statements each, 2,000 per 10,000 launches).
        let backlog = handed_now == 0 && self.backlog.load(Ordering::Relaxed);
        let mut claim_failed = None;
        if rest > 0 && (due != Due::No || backlog) {
            match self.claim_and_read(rest).await {
                Ok((t, i)) => (tasks, insts) = (t, i),
                Err(e) => claim_failed = Some(e),
            }
        }
        let handed = self.take_handed(limit - tasks.len()).await;
        match claim_failed {
            // What was handed over must run even if the claim fails.
            Some(e) if !handed.is_empty() => tracing::warn!("claiming tasks: {e}"),
            Some(e) => return Err(e),
            None => {}
        }
        for (t, i) in handed {
            insts.insert(i.id.clone(), i);
            tasks.push(t);
        }
        let n = tasks.len();
        let running = &self.handoff.running;
        running.fetch_add(n, Ordering::Relaxed);
        let mut runs = tokio::task::JoinSet::new();
        for task in tasks {
            let inst = task.instance_id.as_deref().and_then(|id| insts.remove(id));
            let engine = Arc::clone(self);
            runs.spawn(async move { engine.run_claimed(task, inst).await });
        }
        while let Some(done) = runs.join_next().await {
            running.fetch_sub(1, Ordering::Relaxed);
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("task engine: {e}"),
                Err(e) => tracing::error!("task engine: a task run panicked: {e}"),
            }
        }
        Ok(n)
    }

    /// Whether a worker should claim from the database even with handed-over tasks waiting:
    /// work was queued there by this process since the last claim, or a poll interval
    /// passed (other servers' tasks, retries, expired leases).
    fn claim_due(&self) -> Due {
        let now = self.clock.now().millis();
        if self.queued.swap(false, Ordering::Relaxed) {
            Due::Queued
        } else if now >= self.last_claim.load(Ordering::Relaxed) + self.cfg.poll_ms as i64 {
            Due::Polled
        } else {
            Due::No
        }
    }

    /// Claims up to `limit` tasks and reads their instances with one query.
    async fn claim_and_read(
        &self,
        limit: usize,
    ) -> Result<(Vec<TaskRow>, HashMap<String, InstanceRow>), Error> {
        self.last_claim
            .store(self.clock.now().millis(), Ordering::Relaxed);
        let tasks = self.claim(limit).await?;
        self.backlog.store(tasks.len() >= limit, Ordering::Relaxed);
        if tasks.is_empty() {
            return Ok((tasks, HashMap::new()));
        }
        let ids: Vec<&str> = tasks
            .iter()
            .filter_map(|t| t.instance_id.as_deref())
            .collect();
        // A failed read is not fatal: each task then reads its own instance.
        let insts = match self.store.instances_by_ids(&ids).await {
            Ok(rows) => rows.into_iter().map(|i| (i.id.clone(), i)).collect(),
            Err(e) => {
                tracing::warn!("reading a batch's instances: {e}");
                HashMap::new()
            }
        };
        Ok((tasks, insts))
    }

    /// The next tasks to run, at most `limit`. Tasks whose worker died (expired leases) are
    /// looked for once per poll interval while pending tasks keep the workers busy, and
    /// whenever nothing is pending: so nothing claimable is ever left behind, and a busy
    /// queue does not pay for that look on every claim. Expired ones come first.
    async fn claim(&self, limit: usize) -> Result<Vec<TaskRow>, Error> {
        let (now, lease) = (self.clock.now().millis(), self.cfg.lease_ms);
        let owner = self.new_owner();
        let w = owner.as_str();
        let next = self.next_expiry_look.load(Ordering::Relaxed);
        let due = now >= next
            && self
                .next_expiry_look
                .compare_exchange(
                    next,
                    now + self.cfg.poll_ms as i64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        let mut claimed = Vec::with_capacity(limit);
        if due {
            claimed = self.store.task_claim_expired(w, now, lease, limit).await?;
        }
        if claimed.len() < limit {
            let more = limit - claimed.len();
            // What is claimed already must run even if this claim fails: dropped, it would
            // sit leased until its lease ran out.
            match self.store.task_claim_pending(w, now, lease, more).await {
                Ok(tasks) => claimed.extend(tasks),
                Err(e) if !claimed.is_empty() => tracing::warn!("claiming pending tasks: {e}"),
                Err(e) => return Err(e),
            }
        }
        if claimed.is_empty() && !due {
            claimed = self.store.task_claim_expired(w, now, lease, limit).await?;
        }
        Ok(claimed)
    }

    /// Runs tasks until none is claimable now. Tests use this instead of sleeping.
    pub async fn run_until_idle(self: &Arc<Self>) -> Result<usize, Error> {
        let mut n = 0;
        while self.run_once().await? {
            n += 1;
        }
        Ok(n)
    }

    /// Claims a task and drops it without finishing, as a worker killed mid-task would.
    pub async fn claim_and_abandon(&self) -> Result<Option<TaskRow>, Error> {
        let now = self.clock.now().millis();
        self.store
            .task_claim(&self.new_owner(), now, self.cfg.lease_ms)
            .await
    }

    async fn run_claimed(&self, task: TaskRow, inst: Option<InstanceRow>) -> Result<(), Error> {
        let work = self.execute(&task, inst);
        let beat = self.heartbeat(&task);
        let (outcome, inst) = tokio::select! {
            o = work => o,
            lost = beat => {
                tracing::warn!(task = %task.id, "lease lost: {lost}; abandoning");
                return Ok(());
            }
        };
        self.record(&task, outcome, inst.as_ref()).await
    }

    /// Extends the lease every third of its length, the first time when two thirds of the
    /// lease the task was taken with (`until`) are left: a task that waited before it ran
    /// (handed over) has the same margin as one claimed just now, one failed beat included.
    /// Returns only when the lease is lost, or may be about to be: the run then stops.
    ///
    /// Why stop on beats that fail or hang: once the lease last confirmed by the database
    /// runs out, a claim may take the task again, this server's own included (a database
    /// unreachable for a lease's length). The new run holds it under another owner, so the
    /// old run's writes are refused, but its driver calls would still run beside the new
    /// run's (two runs of a create could destroy and rebuild a VM the database no longer
    /// counts). So a run keeps at least a third of a lease between itself and the end of
    /// its confirmed lease, and stops when it cannot.
    async fn heartbeat(&self, task: &TaskRow) -> String {
        let (id, owner) = (task.id.as_str(), owner_of(task));
        let third = (self.cfg.lease_ms / 3).max(1);
        let mut confirmed = task
            .lease_until
            .unwrap_or_else(|| self.clock.now().millis() + self.cfg.lease_ms);
        let mut wait = first_beat_after(confirmed - self.clock.now().millis(), self.cfg.lease_ms);
        loop {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            wait = third;
            if !self.clock_ok() {
                return "this server's clock is off the database's".into();
            }
            let now = self.clock.now().millis();
            let until = now + self.cfg.lease_ms;
            let within = Duration::from_millis((confirmed - now - third).max(0) as u64);
            let beat = self.store.task_heartbeat(id, owner, until);
            match tokio::time::timeout(within, beat).await {
                Ok(Ok(true)) => confirmed = until,
                Ok(Ok(false)) => return "another worker holds it".into(),
                Ok(Err(e)) => tracing::warn!(task = %id, "heartbeat failed: {e}"),
                Err(_) => tracing::warn!(
                    task = %id,
                    "heartbeat unanswered within {} ms",
                    within.as_millis()
                ),
            }
            if confirmed - self.clock.now().millis() <= third {
                return "its lease could not be renewed in time".into();
            }
        }
    }

    async fn record(
        &self,
        task: &TaskRow,
        outcome: Outcome,
        inst: Option<&InstanceRow>,
    ) -> Result<(), Error> {
        match outcome {
            Outcome::Recorded => Ok(()),
            Outcome::Done(msg) => self.finish(task, true, &msg, inst).await,
            Outcome::Fail(msg) => self.finish(task, false, &msg, inst).await,
            Outcome::Retry(msg) => {
                let now = self.clock.now().millis();
                let at = now + backoff_ms(task.attempts);
                self.store
                    .task_retry(&task.id, owner_of(task), at, &msg, now)
                    .await?;
                Ok(())
            }
            Outcome::Wait(msg) => {
                let now = self.clock.now().millis();
                let at = now + self.cfg.poll_ms as i64 * 4;
                self.store
                    .task_wait(&task.id, owner_of(task), at, &msg, now)
                    .await?;
                Ok(())
            }
        }
    }

    /// Classifies a driver error given the attempts used so far.
    pub(crate) fn on_driver_error(&self, task: &TaskRow, what: &str, e: DriverError) -> Outcome {
        let msg = format!("{what}: {e}");
        if e.is_transient() && task.attempts < task.max_attempts {
            Outcome::Retry(format!(
                "{msg} (attempt {} of {}, will retry)",
                task.attempts, task.max_attempts
            ))
        } else {
            Outcome::Fail(msg)
        }
    }

    /// Background workers: each claims tasks until none is due, then waits for a wake-up or
    /// the poll interval; and the clock's watch (`check_clock`: call it once before, so that
    /// no claim comes before the first measure). They stop when `shutdown` turns true.
    pub fn spawn(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.handoff.enable(true);
        let engine = Arc::clone(self);
        let stop = shutdown.clone();
        let clock = tokio::spawn(async move { engine.watch_clock(stop).await });
        let workers = (0..self.cfg.workers.max(1)).map(|_| {
            let engine = Arc::clone(self);
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    if *stop.borrow() {
                        return;
                    }
                    engine
                        .last_poll
                        .store(engine.clock.now().millis().max(1), Ordering::Relaxed);
                    let limit = engine.cfg.batch.max(1);
                    match engine.run_batch(limit).await {
                        Ok(n) if n > 0 => {
                            // A full batch: there is likely more; another worker can
                            // take it meanwhile.
                            if n == limit {
                                engine.wake.notify_one();
                            }
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!("task engine: {e}"),
                    }
                    tokio::select! {
                        _ = engine.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(engine.cfg.poll_ms)) => {}
                        _ = stop.changed() => {}
                    }
                }
            })
        });
        workers.chain(std::iter::once(clock)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::first_beat_after;

    #[test]
    fn the_first_heartbeat_comes_when_two_thirds_of_the_lease_are_left() {
        // Claimed just now: a third of the lease in.
        assert_eq!(first_beat_after(30_000, 30_000), 10_000);
        // Handed over and waited 4 s: 4 s sooner.
        assert_eq!(first_beat_after(26_000, 30_000), 6_000);
        // Waited past the mark (renewed or not): at once.
        assert_eq!(first_beat_after(15_000, 30_000), 0);
        assert_eq!(first_beat_after(-5, 30_000), 0);
    }
}
