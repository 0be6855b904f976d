//! Additional public addresses: listed with their interfaces, assigned from the region's pool
//! and released. Each change queues a `sync_ips` task that pushes the address set to the host.

use crate::auth::scope;
use crate::App;
use lobster_core::auth::{Caller, Permission};
use lobster_core::task::TaskKind;
use lobster_core::{ip, Error};
use lobster_store::{InstanceRow, IpClaim, IpRow};

/// At most this many addresses per instance (the primary included).
pub const MAX_IPS: usize = 16;

impl App {
    pub async fn instance_ips(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(InstanceRow, Vec<IpRow>), Error> {
        let inst = self.instance_get(caller, id).await?;
        let ips = self.store.ip_list(&inst.id).await?;
        Ok((inst, ips))
    }

    /// Takes the next free address of the instance's region onto a new interface.
    pub async fn instance_ip_assign(&self, caller: &Caller, id: &str) -> Result<IpRow, Error> {
        caller.require(Permission::InstanceWrite)?;
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let inst = tx
            .instance_get(&scope(caller), id)
            .await?
            .ok_or_else(|| Error::not_found("instance", id))?;
        if inst.status != "rented" {
            return Err(Error::bad_request(
                "invalid_state",
                format!(
                    "Instance must be in 'rented' status to assign an IP (current: {})",
                    inst.status
                ),
            ));
        }
        let held = tx.ip_list(&inst.id).await?;
        if held.len() >= MAX_IPS {
            return Err(Error::bad_request(
                "ip_limit_reached",
                format!("An instance holds at most {MAX_IPS} IPs"),
            ));
        }
        let iface = (1..)
            .map(|n| format!("net{n}"))
            .find(|name| held.iter().all(|h| &h.interface_name != name))
            .expect("a free interface name");
        let claim = IpClaim {
            instance_id: &inst.id,
            interface_name: &iface,
            is_primary: false,
        };
        let Some(address) = tx.ip_allocate(&inst.region, &claim, now).await? else {
            return Err(Error::bad_request(
                "no_ips_available",
                format!("No IP addresses available in region {}", inst.region),
            ));
        };
        tx.task_insert(&self.config_task(TaskKind::SyncIps, &inst, now))
            .await?;
        tx.commit().await?;
        self.wake_workers();
        Ok(IpRow {
            mac_address: ip::mac_for_address(&address),
            address,
            instance_id: inst.id,
            interface_name: iface,
            is_primary: false,
            assigned_at: now,
        })
    }

    /// Releases an additional address; the primary and the last address stay.
    pub async fn instance_ip_release(
        &self,
        caller: &Caller,
        id: &str,
        address: &str,
    ) -> Result<IpRow, Error> {
        caller.require(Permission::InstanceWrite)?;
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let inst = tx
            .instance_get(&scope(caller), id)
            .await?
            .ok_or_else(|| Error::not_found("instance", id))?;
        let held = tx.ip_list(&inst.id).await?;
        let Some(ip) = held.iter().find(|h| h.address == address).cloned() else {
            return Err(Error::not_found("ip", address));
        };
        if ip.is_primary {
            return Err(Error::bad_request(
                "cannot_release_primary",
                format!("IP {address} is the primary IP and cannot be released"),
            ));
        }
        if held.len() <= 1 {
            return Err(Error::bad_request(
                "cannot_release_last",
                "The last IP of an instance cannot be released",
            ));
        }
        tx.ip_release(&inst.id, address, now).await?;
        tx.task_insert(&self.config_task(TaskKind::SyncIps, &inst, now))
            .await?;
        tx.commit().await?;
        self.wake_workers();
        Ok(ip)
    }
}
