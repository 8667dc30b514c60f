//! The routing table: which service a request belongs to, and which pools that service has.
//!
//! One immutable [`RoutingTable`] is live at a time, behind an `ArcSwap`. A request loads it once
//! and keeps that `Arc` for its whole life, retries included, so it sees one generation from
//! start to end. A change builds the next table from the current one (reusing the `Arc`s of what
//! did not change, so health and counters carry over) and swaps it in whole. The control
//! plane (the `switchback-daemon` crate) is the one writer.
//!
//! Routing is by listener (a service with `listen` is on those listeners only), then by Host
//! (exact name, then `*.suffix`, then the catch-all service, then the listener's default
//! service for a name no service has), then by the longest matching path prefix. When no
//! service names listeners or is a default, every listener shares one index, and the
//! connection's local address is never asked for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;
use switchback_config::template::{Template, Var, REDIRECT_VARS};
use switchback_config::{Config, LiveState, ServiceConfig, Target};

use crate::access::Access;
use crate::headers::HeaderRules;
use crate::health::HealthRegistry;
use crate::metrics::{Metrics, NO_BACKEND};
use crate::names::Resolved;
use crate::pool::{Backend, Pool, PoolHandles, PoolStats};
use crate::split::{Canary, Overrides, Split, BUCKETS};

/// One generation of the routing state.
#[derive(Debug)]
pub struct RoutingTable {
    pub generation: u64,
    /// In config order (sorted by name).
    pub services: Vec<ServiceRoute>,
    /// The routes of a request on any listener.
    hosts: HostIndex,
    /// Per listener, when some service names listeners or is a default (else empty).
    by_listener: Vec<(SocketAddr, HostIndex)>,
}

/// A service as routed in one generation.
#[derive(Debug)]
pub struct ServiceRoute {
    pub config: Arc<ServiceConfig>,
    /// The service's name, shared with every access log record of its requests.
    pub label: Arc<str>,
    /// Sorted by name.
    pub pools: Vec<Arc<Pool>>,
    /// Which pool each request goes to (indexes into `pools`).
    pub split: Split,
    /// How a request may force its pool.
    pub overrides: Overrides,
    /// Index into `pools` of the pool `rollback` goes back to: the one active before the
    /// last switch.
    pub rollback_to: Option<usize>,
    /// `request_headers` and `response_headers`, ready to apply.
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    /// `[[services.NAME.access]]` with its state; None: the service has no rules.
    pub access: Option<Arc<Access>>,
    /// `redirect`: the service answers every request with it, and has no pools.
    pub redirect: Option<RedirectRoute>,
}

/// A redirect service's answer, ready to expand.
#[derive(Debug)]
pub struct RedirectRoute {
    pub code: u16,
    to: Template,
}

impl RedirectRoute {
    /// The `Location` for a request: `host` as sent, `uri` its path and query, `local` the
    /// address it came to (whose IP stands in for a missing host, as nginx's would).
    pub fn location(&self, host: &str, uri: &str, tls: bool, local: Option<SocketAddr>) -> String {
        let mut out = String::new();
        self.to.expand(&mut out, |var, out| match var {
            Var::Host => match (&*normalize_request_host(host), local) {
                ("", Some(SocketAddr::V4(a))) => out.push_str(&a.ip().to_string()),
                ("", Some(SocketAddr::V6(a))) => out.push_str(&format!("[{}]", a.ip())),
                (host, _) => out.push_str(host),
            },
            Var::RequestUri => out.push_str(uri),
            Var::Scheme => out.push_str(if tls { "https" } else { "http" }),
            Var::ServerPort => {
                let port = local.map_or(if tls { 443 } else { 80 }, |a| a.port());
                out.push_str(&port.to_string())
            }
            // Not redirect variables: validation refuses them there.
            _ => {}
        });
        out
    }
}

impl ServiceRoute {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn active_pool(&self) -> &Arc<Pool> {
        &self.pools[self.split.active]
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.name == name)
    }

    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| &*p.name == name)
    }
}

/// Path prefix → service index, longest prefix first.
type Prefixes = Vec<(Box<str>, usize)>;

