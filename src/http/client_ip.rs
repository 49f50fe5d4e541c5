//! Who is calling: the socket's peer address, unless that peer is a configured trusted proxy, in which
//! case the right-most X-Forwarded-For entry that is not itself a trusted proxy. Believing the header
//! from anyone would let a client pick a fresh address per request and walk past every per-IP budget.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let nets = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| anyhow::anyhow!("TRUSTED_PROXIES: {s:?} is not an address or CIDR"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(TrustedProxies(nets))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let Some(header) = forwarded_for else {
            return peer;
        };
        let mut client = peer;
        for hop in header.rsplit(',').map(str::trim) {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = canonical(ip);
                    if !self.trusts(client) {
                        break;
                    }
                }
                // Garbage in the chain: stop at the last address we could trust.
                Err(_) => break,
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The budget key of an address: IPv4 as is; IPv6 by its /64, since one subscriber usually holds a
/// whole /64 and could otherwise rotate through 2^64 addresses.
pub fn budget_key(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("203.0.113.9"), Some("1.2.3.4")),
            ip("203.0.113.9")
        );
        let lb = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").unwrap();
        assert_eq!(
            lb.client_ip(ip("10.1.2.3"), Some("198.51.100.7")),
            ip("198.51.100.7")
        );
        // A client-supplied first entry is not believed: the right-most untrusted hop is the client.
        assert_eq!(
            lb.client_ip(ip("10.1.2.3"), Some("1.1.1.1, 198.51.100.7, 10.9.9.9")),
            ip("198.51.100.7")
        );
        assert_eq!(lb.client_ip(ip("10.1.2.3"), Some("garbage")), ip("10.1.2.3"));
        assert_eq!(
            lb.client_ip(ip("203.0.113.9"), Some("198.51.100.7")),
            ip("203.0.113.9")
        );
        assert!(TrustedProxies::parse("nope").is_err());
    }

    #[test]
    fn budget_keys() {
        assert_eq!(budget_key(ip("203.0.113.9")), "203.0.113.9");
        assert_eq!(budget_key(ip("::ffff:203.0.113.9")), "203.0.113.9");
        assert_eq!(
            budget_key(ip("2001:db8:1:2:3:4:5:6")),
            budget_key(ip("2001:db8:1:2:ffff::1"))
        );
        assert_ne!(
            budget_key(ip("2001:db8:1:2::1")),
            budget_key(ip("2001:db8:1:3::1"))
        );
    }
}
