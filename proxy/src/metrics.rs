//! The golden signals, per service and pool: one in-process source for the Prometheus exporter
//! and for anything in the proxy that judges a pool by its numbers (rollouts).
//!
//! Counters and histograms are prometheus crate metrics whose labelled children are resolved
//! once, when a routing table is built, and kept in the pool ([`PoolMetrics`]) and per backend
//! ([`BackendMetrics`]): the request path only does atomic adds, never a label lookup. Gauges
//! that describe state (in flight, health, active pool, traffic split) are not kept up to date
//! on the request path at all: the exporter in the control plane reads them from the live
//! routing table at scrape time. This module depends on nothing else in the crate.
//!
//! Labels are bounded: service, pool, backend address and status class. No path, no client.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::retry::RetryReason;

/// Latency buckets, in seconds: fine enough to read p50/p95/p99 from 1 ms to 10 s, with edges at
/// the alerting thresholds (1 s, 2 s).
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];

/// Status classes, as label values; index = status / 100 - 1.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The label value for requests that reached no backend.
pub const NO_BACKEND: &str = "none";

/// The index into [`STATUS_CLASSES`] of a status code.
#[inline]
pub fn status_class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// Every metric switchback exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    connect_failures: IntCounterVec,
    opened: IntCounterVec,
    idle: IntGaugeVec,
    pool_full: IntCounterVec,
    retries: IntCounterVec,
    switches: IntCounterVec,
    rollbacks: IntCounterVec,
    access_denied: IntCounterVec,
    pub unrouted: IntCounter,
    pub access_log_dropped: IntCounter,
    open_connections: Arc<AtomicI64>,
    client: ClientCounters,
    /// Off only when the config turns recording off (`[metrics] enabled = false`).
    pub enabled: bool,
}

/// What the connection wrapper and the request path count about clients: connections refused
/// at a cap, and requests cut by a deadline or a size limit. Every series exists from the start.
#[derive(Debug, Clone)]
pub struct ClientCounters {
    pub refused_max_connections: IntCounter,
    pub refused_per_ip: IntCounter,
    pub header_timeouts: IntCounter,
    pub body_timeouts: IntCounter,
    pub send_timeouts: IntCounter,
    pub uri_too_long: IntCounter,
    pub head_too_large: IntCounter,
    pub body_too_large: IntCounter,
    /// Heads refused by a framing rule (400), on switchback's own HTTP/1.1 path.
    pub bad_requests: IntCounter,
    /// Connections from a `listen.proxy_protocol` source closed for a missing or broken PROXY
    /// header.
    pub proxy_protocol_refused: IntCounter,
}

/// Per-pool handles, resolved once per table build.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    pub duration: Histogram,
    /// By [`RetryReason::index`].
    pub retries: [IntCounter; 4],
}

/// Per-(pool, backend) handles.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    pub by_class: [IntCounter; 5],
    pub connect_failures: IntCounter,
    /// Connections opened to the backend.
    pub opened: IntCounter,
    /// Idle keep-alive connections to the backend, kept for the next requests.
    pub idle: IntGauge,
    /// Connections closed after their request because the keep-alive pool was full.
    pub pool_full: IntCounter,
}

impl BackendMetrics {
    /// Requests answered with a status of class `class` (0-based).
    pub fn count(&self, class: usize) -> u64 {
        self.by_class[class].get()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(true)
    }
}

