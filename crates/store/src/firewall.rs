//! Per-instance firewalls, stored whole as JSON: rules shift positions on every insert and
//! delete, so the rule list is read, changed and written back under the row's lock.

use crate::{db_err, get_i64, get_str, Store, Tx};
use lobster_core::firewall::Firewall;
use lobster_core::Error;

fn decode(s: &str) -> Result<Firewall, Error> {
    serde_json::from_str(s).map_err(|e| Error::Internal(format!("stored firewall: {e}")))
}

impl Store {
    /// The instance's firewall; the default (off) when it was never configured.
    pub async fn firewall_get(&self, instance_id: &str) -> Result<Firewall, Error> {
        let r = sqlx::query("SELECT config FROM firewalls WHERE instance_id = $1")
            .bind(instance_id)
            .fetch_optional(self.reader())
            .await
            .map_err(db_err)?;
        match r {
            Some(r) => decode(&get_str(&r, "config")?),
            None => Ok(Firewall::default()),
        }
    }

    /// The instance's firewall and its version (every change counts one up); the default
    /// and -1 when it was never configured. The engine applies a firewall and then finishes
    /// a create only if the version is still the one it applied.
    pub async fn firewall_versioned(&self, instance_id: &str) -> Result<(Firewall, i64), Error> {
        let r = sqlx::query("SELECT config, version FROM firewalls WHERE instance_id = $1")
            .bind(instance_id)
            .fetch_optional(self.reader())
            .await
            .map_err(db_err)?;
        match r {
            Some(r) => Ok((decode(&get_str(&r, "config")?)?, get_i64(&r, "version")?)),
            None => Ok((Firewall::default(), -1)),
        }
    }
}

impl Tx {
    /// Reads the firewall for a change, locking its row (created on first use) until commit,
    /// so concurrent edits apply one after the other instead of losing each other.
    pub async fn firewall_lock(&mut self, instance_id: &str, now: i64) -> Result<Firewall, Error> {
        let default = serde_json::to_string(&Firewall::default()).expect("serialisable");
        self.q(
            "INSERT INTO firewalls (instance_id, config, version, updated_at) VALUES ($1, $2, 0, $3)
             ON CONFLICT (instance_id) DO UPDATE SET version = firewalls.version + 1",
        )
            .bind(instance_id)
            .bind(&default)
            .bind(now)
            .execute()
            .await?;
        let r = self
            .q("SELECT config FROM firewalls WHERE instance_id = $1")
            .bind(instance_id)
            .fetch_one()
            .await?;
        decode(&get_str(&r, "config")?)
    }

    pub async fn firewall_put(
        &mut self,
        instance_id: &str,
        fw: &Firewall,
        now: i64,
    ) -> Result<(), Error> {
        let config = serde_json::to_string(fw).expect("serialisable");
        self.q("UPDATE firewalls SET config = $1, updated_at = $2 WHERE instance_id = $3")
            .bind(&config)
            .bind(now)
            .bind(instance_id)
            .execute()
            .await?;
        Ok(())
    }
}
