//! The instance life cycle: `creating -> rented -> terminating -> deleted` (or `failed` when
//! creation gives up), and the power state, which is exactly `running` or `stopped` when idle.

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceStatus {
    Creating,
    Rented,
    Terminating,
    Deleted,
    Failed,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Creating => "creating",
            InstanceStatus::Rented => "rented",
            InstanceStatus::Terminating => "terminating",
            InstanceStatus::Deleted => "deleted",
            InstanceStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => InstanceStatus::Creating,
            "rented" => InstanceStatus::Rented,
            "terminating" => InstanceStatus::Terminating,
            "deleted" => InstanceStatus::Deleted,
            "failed" => InstanceStatus::Failed,
            _ => return None,
        })
    }

    /// Still holds capacity and is visible to its owner.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            InstanceStatus::Creating | InstanceStatus::Rented | InstanceStatus::Terminating
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerStatus {
    Running,
    Stopped,
}

impl PowerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerStatus::Running => "running",
            PowerStatus::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(PowerStatus::Running),
            "stopped" => Some(PowerStatus::Stopped),
            _ => None,
        }
    }
}

/// Power operations a tenant can ask for, and the power state each leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerOp {
    Reboot,
    Shutdown,
    ForceShutdown,
    PowerOn,
    PowerCycle,
}

impl PowerOp {
    pub fn result(self) -> PowerStatus {
        match self {
            PowerOp::Shutdown | PowerOp::ForceShutdown => PowerStatus::Stopped,
            PowerOp::Reboot | PowerOp::PowerOn | PowerOp::PowerCycle => PowerStatus::Running,
        }
    }

    /// The queued message the Blue Lobster API answers with.
    pub fn queued_message(self) -> &'static str {
        match self {
            PowerOp::Reboot => "VM reboot queued",
            PowerOp::Shutdown => "VM shutdown queued",
            PowerOp::ForceShutdown => "VM force shutdown queued",
            PowerOp::PowerOn => "VM power on queued",
            PowerOp::PowerCycle => "VM power cycle queued",
        }
    }
}

/// Mutating operations (power, delete, later backup/restore) need a settled instance.
/// `creating` counts as busy: its create task holds the instance. A terminating instance is
/// busy too, except that a second delete gets the spec's 400 `invalid_state`.
pub fn check_mutable(
    status: InstanceStatus,
    busy: bool,
    id: &str,
    deleting: bool,
) -> Result<(), Error> {
    match status {
        InstanceStatus::Rented if !busy => Ok(()),
        InstanceStatus::Rented | InstanceStatus::Creating => Err(Error::operation_in_progress()),
        InstanceStatus::Terminating if !deleting => Err(Error::operation_in_progress()),
        InstanceStatus::Terminating => Err(Error::bad_request(
            "invalid_state",
            "VM is not in 'rented' status: terminating",
        )),
        InstanceStatus::Deleted | InstanceStatus::Failed => Err(Error::not_found("instance", id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_roundtrip() {
        for s in [
            InstanceStatus::Creating,
            InstanceStatus::Rented,
            InstanceStatus::Terminating,
            InstanceStatus::Deleted,
            InstanceStatus::Failed,
        ] {
            assert_eq!(InstanceStatus::parse(s.as_str()), Some(s));
        }
        assert!(InstanceStatus::Terminating.is_live());
        assert!(!InstanceStatus::Failed.is_live());
    }

    #[test]
    fn mutability() {
        assert!(check_mutable(InstanceStatus::Rented, false, "x", false).is_ok());
        assert!(matches!(
            check_mutable(InstanceStatus::Rented, true, "x", false),
            Err(Error::Conflict {
                code: "operation_in_progress",
                ..
            })
        ));
        assert!(matches!(
            check_mutable(InstanceStatus::Creating, true, "x", true),
            Err(Error::Conflict { .. })
        ));
        assert!(matches!(
            check_mutable(InstanceStatus::Terminating, true, "x", true),
            Err(Error::BadRequest {
                code: "invalid_state",
                ..
            })
        ));
        assert!(matches!(
            check_mutable(InstanceStatus::Terminating, true, "x", false),
            Err(Error::Conflict {
                code: "operation_in_progress",
                ..
            })
        ));
        assert!(matches!(
            check_mutable(InstanceStatus::Deleted, false, "x", false),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn power_results() {
        assert_eq!(PowerOp::Shutdown.result(), PowerStatus::Stopped);
        assert_eq!(PowerOp::PowerCycle.result(), PowerStatus::Running);
    }
}
