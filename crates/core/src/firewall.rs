//! The firewall model: rules as tenants wrote them (echoed back exactly), their parsed form,
//! and a pure evaluator — direction, protocol, ports and addresses decide; the first enabled
//! matching rule wins, otherwise the direction's policy.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    Reject,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "ACCEPT" => Some(Action::Accept),
            "DROP" => Some(Action::Drop),
            "REJECT" => Some(Action::Reject),
            _ => None,
        }
    }
}

/// Default policies may only accept or drop.
pub fn parse_policy(s: &str) -> Option<Action> {
    match s {
        "ACCEPT" => Some(Action::Accept),
        "DROP" => Some(Action::Drop),
        _ => None,
    }
}

/// Protocols a rule may name; ports only make sense for the first three.
pub const PROTOCOLS: &[&str] = &["tcp", "udp", "sctp", "icmp", "icmpv6", "gre", "esp", "ah"];

fn has_ports(proto: &str) -> bool {
    matches!(proto, "tcp" | "udp" | "sctp")
}

/// `22`, `8000:9000`, `80,443`, or a comma list mixing both; every port 1-65535.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec(Vec<(u16, u16)>);

impl PortSpec {
    pub fn parse(s: &str) -> Result<PortSpec, String> {
        let mut out = Vec::new();
        if s.is_empty() || s.split(',').count() > 32 {
            return Err(format!(
                "Invalid port format {s:?}: use 22, 8000:9000 or 80,443"
            ));
        }
        for part in s.split(',') {
            let (lo, hi) = match part.split_once(':') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => {
                    let p = port(part)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!("Invalid port range {part:?}: start exceeds end"));
            }
            out.push((lo, hi));
        }
        Ok(PortSpec(out))
    }

    pub fn contains(&self, p: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&p))
    }
}

fn port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) && !s.trim().starts_with('+') => Ok(n as u16),
        _ => Err("Invalid port format: must be 1-65535".into()),
    }
}

/// An address or CIDR block, IPv4 or IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("Invalid address {s:?}: use an IP address or CIDR such as 10.0.0.0/8");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A rule as written, with every optional field kept exactly as the tenant sent it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    #[serde(rename = "type")]
    pub direction: String,
    pub action: String,
    /// None: sent as null, which matches every protocol (as a Proxmox rule without one);
    /// a rule sent without `proto` has `tcp`, the documented default.
    pub proto: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dport: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sport: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub comment: Option<String>,
    /// None: sent as null, the documented default (1, on); a rule sent without `enable`
    /// has 1.
    pub enable: Option<i64>,
}

/// The parsed form the evaluator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    direction: Direction,
    action: Action,
    proto: Option<String>,
    dport: Option<PortSpec>,
    sport: Option<PortSpec>,
    source: Option<Cidr>,
    dest: Option<Cidr>,
    enabled: bool,
}

impl Rule {
    /// Checks every field; the message names the first problem (400 `invalid_rule`).
    pub fn validate(&self) -> Result<(), String> {
        self.parsed().map(|_| ())
    }

