//! Accounts (organisations), teams and API keys.

use crate::{db_err, get_i64, get_str, Cells, Store, Tx};
use lobster_core::Error;

#[derive(Debug, Clone, PartialEq)]
pub struct AccountRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TeamRow {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    pub id: String,
    pub account_id: String,
    pub prefix: String,
    pub name: String,
    pub role: String,
    pub staff: bool,
    pub team_id: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

fn account(r: &impl crate::exec::Named) -> Result<AccountRow, Error> {
    Ok(AccountRow {
        id: get_str(r, "id")?,
        name: get_str(r, "name")?,
        created_at: get_i64(r, "created_at")?,
    })
}

fn team(r: &impl crate::exec::Named) -> Result<TeamRow, Error> {
    Ok(TeamRow {
        id: get_str(r, "id")?,
        account_id: get_str(r, "account_id")?,
        name: get_str(r, "name")?,
        created_at: get_i64(r, "created_at")?,
    })
}

/// `key` reads these by position.
const KEY_COLS: &str =
    "id, account_id, prefix, name, role, staff, team_id, created_at, expires_at, revoked_at";

fn key(r: &impl Cells) -> Result<KeyRow, Error> {
    Ok(KeyRow {
        id: r.text(0)?,
        account_id: r.text(1)?,
        prefix: r.text(2)?,
        name: r.text(3)?,
        role: r.text(4)?,
        staff: r.int(5)? != 0,
        team_id: r.opt_text(6)?,
        created_at: r.int(7)?,
        expires_at: r.opt_int(8)?,
        revoked_at: r.opt_int(9)?,
    })
}

impl Store {
    pub async fn account_create(
        &self,
        id: &str,
        name: &str,
        now: i64,
    ) -> Result<AccountRow, Error> {
        self.q("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(now)
            .try_execute()
            .await
            .map_err(|e| {
                if e.unique {
                    Error::conflict("already_exists", format!("account {name:?} already exists"))
                } else {
                    e.into()
                }
            })?;
        Ok(AccountRow {
            id: id.into(),
            name: name.into(),
            created_at: now,
        })
    }

    /// Finds an account by id or by name.
    pub async fn account_find(&self, id_or_name: &str) -> Result<Option<AccountRow>, Error> {
        let row =
            sqlx::query("SELECT id, name, created_at FROM accounts WHERE id = $1 OR name = $1")
                .bind(id_or_name)
                .fetch_optional(self.reader())
                .await
                .map_err(db_err)?;
        row.as_ref().map(account).transpose()
    }

    pub async fn account_list(&self) -> Result<Vec<AccountRow>, Error> {
        let rows =
            sqlx::query("SELECT id, name, created_at FROM accounts ORDER BY created_at, name")
                .fetch_all(self.reader())
                .await
                .map_err(db_err)?;
        rows.iter().map(account).collect()
    }

    pub async fn team_create(&self, row: &TeamRow) -> Result<(), Error> {
        self.q("INSERT INTO teams (id, account_id, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&row.id)
            .bind(&row.account_id)
            .bind(&row.name)
            .bind(row.created_at)
            .try_execute()
            .await
            .map_err(|e| {
                if e.unique {
                    Error::conflict(
                        "already_exists",
                        format!("team {:?} already exists", row.name),
                    )
                } else {
                    e.into()
                }
            })?;
        Ok(())
    }

    /// A team of the account, by id or name.
    pub async fn team_find(
        &self,
        account_id: &str,
        id_or_name: &str,
    ) -> Result<Option<TeamRow>, Error> {
        let row = sqlx::query(
            // An id names its team before any team whose name happens to be that id.
            "SELECT id, account_id, name, created_at FROM teams WHERE account_id = $1 AND (id = $2 OR name = $2)
             ORDER BY CASE WHEN id = $2 THEN 0 ELSE 1 END LIMIT 1",
        )
        .bind(account_id)
        .bind(id_or_name)
        .fetch_optional(self.reader())
        .await
        .map_err(db_err)?;
        row.as_ref().map(team).transpose()
    }

    pub async fn team_list(&self, account_id: &str) -> Result<Vec<TeamRow>, Error> {
        let rows = sqlx::query(
            "SELECT id, account_id, name, created_at FROM teams WHERE account_id = $1 ORDER BY name",
        )
        .bind(account_id)
        .fetch_all(self.reader())
        .await
        .map_err(db_err)?;
        rows.iter().map(team).collect()
    }

    /// Stores a key by the SHA-256 digest of its secret; the secret itself is never stored.
    pub async fn key_create(&self, row: &KeyRow, digest: &str) -> Result<(), Error> {
        self.q(
            "INSERT INTO api_keys (id, account_id, digest, prefix, name, role, staff, team_id, created_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL)",
        )
            .bind(&row.id)
            .bind(&row.account_id)
            .bind(digest)
            .bind(&row.prefix)
            .bind(&row.name)
            .bind(&row.role)
            .bind(row.staff as i64)
            .bind(&row.team_id)
            .bind(row.created_at)
            .bind(row.expires_at)
            .try_execute()
            .await
        .map_err(|e| {
            if e.unique {
                Error::conflict("already_exists", "an identical key already exists")
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    /// The key with this digest, if it exists (revocation and expiry are the caller's check).
    /// (From the read cache on PostgreSQL, where revocations are announced to every server.)
    pub async fn key_by_digest(&self, digest: &str) -> Result<Option<KeyRow>, Error> {
        let cache = self.cache();
        if let Some(k) = cache.key(digest) {
            return Ok(Some(k));
        }
        let ticket = cache.ticket();
        let sql = format!("SELECT {KEY_COLS} FROM api_keys WHERE digest = $1");
        let row = match self.fast() {
            Some(fast) => fast.one(&sql, &[digest], |r| key(r)).await?,
            None => {
                let r = sqlx::query(&sql)
                    .bind(digest)
                    .fetch_optional(self.reader())
                    .await
                    .map_err(db_err)?;
                r.as_ref().map(key).transpose()?
            }
        };
        if let Some(k) = &row {
            cache.keep_key(ticket, digest, k);
        }
        Ok(row)
    }

    pub async fn key_list(&self, account_id: Option<&str>) -> Result<Vec<KeyRow>, Error> {
        let rows = match account_id {
            Some(a) => {
                let sql = format!(
                    "SELECT {KEY_COLS} FROM api_keys WHERE account_id = $1 ORDER BY created_at, id"
                );
                sqlx::query(&sql).bind(a).fetch_all(self.reader()).await
            }
            None => {
                let sql = format!("SELECT {KEY_COLS} FROM api_keys ORDER BY created_at, id");
                sqlx::query(&sql).fetch_all(self.reader()).await
            }
        }
        .map_err(db_err)?;
        rows.iter().map(key).collect()
    }

    /// Revokes a key by id, or by a prefix that matches exactly one key. Ok(false) when
    /// nothing unrevoked matched; an ambiguous prefix is an error and revokes nothing.
    /// Every server's read cache hears of it: on PostgreSQL from the revoking transaction
    /// itself; on SQLite from a write to the database's signal file after the commit (see
    /// `watch`).
    ///
    /// On PostgreSQL it answers only once every copy of the key that another server read
    /// before the commit has aged out of its cache (`cache::TTL`, 1 s): a notification is
    /// delivered after the commit, and a request that reached a server before it did would
    /// still be let in, after the revocation was reported done (DESIGN invariant 5: it takes
    /// effect on the next request). Revocations are rare; a second is cheap for them.
    pub async fn key_revoke(&self, id_or_prefix: &str, now: i64) -> Result<bool, Error> {
        let mut tx = self.begin().await?;
        let done = tx.key_revoke(id_or_prefix, now).await?;
        if done {
            tx.announce_keys_changed(self.channel()).await?;
        }
        tx.commit().await?;
        if done {
            match self.fast() {
                Some(fast) => crate::watch::tell(fast.path())?,
                None if self.backend() == crate::Backend::Postgres => {
                    tokio::time::sleep(crate::cache::TTL).await
                }
                None => {}
            }
        }
        Ok(done)
    }
}

impl Tx {
    async fn key_revoke(&mut self, id_or_prefix: &str, now: i64) -> Result<bool, Error> {
        let by_id = self
            .q("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(id_or_prefix)
            .execute()
            .await?;
        if by_id > 0 {
            return Ok(true);
        }
        let n = self
            .q("SELECT COUNT(*) AS n FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL")
            .bind(id_or_prefix)
            .fetch_one()
            .await?;
        match get_i64(&n, "n")? {
            0 => Ok(false),
            1 => {
                let r = self.q(
                    "UPDATE api_keys SET revoked_at = $1 WHERE prefix = $2 AND revoked_at IS NULL",
                )
                    .bind(now)
                    .bind(id_or_prefix)
                    .execute()
                    .await?;
                Ok(r > 0)
            }
            _ => Err(Error::conflict(
                "ambiguous",
                format!("prefix {id_or_prefix:?} matches several keys; use the key id"),
            )),
        }
    }
}
