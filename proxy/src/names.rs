//! Backends given by host name, as the control plane last resolved them: the routing table
//! turns each pool's targets into one backend per address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use switchback_config::{Target, MAX_BACKENDS_PER_POOL};

/// What a host name resolved to at its last lookup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    /// Every address, in the resolver's order; empty when the name does not resolve.
    pub addrs: Vec<IpAddr>,
    /// Why the last lookup failed, if it did. A lookup that failed for want of an answer
    /// (a timeout, an unreachable server) keeps the addresses of the one before.
    pub error: Option<String>,
}

/// Host name (as in [`Target::Name`]) to its last answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    hosts: HashMap<String, Answer>,
}

impl Resolved {
    pub fn get(&self, host: &str) -> Option<&Answer> {
        self.hosts.get(host)
    }

    pub fn insert(&mut self, host: String, answer: Answer) {
        self.hosts.insert(host, answer);
    }

    /// Whether any host name has an answer.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub fn hosts(&self) -> impl Iterator<Item = (&str, &Answer)> {
        self.hosts.iter().map(|(h, a)| (h.as_str(), a))
    }

    /// The backends `targets` stand for: each address as it is, each name as every address it
    /// resolved to (none while it does not resolve), in order, without repeats, at most
    /// [`MAX_BACKENDS_PER_POOL`]. Each comes with the name it came from, if any.
    pub fn expand<'a>(&self, targets: &'a [Target]) -> Vec<(SocketAddr, Option<&'a Target>)> {
        let mut out: Vec<(SocketAddr, Option<&Target>)> = Vec::with_capacity(targets.len());
        for target in targets {
            let addrs: Vec<SocketAddr> = match target {
                Target::Addr(a) => vec![*a],
                Target::Name { host, port } => self
                    .get(host)
                    .map(|a| {
                        a.addrs
                            .iter()
                            .map(|ip| SocketAddr::new(*ip, *port))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            let from = target.host().map(|_| target);
            for addr in addrs {
                if out.len() < MAX_BACKENDS_PER_POOL && !out.iter().any(|(a, _)| *a == addr) {
                    out.push((addr, from));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_expand_to_every_address_and_addresses_stay_as_they_are() {
        let mut r = Resolved::default();
        r.insert(
            "api".into(),
            Answer {
                addrs: vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
                error: None,
            },
        );
        let targets: Vec<Target> = ["api:8000", "10.0.0.9:80", "gone:80", "10.0.0.1:8000"]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
        let got: Vec<String> = r
            .expand(&targets)
            .iter()
            .map(|(a, from)| format!("{a}<{}", from.map(ToString::to_string).unwrap_or_default()))
            .collect();
        // A name that does not resolve yields nothing; an address reached twice counts once.
        assert_eq!(
            got,
            [
                "10.0.0.1:8000<api:8000",
                "10.0.0.2:8000<api:8000",
                "10.0.0.9:80<"
            ]
        );
    }

    #[test]
    fn a_pool_never_grows_past_its_cap() {
        let mut r = Resolved::default();
        let many = (0..100u8)
            .map(|i| IpAddr::from([10, 0, 1, i]))
            .collect::<Vec<_>>();
        r.insert(
            "big".into(),
            Answer {
                addrs: many,
                error: None,
            },
        );
        let targets = vec!["big:80".parse().unwrap()];
        assert_eq!(r.expand(&targets).len(), MAX_BACKENDS_PER_POOL);
    }
}
