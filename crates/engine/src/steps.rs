//! What each task kind does against the driver, and how its end is written down. Every
//! driver step is idempotent, so a task reclaimed after a crash simply runs again.

use crate::{Engine, Outcome};
use lobster_core::fleet::Host;
use lobster_core::instance::PowerOp;
use lobster_core::task::{TaskKind, TaskStatus};
use lobster_core::Error;
use lobster_driver::VmSpec;
use lobster_store::{InstanceRow, TaskRow};

/// Extra attempts a failed create gets to clean up its half-built VM before capacity is
/// released anyway (and the leftover is logged for the operator).
const CLEANUP_TRIES: i64 = 10;

fn spec(i: &InstanceRow) -> VmSpec {
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
            .task_progress(&task.id, &self.worker_id, message, now)
            .await
        {
            tracing::warn!(task = %task.id, "progress: {e}");
        }
    }

    async fn target(&self, task: &TaskRow) -> Result<(TaskKind, InstanceRow, Host), Outcome> {
        let kind = TaskKind::parse(&task.operation)
            .ok_or_else(|| Outcome::Fail(format!("unknown operation {:?}", task.operation)))?;
        let id = task
            .instance_id
            .as_deref()
            .ok_or_else(|| Outcome::Fail("task names no instance".into()))?;
        let inst = match self.store.instance_by_id(id).await {
            Ok(Some(i)) => i,
            Ok(None) => return Err(Outcome::Fail(format!("instance {id} does not exist"))),
            Err(e) => return Err(Outcome::Retry(format!("database: {e}"))),
        };
        let host = self.fleet.host(&inst.host_id).cloned().ok_or_else(|| {
            Outcome::Fail(format!("host {} is no longer configured", inst.host_id))
        })?;
        Ok((kind, inst, host))
    }

    pub(crate) async fn execute(&self, task: &TaskRow) -> Outcome {
        let (kind, inst, host) = match self.target(task).await {
            Ok(t) => t,
            Err(o) => return o,
        };
        if task.attempts > task.max_attempts {
            return Outcome::Fail(format!("gave up after {} attempts", task.max_attempts));
        }
        let d = &self.driver;
        match kind {
            TaskKind::CreateInstance => {
                self.progress(task, "Creating VM").await;
                if let Err(e) = d.create(&host, &spec(&inst)).await {
                    return self.on_driver_error(task, "create", e);
                }
                self.progress(task, "Starting VM").await;
                if let Err(e) = d.start(&host, &inst.id).await {
                    return self.on_driver_error(task, "start", e);
                }
                Outcome::Done("VM created successfully".into())
            }
            TaskKind::DeleteInstance => match d.destroy(&host, &inst.id).await {
                Ok(()) => Outcome::Done("VM deleted successfully".into()),
                Err(e) => self.on_driver_error(task, "destroy", e),
            },
            TaskKind::Power(op) => {
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

    /// Writes the end of a task and the state change it causes in one transaction, only while
    /// this worker still holds the lease.
    pub(crate) async fn finish(&self, task: &TaskRow, ok: bool, msg: &str) -> Result<(), Error> {
        let target = self.target(task).await;
        let (kind, inst, host) = match target {
            Ok(t) => (Some(t.0), Some(t.1), Some(t.2)),
            Err(_) => (None, None, None),
        };
        // Driver work happens before the transaction: a write transaction never waits on a host.
        let mut power_after_failure = None;
        if let (Some(kind), Some(inst), Some(host)) = (kind, &inst, &host) {
            match (kind, ok) {
                (TaskKind::CreateInstance, false) => {
                    if let Err(e) = self.driver.destroy(host, &inst.id).await {
                        if task.attempts < task.max_attempts + CLEANUP_TRIES {
                            let m = format!("{msg}; cleaning up: {e}");
                            let now = self.clock.now().millis();
                            let at = now + lobster_core::task::backoff_ms(task.attempts);
                            self.store
                                .task_retry(&task.id, &self.worker_id, at, &m, now)
                                .await?;
                            return Ok(());
                        }
                        tracing::error!(vm = %inst.id, host = %host.id, "leaving a VM behind after failed create: {e}");
                    }
                }
                (TaskKind::Power(_), false) => {
                    power_after_failure =
                        self.driver.power_state(host, &inst.id).await.ok().flatten();
                }
                _ => {}
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
            .task_finish(&task.id, &self.worker_id, status.as_str(), msg, now)
            .await?
        {
            return Ok(()); // lease lost: the new holder finishes it; dropping tx rolls back.
        }
        if let (Some(kind), Some(inst)) = (kind, inst) {
            let (id, t) = (inst.id.as_str(), task.id.as_str());
            match (kind, ok) {
                (TaskKind::CreateInstance, true) => {
                    tx.instance_created(id, t, now).await?;
                }
                (TaskKind::CreateInstance, false) | (TaskKind::DeleteInstance, true) => {
                    let end = if ok { "deleted" } else { "failed" };
                    // instance_end is true exactly once, so capacity is released exactly once.
                    if tx.instance_end(id, t, end, now).await? {
                        tx.host_release(&inst.host_id, &inst.resources).await?;
                        tx.ip_release_all(id).await?;
                    }
                }
                (TaskKind::DeleteInstance, false) => {
                    tx.instance_unclaim(id, t, "rented", now).await?;
                }
                (TaskKind::Power(op), true) => {
                    tx.instance_release(id, t, Some(op.result().as_str()), now)
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
