//! Durable task kinds and states. A task's `operation` name is what the Blue Lobster API shows.

use crate::instance::PowerOp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    CreateInstance,
    DeleteInstance,
    Power(PowerOp),
    /// Pushes the instance's current firewall to its host. Does not hold the instance: it
    /// reads the latest configuration when it runs, so any order of runs converges.
    ApplyFirewall,
    /// Pushes the instance's current set of addresses to its host (same convergence rule).
    SyncIps,
    /// Live backup of an instance's disk (holds the instance).
    Backup,
    /// Replaces an instance's disk from a backup (holds the instance).
    Restore,
    /// Removes a backup from storage (the instance may be long gone).
    DeleteBackup,
}

impl TaskKind {
    pub fn operation(self) -> &'static str {
        match self {
            TaskKind::CreateInstance => "create_instance",
            TaskKind::DeleteInstance => "delete_instance",
            TaskKind::ApplyFirewall => "apply_firewall",
            TaskKind::SyncIps => "sync_ips",
            TaskKind::Backup => "create_backup",
            TaskKind::Restore => "restore_backup",
            TaskKind::DeleteBackup => "delete_backup",
            TaskKind::Power(PowerOp::Reboot) => "reboot_instance",
            TaskKind::Power(PowerOp::Shutdown) => "shutdown_instance",
            TaskKind::Power(PowerOp::ForceShutdown) => "force_shutdown_instance",
            TaskKind::Power(PowerOp::PowerOn) => "power_on_instance",
            TaskKind::Power(PowerOp::PowerCycle) => "power_cycle_instance",
        }
    }

    pub fn parse(s: &str) -> Option<TaskKind> {
        Some(match s {
            "create_instance" => TaskKind::CreateInstance,
            "delete_instance" => TaskKind::DeleteInstance,
            "apply_firewall" => TaskKind::ApplyFirewall,
            "sync_ips" => TaskKind::SyncIps,
            "create_backup" => TaskKind::Backup,
            "restore_backup" => TaskKind::Restore,
            "delete_backup" => TaskKind::DeleteBackup,
            "reboot_instance" => TaskKind::Power(PowerOp::Reboot),
            "shutdown_instance" => TaskKind::Power(PowerOp::Shutdown),
            "force_shutdown_instance" => TaskKind::Power(PowerOp::ForceShutdown),
            "power_on_instance" => TaskKind::Power(PowerOp::PowerOn),
            "power_cycle_instance" => TaskKind::Power(PowerOp::PowerCycle),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Processing => "PROCESSING",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
        }
    }

    /// Case-insensitive, as clients write `completed` as often as `COMPLETED`.
    pub fn parse(s: &str) -> Option<TaskStatus> {
        Some(match s.to_ascii_uppercase().as_str() {
            "PENDING" => TaskStatus::Pending,
            "PROCESSING" => TaskStatus::Processing,
            "COMPLETED" => TaskStatus::Completed,
            "FAILED" => TaskStatus::Failed,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed)
    }
}

/// Retry delay after the `attempt`-th failure: 1 s, 2 s, 4 s … capped at 60 s.
pub fn backoff_ms(attempt: i64) -> i64 {
    let exp = attempt.clamp(1, 7) - 1;
    (1000i64 << exp).min(60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_roundtrip() {
        for k in [
            TaskKind::CreateInstance,
            TaskKind::DeleteInstance,
            TaskKind::ApplyFirewall,
            TaskKind::SyncIps,
            TaskKind::Backup,
            TaskKind::Restore,
            TaskKind::DeleteBackup,
            TaskKind::Power(PowerOp::Reboot),
            TaskKind::Power(PowerOp::Shutdown),
            TaskKind::Power(PowerOp::ForceShutdown),
            TaskKind::Power(PowerOp::PowerOn),
            TaskKind::Power(PowerOp::PowerCycle),
        ] {
            assert_eq!(TaskKind::parse(k.operation()), Some(k));
        }
    }

    #[test]
    fn status_parse_is_case_insensitive() {
        assert_eq!(TaskStatus::parse("completed"), Some(TaskStatus::Completed));
        assert_eq!(TaskStatus::parse("nope"), None);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(50), 60_000);
    }
}
