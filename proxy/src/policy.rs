//! The decisions of one request, whichever HTTP/1 path carries it: switchback's own
//! ([`crate::h1`]) or pingora's `ProxyHttp` hooks ([`crate::http`]). Both gather the facts of a
//! request in their own way and call these functions; neither decides anything itself.
//!
//! - [`Policy::admit`]: the table loaded once (with the drain recheck), the ACME challenge, the
//!   HTTPS redirect, the route, the split, and the request body limit;
//! - [`Policy::identify`]: who the client is (the peer, or behind a trusted proxy the first
//!   untrusted `X-Forwarded-For` hop);
//! - [`Ending::record`]: what the end of a request counts and logs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora::protocols::SocketDigest;

use switchback_certs::challenge::CHALLENGE_PREFIX;
use switchback_certs::ChallengeStore;
use switchback_config::Cidr;

use crate::access::{Denial, Passed};
use crate::access_log::{AccessLog, AccessRecord};
use crate::host_and_path::HostAndPath;
use crate::metrics::{status_class, ClientCounters, Metrics};
use crate::pool::{InFlight, Pool, Tried};
use crate::request_id::RequestId;
use crate::retry::RetryReason;
use crate::routing::{RoutingTable, ServiceRoute};
use crate::split::{self, RequestHeaders};

/// What the data path shares between its two HTTP/1 transports.
pub struct Policy {
    pub table: Arc<ArcSwap<RoutingTable>>,
    pub metrics: Arc<Metrics>,
    pub access_log: Option<AccessLog>,
    /// HTTP-01 answers, when some service orders certificates by ACME.
    pub challenges: Option<Arc<ChallengeStore>>,
    /// The port HTTPS redirects point at (None: the default, 443).
    pub https_port: Option<u16>,
    /// Peers whose forwarding headers are believed (`server.trusted_proxies`).
    pub trusted_proxies: Vec<Cidr>,
    /// `server.max_request_body`: the limit of services that set none (0: no limit).
    pub max_request_body: usize,
    pub client_counters: ClientCounters,
    /// Signs the canary bucket cookie.
    pub buckets: split::BucketSigner,
}

/// What a request says of itself, as far as the policy reads it.
pub struct Facts<'a, H> {
    /// The Host header (or the target's authority) as the client sent it.
    pub host: &'a str,
    pub path: &'a str,
    pub headers: &'a H,
    /// The client (see [`Policy::identify`]).
    pub client: Option<IpAddr>,
    pub tls: bool,
    /// GET or HEAD, whose rare bodies meet the body limit only as they are read.
    pub get_or_head: bool,
    /// The Content-Length the request declares.
    pub declared_length: Option<u64>,
    /// When the request's head was read, if the path took the time already (rate rules need
    /// it; they read the clock themselves otherwise).
    pub now: Option<Instant>,
    /// The connection's socket: its local address says which listener took the request.
    pub socket: Socket<'a>,
}

impl<H> Facts<'_, H> {
    /// The listener's address the connection came to (asked of the socket once per
    /// connection, and only when routes differ by listener).
    pub fn local(&self) -> Option<SocketAddr> {
        self.socket.local()
    }
}

/// Where a request's socket digest (its connection's addresses) comes from: pingora's session
/// has one; on switchback's own path the stream makes one only when first asked, so that a
/// connection whose requests never ask holds none (a digest is about 400 bytes).
#[derive(Clone, Copy)]
pub enum Socket<'a> {
    Digest(Option<&'a SocketDigest>),
    Stream(&'a pingora::protocols::Stream),
}

impl Socket<'_> {
    pub fn local(&self) -> Option<SocketAddr> {
        match self {
            Socket::Digest(digest) => local_addr(*digest),
            Socket::Stream(stream) => local_addr(stream.get_socket_digest().as_deref()),
        }
    }

    pub fn peer_port(&self) -> Option<u16> {
        match self {
            Socket::Digest(digest) => peer_port(*digest),
            Socket::Stream(stream) => peer_port(stream.get_socket_digest().as_deref()),
        }
    }
}

