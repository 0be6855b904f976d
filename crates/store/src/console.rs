//! Console tickets: short-lived, single-use, stored by digest. Kept in the database (not in
//! memory) so that a ticket is valid whichever server process answers.

use crate::{get_i64, get_str, Store};
use lobster_core::Error;

#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleTicketRow {
    pub instance_id: String,
    pub account_id: String,
    pub host: String,
    pub port: i64,
    pub expires_at: i64,
}

impl Store {
    pub async fn console_ticket_insert(
        &self,
        digest: &str,
        t: &ConsoleTicketRow,
        now: i64,
    ) -> Result<(), Error> {
        self.q(
            "INSERT INTO console_tickets (digest, instance_id, account_id, host, port, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
            .bind(digest)
            .bind(&t.instance_id)
            .bind(&t.account_id)
            .bind(&t.host)
            .bind(t.port)
            .bind(now)
            .bind(t.expires_at)
            .execute()
            .await?;
        // Expired tickets are worthless; drop them as new ones are made.
        self.q("DELETE FROM console_tickets WHERE expires_at < $1")
            .bind(now - 3_600_000)
            .execute()
            .await?;
        Ok(())
    }

    /// Uses a ticket: Some exactly once, while it has not expired.
    pub async fn console_ticket_redeem(
        &self,
        digest: &str,
        now: i64,
    ) -> Result<Option<ConsoleTicketRow>, Error> {
        let r = self.q(
            "UPDATE console_tickets SET used_at = $1 WHERE digest = $2 AND used_at IS NULL AND expires_at > $1
             RETURNING instance_id, account_id, host, port, expires_at",
        )
            .bind(now)
            .bind(digest)
            .fetch_optional()
            .await?;
        r.map(|r| {
            Ok(ConsoleTicketRow {
                instance_id: get_str(&r, "instance_id")?,
                account_id: get_str(&r, "account_id")?,
                host: get_str(&r, "host")?,
                port: get_i64(&r, "port")?,
                expires_at: get_i64(&r, "expires_at")?,
            })
        })
        .transpose()
    }
}