impl Metrics {
    pub fn new(enabled: bool) -> Metrics {
        let registry = Registry::new();
        fn register<M: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            metric: M,
        ) -> M {
            registry
                .register(Box::new(metric.clone()))
                .expect("registered once");
            metric
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric"),
            )
        };
        let requests = counter(
            "switchback_requests_total",
            "Requests proxied, by service, pool, backend and status class.",
            &["service", "pool", "backend", "status_class"],
        );
        let connect_failures = counter(
            "switchback_upstream_connect_failures_total",
            "Connections to a backend that failed before any byte of the request was sent.",
            &["service", "pool", "backend"],
        );
        let opened = counter(
            "switchback_upstream_connections_opened_total",
            "Connections opened to a backend (a request that reuses an idle keep-alive connection opens none).",
            &["service", "pool", "backend"],
        );
        let pool_full = counter(
            "switchback_upstream_keepalive_overflow_total",
            "Backend connections closed after their request because upstream.keepalive idle connections to the backend were kept already.",
            &["service", "pool", "backend"],
        );
        let idle = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "switchback_upstream_idle_connections",
                    "Idle keep-alive connections to a backend, kept for the next requests (switchback's own HTTP/1.1 path).",
                ),
                &["service", "pool", "backend"],
            )
            .expect("a valid metric"),
        );
        let retries = counter(
            "switchback_upstream_retries_total",
            "Requests tried again after a failed attempt, by why: connect, reused_connection, error, timeout.",
            &["service", "pool", "reason"],
        );
        let switches = counter(
            "switchback_switches_total",
            "Changes of the active pool of a service (switch and rollback).",
            &["service"],
        );
        let rollbacks = counter(
            "switchback_rollbacks_total",
            "Rollbacks of a service: to the previous pool, or a canary or rollout sent back to the stable pool.",
            &["service"],
        );
        let duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "switchback_request_duration_seconds",
                    "Time from the request head read to the response sent, by service and pool.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["service", "pool"],
            )
            .expect("a valid metric"),
        );
        let single = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).expect("a valid metric"),
            )
        };
        let unrouted = single(
            "switchback_unrouted_requests_total",
            "Requests that matched no service (answered 503).",
        );
        let access_log_dropped = single(
            "switchback_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        );
        let refused = counter(
            "switchback_connections_refused_total",
            "Client connections closed at once because a cap was reached.",
            &["reason"],
        );
        let client_errors = counter(
            "switchback_client_errors_total",
            "Client requests cut by a deadline (header_timeout 408, body_timeout, send_timeout) or refused by a size limit (uri_too_long 414, head_too_large 431, body_too_large 413) or a framing rule (bad_request 400).",
            &["reason"],
        );
        let access_denied = counter(
            "switchback_access_denied_total",
            "Requests refused by a service's access rules, by reason: deny (403), auth (401), rate (429); and connections closed for a missing or broken PROXY header (reason proxy_protocol, no service).",
            &["service", "reason"],
        );
        let client = ClientCounters {
            proxy_protocol_refused: access_denied.with_label_values(&["", "proxy_protocol"]),
            refused_max_connections: refused.with_label_values(&["max_connections"]),
            refused_per_ip: refused.with_label_values(&["max_connections_per_ip"]),
            header_timeouts: client_errors.with_label_values(&["header_timeout"]),
            body_timeouts: client_errors.with_label_values(&["body_timeout"]),
            send_timeouts: client_errors.with_label_values(&["send_timeout"]),
            uri_too_long: client_errors.with_label_values(&["uri_too_long"]),
            head_too_large: client_errors.with_label_values(&["head_too_large"]),
            body_too_large: client_errors.with_label_values(&["body_too_large"]),
            bad_requests: client_errors.with_label_values(&["bad_request"]),
        };
        Metrics {
            registry,
            client,
            requests,
            duration,
            connect_failures,
            opened,
            idle,
            pool_full,
            retries,
            switches,
            rollbacks,
            access_denied,
            unrouted,
            access_log_dropped,
            open_connections: Arc::new(AtomicI64::new(0)),
            enabled,
        }
    }

    /// The client counters, shared with the connection wrapper.
    pub fn client(&self) -> &ClientCounters {
        &self.client
    }

    /// Starts a service's counters at 0, so that `increase()` sees its first switch and its
    /// first rollback.
    pub fn service(&self, service: &str) {
        self.switches.with_label_values(&[service]);
        self.rollbacks.with_label_values(&[service]);
    }

    pub fn pool(&self, service: &str, pool: &str) -> PoolMetrics {
        PoolMetrics {
            duration: self.duration.with_label_values(&[service, pool]),
            retries: RetryReason::ALL
                .map(|r| self.retries.with_label_values(&[service, pool, r.as_str()])),
        }
    }

    pub fn backend(&self, service: &str, pool: &str, backend: &str) -> BackendMetrics {
        BackendMetrics {
            by_class: STATUS_CLASSES.map(|class| {
                self.requests
                    .with_label_values(&[service, pool, backend, class])
            }),
            connect_failures: self
                .connect_failures
                .with_label_values(&[service, pool, backend]),
            opened: self.opened.with_label_values(&[service, pool, backend]),
            idle: self.idle.with_label_values(&[service, pool, backend]),
            pool_full: self.pool_full.with_label_values(&[service, pool, backend]),
        }
    }

    /// Drops a backend's series from the export once no table has it: backends given by name
    /// change address with every container, and each address would otherwise stay listed
    /// forever. Requests still in flight to it count on the handles they have, unexported.
    pub fn forget_backend(&self, service: &str, pool: &str, backend: &str) {
        for class in STATUS_CLASSES {
            let _ = self
                .requests
                .remove_label_values(&[service, pool, backend, class]);
        }
        let _ = self
            .connect_failures
            .remove_label_values(&[service, pool, backend]);
        let _ = self.opened.remove_label_values(&[service, pool, backend]);
        let _ = self.idle.remove_label_values(&[service, pool, backend]);
        let _ = self
            .pool_full
            .remove_label_values(&[service, pool, backend]);
    }

    /// Starts the denial counters of a service with access rules at 0.
    pub fn service_access(&self, service: &str) {
        for reason in ["deny", "auth", "rate"] {
            self.access_denied.with_label_values(&[service, reason]);
        }
    }

    /// A request refused by `service`'s access rules, for `reason`.
    pub fn count_denied(&self, service: &str, reason: &str) {
        self.access_denied
            .with_label_values(&[service, reason])
            .inc();
    }

    pub fn count_switch(&self, service: &str, rollback: bool) {
        self.switches.with_label_values(&[service]).inc();
        if rollback {
            self.rollbacks.with_label_values(&[service]).inc();
        }
    }

    /// A canary or rollout sent back to the stable pool (the active pool did not change).
    pub fn count_canary_rollback(&self, service: &str) {
        self.rollbacks.with_label_values(&[service]).inc();
    }

    /// The gauge of open client connections, shared with the listener wrapper.
    pub fn open_connections(&self) -> Arc<AtomicI64> {
        self.open_connections.clone()
    }

    /// The counters and histograms recorded so far, for the exporter, which adds the gauges
    /// that describe state.
    pub fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }

    /// Open client connections now.
    pub fn open_connection_count(&self) -> i64 {
        self.open_connections.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(STATUS_CLASSES[status_class(200)], "2xx");
        assert_eq!(STATUS_CLASSES[status_class(503)], "5xx");
        assert_eq!(STATUS_CLASSES[status_class(101)], "1xx");
        assert_eq!(STATUS_CLASSES[status_class(499)], "4xx");
        assert_eq!(
            STATUS_CLASSES[status_class(0)],
            "1xx",
            "clamped, never out of range"
        );
        assert_eq!(STATUS_CLASSES[status_class(999)], "5xx");
    }

    #[test]
    fn handles_resolved_twice_share_one_counter() {
        let m = Metrics::default();
        let a = m.backend("app", "blue", "127.0.0.1:1");
        let b = m.backend("app", "blue", "127.0.0.1:1");
        a.by_class[1].inc();
        assert_eq!(
            b.count(1),
            1,
            "a new table generation keeps counting where the last stopped"
        );
    }
}