#[derive(Debug, Default)]
struct HostIndex {
    exact: HashMap<Box<str>, Prefixes>,
    /// `(".example.com", …)` for `*.example.com`, longest suffix first.
    wildcard: Vec<(Box<str>, Prefixes)>,
    any: Prefixes,
    /// The default service's host's routes, for a name that no service has.
    fallback: Option<Prefixes>,
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => {
            prefix.ends_with('/')
                || rest.is_empty()
                || rest.starts_with('/')
                || rest.starts_with('?')
        }
    }
}

fn first_match(prefixes: &Prefixes, path: &str) -> Option<usize> {
    prefixes
        .iter()
        .find(|(prefix, _)| prefix_matches(prefix, path))
        .map(|(_, index)| *index)
}

impl HostIndex {
    /// The index of the services `on` takes (by their index), with `default` the listener's
    /// default service, if any.
    fn build(
        services: &[ServiceRoute],
        on: impl Fn(&ServiceConfig) -> bool,
        default: Option<usize>,
    ) -> HostIndex {
        let mut index = HostIndex::default();
        let mut wildcard: HashMap<Box<str>, Prefixes> = HashMap::new();
        for (i, service) in services.iter().enumerate() {
            if !on(&service.config) {
                continue;
            }
            let prefix: Box<str> = service.config.path_prefix.as_str().into();
            if service.config.hosts.is_empty() {
                index.any.push((prefix.clone(), i));
            }
            for host in &service.config.hosts {
                match host.strip_prefix('*') {
                    Some(suffix) => wildcard
                        .entry(suffix.into())
                        .or_default()
                        .push((prefix.clone(), i)),
                    None => index
                        .exact
                        .entry(host.as_str().into())
                        .or_default()
                        .push((prefix.clone(), i)),
                }
            }
        }
        index.wildcard = wildcard.into_iter().collect();
        index
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        let by_length =
            |p: &mut Prefixes| p.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        index.exact.values_mut().for_each(by_length);
        index.wildcard.iter_mut().for_each(|(_, p)| by_length(p));
        by_length(&mut index.any);
        // A default with hosts = [] takes every name already.
        index.fallback = default
            .and_then(|i| services[i].config.hosts.first())
            .and_then(|host| match host.strip_prefix('*') {
                Some(suffix) => index
                    .wildcard
                    .iter()
                    .find(|(s, _)| **s == *suffix)
                    .map(|(_, p)| p.clone()),
                None => index.exact.get(host.as_str()).cloned(),
            });
        index
    }

    /// Whether any service routes by host name; when none does, the Host header is not even
    /// looked at.
    fn by_host(&self) -> bool {
        !self.exact.is_empty() || !self.wildcard.is_empty()
    }

    fn lookup(&self, host: &str, path: &str) -> Option<usize> {
        // Whether some service has this name: then the default is not the name's.
        let mut named = false;
        if !self.exact.is_empty() {
            if let Some(prefixes) = self.exact.get(host) {
                named = true;
                if let Some(found) = first_match(prefixes, path) {
                    return Some(found);
                }
            }
        }
        for (suffix, prefixes) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(&**suffix) {
                named = true;
                if let Some(found) = first_match(prefixes, path) {
                    return Some(found);
                }
            }
        }
        first_match(&self.any, path).or_else(|| match &self.fallback {
            Some(fallback) if !named => first_match(fallback, path),
            _ => None,
        })
    }

    fn route(&self, raw_host: &str, path: &str) -> Option<usize> {
        if self.by_host() {
            self.lookup(&normalize_request_host(raw_host), path)
        } else {
            first_match(&self.any, path)
        }
    }
}

/// The host part of a Host header or authority: no port, no trailing dot, lower case. Borrows
/// when the name is already in that form, which it nearly always is.
pub fn normalize_request_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

impl RoutingTable {
    /// The service for a request, by its Host header (or authority) as sent and its path.
    /// `local` gives the connection's local address, asked for only when routes differ by
    /// listener.
    #[inline]
    pub fn route(
        &self,
        local: impl FnOnce() -> Option<SocketAddr>,
        raw_host: &str,
        path: &str,
    ) -> Option<(usize, &ServiceRoute)> {
        let hosts = if self.by_listener.is_empty() {
            &self.hosts
        } else {
            self.listener(local())
        };
        let index = hosts.route(raw_host, path)?;
        Some((index, &self.services[index]))
    }

