//! Operator commands: accounts, teams and API keys. They run in the CLI against the same
//! database as a running server, so they go through the store like everything else.

use crate::auth::key_digest;
use crate::App;
use lobster_core::auth::Role;
use lobster_core::ids;
use lobster_core::Error;
use lobster_store::{AccountRow, KeyRow, TeamRow};

#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub account: String,
    pub role: Option<String>,
    pub staff: bool,
    pub team: Option<String>,
    pub expires_in_days: Option<i64>,
    pub name: Option<String>,
}

fn valid_label(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

impl App {
    pub async fn account_create(&self, name: &str) -> Result<AccountRow, Error> {
        if !valid_label(name) {
            return Err(Error::bad_request(
                "invalid_name",
                "account names are 1-64 letters, digits, '-', '_' or '.'",
            ));
        }
        self.store
            .account_create(&ids::new_account_id(), name, self.now())
            .await
    }

    pub async fn account_list(&self) -> Result<Vec<AccountRow>, Error> {
        self.store.account_list().await
    }

    async fn account(&self, id_or_name: &str) -> Result<AccountRow, Error> {
        self.store
            .account_find(id_or_name)
            .await?
            .ok_or_else(|| Error::not_found("account", id_or_name))
    }

    pub async fn team_create(&self, account: &str, name: &str) -> Result<TeamRow, Error> {
        let acc = self.account(account).await?;
        if name.trim().is_empty() || name.len() > 100 {
            return Err(Error::bad_request(
                "invalid_name",
                "team names are 1-100 characters",
            ));
        }
        let row = TeamRow {
            id: ids::new_team_id(),
            account_id: acc.id,
            name: name.into(),
            created_at: self.now(),
        };
        self.store.team_create(&row).await?;
        Ok(row)
    }

    pub async fn team_list(&self, account: &str) -> Result<Vec<TeamRow>, Error> {
        let acc = self.account(account).await?;
        self.store.team_list(&acc.id).await
    }

    /// Creates a key and returns it with its secret, which is not stored and never shown again.
    pub async fn key_create(&self, k: NewKey) -> Result<(KeyRow, String), Error> {
        let acc = self.account(&k.account).await?;
        let role = match &k.role {
            Some(r) => Role::parse(r).ok_or_else(|| {
                Error::bad_request(
                    "invalid_role",
                    format!("unknown role {r:?}: owner, admin, member or viewer"),
                )
            })?,
            None => Role::Member,
        };
        let team_id = match &k.team {
            Some(t) => Some(
                self.store
                    .team_find(&acc.id, t)
                    .await?
                    .ok_or_else(|| Error::not_found("team", t))?
                    .id,
            ),
            None => None,
        };
        let now = self.now();
        let expires_at = match k.expires_in_days {
            Some(d) if !(1..=365).contains(&d) => {
                return Err(Error::bad_request(
                    "invalid_expiry",
                    "--expires-in-days must be 1-365",
                ))
            }
            Some(d) => Some(now + d * 86_400_000),
            None => None,
        };
        let secret = ids::new_api_key_secret();
        self.key_insert(&acc.id, &secret, role, k.staff, team_id, expires_at, k.name)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn key_insert(
        &self,
        account_id: &str,
        secret: &str,
        role: Role,
        staff: bool,
        team_id: Option<String>,
        expires_at: Option<i64>,
        name: Option<String>,
    ) -> Result<(KeyRow, String), Error> {
        let prefix: String = secret.chars().take(12).collect();
        let row = KeyRow {
            id: ids::new_key_id(),
            account_id: account_id.into(),
            prefix,
            name: name.unwrap_or_else(|| format!("{} key", role.as_str())),
            role: role.as_str().into(),
            staff,
            team_id,
            created_at: self.now(),
            expires_at,
            revoked_at: None,
        };
        self.store.key_create(&row, &key_digest(secret)).await?;
        Ok((row, secret.to_string()))
    }

    pub async fn key_list(&self, account: Option<&str>) -> Result<Vec<KeyRow>, Error> {
        match account {
            Some(a) => {
                let acc = self.account(a).await?;
                self.store.key_list(Some(&acc.id)).await
            }
            None => self.store.key_list(None).await,
        }
    }

    pub async fn key_revoke(&self, id_or_prefix: &str) -> Result<(), Error> {
        if self.store.key_revoke(id_or_prefix, self.now()).await? {
            Ok(())
        } else {
            Err(Error::not_found("key", id_or_prefix))
        }
    }

    /// `LOBSTER_BOOTSTRAP_KEY`: makes sure an account `default` exists and owns this key (as
    /// owner and staff, so scripts can use every endpoint). Idempotent.
    pub async fn bootstrap_key(&self, secret: &str) -> Result<AccountRow, Error> {
        // What `authenticate` can match: a key sent in a header (visible ASCII, trimmed) of
        // at most 256 bytes. Anything else would be stored and never let anyone in.
        if !(16..=256).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::bad_request(
                "invalid_key",
                "LOBSTER_BOOTSTRAP_KEY must be 16 to 256 visible ASCII characters (no spaces)",
            ));
        }
        let acc = match self.store.account_find("default").await? {
            Some(a) => a,
            None => match self.account_create("default").await {
                Ok(a) => a,
                // Another process created it first.
                Err(Error::Conflict { .. }) => self.account("default").await?,
                Err(e) => return Err(e),
            },
        };
        let known = self.store.key_by_digest(&key_digest(secret)).await?;
        if known.as_ref().is_some_and(|k| k.revoked_at.is_some()) {
            // A revoked key stays revoked: starting as if it let anyone in would mislead.
            return Err(Error::bad_request(
                "key_revoked",
                "this key was revoked; set LOBSTER_BOOTSTRAP_KEY to a new one",
            ));
        }
        if known.is_none() {
            let name = Some("bootstrap key".to_string());
            match self
                .key_insert(&acc.id, secret, Role::Owner, true, None, None, name)
                .await
            {
                Ok(_) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(acc)
    }
}
