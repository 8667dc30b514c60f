//! The Prometheus exposition of `/metrics`: the counters and histograms the request path
//! records ([`Metrics`]), plus gauges that describe state, read at scrape time from the status
//! read model ([`crate::status`]) and the certificates.
//!
//! Nothing here runs on the request path: a scrape builds its gauges fresh each time.

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use switchback_certs::{CertSource, CertStatus};
use switchback_control::StatusReply;
use switchback_proxy::Metrics;

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric")
}

/// Every metric family: what `metrics` recorded, and the state gauges of `status` and `certs`.
pub fn gather(metrics: &Metrics, status: &StatusReply, certs: &[CertStatus]) -> Vec<MetricFamily> {
    let mut families = metrics.gather();
    let in_flight = gauge(
        "switchback_in_flight_requests",
        "Requests being proxied to a pool right now.",
        &["service", "pool"],
    );
    let long_lived = gauge(
        "switchback_long_lived_connections",
        "WebSockets and other upgraded connections open to a pool (not in switchback_in_flight_requests).",
        &["service", "pool"],
    );
    let active = gauge(
        "switchback_active_pool",
        "1 for the pool new requests of a service go to, 0 for the others.",
        &["service", "pool"],
    );
    let traffic = GaugeVec::new(
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
    for service in &status.services {
        let name = service.name.as_str();
        for pool in &service.pools {
            let labels = [name, pool.name.as_str()];
            in_flight
                .with_label_values(&labels)
                .set(pool.in_flight as i64);
            long_lived
                .with_label_values(&labels)
                .set(pool.long_lived as i64);
            active
                .with_label_values(&labels)
                .set((pool.name == service.active) as i64);
            // Shares are whole thousandths; the status rounds them to tenths of a percent.
            let share = service
                .split
                .iter()
                .find(|s| s.pool == pool.name)
                .map_or(0.0, |s| (s.percent * 10.0).round() / 1000.0);
            traffic.with_label_values(&labels).set(share);
            for b in &pool.backends {
                up.with_label_values(&[name, &pool.name, &b.address])
                    .set(b.health.serves() as i64);
            }
        }
    }
    let connections = IntGauge::new(
        "switchback_open_connections",
        "Client connections open now, idle keep-alive connections included (server.max_connections caps them).",
    )
    .expect("a valid metric");
    connections.set(metrics.open_connection_count());
    let generation = IntGauge::new(
        "switchback_routing_generation",
        "Generation of the live routing table; bumped by every change.",
    )
    .expect("a valid metric");
    generation.set(status.generation as i64);
    let info = gauge(
        "switchback_build_info",
        "Always 1; the version label says which build is running.",
        &["version"],
    );
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    for c in [&in_flight, &long_lived, &active, &up, &info] {
        families.extend(c.collect());
    }
    families.extend(connections.collect());
    families.extend(generation.collect());
    families.extend(traffic.collect());
    if !certs.is_empty() {
        families.extend(cert_families(certs));
    }
    if let Some(fleet) = &status.fleet {
        families.extend(fleet_families(fleet));
    }
    // A labelled family with no series yet (no ACME host, say) is left out, as the text
    // format has no way to write it.
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    families
}

fn fleet_families(fleet: &switchback_control::FleetStatus) -> Vec<MetricFamily> {
    let connected = IntGauge::new(
        "switchback_fleet_connected",
        "Fleet mode: 1 while this node is connected to etcd (changes are refused while it is 0).",
    )
    .expect("a valid metric");
    connected.set(fleet.connected as i64);
    let applied = gauge(
        "switchback_fleet_applied_generation",
        "Fleet mode: the generation of the fleet state each node serves, as this node sees it.",
        &["node"],
    );
    let node_connected = gauge(
        "switchback_fleet_node_connected",
        "Fleet mode: 1 for a node that holds a live lease in etcd, as this node sees it.",
        &["node"],
    );
    for n in &fleet.nodes {
        applied
            .with_label_values(&[&n.name])
            .set(n.generation as i64);
        node_connected
            .with_label_values(&[&n.name])
            .set(n.connected as i64);
    }
    let mut out = connected.collect();
    out.extend(applied.collect());
    out.extend(node_connected.collect());
    out
}

fn cert_families(certs: &[CertStatus]) -> Vec<MetricFamily> {
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
    let mut out = not_after.collect();
    out.extend(failures.collect());
    out
}

/// The Prometheus text exposition of [`gather`].
pub fn render(metrics: &Metrics, status: &StatusReply, certs: &[CertStatus]) -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&gather(metrics, status, certs), &mut out)
        .expect("text encoding into memory cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}
