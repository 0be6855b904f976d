//! New tasks go straight to this process's workers.
//!
//! A command that queues a task against an instance (a launch's create, a delete, a power
//! operation) writes it already leased to this engine (status PROCESSING, the attempt
//! counted: what a claim would have written) and, once committed, puts the task and its
//! instance row here. A worker takes them from memory: no claim statement, no commit for
//! it on the one write path, no read of the instances. Measured on SQLite, claims were a
//! fifth of the write lock's time during launches (docs/benchmarks.md, session 9).
//!
//! What keeps it crash-safe and exactly-once is the lease, as for a claimed task: if this
//! process dies, the lease runs out and any server reclaims the task. The heartbeat of a
//! handed task is timed from the lease it was written with, so it keeps the margin a claimed
//! task has. A task that waited a third of its lease here is not run on that lease: its
//! lease is renewed first, only if nothing happened to the task meanwhile (the renewal
//! requires the lease end it was written with; a reclaim would have moved it), else it is
//! dropped. Hand-offs are taken only while this process has room to start them soon (what
//! waits and runs here within twice the workers' batches, and `EngineConfig::handoff`), and
//! only while this process runs workers; otherwise commands write pending tasks as before,
//! for any server. A worker that takes from here still claims from the database when work
//! was queued there (`Engine::queued`) or a poll interval has passed, so a stream of
//! hand-offs cannot starve what waits in the database (tasks written while the hand-off was
//! full, retries, other servers' tasks).

use crate::Engine;
use lobster_store::{InstanceRow, Lease, TaskRow};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A handed-over task and its instance.
pub(crate) type Handed = (TaskRow, InstanceRow);

#[derive(Default)]
pub(crate) struct Handoff {
    queue: Mutex<VecDeque<Handed>>,
    /// Whether this process runs workers (set by `Engine::spawn`).
    on: AtomicBool,
    /// Tasks run from here since start.
    pub(crate) taken: AtomicU64,
    /// Tasks this process's workers are running now (handed or claimed).
    pub(crate) running: AtomicUsize,
    /// With batches of one, due claims and hand-offs take turns.
    pub(crate) handed_next: AtomicBool,
}

impl Handoff {
    pub(crate) fn enable(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn push(&self, items: Vec<Handed>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.extend(items);
    }

    /// Up to `limit` tasks, oldest first: those still on the first third of their lease, and
    /// those that waited longer (to be renewed before they run).
    fn take(&self, limit: usize, now: i64, lease_ms: i64) -> (Vec<Handed>, Vec<Handed>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let (mut fresh, mut stale) = (Vec::new(), Vec::new());
        while fresh.len() + stale.len() < limit {
            let Some((t, i)) = q.pop_front() else { break };
            let left = t.lease_until.unwrap_or(0) - now;
            if left * 3 > lease_ms * 2 {
                fresh.push((t, i));
            } else {
                stale.push((t, i));
            }
        }
        (fresh, stale)
    }

    fn drain(&self) -> Vec<Handed> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.drain(..).collect()
    }
}

impl Engine {
    /// The lease under which a command writing `n` new tasks now should write them so that
    /// they come straight to this engine's workers (`hand_off` after the commit); None when
    /// no worker runs in this process or enough are waiting already: then write them pending.
    pub fn handoff_lease(&self, n: usize) -> Option<Lease> {
        let h = &self.handoff;
        let room = (self.cfg.workers * self.cfg.batch * 2).min(self.cfg.handoff);
        let busy = h.len() + h.running.load(Ordering::Relaxed);
        if !h.on.load(Ordering::Relaxed) || busy + n > room || !self.clock_ok() {
            return None;
        }
        Some(Lease {
            owner: self.new_owner(),
            until: self.clock.now().millis() + self.cfg.lease_ms,
        })
    }

    /// Gives this engine's workers tasks written under `handoff_lease`, with their instances
    /// as written with them.
    pub fn hand_off(&self, items: Vec<(TaskRow, InstanceRow)>) {
        if items.is_empty() {
            return;
        }
        self.handoff.push(items);
        self.wake.notify_one();
    }

