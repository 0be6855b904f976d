//! A bound on every driver call. A host that stops answering (a hung libvirt connection, a
//! storage stall) must not hold a task's run, or an HTTP request, forever: the run would keep
//! its lease alive with heartbeats and the task would never end. `Timed` wraps any driver and
//! gives up on a call after its limit with a transient error, so the engine retries it
//! (every driver call is idempotent) or, its attempts used, fails the task.

use crate::{ConsoleEndpoint, DriverError, DriverResult, Hypervisor, NicAddress, VmSpec, VmStats};
use async_trait::async_trait;
use lobster_core::firewall::Firewall;
use lobster_core::fleet::Host;
use lobster_core::instance::PowerStatus;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long each kind of driver call may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Questions: health, stats, console, power state, whether a backup exists. Some are
    /// asked inside an HTTP request.
    pub read: Duration,
    /// Changes that take seconds on a real host: power, firewall, addresses, destroy,
    /// deleting a backup.
    pub change: Duration,
    /// Calls that copy a disk: create (from a template or an image), backup, restore.
    pub long: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            read: Duration::from_secs(30),
            change: Duration::from_secs(300),
            long: Duration::from_secs(4 * 3600),
        }
    }
}

/// A driver whose every call ends within its `CallLimits`.
pub struct Timed {
    inner: Arc<dyn Hypervisor>,
    limits: CallLimits,
}

impl Timed {
    pub fn new(inner: Arc<dyn Hypervisor>, limits: CallLimits) -> Self {
        Timed { inner, limits }
    }

    pub fn limits(&self) -> CallLimits {
        self.limits
    }
}

/// `call` (named `what`, on `on`), or a transient error once `limit` has passed. The call's
/// future is dropped then: a driver must leave nothing half-done that a repeat of the call
/// cannot finish (the trait's idempotence).
async fn within<T>(
    limit: Duration,
    what: &str,
    on: &str,
    call: impl Future<Output = DriverResult<T>>,
) -> DriverResult<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => answer,
        Err(_) => Err(DriverError::Transient(format!(
            "{what} on {on}: no answer within {}",
            shown(limit)
        ))),
    }
}

/// A limit as people write it: whole seconds, else milliseconds.
fn shown(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[async_trait]
impl Hypervisor for Timed {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn health(&self) -> DriverResult<()> {
        within(
            self.limits.read,
            "health",
            "the driver",
            self.inner.health(),
        )
        .await
    }

    async fn create(&self, host: &Host, spec: &VmSpec) -> DriverResult<()> {
        let call = self.inner.create(host, spec);
        within(self.limits.long, "create", &host.id, call).await
    }

    async fn start(&self, host: &Host, vm: &str) -> DriverResult<()> {
        within(
            self.limits.change,
            "start",
            &host.id,
            self.inner.start(host, vm),
        )
        .await
    }

    async fn shutdown(&self, host: &Host, vm: &str) -> DriverResult<()> {
        let call = self.inner.shutdown(host, vm);
        within(self.limits.change, "shutdown", &host.id, call).await
    }

    async fn stop(&self, host: &Host, vm: &str) -> DriverResult<()> {
        within(
            self.limits.change,
            "stop",
            &host.id,
            self.inner.stop(host, vm),
        )
        .await
    }

    async fn reboot(&self, host: &Host, vm: &str) -> DriverResult<()> {
        within(
            self.limits.change,
            "reboot",
            &host.id,
            self.inner.reboot(host, vm),
        )
        .await
    }

    async fn destroy(&self, host: &Host, vm: &str) -> DriverResult<()> {
        let call = self.inner.destroy(host, vm);
        within(self.limits.change, "destroy", &host.id, call).await
    }

    async fn apply_firewall(&self, host: &Host, vm: &str, fw: &Firewall) -> DriverResult<()> {
        let call = self.inner.apply_firewall(host, vm, fw);
        within(self.limits.change, "apply firewall", &host.id, call).await
    }

    async fn set_ips(&self, host: &Host, vm: &str, ips: &[NicAddress]) -> DriverResult<()> {
        let call = self.inner.set_ips(host, vm, ips);
        within(self.limits.change, "set addresses", &host.id, call).await
    }

    async fn backup(&self, host: &Host, vm: &str, storage: &str, volid: &str) -> DriverResult<u64> {
        let call = self.inner.backup(host, vm, storage, volid);
        within(self.limits.long, "backup", &host.id, call).await
    }

    async fn restore(&self, host: &Host, vm: &str, storage: &str, volid: &str) -> DriverResult<()> {
        let call = self.inner.restore(host, vm, storage, volid);
        within(self.limits.long, "restore", &host.id, call).await
    }

    async fn delete_backup(&self, storage: &str, volid: &str) -> DriverResult<()> {
        let call = self.inner.delete_backup(storage, volid);
        within(self.limits.change, "delete backup", storage, call).await
    }

    async fn backup_exists(&self, storage: &str, volid: &str) -> DriverResult<bool> {
        let call = self.inner.backup_exists(storage, volid);
        within(self.limits.read, "look for backup", storage, call).await
    }

    async fn stats(&self, host: &Host, vm: &str) -> DriverResult<VmStats> {
        within(
            self.limits.read,
            "stats",
            &host.id,
            self.inner.stats(host, vm),
        )
        .await
    }

    async fn console(&self, host: &Host, vm: &str) -> DriverResult<ConsoleEndpoint> {
        within(
            self.limits.read,
            "console",
            &host.id,
            self.inner.console(host, vm),
        )
        .await
    }

    async fn power_state(&self, host: &Host, vm: &str) -> DriverResult<Option<PowerStatus>> {
        let call = self.inner.power_state(host, vm);
        within(self.limits.read, "power state", &host.id, call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Op, SimConfig, SimDriver};

    fn host() -> Host {
        lobster_core::fleet::Fleet::demo().hosts[0].clone()
    }

    fn limits(ms: u64) -> CallLimits {
        let d = Duration::from_millis(ms);
        CallLimits {
            read: d,
            change: d,
            long: d,
        }
    }

    #[tokio::test]
    async fn a_call_that_never_answers_is_given_up_as_transient() {
        let sim = Arc::new(SimDriver::new(SimConfig::instant()));
        let timed = Timed::new(sim.clone(), limits(20));
        let _hold = sim.hold(Op::Start);
        let h = host();
        let err = timed.start(&h, "vm-1").await.unwrap_err();
        assert!(err.is_transient());
        assert_eq!(
            err.to_string(),
            format!("start on {}: no answer within 20 ms", h.id)
        );
        assert_eq!(sim.held_calls(), 1);
    }

    #[tokio::test]
    async fn a_call_within_its_limit_answers_as_the_driver_did() {
        let sim = Arc::new(SimDriver::new(SimConfig::instant()));
        let timed = Timed::new(sim.clone(), CallLimits::default());
        let h = host();
        assert_eq!(timed.power_state(&h, "vm-1").await, Ok(None));
        assert_eq!(timed.kind(), "sim");
        // A driver's own error comes through unchanged.
        let err = timed.start(&h, "vm-1").await.unwrap_err();
        assert_eq!(err, sim.start(&h, "vm-1").await.unwrap_err());
    }

    #[test]
    fn limits_are_shown_in_seconds_when_whole() {
        assert_eq!(shown(Duration::from_secs(300)), "300 s");
        assert_eq!(shown(Duration::from_millis(1500)), "1500 ms");
        assert_eq!(shown(Duration::from_millis(20)), "20 ms");
    }
}
