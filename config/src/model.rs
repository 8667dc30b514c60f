//! The configuration as switchback uses it: checked, typed, defaults filled in.
//!
//! This is what the user *wrote*. What is live now (after switches and `pool set`) is the
//! routing state, persisted separately by [`crate::state`]; `status` shows both.

use std::net::SocketAddr;

pub use crate::address::{Cidr, Target};
use std::path::PathBuf;
use std::time::Duration;

/// Defaults, in one place so the README and the code cannot disagree.
pub mod defaults {
    use std::time::Duration;

    pub const CONTROL_MODE: u32 = 0o600;
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
    /// Client deadlines, close to nginx's: the whole request head; the idle time between two
    /// requests; between two reads of a request body; for the client to take answer data.
    pub const CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
    pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
    /// Open client connections past which a new one is closed at once.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// The largest request head (431 above it) and request target (414 above it), in bytes.
    pub const MAX_REQUEST_HEAD: usize = 64 * 1024;
    pub const MAX_URI_LENGTH: usize = 8 * 1024;
    /// The largest request body a service takes (413 above it), unless it sets its own: what
    /// Cloudflare's free plan allows. nginx's 1 MiB turns away ordinary uploads; 1 GiB lets one
    /// client keep a backend reading for minutes.
    pub const MAX_REQUEST_BODY: usize = 100 * 1024 * 1024;
    /// Answers shorter than this (by their Content-Length) are sent as they are, as nginx's
    /// `gzip_min_length`: below about a packet, compressing saves nothing.
    pub const COMPRESS_MIN_LENGTH: usize = 1024;
    pub const PATH_PREFIX: &str = "/";
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    /// Idle keep-alive connections kept per backend (`upstream.keepalive`): more than a busy
    /// proxy core has requests in flight to one backend.
    pub const UPSTREAM_KEEPALIVE: usize = 1024;
    /// How long an idle backend connection is kept (`upstream.idle_timeout`).
    pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
    /// Extra attempts on another backend of the same pool (see [`super::RetryOn`]).
    pub const RETRIES: u32 = 2;
    /// The most of a request body held for a replay: pingora's retry buffer, whose size is
    /// fixed. A body longer than the limit is never replayed.
    pub const RETRY_BUFFER: usize = 64 * 1024;
    pub const HEALTH_PATH: &str = "/";
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    pub const HEALTHY_THRESHOLD: u32 = 2;
    pub const UNHEALTHY_THRESHOLD: u32 = 3;
    pub const ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
    pub const ACME_STAGING_DIRECTORY: &str =
        "https://acme-staging-v02.api.letsencrypt.org/directory";
    /// First wait after a failed order; doubles with each failure, up to a day.
    pub const ACME_RETRY_AFTER: Duration = Duration::from_secs(60);
    /// Longest wait for one call to the CA: connect, TLS, answer and body.
    pub const ACME_TIMEOUT: Duration = Duration::from_secs(30);
    /// The Strict-Transport-Security value `hsts = true` sends: one year.
    pub const HSTS: &str = "max-age=31536000";
    /// The cookie that keeps a client's canary bucket.
    pub const STICKY_COOKIE: &str = "switchback_bucket";
    /// The request header and cookie that force a pool, for testers, once `override_secret`
    /// is set.
    pub const OVERRIDE_HEADER: &str = "x-switchback-pool";
    pub const OVERRIDE_COOKIE: &str = "switchback_pool";
    /// Rollout defaults, from common release practice.
    pub const ROLLOUT_STEPS: &[f64] = &[5.0, 25.0, 50.0, 100.0];
    pub const ROLLOUT_INTERVAL: Duration = Duration::from_secs(30);
    /// Percent of 5xx answers in a window that rolls back.
    pub const ROLLOUT_MAX_ERROR_RATE: f64 = 5.0;
    pub const ROLLOUT_MAX_P95: Duration = Duration::from_secs(2);
    pub const ROLLOUT_MIN_REQUESTS: u64 = 50;
    /// How long `switch --wait-drain` waits for the old pool's requests to finish.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// How long `pool set --wait` waits for the new backends to pass their health checks.
    pub const POOL_SET_WAIT: Duration = Duration::from_secs(30);
    /// How often backends given by host name are resolved again (sooner when a record's TTL
    /// ends first, but not more than once a second).
    pub const RESOLVER_REFRESH: Duration = Duration::from_secs(5);
    /// Keys one `rate` rule keeps a bucket for (`server.rate_limit_keys`): about 3 MB.
    pub const RATE_LIMIT_KEYS: usize = 100_000;
    /// The realm `basic_auth` names when it sets none.
    pub const AUTH_REALM: &str = "restricted";
    /// Where a fleet keeps its keys in etcd.
    pub const FLEET_PREFIX: &str = "/switchback";
    /// How long a change waits for every live node of a fleet to apply it.
    pub const FLEET_ACK_TIMEOUT: Duration = Duration::from_secs(5);
}