    /// Handed tasks to run now, at most `limit`. One that waited a third of its lease has
    /// it renewed first, if it is still as it was handed over (else it is dropped: a reclaim
    /// has it, or it ended).
    pub(crate) async fn take_handed(&self, limit: usize) -> Vec<Handed> {
        if limit == 0 {
            return Vec::new();
        }
        let now = self.clock.now().millis();
        let (mut got, stale) = self.handoff.take(limit, now, self.cfg.lease_ms);
        got.extend(self.renew_handed(stale, now).await);
        self.handoff
            .taken
            .fetch_add(got.len() as u64, Ordering::Relaxed);
        got
    }

    /// Renews each handed task's lease if it is still as it was handed over (else it is
    /// dropped: a reclaim has it, or it ended); those renewed.
    async fn renew_handed(&self, stale: Vec<Handed>, now: i64) -> Vec<Handed> {
        let mut got = Vec::with_capacity(stale.len());
        for (mut t, i) in stale {
            let was = t.lease_until.unwrap_or(0);
            let until = now + self.cfg.lease_ms;
            match self
                .store
                .task_relet(&t.id, crate::owner_of(&t), was, until)
                .await
            {
                Ok(true) => {
                    t.lease_until = Some(until);
                    got.push((t, i));
                }
                Ok(false) => {
                    tracing::warn!(task = %t.id, "handed over, then taken by another worker")
                }
                Err(e) => {
                    tracing::warn!(task = %t.id, "handed over too long ago and not renewed ({e}); left to be reclaimed")
                }
            }
        }
        got
    }

    /// Handed tasks waiting to be taken.
    pub(crate) fn handoff_waiting(&self) -> usize {
        self.handoff.len()
    }

    /// Tasks run from the hand-off since start (the rest were claimed).
    pub fn handed_runs(&self) -> u64 {
        self.handoff.taken.load(Ordering::Relaxed)
    }

    /// Stops taking hand-offs and puts the tasks still waiting back in the queue, so that
    /// the next server to look runs them at once instead of after their lease (shutdown,
    /// once the workers have stopped). Each only if nothing happened to it since it was
    /// handed over.
    pub async fn release_handed(&self) {
        self.handoff.enable(false);
        self.give_back_handed().await;
    }

    /// Puts the tasks waiting here back in the queue, each only if nothing happened to it
    /// since it was handed over.
    pub(crate) async fn give_back_handed(&self) {
        let now = self.clock.now().millis();
        for (t, _) in self.handoff.drain() {
            let was = t.lease_until.unwrap_or(0);
            if let Err(e) = self
                .store
                .task_unlet(&t.id, crate::owner_of(&t), was, now)
                .await
            {
                tracing::warn!(task = %t.id, "not released (its lease will run out): {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handed(id: &str, until: i64) -> (TaskRow, InstanceRow) {
        let t = TaskRow {
            id: id.into(),
            account_id: "a".into(),
            team_id: None,
            instance_id: Some("i".into()),
            operation: "create_instance".into(),
            status: "PROCESSING".into(),
            params: "{}".into(),
            message: None,
            attempts: 1,
            max_attempts: 5,
            lease_owner: Some("w".into()),
            lease_until: Some(until),
            run_after: 0,
            created_at: 0,
            updated_at: 0,
            finished_at: None,
        };
        (t, InstanceRow::default())
    }

    #[test]
    fn a_task_that_waited_a_third_of_its_lease_is_taken_apart() {
        let h = Handoff::default();
        // Lease 30 s, written at 0: fresh until 10 s have passed.
        h.push(vec![handed("old", 30_000), handed("new", 39_000)]);
        let (fresh, stale) = h.take(8, 10_000, 30_000);
        let ids = |v: Vec<Handed>| v.into_iter().map(|(t, _)| t.id).collect::<Vec<_>>();
        assert_eq!(ids(fresh), ["new"]);
        assert_eq!(ids(stale), ["old"]);
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn take_stops_at_its_limit_in_order() {
        let h = Handoff::default();
        h.push((0..5).map(|k| handed(&k.to_string(), 30_000)).collect());
        let first: Vec<String> = h
            .take(3, 0, 30_000)
            .0
            .into_iter()
            .map(|(t, _)| t.id)
            .collect();
        assert_eq!(first, ["0", "1", "2"]);
        assert_eq!(h.len(), 2);
    }
}
