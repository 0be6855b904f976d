//! IPv4 pool math: pools are written as CIDR blocks (network, gateway `.1` and broadcast left
//! out) or explicit `first-last` ranges.

use std::net::Ipv4Addr;

pub fn parse_pool(spec: &str) -> Result<Vec<Ipv4Addr>, String> {
    let spec = spec.trim();
    if let Some((a, b)) = spec.split_once('-') {
        let first: Ipv4Addr = a.trim().parse().map_err(|_| format!("bad address {a:?}"))?;
        let last: Ipv4Addr = b.trim().parse().map_err(|_| format!("bad address {b:?}"))?;
        let (f, l) = (u32::from(first), u32::from(last));
        if f > l || l - f > 1 << 20 {
            return Err(format!("bad range {spec:?}"));
        }
        return Ok((f..=l).map(Ipv4Addr::from).collect());
    }
    let (addr, prefix) = spec
        .split_once('/')
        .ok_or_else(|| format!("pool {spec:?} is neither CIDR nor a range"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| format!("bad address {addr:?}"))?;
    let prefix: u32 = prefix
        .parse()
        .map_err(|_| format!("bad prefix {prefix:?}"))?;
    if !(12..=30).contains(&prefix) {
        return Err(format!("prefix /{prefix} out of range 12..=30"));
    }
    let mask = u32::MAX << (32 - prefix);
    let net = u32::from(addr) & mask;
    let bcast = net | !mask;
    // Skip network, the conventional gateway (.1) and broadcast.
    Ok((net + 2..bcast).map(Ipv4Addr::from).collect())
}

/// A stable, locally administered-looking MAC for an instance's interface, in the OUI range
/// Proxmox uses (`bc:24:11`), derived from the instance id and interface name so that re-runs
/// of a task produce the same address.
pub fn mac_for(instance_id: &str, interface: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{instance_id}/{interface}").as_bytes());
    format!("bc:24:11:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2])
}

/// The address with the prefix length of the pool it comes from (`/32` when it is not in a
/// CIDR pool), as the instance history shows it.
pub fn with_prefix(address: &str, pools: &[String]) -> String {
    let Ok(a) = address.parse::<Ipv4Addr>() else {
        return address.to_string();
    };
    for p in pools {
        if let Some((net, len)) = p.split_once('/') {
            if let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) {
                let mask = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - len.min(32))
                };
                if u32::from(net) & mask == u32::from(a) & mask {
                    return format!("{a}/{len}");
                }
            }
        }
    }
    format!("{a}/32")
}

/// Whether a string is a dotted-quad IPv4 address (used to validate path parameters).
pub fn is_ipv4(s: &str) -> bool {
    s.parse::<Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_skips_network_gateway_broadcast() {
        let p = parse_pool("192.0.2.0/29").unwrap();
        let s: Vec<String> = p.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            s,
            [
                "192.0.2.2",
                "192.0.2.3",
                "192.0.2.4",
                "192.0.2.5",
                "192.0.2.6"
            ]
        );
    }

    #[test]
    fn macs_are_stable_and_distinct() {
        let a = mac_for("vm-1", "net0");
        assert_eq!(a, mac_for("vm-1", "net0"));
        assert_ne!(a, mac_for("vm-1", "net1"));
        assert!(a.starts_with("bc:24:11:") && a.len() == 17);
    }

    #[test]
    fn prefixes_come_from_the_pool() {
        let pools = vec!["192.0.2.0/24".to_string(), "10.0.0.5-10.0.0.9".to_string()];
        assert_eq!(with_prefix("192.0.2.7", &pools), "192.0.2.7/24");
        assert_eq!(with_prefix("10.0.0.6", &pools), "10.0.0.6/32");
        assert_eq!(with_prefix("junk", &pools), "junk");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_pool("10.0.0.250-10.0.1.1").unwrap().len(), 8);
        assert!(parse_pool("10.0.0.5-10.0.0.1").is_err());
        assert!(parse_pool("nonsense").is_err());
        assert!(parse_pool("10.0.0.0/8").is_err());
    }
}
