//! The file as written: serde structs that mirror `switchback.toml` key for key.
//!
//! Every value keeps its byte span (`Spanned`) so that validation can name the line a problem is
//! on. Nothing here is checked beyond its TOML type; [`crate::validate`] turns these into the
//! [`crate::model`] types or a list of every problem found.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;

/// `pools.NAME = ["addr", …]`, every part with its span.
pub(crate) type RawPools = BTreeMap<S<String>, S<Vec<S<String>>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub listen: S<RawListen>,
    pub server: Option<S<RawServer>>,
    pub control: S<RawControl>,
    pub state: S<RawState>,
    pub admin: Option<S<RawAdmin>>,
    pub acme: Option<S<RawAcme>>,
    pub access_log: Option<S<RawAccessLog>>,
    pub metrics: Option<S<RawMetrics>>,
    pub resolver: Option<S<RawResolver>>,
    pub fleet: Option<S<RawFleet>>,
    #[serde(default)]
    pub services: BTreeMap<S<String>, S<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    pub directory: Option<S<String>>,
    pub staging: Option<S<bool>>,
    pub email: Option<S<String>>,
    pub eab_kid: Option<S<String>>,
    pub eab_hmac_key: Option<S<String>>,
    pub ca_root: Option<S<String>>,
    pub retry_after: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub enabled: Option<S<bool>>,
    pub format: Option<S<String>>,
    pub path: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub enabled: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResolver {
    #[serde(default)]
    pub nameservers: Vec<S<String>>,
    pub refresh: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    pub etcd: S<Vec<S<String>>>,
    pub prefix: Option<S<String>>,
    pub node: Option<S<String>>,
    pub ack_timeout: Option<S<String>>,
    pub ca: Option<S<String>>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    pub username: Option<S<String>>,
    pub password_file: Option<S<String>>,
    pub key_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    #[serde(default)]
    pub http: Vec<S<String>>,
    #[serde(default)]
    pub https: Vec<S<String>>,
    /// CIDRs whose connections start with a PROXY protocol header.
    #[serde(default)]
    pub proxy_protocol: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub threads: Option<S<i64>>,
    pub shutdown_grace: Option<S<String>>,
    pub client_header_timeout: Option<S<String>>,
    pub keepalive_timeout: Option<S<String>>,
    pub client_body_timeout: Option<S<String>>,
    pub send_timeout: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
    pub max_connections_per_ip: Option<S<i64>>,
    /// `"64k"`, `"1m"`, or a number of bytes.
    pub max_request_head: Option<S<toml::Value>>,
    pub max_uri_length: Option<S<toml::Value>>,
    /// `"100m"`, or a number of bytes; 0: no limit.
    pub max_request_body: Option<S<toml::Value>>,
    #[serde(default)]
    pub trusted_proxies: Vec<S<String>>,
    /// `"switchback"` or `"pingora"`.
    pub http1: Option<S<String>>,
    pub rate_limit_keys: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    pub socket: S<String>,
    pub mode: Option<S<String>>,
    pub group: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawState {
    pub dir: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    #[serde(default)]
    pub hosts: Vec<S<String>>,
    pub path_prefix: Option<S<String>>,
    /// Listener addresses, as in `[listen]`.
    pub listen: Option<S<Vec<S<String>>>>,
    pub default: Option<S<bool>>,
    pub redirect: Option<S<RawRedirect>>,
    pub active: Option<S<String>>,
    pub pools: Option<S<RawPools>>,
    pub health: Option<S<RawHealth>>,
    pub connect_timeout: Option<S<String>>,
    pub read_timeout: Option<S<String>>,
    pub retries: Option<S<i64>>,
    pub retry_on: Option<S<Vec<S<String>>>>,
    pub retry_non_idempotent: Option<S<bool>>,
    /// A size: `"64k"` or a number of bytes.
    pub retry_buffer: Option<S<toml::Value>>,
    /// `"acme"`, `"off"`, or `{ cert = "…", key = "…" }`.
    pub tls: Option<S<toml::Value>>,
    pub https_redirect: Option<S<bool>>,
    /// `true`, `false`, or the header value.
    pub hsts: Option<S<toml::Value>>,
    pub canary: Option<S<RawCanary>>,
    pub max_request_body: Option<S<toml::Value>>,
    pub request_headers: Option<S<RawHeaders>>,
    pub response_headers: Option<S<RawHeaders>>,
    /// `["gzip", "br", "zstd"]`, in order of preference.
    pub compress: Option<S<Vec<S<String>>>>,
    pub compress_min_length: Option<S<toml::Value>>,
    pub drain_timeout: Option<S<String>>,
    /// `"close"` or `"keep"`.
    pub long_lived: Option<S<String>>,
    pub upstream: Option<S<RawUpstream>>,
    /// `[[services.NAME.access]]`.
    #[serde(default)]
    pub access: Vec<S<RawAccess>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedirect {
    pub to: S<String>,
    pub code: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccess {
    pub path_prefix: Option<S<String>>,
    pub allow: Option<S<Vec<S<String>>>>,
    pub deny: Option<S<Vec<S<String>>>>,
    pub basic_auth: Option<S<RawBasicAuth>>,
    pub rate: Option<S<RawRate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBasicAuth {
    pub realm: Option<S<String>>,
    pub htpasswd: S<String>,
    pub pass_authorization: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRate {
    /// `"5/s"`, `"300/m"`, `"1000/h"`.
    pub limit: S<String>,
    pub burst: Option<S<i64>>,
    /// `"ip"` or `"header:NAME"`.
    pub by: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub keepalive: Option<S<i64>>,
    pub idle_timeout: Option<S<String>>,
}

/// `Header-Name = "value"`; `""` removes the header.
pub(crate) type RawHeaders = BTreeMap<S<String>, S<String>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCanary {
    pub sticky: Option<S<String>>,
    pub sticky_cookie: Option<S<String>>,
    pub sticky_header: Option<S<String>>,
    pub override_header: Option<S<String>>,
    pub override_cookie: Option<S<String>>,
    pub override_secret: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub path: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub healthy_threshold: Option<S<i64>>,
    pub unhealthy_threshold: Option<S<i64>>,
}