/// A socket's local address.
pub fn local_addr(socket: Option<&SocketDigest>) -> Option<SocketAddr> {
    socket?.local_addr()?.as_inet().copied()
}

/// A socket's peer's port (after a PROXY header, the client's).
pub fn peer_port(socket: Option<&SocketDigest>) -> Option<u16> {
    Some(socket?.peer_addr()?.as_inet()?.port())
}

/// What is to become of a request.
pub enum Admission {
    /// An ACME HTTP-01 challenge, answered from the challenge store (the token follows the
    /// prefix in the path).
    Challenge,
    /// A plain HTTP request to a service that redirects to HTTPS.
    Redirect,
    /// To a redirect service: answered with its redirect.
    Moved {
        table: Arc<RoutingTable>,
        service: usize,
    },
    /// No service routes this host and path: 503.
    NoService,
    /// The declared body is over the service's `max_request_body`: 413, and close.
    TooLarge,
    /// To a backend of the routed pool.
    Forward(Route),
}

/// Where a request goes, and what it carries there: the generation it was routed by (kept for
/// its whole life, retries included), the service and pool, and its count in flight.
pub struct Route {
    pub table: Arc<RoutingTable>,
    pub service: usize,
    pub pool: usize,
    pub in_flight: InFlight,
    /// A canary bucket drawn for this client, to send back in the sticky cookie.
    pub new_bucket: Option<u32>,
    /// The pool came from an override header or cookie.
    pub forced: bool,
    /// The split assigned this request while a canary runs: its answer counts in the pool's
    /// judged numbers.
    pub judged: bool,
    /// The override header / cookie the request carried, which must not reach the backend.
    pub override_header_seen: bool,
    pub override_cookie_seen: bool,
    /// The service's request body limit (0: none).
    pub body_limit: usize,
}

impl Route {
    pub fn service(&self) -> &ServiceRoute {
        &self.table.services[self.service]
    }

    pub fn pool(&self) -> &Arc<crate::pool::Pool> {
        &self.service().pools[self.pool]
    }
}

impl Policy {
    pub fn new(table: Arc<ArcSwap<RoutingTable>>, metrics: Arc<Metrics>) -> Policy {
        Policy {
            table,
            access_log: None,
            challenges: None,
            https_port: None,
            trusted_proxies: Vec::new(),
            max_request_body: switchback_config::defaults::MAX_REQUEST_BODY,
            client_counters: metrics.client().clone(),
            buckets: split::BucketSigner::random(),
            metrics,
        }
    }

    /// Whether timing starts for this request: something records it at its end.
    pub fn records(&self) -> bool {
        self.metrics.enabled || self.access_log.is_some()
    }

