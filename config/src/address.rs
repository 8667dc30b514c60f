//! Backend and listener addresses.
//!
//! One parser for every place an address is typed (the config file, `switchback pool set`, the
//! control protocol), so they accept and refuse the same strings.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::model::MAX_BACKENDS_PER_POOL;

/// Parses `"127.0.0.1:9001"` or `"[::1]:9001"`, with a message that says what to write instead.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    match t.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => Err(format!("{t:?} has port 0: give the real port")),
        Ok(addr) => Ok(addr),
        Err(_) => Err(format!(
            "{t:?} is not an address: write an IP address and a port, like \"127.0.0.1:9001\" or \"[::1]:9001\""
        )),
    }
}

/// Parses a comma-separated list of addresses (`"127.0.0.1:9001,127.0.0.1:9002"`), refusing
/// duplicates and empty lists.
pub fn parse_backend_list(text: &str) -> Result<Vec<SocketAddr>, String> {
    let parts: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    parse_backends(&parts)
}

/// Parses a list of backend addresses, refusing duplicates, empty lists and more than
/// [`MAX_BACKENDS_PER_POOL`].
pub fn parse_backends<S: AsRef<str>>(items: &[S]) -> Result<Vec<SocketAddr>, String> {
    if items.len() > MAX_BACKENDS_PER_POOL {
        return Err(format!(
            "{} addresses: a pool has at most {MAX_BACKENDS_PER_POOL}",
            items.len()
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let addr = parse_socket_addr(item.as_ref())?;
        if out.contains(&addr) {
            return Err(format!("{addr} is listed twice"));
        }
        out.push(addr);
    }
    if out.is_empty() {
        return Err(
            "no address given: list one or more, like \"127.0.0.1:9001,127.0.0.1:9002\"".into(),
        );
    }
    Ok(out)
}

/// An address block, like `10.0.0.0/8` or `2001:db8::/32`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block. An IPv4 address seen as IPv6 (`::ffff:10.0.0.1`, as a
    /// dual-stack listener reports it) matches the IPv4 block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let t = text.trim();
        let bad = || {
            format!(
                "{t:?} is not an address block: write one like \"10.0.0.0/8\", \"192.168.1.7\" or \"fd00::/8\""
            )
        };
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{t:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ipv4_and_ipv6() {
        assert_eq!(parse_socket_addr("127.0.0.1:9001").unwrap().port(), 9001);
        assert!(parse_socket_addr("[::1]:80").unwrap().is_ipv6());
    }

    #[test]
    fn refuses_names_missing_ports_and_port_zero() {
        for bad in [
            "localhost:80",
            "127.0.0.1",
            "127.0.0.1:0",
            "1.2.3.4:99999",
            "",
        ] {
            assert!(parse_socket_addr(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn lists_refuse_duplicates_and_empties() {
        assert_eq!(
            parse_backend_list("127.0.0.1:1, 127.0.0.1:2")
                .unwrap()
                .len(),
            2
        );
        assert!(parse_backend_list("127.0.0.1:1,127.0.0.1:1").is_err());
        assert!(parse_backend_list(" , ").is_err());
        let many: Vec<String> = (1..=65).map(|p| format!("127.0.0.1:{p}")).collect();
        let e = parse_backends(&many).unwrap_err();
        assert!(e.contains("at most 64"), "{e}");
        assert_eq!(parse_backends(&many[..64]).unwrap().len(), 64);
    }

    #[test]
    fn address_blocks_match_their_members() {
        let block: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(block.contains("10.200.3.4".parse().unwrap()));
        assert!(!block.contains("11.0.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: Cidr = "192.168.1.7".parse().unwrap();
        assert!(one.contains("192.168.1.7".parse().unwrap()));
        assert!(!one.contains("192.168.1.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten".parse::<Cidr>().is_err());
        assert!("10.0.0.0/".parse::<Cidr>().is_err());
    }
}
