//! What each task kind does against the driver, and how its end is written down. Every
//! driver step is idempotent, so a task reclaimed after a crash simply runs again.

use crate::finisher::DELETED;
use crate::{owner_of, Engine, Outcome};
use lobster_core::firewall::Firewall;
use lobster_core::fleet::Host;
use lobster_core::instance::PowerOp;
use lobster_core::task::{TaskKind, TaskStatus};
use lobster_core::Error;
use lobster_driver::{NicAddress, VmSpec};
use lobster_store::{Created, CreatedEnd, Deleted, InstanceRow, TaskRow};
use std::future::Future;

/// What a configuration task pushes to the host (`push_config`).
#[derive(PartialEq)]
enum Config {
    Firewall(Firewall),
    Ips(Vec<NicAddress>),
}

/// Extra attempts a failed create gets to clean up its half-built VM before capacity is
/// released anyway (and the leftover is logged for the operator).
pub(crate) const CLEANUP_TRIES: i64 = 10;
/// How long a driver step runs before its progress message is written.
const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// The driver's view of an instance row.
pub fn spec(i: &InstanceRow) -> VmSpec {
    VmSpec {
        id: i.id.clone(),
        hostname: i.name.clone(),
        resources: i.resources,
        gpu_model: i.gpu_model.clone(),
        template: i.template_name.clone(),
        iso_url: i.iso_url.clone(),
        username: i.username.clone(),
        ssh_keys: i.ssh_key.iter().cloned().collect(),
        password: i.password.clone(),
        ip_address: i.ip_address.clone(),
    }
}

impl Engine {
    async fn progress(&self, task: &TaskRow, message: &str) {
        let now = self.clock.now().millis();
        if let Err(e) = self
            .store
            .task_progress(&task.id, owner_of(task), message, now)
            .await
        {
            tracing::warn!(task = %task.id, "progress: {e}");
        }
    }

