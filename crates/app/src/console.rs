//! Live statistics and console tickets, both straight from the driver.

use crate::auth::key_digest;
use crate::App;
use lobster_core::auth::{Caller, Permission};
use lobster_core::{ids, Error};
use lobster_driver::VmStats;
use lobster_store::console::ConsoleTicketRow;
use lobster_store::InstanceRow;

/// How long a console ticket stays valid.
pub const TICKET_TTL_MS: i64 = 30_000;

#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleTicket {
    pub ticket: String,
    pub host: String,
    pub port: i64,
    pub expires_at: i64,
}

impl App {
    /// Usage from the hypervisor; zeros unless the instance is rented and running.
    pub async fn instance_stats(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(InstanceRow, VmStats), Error> {
        let inst = self.instance_get(caller, id).await?;
        let host = self.fleet.host(&inst.host_id);
        let stats = match host {
            Some(h) if inst.status == "rented" && inst.power_status == "running" => self
                .driver
                .stats(h, &inst.id)
                .await
                .map_err(|e| Error::Unavailable(format!("hypervisor: {e}")))?,
            _ => VmStats::default(),
        };
        Ok((inst, stats))
    }

    /// A single-use VNC ticket valid for 30 seconds, for a running instance.
    pub async fn instance_console(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(InstanceRow, ConsoleTicket), Error> {
        caller.require(Permission::InstanceWrite)?;
        let inst = self.instance_get(caller, id).await?;
        let not_running = || {
            Error::bad_request(
                "invalid_state",
                "Instance must be running to access console",
            )
        };
        if inst.status != "rented" || inst.power_status != "running" {
            return Err(not_running());
        }
        let host = self.fleet.host(&inst.host_id).ok_or_else(not_running)?;
        let ep = self
            .driver
            .console(host, &inst.id)
            .await
            .map_err(|e| match e {
                // A host that did not answer (or answered late) is not a stopped VM.
                e if e.is_transient() => Error::Unavailable(format!("hypervisor: {e}")),
                _ => not_running(),
            })?;
        let now = self.now();
        let ticket = format!("PVEVNC:{}", &ids::new_api_key_secret()[4..]);
        let row = ConsoleTicketRow {
            instance_id: inst.id.clone(),
            account_id: inst.account_id.clone(),
            host: ep.host.clone(),
            port: ep.port as i64,
            expires_at: now + TICKET_TTL_MS,
        };
        self.store
            .console_ticket_insert(&key_digest(&ticket), &row, now)
            .await?;
        Ok((
            inst,
            ConsoleTicket {
                ticket,
                host: ep.host,
                port: ep.port as i64,
                expires_at: row.expires_at,
            },
        ))
    }

    /// What a console proxy calls: the ticket's target, once, before it expires.
    pub async fn console_ticket_redeem(
        &self,
        ticket: &str,
    ) -> Result<Option<ConsoleTicketRow>, Error> {
        self.store
            .console_ticket_redeem(&key_digest(ticket), self.now())
            .await
    }
}
