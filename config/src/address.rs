//! Backend and listener addresses.
//!
//! One parser for every place an address is typed (the config file, `switchback pool set`, the
//! control protocol), so they accept and refuse the same strings.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::MAX_BACKENDS_PER_POOL;

/// A backend as written: an address, or a host name and a port that are resolved while the
/// proxy runs (every address the name yields is a backend of its own).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Addr(SocketAddr),
    /// A host name, lower case and without a trailing dot, and a port.
    Name {
        host: String,
        port: u16,
    },
}

impl Target {
    /// The host name, for a target written by name.
    pub fn host(&self) -> Option<&str> {
        match self {
            Target::Addr(_) => None,
            Target::Name { host, .. } => Some(host),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Target::Addr(a) => a.port(),
            Target::Name { port, .. } => *port,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => a.fmt(f),
            Target::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Target, String> {
        parse_target(text)
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        let text = String::deserialize(d)?;
        parse_target(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether `host` is a host name DNS can carry: labels of letters, digits, '-' (not at either
/// end) and '_' (Compose service names may have it), 1 to 63 long, 253 in all.
fn valid_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // All digits and dots is a mistyped IPv4 address, not a name.
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Parses a backend: `"127.0.0.1:9001"`, `"[::1]:9001"`, or a host name and a port,
/// `"api:8000"`, `"api-green.internal:8000"`.
pub fn parse_target(text: &str) -> Result<Target, String> {
    let t = text.trim();
    if let Ok(addr) = parse_socket_addr(t) {
        return Ok(Target::Addr(addr));
    }
    let example = "write an address or a host name with a port, like \"127.0.0.1:9001\", \"[::1]:9001\" or \"api:8000\"";
    if t.starts_with('[') || t.parse::<SocketAddr>().is_ok() {
        return parse_socket_addr(t).map(Target::Addr);
    }
    let Some((host, port)) = t.rsplit_once(':') else {
        return Err(format!("{t:?} has no port: {example}"));
    };
    let port = match port.parse::<u16>() {
        Ok(0) => return Err(format!("{t:?} has port 0: give the real port")),
        Ok(p) => p,
        Err(_) => return Err(format!("{t:?} is not an address: {example}")),
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if !valid_host_name(&host) {
        return Err(format!("{t:?} is not an address: {example}"));
    }
    Ok(Target::Name { host, port })
}

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

/// Parses a comma-separated list of backends (`"127.0.0.1:9001,api-green:8000"`), refusing
/// duplicates and empty lists.
pub fn parse_backend_list(text: &str) -> Result<Vec<Target>, String> {
    let parts: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    parse_backends(&parts)
}

/// Parses a list of backends, refusing duplicates, empty lists and more than
/// [`MAX_BACKENDS_PER_POOL`].
pub fn parse_backends<S: AsRef<str>>(items: &[S]) -> Result<Vec<Target>, String> {
    if items.len() > MAX_BACKENDS_PER_POOL {
        return Err(format!(
            "{} addresses: a pool has at most {MAX_BACKENDS_PER_POOL}",
            items.len()
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let target = parse_target(item.as_ref())?;
        if out.contains(&target) {
            return Err(format!("{target} is listed twice"));
        }
        out.push(target);
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
    fn backends_are_addresses_or_names_with_ports() {
        assert_eq!(
            parse_target("127.0.0.1:9001").unwrap(),
            Target::Addr("127.0.0.1:9001".parse().unwrap())
        );
        assert_eq!(
            parse_target(" Api-Green.internal.:8000 ").unwrap(),
            Target::Name {
                host: "api-green.internal".into(),
                port: 8000
            }
        );
        let name = parse_target("my_api:80").unwrap();
        assert_eq!(name.to_string(), "my_api:80");
        assert_eq!(name.host(), Some("my_api"));
        assert_eq!(parse_target("localhost:9").unwrap().port(), 9);
        for bad in [
            "api",
            "api:",
            "api:0",
            "api:http",
            "api:70000",
            "-api:80",
            "a..b:80",
            "1.2.3.999:80",
            "[::1]",
            "[api]:80",
            "http://api:80",
            "api/v1:80",
            ":80",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?} should be refused");
        }
        let e = parse_target("api").unwrap_err();
        assert!(e.contains("no port"), "{e}");
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, "\"my_api:80\"");
        assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), name);
        assert!(serde_json::from_str::<Target>("\"api\"").is_err());
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
        assert!(parse_backend_list("api:1,API:1").is_err());
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
