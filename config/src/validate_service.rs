//! Validation of `[services.NAME]`: hosts, path prefix, pools and their backends, the active
//! pool, health checks and timeouts; and of the routes all services make together (no two
//! services on the same host and prefix).

use std::collections::BTreeMap;

use crate::address::{parse_target, Target};
use crate::model::*;
use crate::schema::*;
use crate::validate::{valid_name, Validator};
use crate::validate_http::Direction;

impl Validator<'_> {
    pub(crate) fn service(
        &mut self,
        name: &S<String>,
        raw: &S<RawService>,
    ) -> Option<ServiceConfig> {
        let n = name.get_ref();
        let key = |k: &str| format!("services.{n}.{k}");
        if !valid_name(n) {
            self.problem(
                name.span(),
                format!("services.{n}"),
                "service names use letters, digits, '-' and '_' (at most 64)",
            );
        }
        let raw = raw.get_ref();
        let mut hosts: Vec<String> = Vec::new();
        for h in &raw.hosts {
            match normalize_host(h.get_ref()) {
                Ok(host) if hosts.contains(&host) => {
                    self.problem(h.span(), key("hosts"), format!("{host:?} is listed twice"))
                }
                Ok(host) => hosts.push(host),
                Err(e) => self.problem(h.span(), key("hosts"), e),
            }
        }
        let path_prefix = match &raw.path_prefix {
            None => defaults::PATH_PREFIX.to_string(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                self.problem(
                    p.span(),
                    key("path_prefix"),
                    format!("{:?} must start with '/', like \"/api\"", p.get_ref()),
                );
                defaults::PATH_PREFIX.to_string()
            }
        };
        let mut pools = Vec::new();
        for (pool_name, backends) in raw.pools.get_ref() {
            let pn = pool_name.get_ref();
            let pkey = key(&format!("pools.{pn}"));
            if !valid_name(pn) {
                self.problem(
                    pool_name.span(),
                    &pkey,
                    "pool names use letters, digits, '-' and '_' (at most 64)",
                );
            }
            let mut addrs: Vec<Target> = Vec::new();
            for b in backends.get_ref() {
                match parse_target(b.get_ref()) {
                    Ok(a) if addrs.contains(&a) => {
                        self.problem(b.span(), &pkey, format!("{a} is listed twice"))
                    }
                    Ok(a) => addrs.push(a),
                    Err(e) => self.problem(b.span(), &pkey, e),
                }
            }
            if addrs.len() > MAX_BACKENDS_PER_POOL {
                self.problem(
                    backends.span(),
                    &pkey,
                    format!(
                        "{} backends: a pool has at most {MAX_BACKENDS_PER_POOL}; split them into several services or put a load balancer in front",
                        addrs.len()
                    ),
                );
            }
            pools.push(PoolConfig {
                name: pn.clone(),
                backends: addrs,
            });
        }
        if pools.is_empty() {
            self.problem(
                raw.pools.span(),
                key("pools"),
                "no pools: define at least one, like pools.blue = [\"127.0.0.1:9001\"]",
            );
        }
        let active = raw.active.get_ref().clone();
        match pools.iter().find(|p| p.name == active) {
            None => {
                let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                self.problem(
                    raw.active.span(),
                    key("active"),
                    format!("no pool named {active:?} (pools: {})", names.join(", ")),
                );
            }
            Some(p) if p.backends.is_empty() => self.problem(
                raw.active.span(),
                key("active"),
                format!("the active pool {active:?} has no backends"),
            ),
            Some(_) => {}
        }
        let health = raw.health.as_ref().map(|h| self.health(n, h));
        let connect_timeout = self.duration(
            &raw.connect_timeout,
            &key("connect_timeout"),
            defaults::CONNECT_TIMEOUT,
        );
        let read_timeout = self.duration(
            &raw.read_timeout,
            &key("read_timeout"),
            defaults::READ_TIMEOUT,
        );
        let retries = self.count(&raw.retries, &key("retries"), 0, 10, defaults::RETRIES);
        let retry_on = self.retry_on(&raw.retry_on, &key("retry_on"));
        let retry_non_idempotent = raw
            .retry_non_idempotent
            .as_ref()
            .is_some_and(|b| *b.get_ref());
        let retry_buffer = self.size(
            &raw.retry_buffer,
            &key("retry_buffer"),
            0,
            defaults::RETRY_BUFFER,
            defaults::RETRY_BUFFER,
        );
        let (tls, https_redirect, hsts) = self.service_tls(n, raw, &hosts);
        let canary = self.canary(n, raw.canary.as_ref());
        let max_request_body =
            self.request_body_limit(&raw.max_request_body, &key("max_request_body"));
        let request_headers = self.header_rules(
            &raw.request_headers,
            &key("request_headers"),
            Direction::Request,
        );
        let response_headers = self.header_rules(
            &raw.response_headers,
            &key("response_headers"),
            Direction::Response,
        );
        let compress = self.compress(&raw.compress, &key("compress"));
        let compress_min_length = self.size(
            &raw.compress_min_length,
            &key("compress_min_length"),
            0,
            usize::MAX,
            defaults::COMPRESS_MIN_LENGTH,
        );
        let drain_timeout = self.duration(
            &raw.drain_timeout,
            &key("drain_timeout"),
            defaults::DRAIN_TIMEOUT,
        );
        let long_lived = match raw.long_lived.as_ref() {
            None => LongLivedPolicy::default(),
            Some(v) => match v.get_ref().as_str() {
                "close" => LongLivedPolicy::Close,
                "keep" => LongLivedPolicy::Keep,
                other => {
                    self.problem(
                        v.span(),
                        key("long_lived"),
                        format!("{other:?} is not a policy: use \"close\" (after the drain timeout) or \"keep\""),
                    );
                    LongLivedPolicy::default()
                }
            },
        };
        let upstream = match raw.upstream.as_ref().map(|u| u.get_ref()) {
            None => UpstreamConfig::default(),
            Some(u) => UpstreamConfig {
                keepalive: self.count(
                    &u.keepalive,
                    &key("upstream.keepalive"),
                    0,
                    1_000_000,
                    defaults::UPSTREAM_KEEPALIVE as u32,
                ) as usize,
                idle_timeout: self.duration(
                    &u.idle_timeout,
                    &key("upstream.idle_timeout"),
                    defaults::UPSTREAM_IDLE_TIMEOUT,
                ),
            },
        };
        let access = self.access(&raw.access, &path_prefix, &key("access"));
        Some(ServiceConfig {
            access,
            name: n.clone(),
            hosts,
            path_prefix,
            active,
            pools,
            health,
            connect_timeout,
            read_timeout,
            retries,
            retry_on,
            retry_non_idempotent,
            retry_buffer,
            tls,
            https_redirect,
            hsts,
            canary,
            max_request_body,
            request_headers,
            response_headers,
            compress,
            compress_min_length,
            drain_timeout,
            long_lived,
            upstream,
        })
    }

    fn retry_on(&mut self, raw: &Option<S<Vec<S<String>>>>, key: &str) -> RetryOn {
        let Some(raw) = raw else {
            return RetryOn::default();
        };
        let mut on = RetryOn {
            error: false,
            timeout: false,
        };
        for item in raw.get_ref() {
            match item.get_ref().as_str() {
                "error" => on.error = true,
                "timeout" => on.timeout = true,
                other => self.problem(
                    item.span(),
                    key,
                    format!("{other:?} is not a failure switchback retries on: use \"error\", \"timeout\" or both"),
                ),
            }
        }
        on
    }

    fn health(&mut self, service: &str, raw: &S<RawHealth>) -> HealthConfig {
        let key = |k: &str| format!("services.{service}.health.{k}");
        let r = raw.get_ref();
        let path = match &r.path {
            None => defaults::HEALTH_PATH.to_string(),
            Some(p)
                if p.get_ref().starts_with('/') && !p.get_ref().contains(char::is_whitespace) =>
            {
                p.get_ref().clone()
            }
            Some(p) => {
                self.problem(
                    p.span(),
                    key("path"),
                    format!(
                        "{:?} must be a path starting with '/', like \"/healthz\"",
                        p.get_ref()
                    ),
                );
                defaults::HEALTH_PATH.to_string()
            }
        };
        let interval = self.duration(&r.interval, &key("interval"), defaults::HEALTH_INTERVAL);
        let timeout = self.duration(&r.timeout, &key("timeout"), defaults::HEALTH_TIMEOUT);
        let healthy_threshold = self.count(
            &r.healthy_threshold,
            &key("healthy_threshold"),
            1,
            100,
            defaults::HEALTHY_THRESHOLD,
        );
        let unhealthy_threshold = self.count(
            &r.unhealthy_threshold,
            &key("unhealthy_threshold"),
            1,
            100,
            defaults::UNHEALTHY_THRESHOLD,
        );
        HealthConfig {
            path,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
        }
    }

    /// Two services may not claim the same host and path prefix, and only one may take every
    /// host for a given prefix.
    pub(crate) fn routes(
        &mut self,
        raw: &BTreeMap<S<String>, S<RawService>>,
        services: &[ServiceConfig],
    ) {
        let mut seen: BTreeMap<(String, String), &str> = BTreeMap::new();
        for service in services {
            let raw_service = raw
                .iter()
                .find(|(k, _)| k.get_ref() == &service.name)
                .map(|(_, v)| v.get_ref());
            let Some(raw_service) = raw_service else {
                continue;
            };
            if service.hosts.is_empty() {
                let route = (String::new(), service.path_prefix.clone());
                if let Some(other) = seen.insert(route, &service.name) {
                    let span = raw_service.active.span();
                    self.problem(
                        span,
                        format!("services.{}.hosts", service.name),
                        format!(
                            "both {other:?} and {:?} take every host (hosts = []) for path prefix {:?}: give one of them hosts or a different path_prefix",
                            service.name, service.path_prefix
                        ),
                    );
                }
            }
            for (host, raw_host) in service.hosts.iter().zip(&raw_service.hosts) {
                let route = (host.clone(), service.path_prefix.clone());
                if let Some(other) = seen.insert(route, &service.name) {
                    self.problem(
                        raw_host.span(),
                        format!("services.{}.hosts", service.name),
                        format!(
                            "host {host:?} with path prefix {:?} is already routed to service {other:?}",
                            service.path_prefix
                        ),
                    );
                }
            }
        }
    }
}

/// Lower-cases a host name and checks it is one: letters, digits, '-', '.', and an optional
/// leading `*.` for every subdomain. Ports are not part of a host here.
pub fn normalize_host(raw: &str) -> Result<String, String> {
    let host = raw.trim().to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(host)
    } else {
        Err(format!(
            "{raw:?} is not a host name: write it like \"example.com\" or \"*.example.com\", without scheme or port"
        ))
    }
}
