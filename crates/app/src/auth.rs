//! API key authentication: keys are looked up by the SHA-256 digest of the presented secret;
//! revocation and expiry are checked on every request (DESIGN invariant 5).

use crate::App;
use lobster_core::auth::{Caller, Role};
use lobster_core::Error;
use lobster_store::Scope;
use sha2::{Digest, Sha256};

pub fn key_digest(secret: &str) -> String {
    lobster_core::ids::hex(&Sha256::digest(secret.as_bytes()))
}

/// The instances and tasks a caller may see.
pub fn scope(caller: &Caller) -> Scope {
    Scope {
        account_id: caller.account_id.clone(),
        team_id: caller.team_id.clone(),
    }
}

impl App {
    pub async fn authenticate(&self, secret: &str) -> Result<Caller, Error> {
        if secret.is_empty() || secret.len() > 256 {
            return Err(Error::Unauthorized);
        }
        let key = self
            .store
            .key_by_digest(&key_digest(secret))
            .await?
            .ok_or(Error::Unauthorized)?;
        let now = self.now();
        if key.revoked_at.is_some() || key.expires_at.is_some_and(|t| t <= now) {
            return Err(Error::Unauthorized);
        }
        Ok(Caller {
            account_id: key.account_id,
            key_id: key.id,
            role: Role::parse(&key.role).unwrap_or(Role::Viewer),
            team_id: key.team_id,
            staff: key.staff,
        })
    }
}
