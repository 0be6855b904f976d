//! Resource shapes, the launch-custom rules and placement order. The reservation itself is a
//! conditional update in the store; this module only decides which hosts to try, best fit first.

use serde::{Deserialize, Serialize};

/// Cores, memory (GB), disk (GB) and GPUs: what an instance takes from a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cores: i64,
    pub memory_gb: i64,
    pub disk_gb: i64,
    pub gpus: i64,
}

impl Resources {
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cores <= free.cores
            && self.memory_gb <= free.memory_gb
            && self.disk_gb <= free.disk_gb
            && self.gpus <= free.gpus
    }

    pub fn plus(&self, o: &Resources) -> Resources {
        Resources {
            cores: self.cores + o.cores,
            memory_gb: self.memory_gb + o.memory_gb,
            disk_gb: self.disk_gb + o.disk_gb,
            gpus: self.gpus + o.gpus,
        }
    }

    pub fn minus(&self, o: &Resources) -> Resources {
        Resources {
            cores: self.cores - o.cores,
            memory_gb: self.memory_gb - o.memory_gb,
            disk_gb: self.disk_gb - o.disk_gb,
            gpus: self.gpus - o.gpus,
        }
    }
}

/// A host as placement sees it: where it is, what GPUs it has, and what is free right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFree {
    pub host_id: String,
    pub region: String,
    pub gpu_model: Option<String>,
    pub free: Resources,
    pub available: bool,
}

impl HostFree {
    /// Whether this host can ever serve the request's GPU model (ignoring current load).
    pub fn serves(&self, gpus: i64, gpu_model: Option<&str>) -> bool {
        if gpus == 0 {
            return true;
        }
        match (self.gpu_model.as_deref(), gpu_model) {
            (Some(have), Some(want)) => have.eq_ignore_ascii_case(want),
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// Hosts to try for a request, best fit first: GPU requests go where the fewest GPUs would be
/// left idle (keeping whole GPU hosts free for large shapes); CPU requests prefer hosts
/// without GPUs, then the least free cores.
pub fn placement_order<'a>(
    hosts: &'a [HostFree],
    region: &str,
    want: &Resources,
    gpu_model: Option<&str>,
) -> Vec<&'a HostFree> {
    let mut c: Vec<&HostFree> = hosts
        .iter()
        .filter(|h| h.available && h.region == region && h.serves(want.gpus, gpu_model))
        .filter(|h| want.fits_in(&h.free))
        .collect();
    c.sort_by_key(|h| {
        let gpu_host = h.gpu_model.is_some() as i64;
        let leftover_gpus = h.free.gpus - want.gpus;
        if want.gpus > 0 {
            (leftover_gpus, h.free.cores, h.host_id.clone())
        } else {
            (gpu_host, h.free.cores, h.host_id.clone())
        }
    });
    c
}

/// Launch-custom business rules (the schema ranges are checked earlier, as 422s):
/// cores a power of two in 1..=64, memory even in 8..=512, disk in 40..=4096, GPUs in 0..=8.
/// Returns field -> message for every rule broken.
pub fn custom_shape_problems(r: &Resources) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if !(1..=64).contains(&r.cores) || (r.cores as u64).count_ones() != 1 {
        out.push(("cores", "Must be a power of 2 between 1 and 64"));
    }
    if !(8..=512).contains(&r.memory_gb) || r.memory_gb % 2 != 0 {
        out.push(("memory", "Must be an even number between 8 and 512"));
    }
    if !(40..=4096).contains(&r.disk_gb) {
        out.push(("disk_size", "Must be between 40 and 4096 GB"));
    }
    if !(0..=8).contains(&r.gpus) {
        out.push(("gpu_count", "Must be between 0 and 8"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(id: &str, region: &str, model: Option<&str>, cores: i64, gpus: i64) -> HostFree {
        HostFree {
            host_id: id.into(),
            region: region.into(),
            gpu_model: model.map(Into::into),
            free: Resources {
                cores,
                memory_gb: 512,
                disk_gb: 4096,
                gpus,
            },
            available: true,
        }
    }

    fn shape(cores: i64, gpus: i64) -> Resources {
        Resources {
            cores,
            memory_gb: 16,
            disk_gb: 100,
            gpus,
        }
    }

    #[test]
    fn custom_rules() {
        assert!(custom_shape_problems(&Resources {
            cores: 16,
            memory_gb: 64,
            disk_gb: 200,
            gpus: 2
        })
        .is_empty());
        assert!(custom_shape_problems(&Resources {
            cores: 1,
            memory_gb: 8,
            disk_gb: 40,
            gpus: 0
        })
        .is_empty());
        let p = custom_shape_problems(&Resources {
            cores: 6,
            memory_gb: 9,
            disk_gb: 39,
            gpus: 9,
        });
        let fields: Vec<_> = p.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["cores", "memory", "disk_size", "gpu_count"]);
        assert!(!custom_shape_problems(&Resources {
            cores: 128,
            memory_gb: 8,
            disk_gb: 40,
            gpus: 0
        })
        .is_empty());
    }

    #[test]
    fn gpu_requests_go_to_matching_model_best_fit() {
        let hosts = vec![
            host("big", "r", Some("A4000"), 64, 8),
            host("small", "r", Some("A4000"), 64, 2),
            host("other", "r", Some("A6000"), 64, 1),
            host("far", "x", Some("A4000"), 64, 1),
        ];
        let order: Vec<_> = placement_order(&hosts, "r", &shape(8, 1), Some("a4000"))
            .iter()
            .map(|h| h.host_id.as_str())
            .collect();
        assert_eq!(order, ["small", "big"]);
    }

    #[test]
    fn cpu_requests_prefer_cpu_hosts() {
        let hosts = vec![
            host("gpu", "r", Some("A4000"), 64, 4),
            host("cpu", "r", None, 64, 0),
        ];
        let order: Vec<_> = placement_order(&hosts, "r", &shape(4, 0), None)
            .iter()
            .map(|h| h.host_id.as_str())
            .collect();
        assert_eq!(order, ["cpu", "gpu"]);
    }

    #[test]
    fn unavailable_and_full_hosts_are_skipped() {
        let mut h = host("a", "r", None, 2, 0);
        assert!(placement_order(std::slice::from_ref(&h), "r", &shape(4, 0), None).is_empty());
        h.free.cores = 64;
        h.available = false;
        assert!(placement_order(&[h], "r", &shape(4, 0), None).is_empty());
    }

    proptest! {
        #[test]
        fn every_candidate_fits(cores in 0i64..80, gpus in 0i64..9, want_c in 1i64..65, want_g in 0i64..9) {
            let hosts = vec![host("a", "r", Some("A4000"), cores, gpus), host("b", "r", None, cores, 0)];
            let want = shape(want_c, want_g);
            for h in placement_order(&hosts, "r", &want, Some("A4000")) {
                prop_assert!(want.fits_in(&h.free));
                prop_assert!(h.serves(want.gpus, Some("A4000")));
            }
        }
    }
}
