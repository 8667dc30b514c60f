//! Backend and listener addresses.
//!
//! One parser for every place an address is typed (the config file, `switchback pool set`, the
//! control protocol), so they accept and refuse the same strings.

use std::net::SocketAddr;

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
}
