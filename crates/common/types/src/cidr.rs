//! IP networks in CIDR notation (`192.168.1.0/24`, `2001:db8::/32`), canonicalised so one network has one
//! spelling: host bits cleared, IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`) written as IPv4 (`10.0.0.0/8`), and
//! addresses checked after the same mapping, so an IPv4 client reaching a dual-stack socket as
//! `::ffff:a.b.c.d` is judged as `a.b.c.d`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// A network that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP network: write it like 192.168.1.0/24, 10.0.0.0/8, 2001:db8::/32 or a single address")]
pub struct BadCidr(pub String);

fn mask4(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(addr);
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    Ipv4Addr::from(bits & mask)
}

fn mask6(addr: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(addr);
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
    Ipv6Addr::from(bits & mask)
}

impl Cidr {
    /// The network of `addr` with `prefix` bits, canonicalised.
    ///
    /// # Errors
    /// A prefix longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, BadCidr> {
        let bad = || BadCidr(format!("{addr}/{prefix}"));
        match addr {
            IpAddr::V4(a) if prefix <= 32 => Ok(Self { net: IpAddr::V4(mask4(a, prefix)), prefix }),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => Self::new(IpAddr::V4(v4), prefix - 96),
                _ if prefix <= 128 => Ok(Self { net: IpAddr::V6(mask6(a, prefix)), prefix }),
                _ => Err(bad()),
            },
            IpAddr::V4(_) => Err(bad()),
        }
    }

    /// Whether `ip` (canonicalised first) is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => mask4(a, self.prefix) == net,
            (IpAddr::V6(net), IpAddr::V6(a)) => mask6(a, self.prefix) == net,
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || BadCidr(t.to_owned());
        if t.is_empty() || t.len() > 64 {
            return Err(bad());
        }
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (a, Some(p.parse::<u8>().map_err(|_| bad())?))
            }
            None => (t, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Self::new(addr, prefix).map_err(|_| bad())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Whether `ip` may reach a workspace with this allowlist (an empty list allows every address). Entries
/// that do not parse allow nothing.
pub fn allowlist_permits(list: &[String], ip: IpAddr) -> bool {
    list.is_empty() || list.iter().filter_map(|c| c.parse::<Cidr>().ok()).any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn networks_are_canonical() {
        assert_eq!(c("192.168.1.77/24").to_string(), "192.168.1.0/24");
        assert_eq!(c(" 10.1.2.3 ").to_string(), "10.1.2.3/32");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(c("2001:DB8:1::5/32").to_string(), "2001:db8::/32");
        assert_eq!(c("::1").to_string(), "::1/128");
        assert_eq!(c("::ffff:10.9.8.7/104").to_string(), "10.0.0.0/8", "mapped IPv6 is written as IPv4");
        assert_eq!(c("::ffff:127.0.0.1").to_string(), "127.0.0.1/32");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0/8",
            "host.example/8",
            "10.0.0.0/8/8",
            "10.0.0.0/+8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn membership_sees_through_mapped_addresses() {
        let lan = c("192.168.1.0/24");
        assert!(lan.contains(ip("192.168.1.200")));
        assert!(!lan.contains(ip("192.168.2.1")));
        assert!(lan.contains(ip("::ffff:192.168.1.9")), "an IPv4 client on a dual-stack socket");
        assert!(!lan.contains(ip("::ffff:192.168.2.9")), "a mapped address outside does not slip through");
        let v6 = c("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!c("::/0").contains(ip("::ffff:10.0.0.1")), "a mapped address is IPv4, not in an IPv6 network");
        assert!(c("0.0.0.0/0").contains(ip("::ffff:10.0.0.1")));
        assert!(c("127.0.0.1/32").contains(ip("127.0.0.1")));
        assert!(!c("127.0.0.1/32").contains(ip("127.0.0.2")));
        assert!(allowlist_permits(&[], ip("8.8.8.8")));
        assert!(!allowlist_permits(&["10.0.0.0/8".into()], ip("8.8.8.8")));
        assert!(allowlist_permits(&["10.0.0.0/8".into(), "8.8.8.0/24".into()], ip("8.8.8.8")));
    }
}
