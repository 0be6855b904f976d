//! What can be launched where: instance types with the regions that have room for them now,
//! templates, and (for staff) per-host free capacity. All computed from the same host rows
//! that placement reserves against.

use crate::App;
use lobster_core::auth::{Caller, Permission};
use lobster_core::capacity::placement_order;
use lobster_core::fleet::{InstanceType, Region, Template};
use lobster_core::Error;
use lobster_store::HostRow;
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct TypeAvailability {
    pub instance_type: InstanceType,
    pub regions: Vec<Region>,
}

#[derive(Debug, Clone)]
pub struct HostResources {
    pub host: HostRow,
    pub region: Option<Region>,
}

impl App {
    pub async fn instance_types_available(
        &self,
        caller: &Caller,
    ) -> Result<Vec<TypeAvailability>, Error> {
        caller.require(Permission::Read)?;
        let hosts: Vec<_> = self
            .store
            .host_list()
            .await?
            .iter()
            .map(HostRow::as_free)
            .collect();
        let ips: HashMap<String, i64> = self.store.ip_free_counts().await?.into_iter().collect();
        Ok(self
            .fleet
            .instance_types
            .iter()
            .map(|t| {
                let regions = self
                    .fleet
                    .regions
                    .iter()
                    .filter(|r| ips.get(&r.name).copied().unwrap_or(0) > 0)
                    .filter(|r| {
                        !placement_order(&hosts, &r.name, &t.resources(), t.gpu_model.as_deref())
                            .is_empty()
                    })
                    .cloned()
                    .collect();
                TypeAvailability {
                    instance_type: t.clone(),
                    regions,
                }
            })
            .collect())
    }

    pub fn templates(&self, caller: &Caller) -> Result<Vec<Template>, Error> {
        caller.require(Permission::Read)?;
        Ok(self.fleet.templates.clone())
    }

    /// Operator view of every host's free capacity.
    pub async fn resources(&self, caller: &Caller) -> Result<Vec<HostResources>, Error> {
        caller.require(Permission::Staff)?;
        Ok(self
            .store
            .host_list()
            .await?
            .into_iter()
            .map(|h| HostResources {
                region: self.fleet.region(&h.region).cloned(),
                host: h,
            })
            .collect())
    }
}
