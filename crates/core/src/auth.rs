//! Who is calling and what they may do. The role model is the organisation model shared by all
//! three dialects: an account (organisation) has members with OWNER/ADMIN/MEMBER/VIEWER roles;
//! an API key acts as a member with one role, optionally scoped to one team; staff keys belong
//! to the operator and may use operator-only endpoints.

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s.to_ascii_lowercase().as_str() {
            "viewer" => Some(Role::Viewer),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read instances, tasks, catalog.
    Read,
    /// Launch, power, rename and delete instances.
    InstanceWrite,
    /// Manage teams and team membership of instances.
    Manage,
    /// Operator-only endpoints (launch-custom, resources).
    Staff,
}

/// The authenticated caller, resolved once per request from the API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub account_id: String,
    pub key_id: String,
    pub role: Role,
    pub team_id: Option<String>,
    pub staff: bool,
}

impl Caller {
    pub fn can(&self, p: Permission) -> bool {
        match p {
            Permission::Read => true,
            Permission::InstanceWrite => self.role >= Role::Member,
            Permission::Manage => self.role >= Role::Admin,
            Permission::Staff => self.staff,
        }
    }

    pub fn require(&self, p: Permission) -> Result<(), Error> {
        if self.can(p) {
            return Ok(());
        }
        Err(Error::forbidden(match p {
            Permission::Read => "Read permission required",
            Permission::InstanceWrite => "Write permission required",
            Permission::Manage => "Owner or admin role required",
            Permission::Staff => "Staff permission required",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, staff: bool) -> Caller {
        Caller {
            account_id: "a".into(),
            key_id: "k".into(),
            role,
            team_id: None,
            staff,
        }
    }

    #[test]
    fn viewer_cannot_mutate() {
        let v = caller(Role::Viewer, false);
        assert!(v.can(Permission::Read));
        assert!(!v.can(Permission::InstanceWrite));
        assert!(matches!(
            v.require(Permission::InstanceWrite),
            Err(Error::Forbidden { .. })
        ));
    }

    #[test]
    fn roles_are_ordered() {
        assert!(caller(Role::Member, false).can(Permission::InstanceWrite));
        assert!(!caller(Role::Member, false).can(Permission::Manage));
        assert!(caller(Role::Admin, false).can(Permission::Manage));
        assert!(!caller(Role::Owner, false).can(Permission::Staff));
        assert!(caller(Role::Viewer, true).can(Permission::Staff));
    }

    #[test]
    fn role_parse_roundtrip() {
        for r in [Role::Viewer, Role::Member, Role::Admin, Role::Owner] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("OWNER"), Some(Role::Owner));
        assert_eq!(Role::parse("root"), None);
    }
}
