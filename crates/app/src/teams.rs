//! Team membership of instances. Moving instances between teams changes who can see them, so
//! only account-wide owner and admin keys may do it.

use crate::auth::scope;
use crate::App;
use lobster_core::auth::{Caller, Permission};
use lobster_core::Error;
use lobster_store::{InstanceRow, Scope, TeamRow};

impl App {
    fn require_team_manager(caller: &Caller, verb: &str) -> Result<(), Error> {
        if caller.can(Permission::Manage) && caller.team_id.is_none() {
            return Ok(());
        }
        Err(Error::forbidden(format!(
            "Only account owners/admins can {verb} teams"
        )))
    }

    pub async fn instance_team_set(
        &self,
        caller: &Caller,
        id: &str,
        team_id: &str,
    ) -> Result<(InstanceRow, TeamRow), Error> {
        Self::require_team_manager(caller, "assign VMs to")?;
        let team = self
            .store
            .team_find(&caller.account_id, team_id)
            .await?
            .filter(|t| t.id == team_id)
            .ok_or_else(|| Error::not_found("team", team_id))?;
        let mut tx = self.store.begin().await?;
        let inst = tx
            .instance_get(&scope(caller), id)
            .await?
            .ok_or_else(|| Error::not_found("instance", id))?;
        tx.instance_set_team(&inst.id, Some(&team.id), self.now())
            .await?;
        tx.commit().await?;
        Ok((inst, team))
    }

    pub async fn instance_team_clear(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<InstanceRow, Error> {
        Self::require_team_manager(caller, "remove VMs from")?;
        let mut tx = self.store.begin().await?;
        let inst = tx
            .instance_get(&scope(caller), id)
            .await?
            .ok_or_else(|| Error::not_found("instance", id))?;
        tx.instance_set_team(&inst.id, None, self.now()).await?;
        tx.commit().await?;
        Ok(inst)
    }

    /// A team of the caller's account and its live instances. A team-scoped key sees only its
    /// own team; any other is 404, like every resource outside the caller's scope.
    pub async fn team_instances(
        &self,
        caller: &Caller,
        team_id: &str,
    ) -> Result<(TeamRow, std::sync::Arc<Vec<InstanceRow>>), Error> {
        caller.require(Permission::Read)?;
        if caller.team_id.as_deref().is_some_and(|t| t != team_id) {
            return Err(Error::not_found("team", team_id));
        }
        let team = self
            .store
            .team_find(&caller.account_id, team_id)
            .await?
            .filter(|t| t.id == team_id)
            .ok_or_else(|| Error::not_found("team", team_id))?;
        let sc = Scope {
            account_id: caller.account_id.clone(),
            team_id: Some(team.id.clone()),
        };
        let list = self.store.instance_list(&sc).await?;
        Ok((team, list))
    }
}
