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

/// The MAC of the interface that holds `address`, in the OUI range Proxmox uses
/// (`bc:24:11`, as the API reference shows): the address's low 24 bits. Why from the address:
/// an address is held by one interface at a time, and the fleet refuses a region whose pools
/// share low 24 bits (`low_bits_clash`), so no two interfaces of a region's network ever have
/// the same MAC. Drawn from a hash of the instance id, 24 bits clashed by the birthday bound:
/// even odds at 5,000 instances in a region, a clash on nearly every launch at 100,000.
/// Re-runs of a task get the same MAC, since the interface keeps its address.
pub fn mac_for_address(address: &str) -> String {
    let low = match address.parse::<Ipv4Addr>() {
        Ok(a) => u32::from(a) & 0x00ff_ffff,
        // Pools are IPv4 only; a row that is not (written by hand) still gets a stable MAC.
        Err(_) => {
            use sha2::{Digest, Sha256};
            let h = Sha256::digest(address.as_bytes());
            u32::from_be_bytes([0, h[0], h[1], h[2]])
        }
    };
    format!(
        "bc:24:11:{:02x}:{:02x}:{:02x}",
        (low >> 16) & 0xff,
        (low >> 8) & 0xff,
        low & 0xff
    )
}

/// Two different addresses among `pools` (all of one region) that would have the same MAC
/// (`mac_for_address`), if any: pools in different /8 networks whose low 24 bits overlap.
/// An address listed twice is not a clash.
pub fn low_bits_clash(pools: &[String]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let mut all: Vec<u32> = pools
        .iter()
        .filter_map(|p| parse_pool(p).ok())
        .flatten()
        .map(u32::from)
        .collect();
    all.sort_unstable_by_key(|a| (a & 0x00ff_ffff, *a));
    all.dedup();
    all.windows(2)
        .find(|w| w[0] & 0x00ff_ffff == w[1] & 0x00ff_ffff)
        .map(|w| (Ipv4Addr::from(w[0]), Ipv4Addr::from(w[1])))
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
    fn a_mac_is_its_addresss_low_24_bits() {
        assert_eq!(mac_for_address("98.115.241.74"), "bc:24:11:73:f1:4a");
        assert_eq!(mac_for_address("10.0.0.2"), "bc:24:11:00:00:02");
        // Not IPv4 (a row written by hand): still stable and well formed.
        let odd = mac_for_address("junk");
        assert_eq!(odd, mac_for_address("junk"));
        assert!(odd.starts_with("bc:24:11:") && odd.len() == 17);
    }

    /// The property the fleet check keeps: every address of a /12 (a million) gets its own
    /// MAC. (Drawn from a hash of the instance id, a /24's 253 addresses already had about
    /// a 0.2 % chance of a clash, and a /16's 65,000 a certain one.)
    #[test]
    fn every_address_of_a_pool_has_its_own_mac() {
        let pool = parse_pool("10.16.0.0/12").unwrap();
        let mut macs: Vec<String> = pool
            .iter()
            .map(|a| mac_for_address(&a.to_string()))
            .collect();
        let n = macs.len();
        macs.sort_unstable();
        macs.dedup();
        assert_eq!(macs.len(), n);
    }

    #[test]
    fn pools_of_one_region_whose_low_bits_overlap_clash() {
        let pools = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            low_bits_clash(&pools(&["10.0.0.0/24", "11.0.0.4-11.0.0.9"])),
            Some(("10.0.0.4".parse().unwrap(), "11.0.0.4".parse().unwrap()))
        );
        // Apart in their low bits, listed twice, or one network: no clash.
        assert_eq!(
            low_bits_clash(&pools(&["10.0.0.0/24", "11.0.1.0/24"])),
            None
        );
        assert_eq!(
            low_bits_clash(&pools(&["10.0.0.0/24", "10.0.0.0/24"])),
            None
        );
        assert_eq!(low_bits_clash(&pools(&["10.16.0.0/12"])), None);
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