    /// The routes of the listener that has the local address `local`: the one bound to that
    /// address, or to the unspecified address of its port.
    fn listener(&self, local: Option<SocketAddr>) -> &HostIndex {
        let Some(local) = local else {
            return &self.hosts;
        };
        // An IPv4 client of a dual-stack `[::]` socket comes as ::ffff:a.b.c.d.
        let local = match local {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => local,
            },
            v4 => v4,
        };
        let wildcard = |same_family: bool| {
            self.by_listener.iter().find(move |(l, _)| {
                l.port() == local.port()
                    && l.ip().is_unspecified()
                    && (l.is_ipv4() == local.is_ipv4()) == same_family
            })
        };
        let found = self
            .by_listener
            .iter()
            .find(|(l, _)| *l == local)
            .or_else(|| wildcard(true))
            .or_else(|| wildcard(false));
        found.map_or(&self.hosts, |(_, hosts)| hosts)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceRoute> {
        self.services.iter().find(|s| s.name() == name)
    }

    /// A service of the config: every table holds every one of them.
    pub fn configured(&self, name: &str) -> &ServiceRoute {
        self.service(name)
            .expect("every table holds every service of the config")
    }

    /// Builds the table for `state`, with the backends given by name as `resolved` has them,
    /// reusing from `current` (the live table, if any) every pool, backend and counter that did
    /// not change, so that health and in-flight counts carry over.
    pub fn build(
        config: &Config,
        state: &LiveState,
        resolved: &Resolved,
        current: Option<&RoutingTable>,
        registry: &HealthRegistry,
        metrics: &Metrics,
    ) -> RoutingTable {
        let mut services = Vec::with_capacity(config.services.len());
        for service_config in &config.services {
            metrics.service(&service_config.name);
            let current_service = current.and_then(|t| t.service(&service_config.name));
            let live = state.services.get(&service_config.name);
            let config_arc = current_service
                .map(|s| s.config.clone())
                .filter(|c| **c == *service_config)
                .unwrap_or_else(|| Arc::new(service_config.clone()));
            let mut pools = Vec::with_capacity(service_config.pools.len());
            for pool_config in &service_config.pools {
                let targets: &[Target] = live
                    .and_then(|l| l.pools.get(&pool_config.name))
                    .map(|p| p.backends.as_slice())
                    .unwrap_or(&pool_config.backends);
                let expanded = resolved.expand(targets);
                let addrs: Vec<SocketAddr> = expanded.iter().map(|(a, _)| *a).collect();
                let current_pool = current_service.and_then(|s| s.pool(&pool_config.name));
                if let Some(current_pool) = current_pool {
                    if current_pool.addresses() == addrs && current_pool.targets == targets {
                        pools.push(current_pool.clone());
                        continue;
                    }
                }
                let backends = expanded
                    .iter()
                    .map(|(addr, from)| {
                        let name: Option<Arc<str>> = from.map(|t| t.to_string().into());
                        current_service
                            .and_then(|s| {
                                s.pools
                                    .iter()
                                    .flat_map(|p| &p.backends)
                                    .find(|b| b.addr == *addr && b.name == name)
                                    .cloned()
                            })
                            .unwrap_or_else(|| new_backend(service_config, *addr, name, registry))
                    })
                    .collect();
                let stats = current_pool
                    .map(|p| p.stats.clone())
                    .unwrap_or_else(|| Arc::new(PoolStats::default()));
                let (service_name, pool_name) = (&service_config.name, &pool_config.name);
                let handles = PoolHandles {
                    pool: metrics.pool(service_name, pool_name),
                    backends: addrs
                        .iter()
                        .map(|a| metrics.backend(service_name, pool_name, &a.to_string()))
                        .collect(),
                    no_backend: metrics.backend(service_name, pool_name, NO_BACKEND),
                };
                pools.push(Arc::new(
                    Pool::new(pool_name.as_str().into(), backends, stats, handles)
                        .with_targets(targets.to_vec()),
                ));
            }
            let position = |name: &str| pools.iter().position(|p| &*p.name == name);
            let active = live
                .and_then(|l| position(&l.active))
                .or_else(|| position(&service_config.active))
                .unwrap_or(0);
            let rollback_to = live
                .and_then(|l| l.rollback_to.as_deref())
                .and_then(position);
            let canary = live
                .and_then(|l| l.canary.as_ref())
                .and_then(|c| {
                    Some(Canary {
                        pool: position(&c.pool)?,
                        permille: c.permille.min(BUCKETS),
                    })
                })
                .filter(|c| c.pool != active && c.permille > 0);
            let overrides = Overrides::from_config(&config_arc.canary);
            let overridable = overrides.any();
            // The rules' state (logins remembered, rate buckets) outlives a switch, not a
            // change of the service's config.
            let access = match current_service {
                Some(s) if Arc::ptr_eq(&s.config, &config_arc) => s.access.clone(),
                _ => Access::new(&config_arc.access, config.server.rate_limit_keys).map(Arc::new),
            };
            if access.is_some() {
                metrics.service_access(&config_arc.name);
            }
            let redirect = config_arc.redirect.as_ref().and_then(|r| {
                Some(RedirectRoute {
                    code: r.code,
                    to: Template::parse(&r.to, REDIRECT_VARS).ok()?,
                })
            });
            services.push(ServiceRoute {
                redirect,
                access,
                label: config_arc.name.as_str().into(),
                request_headers: HeaderRules::compile(&config_arc.request_headers, true),
                response_headers: HeaderRules::compile(&config_arc.response_headers, false),
                config: config_arc,
                pools,
                split: Split {
                    active,
                    canary,
                    overridable,
                },
                overrides,
                rollback_to,
            });
        }
        // Services on every listener, and none of them a default: the index of requests whose
        // listener is not known.
        let hosts = HostIndex::build(&services, |s| s.listen.is_empty(), None);
        let by_listener = if config
            .services
            .iter()
            .any(|s| !s.listen.is_empty() || s.default)
        {
            config
                .listen
                .http
                .iter()
                .chain(&config.listen.https)
                .map(|listener| {
                    let on = |s: &ServiceConfig| s.on_listener(listener);
                    let default = services
                        .iter()
                        .position(|s| s.config.default && on(&s.config));
                    (*listener, HostIndex::build(&services, on, default))
                })
                .collect()
        } else {
            Vec::new()
        };
        RoutingTable {
            generation: state.generation,
            services,
            hosts,
            by_listener,
        }
    }
}

