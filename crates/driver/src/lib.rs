//! The `Hypervisor` trait and its drivers. A driver speaks in core types and knows nothing of
//! HTTP or the database. Every operation names the host it acts on and is idempotent: the
//! engine (not the driver) owns retries and state, and may repeat any call after a crash.

pub mod sim;
pub mod timed;

use async_trait::async_trait;
use lobster_core::capacity::Resources;
use lobster_core::firewall::Firewall;
use lobster_core::fleet::Host;
use lobster_core::instance::PowerStatus;

/// Live usage as the hypervisor reports it; all zero for a stopped VM.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VmStats {
    pub cpu_usage_percent: f64,
    pub memory_used_bytes: u64,
    pub disk_read_bytes_sec: u64,
    pub disk_write_bytes_sec: u64,
    pub net_in_bytes_sec: u64,
    pub net_out_bytes_sec: u64,
    pub uptime_seconds: u64,
}

/// Where a VM's VNC console can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleEndpoint {
    pub host: String,
    pub port: u16,
}

/// An address on one of a VM's interfaces.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NicAddress {
    pub address: String,
    pub interface_name: String,
    pub mac_address: String,
    pub is_primary: bool,
}

/// Everything a driver needs to build a VM: the disk source, cloud-init data and shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VmSpec {
    pub id: String,
    pub hostname: String,
    pub resources: Resources,
    pub gpu_model: Option<String>,
    pub template: Option<String>,
    pub iso_url: Option<String>,
    pub username: String,
    pub ssh_keys: Vec<String>,
    pub password: Option<String>,
    pub ip_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// Worth retrying: timeouts, a busy host, a lost connection.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help: the host refuses the request.
    #[error("{0}")]
    Permanent(String),
}

impl DriverError {
    pub fn is_transient(&self) -> bool {
        matches!(self, DriverError::Transient(_))
    }
}

pub type DriverResult<T> = Result<T, DriverError>;

#[async_trait]
pub trait Hypervisor: Send + Sync + 'static {
    /// The driver's name as configured (`sim`, `libvirt`).
    fn kind(&self) -> &'static str;
    async fn health(&self) -> DriverResult<()>;
    /// Creates the VM (stopped) unless it already exists.
    async fn create(&self, host: &Host, spec: &VmSpec) -> DriverResult<()>;
    async fn start(&self, host: &Host, vm: &str) -> DriverResult<()>;
    /// Graceful (ACPI) shutdown.
    async fn shutdown(&self, host: &Host, vm: &str) -> DriverResult<()>;
    /// Immediate power off.
    async fn stop(&self, host: &Host, vm: &str) -> DriverResult<()>;
    /// Hard reboot: the VM is running afterwards.
    async fn reboot(&self, host: &Host, vm: &str) -> DriverResult<()>;
    /// Removes the VM and its disks; a VM that does not exist is already destroyed.
    async fn destroy(&self, host: &Host, vm: &str) -> DriverResult<()>;
    /// Replaces the VM's firewall with `fw` (the whole set, so re-applying is harmless).
    async fn apply_firewall(&self, host: &Host, vm: &str, fw: &Firewall) -> DriverResult<()>;
    /// Makes the VM's public addresses exactly `ips` (whitelisting each on its interface).
    async fn set_ips(&self, host: &Host, vm: &str, ips: &[NicAddress]) -> DriverResult<()>;
    /// Takes a live backup of the VM's disk into `volid` (on `storage`) and returns its size
    /// in bytes. A backup that already exists is not taken again.
    async fn backup(&self, host: &Host, vm: &str, storage: &str, volid: &str) -> DriverResult<u64>;
    /// Stops the VM, replaces its disk with the backup's, and starts it again.
    async fn restore(&self, host: &Host, vm: &str, storage: &str, volid: &str) -> DriverResult<()>;
    /// Removes a backup from its storage; one that does not exist is already removed.
    async fn delete_backup(&self, storage: &str, volid: &str) -> DriverResult<()>;
    /// Whether `volid` is on `storage` (what a task that gives up asks, so the record it
    /// leaves says what the storage holds).
    async fn backup_exists(&self, storage: &str, volid: &str) -> DriverResult<bool>;
    /// Current usage; zeros when the VM is stopped.
    async fn stats(&self, host: &Host, vm: &str) -> DriverResult<VmStats>;
    /// The VNC endpoint of a running VM.
    async fn console(&self, host: &Host, vm: &str) -> DriverResult<ConsoleEndpoint>;
    /// `None` when the VM does not exist on the host.
    async fn power_state(&self, host: &Host, vm: &str) -> DriverResult<Option<PowerStatus>>;
}