/// pingora's own cap on a request head (it answers 400 above it): the project's limit sits below.
pub const MAX_REQUEST_HEAD_LIMIT: usize = 1024 * 1024 - 1;

/// The most backends one pool may have. The request path keeps the backends a request has
/// tried in one 64-bit word, and a pool that large belongs behind a load balancer of its own.
pub const MAX_BACKENDS_PER_POOL: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from, as given on the command line.
    pub source: PathBuf,
    pub listen: ListenConfig,
    pub server: ServerConfig,
    pub control: ControlConfig,
    pub state: StateConfig,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); off when absent.
    pub admin: Option<AdminConfig>,
    pub acme: AcmeConfig,
    pub access_log: AccessLogConfig,
    pub metrics: MetricsConfig,
    /// How backends given by host name are resolved.
    pub resolver: ResolverConfig,
    /// Several proxies sharing one desired state through etcd; one proxy alone when absent.
    pub fleet: Option<FleetConfig>,
    /// Sorted by name.
    pub services: Vec<ServiceConfig>,
}

impl Config {
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    /// Connections from these sources start with a PROXY protocol header (v1 or v2), whose
    /// source address is the client's; connections from anywhere else are read without one.
    pub proxy_protocol: Vec<Cidr>,
}

/// Where certificates come from, for the services with `tls = "acme"`.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    pub directory: String,
    pub email: Option<String>,
    /// External Account Binding: key id and the HMAC key, base64url as the CA gives it.
    pub eab: Option<(String, String)>,
    /// An extra root to trust for the directory's own HTTPS (a test CA).
    pub ca_root: Option<PathBuf>,
    pub retry_after: Duration,
    /// Longest wait for one call to the CA.
    pub timeout: Duration,
}

/// How a service terminates TLS.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsMode {
    Off,
    /// Certificates for every host, ordered and renewed by ACME.
    Acme,
    /// A certificate chain and key from files, reloaded when they change.
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Worker threads of the proxy; `None` means one per core.
    pub threads: Option<usize>,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub shutdown_grace: Duration,
    pub client_header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub client_body_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
    /// `None`: no cap per client address.
    pub max_connections_per_ip: Option<usize>,
    pub max_request_head: usize,
    pub max_uri_length: usize,
    /// The default of `services.NAME.max_request_body`; 0: no limit.
    pub max_request_body: usize,
    /// Peers whose forwarding headers are believed (appended to rather than replaced).
    pub trusted_proxies: Vec<Cidr>,
    /// Which code serves HTTP/1.1 requests.
    pub http1: Http1Engine,
    /// The most keys (client addresses, header values) one `rate` rule keeps a bucket for; the
    /// oldest is forgotten when a new one comes.
    pub rate_limit_keys: usize,
}

/// `server.http1`: switchback's own HTTP/1.1 path, or pingora's for every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http1Engine {
    /// switchback's own path for the requests it carries, pingora's for the rest.
    #[default]
    Switchback,
    /// pingora's path for every request.
    Pingora,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            threads: None,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            client_header_timeout: defaults::CLIENT_HEADER_TIMEOUT,
            keepalive_timeout: defaults::KEEPALIVE_TIMEOUT,
            client_body_timeout: defaults::CLIENT_BODY_TIMEOUT,
            send_timeout: defaults::SEND_TIMEOUT,
            max_connections: defaults::MAX_CONNECTIONS,
            max_connections_per_ip: None,
            max_request_head: defaults::MAX_REQUEST_HEAD,
            max_uri_length: defaults::MAX_URI_LENGTH,
            max_request_body: defaults::MAX_REQUEST_BODY,
            trusted_proxies: Vec::new(),
            http1: Http1Engine::default(),
            rate_limit_keys: defaults::RATE_LIMIT_KEYS,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    pub socket: PathBuf,
    /// Unix permission bits of the socket file.
    pub mode: u32,
    /// Group that owns the socket file (so a deploy group can use it with mode 0660).
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// Apache/nginx combined log format, with duration, service, pool and backend appended.
    Combined,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    pub enabled: bool,
    pub format: AccessLogFormat,
    /// Where lines go; `None` is standard output.
    pub path: Option<PathBuf>,
}

