//! The golden signals, per service and pool: one in-process source for the Prometheus exporter
//! and for anything in the proxy that judges a pool by its numbers (rollouts).
//!
//! Counters and histograms are prometheus crate metrics whose labelled children are resolved
//! once, when a routing table is built, and kept in the pool ([`PoolMetrics`]) and per backend
//! ([`BackendMetrics`]): the request path only does atomic adds, never a label lookup. Gauges
//! that describe state (in flight, health, active pool, traffic split) are not kept up to date
//! on the request path at all; they are read from the live routing table at scrape time.
//!
//! Labels are bounded: service, pool, backend address and status class. No path, no client.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use switchback_certs::{CertSource, CertStatus};

use crate::health::Health;
use crate::routing::RoutingTable;

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
    retries: IntCounterVec,
    switches: IntCounterVec,
    rollbacks: IntCounterVec,
    pub unrouted: IntCounter,
    pub access_log_dropped: IntCounter,
    open_connections: Arc<AtomicI64>,
    /// Off only when the config turns recording off (`[metrics] enabled = false`).
    pub enabled: bool,
}

/// Per-pool handles, resolved once per table build.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    pub duration: Histogram,
    pub retries: IntCounter,
}

/// Per-(pool, backend) handles.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    pub by_class: [IntCounter; 5],
    pub connect_failures: IntCounter,
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
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
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
        let retries = counter(
            "switchback_upstream_retries_total",
            "Requests retried on another backend of the pool after a failed connection.",
            &["service", "pool"],
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
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "switchback_request_duration_seconds",
                "Time from the request head read to the response sent, by service and pool.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["service", "pool"],
        )
        .expect("a valid metric");
        registry
            .register(Box::new(duration.clone()))
            .expect("registered once");
        let single = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("a valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let unrouted = single(
            "switchback_unrouted_requests_total",
            "Requests that matched no service (answered 503).",
        );
        let access_log_dropped = single(
            "switchback_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        );
        Metrics {
            registry,
            requests,
            duration,
            connect_failures,
            retries,
            switches,
            rollbacks,
            unrouted,
            access_log_dropped,
            open_connections: Arc::new(AtomicI64::new(0)),
            enabled,
        }
    }

    pub fn pool(&self, service: &str, pool: &str) -> PoolMetrics {
        PoolMetrics {
            duration: self.duration.with_label_values(&[service, pool]),
            retries: self.retries.with_label_values(&[service, pool]),
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
        }
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

    /// Every metric family, the state gauges read from `table` and `certs` now.
    pub fn gather(&self, table: &RoutingTable, certs: &[CertStatus]) -> Vec<MetricFamily> {
        let mut families = self.registry.gather();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric")
        };
        let in_flight = gauge(
            "switchback_in_flight_requests",
            "Requests being proxied to a pool right now.",
            &["service", "pool"],
        );
        let active = gauge(
            "switchback_active_pool",
            "1 for the pool new requests of a service go to, 0 for the others.",
            &["service", "pool"],
        );
        let traffic = prometheus::GaugeVec::new(
            Opts::new(
                "switchback_pool_traffic_ratio",
                "Share of new requests of a service sent to a pool (0 to 1): the canary weight.",
            ),
            &["service", "pool"],
        )
        .expect("a valid metric");
        let up = gauge(
            "switchback_backend_up",
            "1 when a backend passes its health check (or has none), 0 when it is down or not checked yet.",
            &["service", "pool", "backend"],
        );
        for service in &table.services {
            let name = service.name();
            for (i, pool) in service.pools.iter().enumerate() {
                in_flight
                    .with_label_values(&[name, &pool.name])
                    .set(pool.stats.in_flight() as i64);
                let is_active = i == service.active;
                active
                    .with_label_values(&[name, &pool.name])
                    .set(is_active as i64);
                traffic
                    .with_label_values(&[name, &pool.name])
                    .set(service.traffic_ratio(i));
                for b in &pool.backends {
                    let ok = matches!(b.health.get(), Health::Healthy | Health::Unchecked);
                    up.with_label_values(&[name, &pool.name, &b.addr.to_string()])
                        .set(ok as i64);
                }
            }
        }
        let connections = IntGauge::new(
            "switchback_open_connections",
            "Client connections open now.",
        )
        .expect("a valid metric");
        connections.set(self.open_connections.load(Ordering::Relaxed));
        let generation = IntGauge::new(
            "switchback_routing_generation",
            "Generation of the live routing table; bumped by every change.",
        )
        .expect("a valid metric");
        generation.set(table.generation as i64);
        let info = gauge(
            "switchback_build_info",
            "Always 1; the version label says which build is running.",
            &["version"],
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [&in_flight, &active, &up, &info] {
            families.extend(c.collect());
        }
        families.extend(connections.collect());
        families.extend(generation.collect());
        families.extend(traffic.collect());
        if !certs.is_empty() {
            let not_after = gauge(
                "switchback_certificate_not_after_seconds",
                "Expiry of the certificate served for a host, in seconds since the Unix epoch.",
                &["name"],
            );
            let failures = IntCounterVec::new(
                Opts::new(
                    "switchback_acme_failures_total",
                    "Failed ACME orders for a host since start.",
                ),
                &["name"],
            )
            .expect("a valid metric");
            for cert in certs {
                if let Some(info) = &cert.served {
                    not_after
                        .with_label_values(&[&cert.host])
                        .set(info.not_after);
                }
                if cert.source == CertSource::Acme {
                    failures
                        .with_label_values(&[&cert.host])
                        .inc_by(cert.failures_total);
                }
            }
            families.extend(not_after.collect());
            families.extend(failures.collect());
        }
        // A labelled family with no series yet (no ACME host, say) is left out, as the text
        // format has no way to write it.
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families
    }

    /// The Prometheus text exposition of [`Metrics::gather`].
    pub fn render(&self, table: &RoutingTable, certs: &[CertStatus]) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.gather(table, certs), &mut out)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
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