    pub fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// The client of a request from `peer`, and whether `peer` is a trusted proxy: the peer
    /// itself, or behind a trusted proxy, the first address in `X-Forwarded-For`, read from the
    /// right, that is not a trusted proxy.
    pub fn identify<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a [u8]>,
    ) -> (IpAddr, bool) {
        let from_trusted_proxy = !self.trusted_proxies.is_empty() && self.trusted(peer);
        if !from_trusted_proxy {
            return (peer, false);
        }
        (
            forwarded_client(peer, forwarded_for, |ip| self.trusted(ip)),
            true,
        )
    }

    /// The routed service's access rules, for a request its path will carry on (on switchback's
    /// own path: after everything that would hand it to pingora's). Counts nothing: whoever
    /// answers a denial calls [`Self::denied`].
    #[inline]
    pub fn guard<H: RequestHeaders>(
        &self,
        route: &Route,
        facts: &Facts<'_, H>,
    ) -> Result<Passed, Denial> {
        match &route.service().access {
            None => Ok(Passed::default()),
            Some(access) => access.check(facts.path, facts.client, facts.headers, facts.now),
        }
    }

    /// Counts a request refused by `route`'s access rules.
    pub fn denied(&self, route: &Route, denial: &Denial) {
        if self.metrics.enabled {
            self.metrics
                .count_denied(route.service().name(), denial.reason());
        }
    }

    /// Decides what becomes of a request: see [`Admission`].
    pub fn admit<H: RequestHeaders>(&self, facts: &Facts<'_, H>) -> Admission {
        if self.challenges.is_some() && facts.path.starts_with(CHALLENGE_PREFIX) {
            return Admission::Challenge;
        }
        let route = loop {
            let table = self.table.load_full();
            let Some((service_index, service)) =
                table.route(|| facts.local(), facts.host, facts.path)
            else {
                return Admission::NoService;
            };
            if service.redirect.is_some() {
                return Admission::Moved {
                    service: service_index,
                    table,
                };
            }
            if service.config.https_redirect && !facts.tls {
                return Admission::Redirect;
            }
            let mut choice = split::Choice {
                pool: service.split.active,
                new_bucket: None,
                forced: false,
                override_header_seen: false,
                override_cookie_seen: false,
            };
            if service.split.looks_at_requests() {
                choice = split::choose(
                    &service.split,
                    &service.overrides,
                    &service.config.canary.sticky,
                    |name| service.pool_index(name),
                    facts.headers,
                    facts.client,
                    &self.buckets,
                );
            }
            let judged = service.split.canary.is_some() && !choice.forced;
            let in_flight = InFlight::start(&service.pools[choice.pool].stats);
            // A switch that landed between the load and the count above could miss this request
            // when it waits for the old pool to drain. Both sides use sequentially consistent
            // operations, so seeing the same table here means the switch will see the count.
            if Arc::ptr_eq(&self.table.load(), &table) {
                break Route {
                    service: service_index,
                    pool: choice.pool,
                    in_flight,
                    new_bucket: choice.new_bucket,
                    forced: choice.forced,
                    judged,
                    override_header_seen: choice.override_header_seen,
                    override_cookie_seen: choice.override_cookie_seen,
                    body_limit: 0,
                    table,
                };
            }
        };
        let config = &route.service().config;
        let limit = config.max_request_body.unwrap_or(self.max_request_body);
        if limit > 0 {
            if !facts.get_or_head && facts.declared_length.is_some_and(|n| n > limit as u64) {
                // Answered before any of the body is read: the connection closes rather than
                // reading a body it would only throw away. Counted by whoever answers it.
                return Admission::TooLarge;
            }
            return Admission::Forward(Route {
                body_limit: limit,
                ..route
            });
        }
        Admission::Forward(route)
    }
}

/// Counts a failure of an attempt on `backend` (the attempt's backend index, and the attempts
/// so far), and says whether another attempt may follow for `retry`: attempts are left and a
/// backend can take it (the same one, after a reused connection failed, when no other is left).
pub fn after_failure(
    service: &ServiceRoute,
    pool: &Pool,
    (backend, attempts): (Option<usize>, u32),
    tried: &mut Tried,
    kind: RetryReason,
    retry: Option<RetryReason>,
) -> bool {
    let config = &service.config;
    if let Some(i) = backend {
        if kind == RetryReason::Connect {
            if let Some(m) = pool.backend_metrics.get(i) {
                m.connect_failures.inc();
            }
        }
        if kind.blames_backend(config.retry_on) {
            pool.backends[i].health.failed();
        }
    }
    let Some(reason) = retry else { return false };
    if attempts > config.retries {
        return false;
    }
    if !pool.has_untried(*tried) {
        match backend {
            Some(i) if reason == RetryReason::ReusedConnection => tried.remove(i),
            _ => return false,
        }
    }
    pool.metrics.retries[reason.index()].inc();
    true
}

/// The client behind a chain of proxies: `X-Forwarded-For` values read from the right, the
/// first that is not a trusted proxy. An entry that is not an address ends the walk at the
/// last trusted hop, as does a chain of trusted proxies only.
pub fn forwarded_client<'a>(
    peer: IpAddr,
    values: impl IntoIterator<Item = &'a [u8]>,
    trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let values: Vec<&[u8]> = values.into_iter().collect();
    let mut client = peer;
    for value in values.iter().rev() {
        let Ok(text) = std::str::from_utf8(value) else {
            return client;
        };
        for entry in text.rsplit(',') {
            let Some(ip) = parse_forwarded_ip(entry.trim()) else {
                return client;
            };
            client = ip;
            if !trusted(ip) {
                return ip;
            }
        }
    }
    client
}