/// `[resolver]`: where host names of backends are looked up.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverConfig {
    /// DNS servers to ask instead of the system's (`/etc/resolv.conf`); `/etc/hosts` is read
    /// first either way.
    pub nameservers: Vec<SocketAddr>,
    /// How often every name is resolved again.
    pub refresh: Duration,
}

/// `[fleet]`: the etcd cluster that several proxies share their desired state through.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Endpoint URLs, as etcdctl takes them: `http://127.0.0.1:2379`.
    pub etcd: Vec<String>,
    /// The key prefix every key of this fleet is under, without a trailing `/`.
    pub prefix: String,
    /// This proxy's name in the fleet: unique among its nodes.
    pub node: String,
    pub ack_timeout: Duration,
    /// A CA certificate (PEM) to trust for `https://` endpoints.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for etcd's client certificate auth.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// etcd's user auth: a user name, and a file (mode 0600) holding the password.
    pub user: Option<(String, PathBuf)>,
    /// A file (mode 0600) of at least 32 random bytes, the same on every node, that etcd never
    /// sees: the key the nodes sign canary cookies with, so that a client keeps its bucket
    /// from node to node.
    pub key_file: PathBuf,
}

impl Default for ResolverConfig {
    fn default() -> ResolverConfig {
        ResolverConfig {
            nameservers: Vec::new(),
            refresh: defaults::RESOLVER_REFRESH,
        }
    }
}

impl Config {
    /// Every host name a backend of the config is given by.
    pub fn backend_names(&self) -> Vec<&Target> {
        let mut names: Vec<&Target> = self
            .services
            .iter()
            .flat_map(|s| &s.pools)
            .flat_map(|p| &p.backends)
            .filter(|t| t.host().is_some())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Whether requests are counted and timed (rollouts need it).
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    /// Lower-case host names; `*.example.com` matches any subdomain. Empty: every host.
    pub hosts: Vec<String>,
    pub path_prefix: String,
    /// The listeners (`listen.http`/`listen.https` addresses) the service is routed on.
    /// Empty: every listener.
    pub listen: Vec<SocketAddr>,
    /// Serves the requests whose Host no service on its listeners routes (nginx's
    /// `default_server`).
    pub default: bool,
    /// Answers every request with this redirect. Such a service has no pools (and `active`
    /// is empty).
    pub redirect: Option<Redirect>,
    pub active: String,
    /// Sorted by name.
    pub pools: Vec<PoolConfig>,
    pub health: Option<HealthConfig>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub retries: u32,
    /// Which failures of a backend that has the request are retried (idempotent requests).
    pub retry_on: RetryOn,
    /// Replay POST and PATCH too, like idempotent requests.
    pub retry_non_idempotent: bool,
    /// A request whose body is longer than this is not replayed (at most
    /// [`defaults::RETRY_BUFFER`]).
    pub retry_buffer: usize,
    pub tls: TlsMode,
    /// Answer plain-HTTP requests with a redirect to HTTPS (not the ACME challenge path).
    pub https_redirect: bool,
    /// The Strict-Transport-Security header sent on HTTPS answers, if any.
    pub hsts: Option<String>,
    pub canary: CanaryConfig,
    /// The largest request body, in bytes (0: no limit); `None`: `server.max_request_body`.
    pub max_request_body: Option<usize>,
    /// Set on (or, with no value, removed from) every request sent to a backend.
    pub request_headers: Vec<HeaderRule>,
    /// Set on (or, with no value, removed from) every answer from a backend.
    pub response_headers: Vec<HeaderRule>,
    /// The encodings answers may be compressed with, in the service's order of preference;
    /// empty: compression is off.
    pub compress: Vec<Encoding>,
    /// Answers with a shorter Content-Length are not compressed.
    pub compress_min_length: usize,
    /// How long the pool a switch left keeps its requests and long-lived connections before
    /// the long-lived ones are closed (and how long `switch --wait-drain` waits by default).
    pub drain_timeout: Duration,
    /// What happens to the WebSockets (and other upgraded connections) of a pool traffic left
    /// once `drain_timeout` passes.
    pub long_lived: LongLivedPolicy,
    /// How backend connections are kept (`[services.NAME.upstream]`).
    pub upstream: UpstreamConfig,
    /// `[[services.NAME.access]]`, longest `path_prefix` first (a rule without one last).
    pub access: Vec<AccessRule>,
}

/// `[[services.NAME.access]]`: who may reach a service, or the part of it under a path.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRule {
    /// None: the whole service.
    pub path_prefix: Option<String>,
    /// With any entry, only these client addresses pass (after `deny`).
    pub allow: Vec<Cidr>,
    /// These client addresses are refused.
    pub deny: Vec<Cidr>,
    pub basic_auth: Option<BasicAuth>,
    pub rate: Option<RateLimit>,
}

