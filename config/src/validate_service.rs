//! Validation of `[services.NAME]`: hosts, path prefix, pools and their backends, the active
//! pool, health checks and timeouts. Where requests go (listeners, defaults, redirects, and
//! the routes all services make together) is `validate_routes`.

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
        let listen = self.service_listen(raw.listen.as_ref(), &key("listen"));
        let default = raw.default.as_ref().is_some_and(|d| *d.get_ref());
        let redirect = raw
            .redirect
            .as_ref()
            .and_then(|r| self.redirect(r, &key("redirect")));
        let (active, pools) = if raw.redirect.is_some() {
            for (span, k) in [
                (raw.pools.as_ref().map(S::span), "pools"),
                (raw.active.as_ref().map(S::span), "active"),
            ] {
                if let Some(span) = span {
                    self.problem(
                        span,
                        key(k),
                        "a service with a redirect has no pools: remove this, or remove redirect to proxy to pools",
                    );
                }
            }
            (String::new(), Vec::new())
        } else {
            self.pools(name, raw)
        };
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
            listen,
            default,
            redirect,
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

    /// `pools` and `active`, which every service but a redirect has.
    fn pools(&mut self, name: &S<String>, raw: &RawService) -> (String, Vec<PoolConfig>) {
        let n = name.get_ref();
        let key = |k: &str| format!("services.{n}.{k}");
        let mut pools = Vec::new();
        let Some(raw_pools) = &raw.pools else {
            self.problem(
                name.span(),
                key("pools"),
                "no pools: define at least one, like pools.blue = [\"127.0.0.1:9001\"] (or give the service a redirect)",
            );
            return (String::new(), pools);
        };
        for (pool_name, backends) in raw_pools.get_ref() {
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
                raw_pools.span(),
                key("pools"),
                "no pools: define at least one, like pools.blue = [\"127.0.0.1:9001\"]",
            );
        }
        let Some(raw_active) = &raw.active else {
            let first = pools.first().map_or("blue", |p| p.name.as_str());
            self.problem(
                name.span(),
                key("active"),
                format!("no active pool: say which pool serves, like active = {first:?}"),
            );
            return (String::new(), pools);
        };
        let active = raw_active.get_ref().clone();
        match pools.iter().find(|p| p.name == active) {
            None => {
                let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                self.problem(
                    raw_active.span(),
                    key("active"),
                    format!("no pool named {active:?} (pools: {})", names.join(", ")),
                );
            }
            Some(p) if p.backends.is_empty() => self.problem(
                raw_active.span(),
                key("active"),
                format!("the active pool {active:?} has no backends"),
            ),
            Some(_) => {}
        }
        (active, pools)
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