    /// Runs one driver step, and tells the task's readers what it is doing once the step has
    /// taken long enough for anyone to see it: a progress write per step cost a fast host
    /// (or the sim at zero latency) a third of its launch rate, for messages nobody could read.
    async fn step<T>(&self, task: &TaskRow, message: &str, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => out,
            _ = tokio::time::sleep(PROGRESS_AFTER) => {
                self.progress(task, message).await;
                work.await
            }
        }
    }

    /// Runs the task's driver steps. Everything that talks to a host happens here, inside the
    /// heartbeat's cover, including the clean-up of a create that failed.
    /// Also returns the instance as read before the run, for `finish` (the fields it
    /// needs — id, host, shape — do not change once the instance exists).
    /// `read` is the instance when the caller already read it (a claimed batch's).
    pub(crate) async fn execute(
        &self,
        task: &TaskRow,
        read: Option<InstanceRow>,
    ) -> (Outcome, Option<InstanceRow>) {
        let Some(kind) = TaskKind::parse(&task.operation) else {
            let why = format!("unknown operation {:?}", task.operation);
            return (Outcome::Fail(why), None);
        };
        let Some(id) = task.instance_id.as_deref() else {
            return (Outcome::Fail("task names no instance".into()), None);
        };
        let found = match read {
            Some(i) if i.id == id => Ok(Some(i)),
            _ => self.store.instance_by_id(id).await,
        };
        let inst = match found {
            Ok(Some(i)) => i,
            Ok(None) => return (Outcome::Fail(format!("instance {id} does not exist")), None),
            Err(e) => return (Outcome::Retry(format!("database: {e}")), None),
        };
        let out = self.execute_on(task, kind, &inst).await;
        (out, Some(inst))
    }

    async fn execute_on(&self, task: &TaskRow, kind: TaskKind, inst: &InstanceRow) -> Outcome {
        let host = self.fleet.host(&inst.host_id).cloned();
        let gave_up = task.attempts > task.max_attempts;
        let why_gave_up = || format!("gave up after {} attempts", task.max_attempts);
        match (kind, host) {
            // A host removed from the configuration cannot be reached: its VMs are gone for us.
            (TaskKind::DeleteInstance, None) => Outcome::Done(format!(
                "host {} is no longer configured; released",
                inst.host_id
            )),
            // Backups live on storage, not on the host: the instance may be long gone.
            (TaskKind::DeleteBackup, _) => self.delete_backup(task).await,
            (_, None) => Outcome::Fail(format!("host {} is no longer configured", inst.host_id)),
            (TaskKind::CreateInstance, Some(host)) => {
                if gave_up {
                    return self
                        .compensate_create(task, &host, inst, why_gave_up())
                        .await;
                }
                match self.create(task, &host, inst).await {
                    Outcome::Fail(why) => self.compensate_create(task, &host, inst, why).await,
                    other => other,
                }
            }
            (TaskKind::ApplyFirewall | TaskKind::SyncIps, Some(host)) => {
                self.push_config(task, kind, &host, inst).await
            }
            // A backup that will not complete removes whatever part of it the storage holds.
            (TaskKind::Backup, Some(host)) => {
                let out = if gave_up {
                    Outcome::Fail(why_gave_up())
                } else {
                    self.backup(task, &host, inst).await
                };
                match out {
                    Outcome::Fail(why) => self.compensate_backup(task, why).await,
                    other => other,
                }
            }
            // A delete that fails after attempts whose answers were lost (or a crash) asks the
            // host: a VM that is gone is deleted, whatever the lost answers said.
            (TaskKind::DeleteInstance, Some(host)) => {
                let out = if gave_up {
                    Outcome::Fail(why_gave_up())
                } else {
                    match self.driver.destroy(&host, &inst.id).await {
                        Ok(()) => Outcome::Done(DELETED.into()),
                        Err(e) => self.on_driver_error(task, "destroy", e),
                    }
                };
                let out = match out {
                    Outcome::Fail(why) => match self.driver.power_state(&host, &inst.id).await {
                        Ok(None) => Outcome::Done(DELETED.into()),
                        _ => Outcome::Fail(why),
                    },
                    other => other,
                };
                match out {
                    Outcome::Done(_) => self.finish_delete(task, inst).await,
                    other => other,
                }
            }
            (_, Some(_)) if gave_up => Outcome::Fail(why_gave_up()),
            (TaskKind::Restore, Some(host)) => self.restore(task, &host, inst).await,
            (TaskKind::Power(op), Some(host)) => {
                let d = &self.driver;
                let r = match op {
                    PowerOp::Reboot => d.reboot(&host, &inst.id).await,
                    PowerOp::Shutdown => d.shutdown(&host, &inst.id).await,
                    PowerOp::ForceShutdown => d.stop(&host, &inst.id).await,
                    PowerOp::PowerOn => d.start(&host, &inst.id).await,
                    PowerOp::PowerCycle => match d.stop(&host, &inst.id).await {
                        Ok(()) => d.start(&host, &inst.id).await,
                        Err(e) => Err(e),
                    },
                };
                match r {
                    Ok(()) => Outcome::Done(format!("{} completed", task.operation)),
                    Err(e) => self.on_driver_error(task, task.operation.as_str(), e),
                }
            }
        }
    }

    async fn create(&self, task: &TaskRow, host: &Host, inst: &InstanceRow) -> Outcome {
        let vm = spec(inst);
        if let Err(e) = self
            .step(task, "Creating VM", self.driver.create(host, &vm))
            .await
        {
            return self.on_driver_error(task, "create", e);
        }
        if let Err(e) = self
            .step(task, "Starting VM", self.driver.start(host, &inst.id))
            .await
        {
            return self.on_driver_error(task, "start", e);
        }
        self.finish_create(task, host, inst).await
    }

    /// Writes a create's end here, inside the heartbeat's cover, rather than in `record`:
    /// a firewall configured while the VM was being built must go on before the instance is
    /// shown ready, and the end is written only if the firewall is still the one applied.
    /// Most instances have none, so the common case reads nothing: the end is written as
    /// "no firewall", and only a refusal sends the worker to read and apply it.
    /// On PostgreSQL the check reads the finishing statement's snapshot, so a firewall
    /// change that commits while that statement runs is not seen by it; the apply task the
    /// change queued (it waits for the VM) puts it on right after. SQLite's single writer
    /// leaves no such window.
    async fn finish_create(&self, task: &TaskRow, host: &Host, inst: &InstanceRow) -> Outcome {
        let mut applied = -1;
        // Each round is a firewall change made while this create was finishing.
        for _ in 0..10 {
            let item = Created {
                task_id: task.id.clone(),
                instance_id: inst.id.clone(),
                firewall_version: applied,
                owner: owner_of(task).to_string(),
            };
            let now = || self.clock.now().millis();
            match self.finisher.finish_created(&self.store, now, item).await {
                Ok(CreatedEnd::Finished) => return Outcome::Recorded,
                Ok(CreatedEnd::LeaseLost) => {
                    tracing::warn!(task = %task.id, "lease lost before the create's end was written");
                    return Outcome::Recorded;
                }
                Ok(CreatedEnd::FirewallChanged) => {}
                Err(e) => return Outcome::Retry(format!("database: {e}")),
            }
            match self.store.firewall_versioned(&inst.id).await {
                Ok((fw, version)) => {
                    if fw != Firewall::default() {
                        if let Err(e) = self.driver.apply_firewall(host, &inst.id, &fw).await {
                            return self.on_driver_error(task, "apply firewall", e);
                        }
                    }
                    applied = version;
                }
                Err(e) => return Outcome::Retry(format!("database: {e}")),
            }
        }
        Outcome::Retry("the firewall kept changing while the VM was finished".into())
    }

    /// Writes a delete's end (task COMPLETED, instance deleted, its capacity and addresses
    /// given back) with the other deletes that end meanwhile, inside the heartbeat's cover.
    async fn finish_delete(&self, task: &TaskRow, inst: &InstanceRow) -> Outcome {
        let item = Deleted {
            task_id: task.id.clone(),
            instance_id: inst.id.clone(),
            owner: owner_of(task).to_string(),
        };
        let now = || self.clock.now().millis();
        match self.finisher.finish_deleted(&self.store, now, item).await {
            Ok(true) => Outcome::Recorded,
            Ok(false) => {
                tracing::warn!(task = %task.id, "lease lost before the delete's end was written");
                Outcome::Recorded
            }
            Err(e) => Outcome::Retry(format!("database: {e}")),
        }
    }

    /// Pushes the firewall or the address set as it is now. While the VM is still being
    /// created the task waits (without using up attempts); for a VM that is gone there is
    /// nothing to do.
    ///
    /// What was pushed is read again after the push, and pushed again while it changed:
    /// every change queues a task of its own, and those of one instance run side by side, so
    /// a task that read before a change could otherwise push last and leave the host with
    /// the older set (a firewall rule missing) while every task says COMPLETED. The last
    /// task to finish has pushed what it read after its own push.
    async fn push_config(
        &self,
        task: &TaskRow,
        kind: TaskKind,
        host: &Host,
        inst: &InstanceRow,
    ) -> Outcome {
        match inst.status.as_str() {
            "creating" => return Outcome::Wait("waiting for the VM to be created".into()),
            "deleted" | "failed" => return Outcome::Done("instance no longer exists".into()),
            _ => {}
        }
        if task.attempts > task.max_attempts {
            return Outcome::Fail(format!("gave up after {} attempts", task.max_attempts));
        }
        let mut want = match self.read_config(kind, &inst.id).await {
            Ok(c) => c,
            Err(e) => return Outcome::Retry(format!("database: {e}")),
        };
        for _ in 0..10 {
            let pushed = match &want {
                Config::Firewall(fw) => self.driver.apply_firewall(host, &inst.id, fw).await,
                Config::Ips(nics) => self.driver.set_ips(host, &inst.id, nics).await,
            };
            if let Err(e) = pushed {
                return self.on_driver_error(task, task.operation.as_str(), e);
            }
            let now = match self.read_config(kind, &inst.id).await {
                Ok(c) => c,
                Err(e) => return Outcome::Retry(format!("database: {e}")),
            };
            if now == want {
                return match want {
                    Config::Firewall(_) => Outcome::Done("Firewall applied".into()),
                    Config::Ips(_) => Outcome::Done("Addresses applied".into()),
                };
            }
            want = now;
        }
        Outcome::Retry("the configuration kept changing while it was pushed".into())
    }

    /// The firewall (`ApplyFirewall`) or the address set (otherwise) of `id` as it is now.
    async fn read_config(&self, kind: TaskKind, id: &str) -> Result<Config, Error> {
        if kind == TaskKind::ApplyFirewall {
            return Ok(Config::Firewall(self.store.firewall_get(id).await?));
        }
        let rows = self.store.ip_list(id).await?;
        let nics = rows
            .into_iter()
            .map(|r| NicAddress {
                address: r.address,
                interface_name: r.interface_name,
                mac_address: r.mac_address,
                is_primary: r.is_primary,
            })
            .collect();
        Ok(Config::Ips(nics))
    }

    /// A create that will not succeed removes whatever it built before its capacity is
    /// released; if the host cannot be reached for that, the task retries the clean-up.
    async fn compensate_create(
        &self,
        task: &TaskRow,
        host: &Host,
        inst: &InstanceRow,
        why: String,
    ) -> Outcome {
        match self.driver.destroy(host, &inst.id).await {
            Ok(()) => Outcome::Fail(why),
            Err(e) if task.attempts < task.max_attempts + CLEANUP_TRIES => {
                Outcome::Retry(format!("{why}; cleaning up: {e}"))
            }
            Err(e) => {
                tracing::error!(vm = %inst.id, host = %host.id, "leaving a VM behind after failed create: {e}");
                Outcome::Fail(format!("{why}; the VM could not be removed: {e}"))
            }
        }
    }

    /// Writes the end of a task and the state change it causes in one transaction, only while
    /// this worker still holds the lease. A database error leaves the task leased, to be
    /// reclaimed and finished later; nothing is half-written.
    pub(crate) async fn finish(
        &self,
        task: &TaskRow,
        ok: bool,
        msg: &str,
        inst: Option<&InstanceRow>,
    ) -> Result<(), Error> {
        let kind = TaskKind::parse(&task.operation);
        // What a failed power operation left behind, asked before the transaction: a write
        // transaction never waits on a host.
        let mut power_after_failure = None;
        if let (Some(TaskKind::Power(_) | TaskKind::Restore), false, Some(inst)) = (kind, ok, inst)
        {
            if let Some(host) = self.fleet.host(&inst.host_id) {
                power_after_failure = self.driver.power_state(host, &inst.id).await.ok().flatten();
            }
        }
        let now = self.clock.now().millis();
        let status = if ok {
            TaskStatus::Completed
        } else {
            TaskStatus::Failed
        };
        let mut tx = self.store.begin().await?;
        if !tx
            .task_finish(&task.id, owner_of(task), status.as_str(), msg, now)
            .await?
        {
            return Ok(()); // lease lost: the new holder finishes it; dropping tx rolls back.
        }
        if let (Some(kind), Some(inst)) = (kind, inst) {
            let (id, t) = (inst.id.as_str(), task.id.as_str());
            match (kind, ok) {
                // Not reached: a create's run writes its own end (`finish_create`); kept so
                // the match stays exhaustive and correct.
                (TaskKind::CreateInstance, true) => {
                    tx.instance_created(id, t, now).await?;
                }
                // A delete that went well ends in its run too (`finish_delete`); this arm
                // serves a failed create, and stays correct for a delete.
                (TaskKind::CreateInstance, false) | (TaskKind::DeleteInstance, true) => {
                    let end = if ok { "deleted" } else { "failed" };
                    // The host first, as a batch of launches (which may be writing this
                    // name again) locks it before it waits for the name.
                    tx.hosts_lock(&[inst.host_id.as_str()]).await?;
                    // instance_end is true exactly once, so capacity is released exactly once.
                    if tx.instance_end(id, t, end, now).await? {
                        tx.host_release(&inst.host_id, &inst.resources).await?;
                        tx.ip_release_all(id, now).await?;
                    }
                }
                (TaskKind::DeleteInstance, false) => {
                    tx.instance_unclaim(id, t, "rented", now).await?;
                }
                (TaskKind::Power(op), true) => {
                    tx.instance_release(id, t, Some(op.result().as_str()), now)
                        .await?;
                }
                (TaskKind::ApplyFirewall | TaskKind::SyncIps, _) => {}
                (TaskKind::Backup | TaskKind::Restore | TaskKind::DeleteBackup, _) => {
                    let power = power_after_failure.map(|p| p.as_str());
                    self.finish_backup(&mut tx, (kind, ok), task, inst, power, now)
                        .await?;
                }
                (TaskKind::Power(_), false) => {
                    tx.instance_release(id, t, power_after_failure.map(|p| p.as_str()), now)
                        .await?;
                }
            }
        }
        tx.commit().await
    }
}