fn new_backend(
    service: &ServiceConfig,
    addr: SocketAddr,
    name: Option<Arc<str>>,
    registry: &HealthRegistry,
) -> Arc<Backend> {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(service.connect_timeout);
    // The read deadline is switchback's own (crate::read_deadline), but for upgrades, whose
    // peers get it back from upstream_peer.
    peer.options.write_timeout = Some(service.read_timeout);
    // pingora's path keeps the connection idle for the service's upstream.idle_timeout, and
    // not at all with upstream.keepalive = 0.
    peer.options.idle_timeout = Some(if service.upstream.keepalive == 0 {
        std::time::Duration::ZERO
    } else {
        service.upstream.idle_timeout
    });
    let health = registry.get(&service.name, addr, service.health.is_some());
    if let Some(name) = &name {
        health.name_host(name);
    }
    Arc::new(Backend {
        addr,
        name,
        health,
        peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        switchback_config::parse(
            Path::new("t.toml"),
            r#"
[listen]
http = ["127.0.0.1:8080"]
[control]
socket = "/tmp/x.sock"
[state]
dir = "/tmp/x"
[services.app]
active = "blue"
pools.blue = ["127.0.0.1:9001"]
pools.green = ["127.0.0.1:9002"]
[services.api]
hosts = ["example.com"]
path_prefix = "/api"
active = "a"
pools.a = ["127.0.0.1:9003"]
[services.site]
hosts = ["example.com", "*.example.org"]
active = "a"
pools.a = ["127.0.0.1:9004"]
"#,
        )
        .unwrap()
    }

    /// The first table of `c`.
    fn fresh(c: &Config) -> RoutingTable {
        RoutingTable::build(
            c,
            &LiveState::from_config(c),
            &Resolved::default(),
            None,
            &HealthRegistry::default(),
            &Metrics::default(),
        )
    }

    fn name(table: &RoutingTable, host: &str, path: &str) -> String {
        table
            .route(|| None, host, path)
            .map(|(_, s)| s.name().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn routes_by_host_then_longest_prefix_then_catch_all() {
        let c = config();
        let t = fresh(&c);
        assert_eq!(name(&t, "example.com", "/api/users"), "api");
        assert_eq!(name(&t, "EXAMPLE.com:443", "/api"), "api");
        assert_eq!(name(&t, "example.com", "/api?x=1"), "api");
        assert_eq!(name(&t, "example.com", "/apiary"), "site");
        assert_eq!(name(&t, "example.com.", "/"), "site");
        assert_eq!(name(&t, "www.example.org", "/"), "site");
        assert_eq!(
            name(&t, "example.org", "/"),
            "app",
            "*.x matches subdomains only"
        );
        assert_eq!(name(&t, "other.net", "/api"), "app");
        assert_eq!(name(&t, "[::1]:8080", "/"), "app");
    }

    #[test]
    fn a_redirect_expands_the_request_and_stands_in_for_a_missing_host() {
        let r = RedirectRoute {
            code: 301,
            to: Template::parse("$scheme://$host:$server_port/x$request_uri", REDIRECT_VARS)
                .unwrap(),
        };
        let local = "10.0.0.5:8080".parse().ok();
        assert_eq!(
            r.location("WWW.Example.com:8080", "/a?b", false, local),
            "http://www.example.com:8080/x/a?b"
        );
        assert_eq!(
            r.location("", "/", true, None),
            "https://:443/x/",
            "no host and no address: nothing to stand in"
        );
        assert_eq!(r.location("", "/", false, local), "http://10.0.0.5:8080/x/");
        assert_eq!(
            r.location("", "/", false, "[::1]:80".parse().ok()),
            "http://[::1]:80/x/"
        );
    }

    #[test]
    fn listeners_have_their_services_and_their_default() {
        let c = switchback_config::parse(
            Path::new("t.toml"),
            r#"
[listen]
http = ["127.0.0.1:8080", "0.0.0.0:9090"]
[control]
socket = "/tmp/x.sock"
[state]
dir = "/tmp/x"
[services.site]
hosts = ["*.example.com"]
listen = ["127.0.0.1:8080"]
default = true
active = "a"
pools.a = ["127.0.0.1:9001"]
[services.site-api]
hosts = ["*.example.com"]
path_prefix = "/api/"
active = "a"
pools.a = ["127.0.0.1:9002"]
[services.metrics]
listen = ["0.0.0.0:9090"]
path_prefix = "/metrics"
active = "a"
pools.a = ["127.0.0.1:9003"]
"#,
        )
        .unwrap();
        let t = fresh(&c);
        let at = |local: &str, host: &str, path: &str| {
            let local = local.parse().ok();
            t.route(|| local, host, path)
                .map(|(_, s)| s.name().to_string())
                .unwrap_or_default()
        };
        let main = "127.0.0.1:8080";
        assert_eq!(at(main, "a.example.com", "/"), "site");
        // An unknown name takes the default's routes (its wildcard's, paths and all).
        assert_eq!(at(main, "10.1.2.3", "/"), "site");
        assert_eq!(at(main, "10.1.2.3", "/api/x"), "site-api");
        // A listener on 0.0.0.0 takes any local address of its port, IPv6 too when it is the
        // only one there (a dual-stack socket's IPv4 clients come as ::ffff:…).
        assert_eq!(at("10.0.0.5:9090", "a.example.com", "/api/x"), "site-api");
        assert_eq!(at("[::ffff:10.0.0.5]:9090", "x", "/metrics"), "metrics");
        assert_eq!(at("[2001:db8::1]:9090", "x", "/metrics"), "metrics");
        assert_eq!(at("10.0.0.5:9090", "a.example.com", "/"), "");
        assert_eq!(at("10.0.0.5:9090", "10.1.2.3", "/metrics"), "metrics");
        // Without a local address, only services on every listener.
        assert_eq!(at("", "a.example.com", "/api/x"), "site-api");
        assert_eq!(at("", "a.example.com", "/"), "");
    }

    #[test]
    fn a_new_generation_keeps_unchanged_pools_and_counters() {
        let c = config();
        let registry = HealthRegistry::default();
        let metrics = Metrics::default();
        let mut state = LiveState::from_config(&c);
        let none = Resolved::default();
        let first = RoutingTable::build(&c, &state, &none, None, &registry, &metrics);
        let app = state.services.get_mut("app").unwrap();
        app.active = "green".into();
        app.rollback_to = Some("blue".into());
        app.pools.get_mut("green").unwrap().backends = vec!["127.0.0.1:9012".parse().unwrap()];
        state.generation = 1;
        let second = RoutingTable::build(&c, &state, &none, Some(&first), &registry, &metrics);
        let (a, b) = (
            first.service("app").unwrap(),
            second.service("app").unwrap(),
        );
        assert_eq!(b.active_pool().name.as_ref(), "green");
        assert_eq!(b.rollback_to, Some(0));
        assert!(
            Arc::ptr_eq(&a.pools[0], &b.pools[0]),
            "blue did not change and is reused"
        );
        assert!(!Arc::ptr_eq(&a.pools[1], &b.pools[1]), "green changed");
        assert!(
            Arc::ptr_eq(&a.pools[1].stats, &b.pools[1].stats),
            "in-flight count carries over"
        );
        assert_eq!(
            b.pools[1].addresses(),
            vec!["127.0.0.1:9012".parse().unwrap()]
        );
        assert_eq!(second.generation, 1);
    }

    #[test]
    fn a_new_answer_for_a_name_rebuilds_only_its_pool_and_keeps_what_stayed() {
        let c = config();
        let registry = HealthRegistry::default();
        let metrics = Metrics::default();
        let mut state = LiveState::from_config(&c);
        state
            .services
            .get_mut("app")
            .unwrap()
            .pools
            .get_mut("green")
            .unwrap()
            .backends = vec!["api-green:8000".parse().unwrap()];
        let answer = |ips: &[&str]| {
            let mut r = Resolved::default();
            r.insert(
                "api-green".into(),
                crate::names::Answer {
                    addrs: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
                    error: None,
                },
            );
            r
        };
        let unresolved =
            RoutingTable::build(&c, &state, &Resolved::default(), None, &registry, &metrics);
        assert!(unresolved.service("app").unwrap().pools[1]
            .backends
            .is_empty());
        let one = answer(&["10.0.0.1"]);
        let first = RoutingTable::build(&c, &state, &one, Some(&unresolved), &registry, &metrics);
        let two = answer(&["10.0.0.1", "10.0.0.2"]);
        let second = RoutingTable::build(&c, &state, &two, Some(&first), &registry, &metrics);
        let (a, b) = (
            first.service("app").unwrap(),
            second.service("app").unwrap(),
        );
        assert!(Arc::ptr_eq(&a.pools[0], &b.pools[0]), "blue is by address");
        let green = &b.pools[1];
        assert_eq!(
            green.addresses(),
            [
                "10.0.0.1:8000".parse().unwrap(),
                "10.0.0.2:8000".parse().unwrap()
            ]
        );
        assert_eq!(green.backends[1].name.as_deref(), Some("api-green:8000"));
        assert!(Arc::ptr_eq(&a.pools[1].backends[0], &green.backends[0]));
        assert!(Arc::ptr_eq(&a.pools[1].stats, &green.stats));
        let same = RoutingTable::build(&c, &state, &two, Some(&second), &registry, &metrics);
        assert!(Arc::ptr_eq(green, &same.service("app").unwrap().pools[1]));
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(prefix_matches("/api/", "/api/v1"));
        assert!(!prefix_matches("/api", "/apiv1"));
        assert!(!prefix_matches("/api", "/ap"));
    }
}
