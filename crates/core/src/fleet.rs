//! The fleet: regions, hosts, instance types, templates and IP pools. It comes from the
//! configuration file; `Fleet::demo()` is the default so that `lobster serve` works with no
//! configuration at all.

use crate::capacity::Resources;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    pub description: String,
    pub city: String,
    pub state: String,
    #[serde(default = "us")]
    pub country: String,
    /// CIDR blocks or `first-last` ranges of public IPv4 addresses handed to instances.
    #[serde(default)]
    pub ip_pools: Vec<String>,
}

fn us() -> String {
    "US".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub id: String,
    pub region: String,
    pub cores: i64,
    pub memory_gb: i64,
    pub disk_gb: i64,
    #[serde(default)]
    pub gpus: i64,
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// Where real drivers reach the host (a libvirt URI); unused by `sim`.
    #[serde(default)]
    pub uri: Option<String>,
    /// Host name shown to users for console access.
    #[serde(default)]
    pub hostname: Option<String>,
}

impl Host {
    pub fn capacity(&self) -> Resources {
        Resources {
            cores: self.cores,
            memory_gb: self.memory_gb,
            disk_gb: self.disk_gb,
            gpus: self.gpus,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub gpu_description: Option<String>,
    pub price_cents_per_hour: i64,
    pub vcpus: i64,
    pub memory_gib: i64,
    pub storage_gib: i64,
    #[serde(default)]
    pub gpus: i64,
    #[serde(default)]
    pub gpu_model: Option<String>,
}

impl InstanceType {
    pub fn resources(&self) -> Resources {
        Resources {
            cores: self.vcpus,
            memory_gb: self.memory_gib,
            disk_gb: self.storage_gib,
            gpus: self.gpus,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub name: String,
    pub vmid: i64,
    pub display_name: String,
    /// `linux` or `windows`.
    pub os_type: String,
    #[serde(default)]
    pub has_nvidia: bool,
    /// Username used when a Windows launch names none.
    #[serde(default)]
    pub default_username: Option<String>,
}

impl Template {
    pub fn is_windows(&self) -> bool {
        self.os_type.eq_ignore_ascii_case("windows")
    }
}

/// Price of a launch-custom instance that names no known instance type, per hour in cents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CustomPricing {
    pub cents_per_vcpu: i64,
    /// Cents per 8 GB of memory (rounded up).
    pub cents_per_8gb_memory: i64,
    pub cents_per_gpu: i64,
}

/// Prices of what is billed beside instance hours.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Billing {
    /// Backup storage beyond the free tier, per GiB and month.
    pub backup_cents_per_gb_month: i64,
    /// Backup storage every account gets free, in GiB.
    pub backup_free_gb: i64,
    /// Each additional IP address, per month.
    pub extra_ip_cents_per_month: i64,
}

impl Default for Billing {
    fn default() -> Self {
        Billing {
            backup_cents_per_gb_month: 5,
            backup_free_gb: 250,
            extra_ip_cents_per_month: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub regions: Vec<Region>,
    pub hosts: Vec<Host>,
    pub instance_types: Vec<InstanceType>,
    pub templates: Vec<Template>,
    /// Template used for GPU types when a launch names none.
    #[serde(default = "default_gpu_template")]
    pub default_gpu_template: String,
    /// Template used for CPU types when a launch names none.
    #[serde(default = "default_cpu_template")]
    pub default_cpu_template: String,
    pub custom_pricing: CustomPricing,
    #[serde(default)]
    pub billing: Billing,
}

fn default_gpu_template() -> String {
    "UBUNTU-22-04-NV".into()
}

fn default_cpu_template() -> String {
    "UBUNTU-22-04".into()
}

impl Fleet {
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    pub fn host(&self, id: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.id == id)
    }

    pub fn instance_type(&self, name: &str) -> Option<&InstanceType> {
        self.instance_types.iter().find(|t| t.name == name)
    }

    pub fn template(&self, name: &str) -> Option<&Template> {
        self.templates.iter().find(|t| t.name == name)
    }

    pub fn default_template_for(&self, gpus: i64) -> &str {
        if gpus > 0 {
            &self.default_gpu_template
        } else {
            &self.default_cpu_template
        }
    }

    pub fn custom_price(&self, r: &Resources) -> i64 {
        let p = &self.custom_pricing;
        r.cores * p.cents_per_vcpu
            + (r.memory_gb + 7) / 8 * p.cents_per_8gb_memory
            + r.gpus * p.cents_per_gpu
    }

    /// Checks references and pools; returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        let dup = |names: Vec<&str>, what: &str, errs: &mut Vec<String>| {
            let mut seen = std::collections::HashSet::new();
            for n in names {
                if !seen.insert(n) {
                    errs.push(format!("duplicate {what} {n:?}"));
                }
            }
        };
        dup(
            self.regions.iter().map(|r| r.name.as_str()).collect(),
            "region",
            &mut errs,
        );
        dup(
            self.hosts.iter().map(|h| h.id.as_str()).collect(),
            "host",
            &mut errs,
        );
        dup(
            self.instance_types
                .iter()
                .map(|t| t.name.as_str())
                .collect(),
            "instance type",
            &mut errs,
        );
        dup(
            self.templates.iter().map(|t| t.name.as_str()).collect(),
            "template",
            &mut errs,
        );
        for h in &self.hosts {
            if self.region(&h.region).is_none() {
                errs.push(format!(
                    "host {:?} names unknown region {:?}",
                    h.id, h.region
                ));
            }
            if h.gpus > 0 && h.gpu_model.is_none() {
                errs.push(format!("host {:?} has GPUs but no gpu_model", h.id));
            }
        }
        // Sizes and prices as the capacity checks and bills use them: a negative one would
        // pass every room check and then break the database's own (a 500 on every launch of
        // the type), and a type of no cores, memory or disk is no machine.
        let mut at_least = |what: String, n: i64, least: i64| {
            if n < least {
                errs.push(format!("{what} {n} is below {least}"));
            }
        };
        for h in &self.hosts {
            let who = format!("host {:?}", h.id);
            for (what, n) in [
                ("cores", h.cores),
                ("memory_gb", h.memory_gb),
                ("disk_gb", h.disk_gb),
                ("gpus", h.gpus),
            ] {
                at_least(format!("{who}: {what}"), n, 0);
            }
        }
        for t in &self.instance_types {
            let who = format!("instance type {:?}", t.name);
            for (what, n, least) in [
                ("vcpus", t.vcpus, 1),
                ("memory_gib", t.memory_gib, 1),
                ("storage_gib", t.storage_gib, 1),
                ("gpus", t.gpus, 0),
                ("price_cents_per_hour", t.price_cents_per_hour, 0),
            ] {
                at_least(format!("{who}: {what}"), n, least);
            }
        }
        let p = &self.custom_pricing;
        for (what, n) in [
            ("cents_per_vcpu", p.cents_per_vcpu),
            ("cents_per_8gb_memory", p.cents_per_8gb_memory),
            ("cents_per_gpu", p.cents_per_gpu),
        ] {
            at_least(format!("custom_pricing.{what}"), n, 0);
        }
        for r in &self.regions {
            // An empty name marks the addresses of dropped pools in the database.
            if r.name.is_empty() {
                errs.push("a region has an empty name".into());
            }
            for p in &r.ip_pools {
                if let Err(e) = crate::ip::parse_pool(p) {
                    errs.push(format!("region {:?}: {e}", r.name));
                }
            }
            // An interface's MAC is its address's low 24 bits (`ip::mac_for_address`).
            if let Some((a, b)) = crate::ip::low_bits_clash(&r.ip_pools) {
                errs.push(format!(
                    "region {:?}: pools give {a} and {b} the same MAC address ({}); \
                     a region's pools must differ in their low 24 bits",
                    r.name,
                    crate::ip::mac_for_address(&a.to_string())
                ));
            }
        }
        for t in [&self.default_gpu_template, &self.default_cpu_template] {
            if self.template(t).is_none() {
                errs.push(format!("default template {t:?} is not defined"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// The demo fleet: three regions, four GPU hosts and a CPU host, the spec's instance types
    /// and templates, and documentation-range IP pools (RFC 5737).
    pub fn demo() -> Fleet {
        let region = |name: &str, desc: &str, city: &str, state: &str, pool: &str| Region {
            name: name.into(),
            description: desc.into(),
            city: city.into(),
            state: state.into(),
            country: "US".into(),
            ip_pools: vec![pool.into()],
        };
        let host = |id: &str, region: &str, cores, mem, disk, gpus, model: Option<&str>| Host {
            id: id.into(),
            region: region.into(),
            cores,
            memory_gb: mem,
            disk_gb: disk,
            gpus,
            gpu_model: model.map(Into::into),
            uri: None,
            hostname: Some(format!("{id}.lobster.local")),
        };
        let ty = |name: &str,
                  desc: &str,
                  gdesc: Option<&str>,
                  price,
                  v,
                  m,
                  s,
                  g,
                  model: Option<&str>| InstanceType {
            name: name.into(),
            description: desc.into(),
            gpu_description: gdesc.map(Into::into),
            price_cents_per_hour: price,
            vcpus: v,
            memory_gib: m,
            storage_gib: s,
            gpus: g,
            gpu_model: model.map(Into::into),
        };
        let tpl = |name: &str, vmid, display: &str, os: &str, nv, user: Option<&str>| Template {
            name: name.into(),
            vmid,
            display_name: display.into(),
            os_type: os.into(),
            has_nvidia: nv,
            default_username: user.map(Into::into),
        };
        Fleet {
            regions: vec![
                region(
                    "us-east-1",
                    "Wilmington, DE",
                    "Wilmington",
                    "DE",
                    "192.0.2.0/24",
                ),
                region(
                    "us-east-dev",
                    "Philadelphia, PA",
                    "Philadelphia",
                    "PA",
                    "198.51.100.0/24",
                ),
                region("igl", "Chicago, IL", "Chicago", "IL", "203.0.113.0/24"),
            ],
            hosts: vec![
                host("px1", "us-east-dev", 128, 512, 4096, 4, Some("A4000")),
                host("phl-gpu-01", "us-east-dev", 96, 512, 4096, 4, Some("A6000")),
                host("wil-gpu-26", "us-east-1", 128, 768, 8192, 8, Some("A5000")),
                host("wil-cpu-03", "us-east-1", 64, 256, 4096, 0, None),
                host("igl-gpu-01", "igl", 128, 512, 4096, 8, Some("A4000")),
            ],
            instance_types: vec![
                ty(
                    "v1_cpu_small",
                    "CPU Only Instance",
                    Some("N/A - CPU Only"),
                    3,
                    2,
                    8,
                    100,
                    0,
                    None,
                ),
                ty(
                    "v1_cpu_medium",
                    "CPU Only Instance",
                    Some("N/A - CPU Only"),
                    6,
                    4,
                    16,
                    250,
                    0,
                    None,
                ),
                ty(
                    "gpu_1x_a4000",
                    "Single GPU Instance",
                    Some("NVIDIA RTX A4000 (16GB VRAM)"),
                    45,
                    8,
                    32,
                    250,
                    1,
                    Some("A4000"),
                ),
                ty(
                    "gpu_1x_a5000",
                    "Single GPU Instance",
                    Some("NVIDIA RTX A5000 (24GB VRAM)"),
                    60,
                    8,
                    32,
                    250,
                    1,
                    Some("A5000"),
                ),
                ty(
                    "gpu_1x_a6000",
                    "Single GPU Instance",
                    Some("NVIDIA RTX A6000 (48GB VRAM)"),
                    80,
                    12,
                    64,
                    500,
                    1,
                    Some("A6000"),
                ),
                ty(
                    "gpu_2x_a4000",
                    "Multi GPU Instance",
                    Some("2x NVIDIA RTX A4000 (16GB VRAM)"),
                    90,
                    16,
                    64,
                    500,
                    2,
                    Some("A4000"),
                ),
                ty(
                    "gpu_4x_a5000",
                    "Multi GPU Instance",
                    Some("4x NVIDIA RTX A5000 (24GB VRAM)"),
                    240,
                    32,
                    128,
                    1000,
                    4,
                    Some("A5000"),
                ),
            ],
            templates: vec![
                tpl(
                    "UBUNTU-22-04",
                    100,
                    "Ubuntu 22.04 Server",
                    "linux",
                    false,
                    None,
                ),
                tpl(
                    "UBUNTU-22-04-NV",
                    101,
                    "Ubuntu 22.04 + NVIDIA",
                    "linux",
                    true,
                    None,
                ),
                tpl(
                    "UBUNTU-22-04-NV-DK",
                    102,
                    "Ubuntu 22.04 + NVIDIA + Docker",
                    "linux",
                    true,
                    None,
                ),
                tpl(
                    "WIN10",
                    103,
                    "Windows 10 (Cloudbase-Init)",
                    "windows",
                    true,
                    Some("bluelobster"),
                ),
            ],
            default_gpu_template: default_gpu_template(),
            default_cpu_template: default_cpu_template(),
            custom_pricing: CustomPricing {
                cents_per_vcpu: 1,
                cents_per_8gb_memory: 1,
                cents_per_gpu: 40,
            },
            billing: Billing::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_fleet_is_valid() {
        let f = Fleet::demo();
        f.validate().unwrap();
        for t in &f.instance_types {
            // Every demo type can be placed somewhere in the demo fleet.
            assert!(
                f.hosts.iter().any(|h| t.resources().fits_in(&h.capacity())
                    && (t.gpus == 0 || h.gpu_model == t.gpu_model)),
                "{} has no host",
                t.name
            );
        }
    }

    #[test]
    fn validation_reports_bad_references() {
        let mut f = Fleet::demo();
        f.hosts[0].region = "nowhere".into();
        f.regions[0].ip_pools.push("bogus".into());
        f.default_gpu_template = "NOPE".into();
        assert_eq!(f.validate().unwrap_err().len(), 3);
    }

    /// Two pools of one region whose addresses would share MACs are refused, naming both
    /// addresses; the same low bits in two regions (separate networks) are fine.
    #[test]
    fn validation_refuses_pools_that_would_share_macs() {
        let mut f = Fleet::demo();
        let pool = f.regions[0].ip_pools[0].clone();
        let (net, _) = pool.split_once('.').unwrap();
        let other: u8 = net.parse::<u8>().unwrap().wrapping_add(1);
        let moved = format!("{other}.{}", pool.split_once('.').unwrap().1);
        f.regions[1].ip_pools.push(moved.clone());
        f.validate().unwrap();
        f.regions[0].ip_pools.push(moved);
        let errs = f.validate().unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("the same MAC address"), "{errs:?}");
    }

    /// An empty region name is refused: it marks the addresses of dropped pools.
    #[test]
    fn validation_refuses_an_empty_region_name() {
        let mut f = Fleet::demo();
        let name = f.regions[2].name.clone();
        f.regions[2].name = String::new();
        f.hosts.retain(|h| h.region != name);
        let errs = f.validate().unwrap_err();
        assert_eq!(errs, ["a region has an empty name"]);
    }

    /// Negative sizes and prices, and types of no cores, memory or disk, are refused by name.
    #[test]
    fn validation_reports_impossible_sizes_and_prices() {
        let mut f = Fleet::demo();
        f.instance_types[0].vcpus = -8;
        f.instance_types[1].storage_gib = 0;
        f.instance_types[2].price_cents_per_hour = -1;
        f.hosts[0].memory_gb = -1;
        f.custom_pricing.cents_per_gpu = -40;
        let errs = f.validate().unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:?}");
        let name = &f.instance_types[0].name;
        assert!(
            errs[1].contains(name.as_str()) && errs[1].contains("vcpus -8"),
            "{errs:?}"
        );
        assert!(errs[0].contains("memory_gb -1"), "{errs:?}");
        assert!(errs[4].contains("custom_pricing.cents_per_gpu"), "{errs:?}");
    }

    #[test]
    fn custom_price_rounds_memory_up() {
        let f = Fleet::demo();
        let r = Resources {
            cores: 4,
            memory_gb: 12,
            disk_gb: 100,
            gpus: 1,
        };
        assert_eq!(f.custom_price(&r), 4 + 2 + 40);
    }
}