/// An address as proxies write it in `X-Forwarded-For`: bare, or with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:443`).
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

/// What the end of a request records: its pool's metrics and its access-log line.
pub struct Ending {
    pub started: Instant,
    pub status: u16,
    pub table: Option<Arc<RoutingTable>>,
    pub service: usize,
    pub pool: usize,
    pub backend: Option<usize>,
    pub judged: bool,
    pub backend_time: Option<Duration>,
    pub answered_here: bool,
    // For the access log.
    pub client: Option<IpAddr>,
    /// The Host header, then the path and query (empty when the log is off).
    pub host_and_path: HostAndPath,
    pub method: http::Method,
    pub forced: bool,
    pub retries: u32,
    /// The backend connection was an idle keep-alive one (None: no backend connection).
    pub reused: Option<bool>,
    /// Refused by the service's access rules, for this reason: no pool counts it.
    pub denied: Option<&'static str>,
    /// For the access log (None when the log is off).
    pub request_id: Option<RequestId>,
}

impl Ending {
    /// Records the request as ended now, with `bytes` of answer body sent.
    pub fn record(self, metrics: &Metrics, log: Option<&AccessLog>, bytes: u64) {
        let ended = Instant::now();
        let elapsed = ended.saturating_duration_since(self.started);
        let route = self.table.as_ref().map(|t| {
            (
                &t.services[self.service],
                &t.services[self.service].pools[self.pool],
            )
        });
        if metrics.enabled {
            match route {
                Some(_) if self.denied.is_some() => {}
                Some((_, pool)) => {
                    pool.metrics.duration.observe(elapsed.as_secs_f64());
                    let backend = self
                        .backend
                        .and_then(|i| pool.backend_metrics.get(i))
                        .unwrap_or(&pool.no_backend_metrics);
                    backend.by_class[status_class(self.status)].inc();
                    if self.judged {
                        pool.stats
                            .judge(status_class(self.status), self.backend_time);
                    }
                }
                None if self.answered_here => {}
                None => metrics.unrouted.inc(),
            }
        }
        if let Some(log) = log {
            log.log_with(|| AccessRecord {
                ended,
                client: self.client,
                host_and_path: self.host_and_path,
                method: self.method,
                forced: self.forced,
                retries: self.retries,
                reused: self.reused,
                denied: self.denied,
                request_id: self.request_id,
                status: self.status,
                bytes,
                duration: elapsed,
                service: route.map(|(s, _)| s.label.clone()),
                pool: route.map(|(_, p)| p.name.clone()),
                backend: route.and_then(|(_, p)| {
                    self.backend.and_then(|i| p.backends.get(i)).map(|b| b.addr)
                }),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(peer: &str, xff: &[&str], trusted: &[&str]) -> String {
        let trusted: Vec<Cidr> = trusted.iter().map(|c| c.parse().unwrap()).collect();
        forwarded_client(
            peer.parse().unwrap(),
            xff.iter().map(|v| v.as_bytes()),
            |ip| trusted.iter().any(|c| c.contains(ip)),
        )
        .to_string()
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let lb = ["10.0.0.0/8"];
        assert_eq!(client("10.0.0.1", &["203.0.113.9"], &lb), "203.0.113.9");
        // A client that forges an entry only adds to the left of what the proxy saw.
        assert_eq!(
            client("10.0.0.1", &["1.1.1.1, 203.0.113.9"], &lb),
            "203.0.113.9"
        );
        // Two trusted hops, and the header split over two lines.
        assert_eq!(
            client("10.0.0.1", &["198.51.100.7", "10.0.0.2"], &lb),
            "198.51.100.7"
        );
        assert_eq!(
            client("10.0.0.1", &["[2001:db8::1]:443"], &lb),
            "2001:db8::1"
        );
        // Garbage or a chain of trusted proxies only: the last trusted hop.
        assert_eq!(client("10.0.0.1", &["nonsense, 10.0.0.3"], &lb), "10.0.0.3");
        assert_eq!(client("10.0.0.1", &[], &lb), "10.0.0.1");
    }
}