    fn parsed(&self) -> Result<Parsed, String> {
        let direction = match self.direction.as_str() {
            "in" => Direction::In,
            "out" => Direction::Out,
            other => return Err(format!("Invalid type {other:?}: must be 'in' or 'out'")),
        };
        let action = Action::parse(&self.action).ok_or_else(|| {
            format!(
                "Invalid action {:?}: must be ACCEPT, DROP or REJECT",
                self.action
            )
        })?;
        if let Some(proto) = self.proto.as_deref().filter(|p| !PROTOCOLS.contains(p)) {
            return Err(format!(
                "Invalid proto {proto:?}: must be one of {}",
                PROTOCOLS.join(", ")
            ));
        }
        let ports = |p: &Option<String>| -> Result<Option<PortSpec>, String> {
            match p {
                Some(s) if !self.proto.as_deref().is_some_and(has_ports) => {
                    Err(format!("Ports ({s}) need proto tcp, udp or sctp"))
                }
                Some(s) => PortSpec::parse(s).map(Some),
                None => Ok(None),
            }
        };
        let addr = |a: &Option<String>| a.as_deref().map(Cidr::parse).transpose();
        let (source, dest) = (addr(&self.source)?, addr(&self.dest)?);
        if let (Some(s), Some(d)) = (&source, &dest) {
            if s.addr.is_ipv4() != d.addr.is_ipv4() {
                return Err("source and dest must be the same address family".into());
            }
        }
        if let Some(e) = self.enable.filter(|e| !matches!(e, 0 | 1)) {
            return Err(format!("Invalid enable {e}: must be 1 or 0"));
        }
        if self
            .comment
            .as_ref()
            .is_some_and(|c| c.chars().count() > 256)
        {
            return Err("comment is limited to 256 characters".into());
        }
        Ok(Parsed {
            direction,
            action,
            proto: self.proto.clone(),
            dport: ports(&self.dport)?,
            sport: ports(&self.sport)?,
            source,
            dest,
            enabled: self.enable != Some(0),
        })
    }
}

/// A whole firewall: on/off, the two default policies, and the ordered rules.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Firewall {
    pub enabled: bool,
    pub policy_in: String,
    pub policy_out: String,
    pub rules: Vec<Rule>,
}

impl Default for Firewall {
    /// Off, and when switched on: inbound dropped unless a rule allows it, outbound allowed.
    fn default() -> Self {
        Firewall {
            enabled: false,
            policy_in: "DROP".into(),
            policy_out: "ACCEPT".into(),
            rules: vec![],
        }
    }
}

/// One packet as the evaluator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub direction: Direction,
    pub proto: String,
    pub source: IpAddr,
    pub dest: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

impl Firewall {
    /// What happens to the packet. A disabled firewall accepts everything; otherwise the first
    /// enabled rule that matches decides, else the direction's policy.
    pub fn evaluate(&self, p: &Packet) -> Action {
        if !self.enabled {
            return Action::Accept;
        }
        for rule in self.rules.iter().filter_map(|r| r.parsed().ok()) {
            if rule.enabled && matches(&rule, p) {
                return rule.action;
            }
        }
        let policy = match p.direction {
            Direction::In => &self.policy_in,
            Direction::Out => &self.policy_out,
        };
        parse_policy(policy).unwrap_or(Action::Drop)
    }
}