/// `basic_auth = { realm, htpasswd, pass_authorization }`.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicAuth {
    pub realm: String,
    /// The file's users, read when the config is.
    pub users: crate::htpasswd::Htpasswd,
    /// Send the client's `Authorization` header on to the backend.
    pub pass_authorization: bool,
}

/// `rate = { limit, burst, by }`: a token bucket per key.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// The limit as written, like `"5/s"`.
    pub limit: String,
    /// Requests let through per second, over time.
    pub per_second: f64,
    /// Requests beyond the rate let through at once (nginx's `burst`).
    pub burst: u32,
    pub by: RateKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client address (after `trusted_proxies` and the PROXY protocol).
    Ip,
    /// A request header's value, lower-case name; a request without it is counted by its
    /// client address instead.
    Header(String),
}

/// `[services.NAME.upstream]`: the service's backend connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Idle keep-alive connections kept per backend (per worker thread on switchback's own
    /// HTTP/1.1 path); 0: none, every request gets a new connection.
    pub keepalive: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> UpstreamConfig {
        UpstreamConfig {
            keepalive: defaults::UPSTREAM_KEEPALIVE,
            idle_timeout: defaults::UPSTREAM_IDLE_TIMEOUT,
        }
    }
}

/// `long_lived`: what a drain does with the long-lived connections of the pool traffic left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LongLivedPolicy {
    /// Closed when the drain timeout passes, so that their clients reconnect to the pool that
    /// serves now.
    #[default]
    Close,
    /// Left open until client or backend ends them.
    Keep,
}

/// `services.NAME.redirect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The `Location`, with `$host`, `$request_uri`, `$scheme` and `$server_port` in it.
    pub to: String,
    /// 301, 302, 303, 307 or 308.
    pub code: u16,
}

impl ServiceConfig {
    /// Whether the service is routed on `listener` (an address of `listen.http`/`https`).
    pub fn on_listener(&self, listener: &SocketAddr) -> bool {
        self.listen.is_empty() || self.listen.contains(listener)
    }
}

/// One entry of `request_headers` or `response_headers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRule {
    /// Lower case.
    pub name: String,
    /// `None` (written `""`): remove the header.
    pub value: Option<String>,
}

/// A content coding switchback compresses answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Brotli,
    Zstd,
}

impl Encoding {
    /// The name in `Accept-Encoding` and `Content-Encoding` (and in the config).
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }

    pub fn from_name(name: &str) -> Option<Encoding> {
        [Encoding::Gzip, Encoding::Brotli, Encoding::Zstd]
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(name))
    }
}

/// How a service's clients are split between the stable and the canary pool.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryConfig {
    pub sticky: Sticky,
    /// The request header (lower case) that forces a pool; None: off.
    pub override_header: Option<String>,
    /// The cookie that forces a pool; None: off.
    pub override_cookie: Option<String>,
    /// When set, an override must say `POOL:SECRET`, not just `POOL`.
    pub override_secret: Option<String>,
}

impl Default for CanaryConfig {
    /// No override: no client can choose its pool unless the config sets a secret.
    fn default() -> CanaryConfig {
        CanaryConfig {
            sticky: Sticky::Cookie(defaults::STICKY_COOKIE.to_string()),
            override_header: None,
            override_cookie: None,
            override_secret: None,
        }
    }
}

/// `retry_on`: the failures, after a backend got the request and before any byte of its answer
/// reached the client, that send an idempotent request to another backend (nginx's
/// `proxy_next_upstream`). A failed connect, and a reused connection that failed before the
/// request was all written, are retried whatever this says: the backend never had the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection was reset or closed, or the answer was empty or malformed.
    pub error: bool,
    /// No answer within `read_timeout`.
    pub timeout: bool,
}

impl Default for RetryOn {
    fn default() -> RetryOn {
        RetryOn {
            error: true,
            timeout: false,
        }
    }
}

/// Where a client's canary bucket comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Sticky {
    /// A cookie the proxy sets on the first answer (a new client gets a random bucket).
    Cookie(String),
    /// A hash of this request header (lower case), else of the client address.
    Header(String),
    /// A hash of the client address.
    Ip,
}

impl ServiceConfig {
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn pool_names(&self) -> Vec<&str> {
        self.pools.iter().map(|p| p.name.as_str()).collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub backends: Vec<Target>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend up.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy backend down.
    pub unhealthy_threshold: u32,
}
