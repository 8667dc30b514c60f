//! Picks the certificate for each TLS handshake by SNI.
//!
//! The map from host name to certificate sits behind an `ArcSwap`: a handshake reads it with
//! one atomic load, and a new or renewed certificate replaces the map whole, so it is served
//! from the next handshake on. Writers (the manager) are rare and serialized by a mutex.
//!
//! A client that sends no SNI, or a name no certificate covers, gets the default certificate:
//! the one of the first TLS host in the config, as nginx answers with its default server.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Default)]
struct CertMap {
    /// Exact host names, and `*.suffix` names as written.
    by_host: HashMap<String, Arc<CertifiedKey>>,
    /// Hosts in config order; the first one with a certificate is the default.
    order: Vec<String>,
}

impl CertMap {
    fn find(&self, host: &str) -> Option<&Arc<CertifiedKey>> {
        if let Some(k) = self.by_host.get(host) {
            return Some(k);
        }
        let (_, rest) = host.split_once('.')?;
        self.by_host.get(&format!("*.{rest}"))
    }

    fn default(&self) -> Option<&Arc<CertifiedKey>> {
        self.order.iter().find_map(|h| self.by_host.get(h))
    }
}

/// The `ResolvesServerCert` of every HTTPS listener.
pub struct SniResolver {
    map: ArcSwap<CertMap>,
    write: Mutex<()>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.map.load();
        let mut hosts: Vec<&String> = map.by_host.keys().collect();
        hosts.sort();
        f.debug_struct("SniResolver")
            .field("hosts", &hosts)
            .finish()
    }
}

impl SniResolver {
    /// A resolver for `hosts` (config order decides the default), serving nothing yet.
    pub fn new(hosts: Vec<String>) -> SniResolver {
        SniResolver {
            map: ArcSwap::from_pointee(CertMap {
                by_host: HashMap::new(),
                order: hosts,
            }),
            write: Mutex::new(()),
        }
    }

    /// Serves `key` for `host` from the next handshake on.
    pub fn set(&self, host: &str, key: Arc<CertifiedKey>) {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load();
        let mut by_host = current.by_host.clone();
        by_host.insert(host.to_ascii_lowercase(), key);
        self.map.store(Arc::new(CertMap {
            by_host,
            order: current.order.clone(),
        }));
    }

    /// Serves `host` too (its certificate comes with [`SniResolver::set`]).
    pub fn add_host(&self, host: &str) {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load();
        let mut order = current.order.clone();
        order.push(host.to_string());
        self.map.store(Arc::new(CertMap {
            by_host: current.by_host.clone(),
            order,
        }));
    }

    /// The certificate served for a host name now, if any.
    pub fn get(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.map.load().find(&host.to_ascii_lowercase()).cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let map = self.map.load();
        match hello.server_name() {
            Some(name) => {
                let found = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                    map.find(&name.to_ascii_lowercase())
                } else {
                    map.find(name)
                };
                found.or_else(|| map.default()).cloned()
            }
            None => map.default().cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::material::{load_pair, tests::self_signed};

    fn key(names: &[&str]) -> Arc<CertifiedKey> {
        let (c, k) = self_signed(names);
        load_pair(c.as_bytes(), k.as_bytes()).unwrap().key
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let r = SniResolver::new(vec![
            "b.example.com".into(),
            "a.example.com".into(),
            "*.example.org".into(),
        ]);
        assert!(r.get("a.example.com").is_none());
        let (a, b, w) = (
            key(&["a.example.com"]),
            key(&["b.example.com"]),
            key(&["*.example.org"]),
        );
        r.set("a.example.com", a.clone());
        assert!(
            Arc::ptr_eq(&r.map.load().default().unwrap().clone(), &a),
            "b has no cert yet, so a is the default"
        );
        r.set("b.example.com", b.clone());
        r.set("*.example.org", w.clone());
        assert!(Arc::ptr_eq(&r.get("A.example.com").unwrap(), &a));
        assert!(Arc::ptr_eq(&r.get("x.example.org").unwrap(), &w));
        assert!(r.get("x.y.example.org").is_none());
        assert!(
            Arc::ptr_eq(r.map.load().default().unwrap(), &b),
            "the first host in config order"
        );
    }

    #[test]
    fn a_renewal_replaces_the_served_key() {
        let r = SniResolver::new(vec!["a.example.com".into()]);
        let (old, new) = (key(&["a.example.com"]), key(&["a.example.com"]));
        r.set("a.example.com", old);
        r.set("a.example.com", new.clone());
        assert!(Arc::ptr_eq(&r.get("a.example.com").unwrap(), &new));
    }
}
