//! Firewall commands: options, rule insert/get/delete. Each change is written together with
//! an `apply_firewall` task that pushes the resulting rule set to the host.

use crate::auth::scope;
use crate::App;
use lobster_core::auth::{Caller, Role};
use lobster_core::firewall::{parse_policy, Firewall, Rule};
use lobster_core::task::TaskKind;
use lobster_core::Error;
use lobster_store::{InstanceRow, Tx};

/// New default policies; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct FirewallOptions {
    pub enable: Option<bool>,
    pub policy_in: Option<String>,
    pub policy_out: Option<String>,
}

fn require_firewall_role(caller: &Caller) -> Result<(), Error> {
    if caller.role >= Role::Member {
        return Ok(());
    }
    Err(Error::forbidden(format!(
        "Your team role '{}' cannot manage firewall. Required: owner, admin, or member",
        caller.role.as_str()
    )))
}

fn rule_not_found(pos: i64) -> Error {
    Error::NotFound {
        kind: "rule",
        id: format!("{pos}"),
    }
}

impl App {
    async fn firewall_instance(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        id: &str,
    ) -> Result<InstanceRow, Error> {
        require_firewall_role(caller)?;
        tx.instance_get(&scope(caller), id)
            .await?
            .ok_or_else(|| Error::not_found("instance", id))
    }

    /// Writes the firewall and queues its application, in the caller's transaction.
    async fn firewall_save(
        &self,
        mut tx: Tx,
        inst: &InstanceRow,
        fw: &Firewall,
        now: i64,
    ) -> Result<(), Error> {
        tx.firewall_put(&inst.id, fw, now).await?;
        tx.task_insert(&self.config_task(TaskKind::ApplyFirewall, inst, now))
            .await?;
        tx.commit().await?;
        self.wake_workers();
        Ok(())
    }

    pub async fn firewall_get(&self, caller: &Caller, id: &str) -> Result<Firewall, Error> {
        require_firewall_role(caller)?;
        let inst = self
            .store
            .instance_get(&scope(caller), id)
            .await?
            .ok_or_else(|| Error::not_found("instance", id))?;
        self.store.firewall_get(&inst.id).await
    }

    pub async fn firewall_options_set(
        &self,
        caller: &Caller,
        id: &str,
        opts: FirewallOptions,
    ) -> Result<Firewall, Error> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        // Who may, and which instance, before what the body says: a viewer is 403 and an
        // unknown id 404 whatever the body holds.
        let inst = self.firewall_instance(&mut tx, caller, id).await?;
        for p in [&opts.policy_in, &opts.policy_out].into_iter().flatten() {
            if parse_policy(p).is_none() {
                return Err(Error::bad_request(
                    "invalid_policy",
                    format!("Invalid policy {p:?}: must be ACCEPT or DROP"),
                ));
            }
        }
        let mut fw = tx.firewall_lock(&inst.id, now).await?;
        if let Some(e) = opts.enable {
            fw.enabled = e;
        }
        if let Some(p) = opts.policy_in {
            fw.policy_in = p;
        }
        if let Some(p) = opts.policy_out {
            fw.policy_out = p;
        }
        self.firewall_save(tx, &inst, &fw, now).await?;
        Ok(fw)
    }

    /// Inserts the rule at `pos` (default 0, as Proxmox does: clients that add rules in
    /// reverse order rely on it). Returns the position it took.
    pub async fn firewall_rule_add(
        &self,
        caller: &Caller,
        id: &str,
        rule: Rule,
        pos: Option<i64>,
    ) -> Result<i64, Error> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let inst = self.firewall_instance(&mut tx, caller, id).await?;
        rule.validate()
            .map_err(|m| Error::bad_request("invalid_rule", m))?;
        let mut fw = tx.firewall_lock(&inst.id, now).await?;
        let pos = pos.unwrap_or(0);
        if pos < 0 || pos as usize > fw.rules.len() {
            return Err(Error::bad_request(
                "invalid_rule",
                format!(
                    "Invalid pos {pos}: must be between 0 and {}",
                    fw.rules.len()
                ),
            ));
        }
        if fw.rules.len() >= 256 {
            return Err(Error::bad_request(
                "invalid_rule",
                "An instance has at most 256 firewall rules",
            ));
        }
        fw.rules.insert(pos as usize, rule);
        self.firewall_save(tx, &inst, &fw, now).await?;
        Ok(pos)
    }

    pub async fn firewall_rule_get(
        &self,
        caller: &Caller,
        id: &str,
        pos: i64,
    ) -> Result<Rule, Error> {
        let fw = self.firewall_get(caller, id).await?;
        usize::try_from(pos)
            .ok()
            .and_then(|p| fw.rules.get(p).cloned())
            .ok_or_else(|| rule_not_found(pos))
    }

    /// Deletes the rule at `pos`; the rules after it move up one place.
    pub async fn firewall_rule_delete(
        &self,
        caller: &Caller,
        id: &str,
        pos: i64,
    ) -> Result<(), Error> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let inst = self.firewall_instance(&mut tx, caller, id).await?;
        let mut fw = tx.firewall_lock(&inst.id, now).await?;
        let Some(p) = usize::try_from(pos).ok().filter(|p| *p < fw.rules.len()) else {
            return Err(rule_not_found(pos));
        };
        fw.rules.remove(p);
        self.firewall_save(tx, &inst, &fw, now).await
    }
}