fn matches(r: &Parsed, p: &Packet) -> bool {
    let port_ok = |spec: &Option<PortSpec>, port: Option<u16>| match (spec, port) {
        (None, _) => true,
        (Some(s), Some(port)) => s.contains(port),
        (Some(_), None) => false,
    };
    r.direction == p.direction
        && r.proto.as_ref().is_none_or(|proto| *proto == p.proto)
        && port_ok(&r.dport, p.dport)
        && port_ok(&r.sport, p.sport)
        && r.source.as_ref().is_none_or(|c| c.contains(p.source))
        && r.dest.as_ref().is_none_or(|c| c.contains(p.dest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(
        direction: &str,
        action: &str,
        proto: &str,
        dport: Option<&str>,
        source: Option<&str>,
    ) -> Rule {
        Rule {
            direction: direction.into(),
            action: action.into(),
            proto: Some(proto.into()),
            dport: dport.map(Into::into),
            sport: None,
            source: source.map(Into::into),
            dest: None,
            comment: None,
            enable: Some(1),
        }
    }

    fn tcp_in(src: &str, dport: u16) -> Packet {
        Packet {
            direction: Direction::In,
            proto: "tcp".into(),
            source: src.parse().unwrap(),
            dest: "192.0.2.10".parse().unwrap(),
            sport: Some(40000),
            dport: Some(dport),
        }
    }

    fn fw(rules: Vec<Rule>) -> Firewall {
        Firewall {
            enabled: true,
            policy_in: "DROP".into(),
            policy_out: "ACCEPT".into(),
            rules,
        }
    }

    #[test]
    fn ports_parse() {
        assert!(PortSpec::parse("22").unwrap().contains(22));
        let r = PortSpec::parse("8000:9000").unwrap();
        assert!(r.contains(8000) && r.contains(9000) && !r.contains(9001));
        let l = PortSpec::parse("80,443,6000:6010").unwrap();
        assert!(l.contains(443) && l.contains(6005) && !l.contains(81));
        for bad in [
            "",
            "0",
            "65536",
            "9000:8000",
            "a",
            "22,",
            ":",
            "1:2:3",
            "-1",
            "+22",
        ] {
            assert!(PortSpec::parse(bad).is_err(), "{bad:?}");
        }
        assert!(PortSpec::parse("65535").is_ok());
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.200.3.4".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("203.0.113.50")
            .unwrap()
            .contains("203.0.113.50".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "300.1.1.1", "host", "10.0.0.0/", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validation() {
        assert!(rule("in", "ACCEPT", "tcp", Some("22"), None)
            .validate()
            .is_ok());
        assert!(rule("sideways", "ACCEPT", "tcp", None, None)
            .validate()
            .is_err());
        assert!(rule("in", "accept", "tcp", None, None).validate().is_err());
        assert!(rule("in", "ACCEPT", "carrier-pigeon", None, None)
            .validate()
            .is_err());
        assert!(
            rule("in", "ACCEPT", "icmp", Some("22"), None)
                .validate()
                .is_err(),
            "icmp has no ports"
        );
        assert!(rule("in", "ACCEPT", "tcp", Some("70000"), None)
            .validate()
            .is_err());
        assert!(rule("in", "ACCEPT", "tcp", None, Some("10.0.0.0/99"))
            .validate()
            .is_err());
        let mut r = rule("in", "ACCEPT", "tcp", None, None);
        r.enable = Some(2);
        assert!(r.validate().is_err());
    }

    #[test]
    fn disabled_firewall_accepts_everything() {
        let mut f = fw(vec![rule("in", "DROP", "tcp", None, None)]);
        f.enabled = false;
        assert_eq!(f.evaluate(&tcp_in("1.2.3.4", 22)), Action::Accept);
    }

    #[test]
    fn first_match_wins_else_policy() {
        let f = fw(vec![
            rule("in", "DROP", "tcp", Some("22"), Some("198.51.100.0/24")),
            rule("in", "ACCEPT", "tcp", Some("22"), None),
            rule("in", "REJECT", "tcp", Some("80,443"), None),
        ]);
        assert_eq!(f.evaluate(&tcp_in("198.51.100.7", 22)), Action::Drop);
        assert_eq!(f.evaluate(&tcp_in("203.0.113.1", 22)), Action::Accept);
        assert_eq!(f.evaluate(&tcp_in("203.0.113.1", 443)), Action::Reject);
        assert_eq!(
            f.evaluate(&tcp_in("203.0.113.1", 3306)),
            Action::Drop,
            "policy_in"
        );
        let mut out = tcp_in("192.0.2.10", 443);
        out.direction = Direction::Out;
        assert_eq!(f.evaluate(&out), Action::Accept, "policy_out");
    }

    #[test]
    fn direction_proto_and_disabled_rules_are_respected() {
        let mut off = rule("in", "ACCEPT", "tcp", Some("22"), None);
        off.enable = Some(0);
        let f = fw(vec![
            off,
            rule("out", "ACCEPT", "tcp", Some("22"), None),
            rule("in", "ACCEPT", "udp", Some("22"), None),
        ]);
        assert_eq!(f.evaluate(&tcp_in("1.1.1.1", 22)), Action::Drop);
        let mut udp = tcp_in("1.1.1.1", 22);
        udp.proto = "udp".into();
        assert_eq!(f.evaluate(&udp), Action::Accept);
    }

    #[test]
    fn a_null_proto_matches_every_protocol_and_a_null_enable_is_on() {
        let mut any = rule("in", "ACCEPT", "tcp", None, Some("10.0.0.0/8"));
        any.proto = None;
        any.enable = None;
        assert_eq!(any.validate(), Ok(()));
        let f = fw(vec![any.clone()]);
        let mut udp = tcp_in("10.1.1.1", 53);
        udp.proto = "udp".into();
        assert_eq!(f.evaluate(&tcp_in("10.1.1.1", 22)), Action::Accept);
        assert_eq!(f.evaluate(&udp), Action::Accept);
        assert_eq!(f.evaluate(&tcp_in("192.0.2.1", 22)), Action::Drop);
        // Ports still need a protocol that has them.
        any.dport = Some("22".into());
        assert!(any.validate().unwrap_err().contains("need proto"));
        // Null is kept as null, a stored rule of an earlier version still reads.
        let json = serde_json::to_value(rule("in", "DROP", "udp", None, None)).unwrap();
        assert_eq!(
            (json["proto"].clone(), json["enable"].clone()),
            (serde_json::json!("udp"), serde_json::json!(1))
        );
        let mut nulls = rule("in", "DROP", "udp", None, None);
        (nulls.proto, nulls.enable) = (None, None);
        let json = serde_json::to_value(&nulls).unwrap();
        assert_eq!(
            (json["proto"].clone(), json["enable"].clone()),
            (serde_json::Value::Null, serde_json::Value::Null)
        );
        assert_eq!(serde_json::from_value::<Rule>(json).unwrap(), nulls);
    }

    #[test]
    fn icmp_rules_match_portless_packets() {
        let f = fw(vec![rule("in", "ACCEPT", "icmp", None, None)]);
        let ping = Packet {
            proto: "icmp".into(),
            sport: None,
            dport: None,
            ..tcp_in("1.1.1.1", 1)
        };
        assert_eq!(f.evaluate(&ping), Action::Accept);
        let g = fw(vec![rule("in", "ACCEPT", "tcp", Some("22"), None)]);
        let portless = Packet {
            dport: None,
            ..tcp_in("1.1.1.1", 1)
        };
        assert_eq!(
            g.evaluate(&portless),
            Action::Drop,
            "a port rule needs a port"
        );
    }

    proptest! {
        /// With no rules the policy decides, whatever the packet.
        #[test]
        fn no_rules_means_policy(port in 1u16.., a in any::<[u8; 4]>(), inbound in any::<bool>()) {
            let f = fw(vec![]);
            let mut p = tcp_in(&std::net::Ipv4Addr::from(a).to_string(), port);
            p.direction = if inbound { Direction::In } else { Direction::Out };
            let want = if inbound { Action::Drop } else { Action::Accept };
            prop_assert_eq!(f.evaluate(&p), want);
        }

        /// Putting an ACCEPT-everything rule first accepts every inbound tcp packet; putting it
        /// after a DROP-everything rule never does.
        #[test]
        fn order_decides(port in 1u16.., a in any::<[u8; 4]>()) {
            let all = |act: &str| rule("in", act, "tcp", None, None);
            let p = tcp_in(&std::net::Ipv4Addr::from(a).to_string(), port);
            prop_assert_eq!(fw(vec![all("ACCEPT"), all("DROP")]).evaluate(&p), Action::Accept);
            prop_assert_eq!(fw(vec![all("DROP"), all("ACCEPT")]).evaluate(&p), Action::Drop);
        }

        /// A single-port rule matches exactly that port.
        #[test]
        fn single_port_rule(rule_port in 1u16.., port in 1u16..) {
            let f = fw(vec![rule("in", "ACCEPT", "tcp", Some(&rule_port.to_string()), None)]);
            let want = if rule_port == port { Action::Accept } else { Action::Drop };
            prop_assert_eq!(f.evaluate(&tcp_in("1.1.1.1", port)), want);
        }
    }
}
