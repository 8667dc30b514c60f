//! Pools and backends, and how a request picks one backend of a pool.
//!
//! A [`Pool`] is immutable and belongs to one routing-table generation; what must outlive a
//! generation (the in-flight count that `--wait-drain` watches, a backend's health) sits behind
//! `Arc`s that the next generation reuses. Picking a backend is round robin over the backends
//! not known to be down, with one relaxed atomic add and no lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;
use switchback_config::{Target, MAX_BACKENDS_PER_POOL};

use crate::health::{Health, HealthState};
use crate::long_lived::LongLived;
use crate::metrics::{BackendMetrics, PoolMetrics};

/// Counters of a pool that survive table generations, keyed by (service, pool name).
#[derive(Debug)]
pub struct PoolStats {
    in_flight: AtomicU64,
    /// WebSockets and other upgraded connections (not in flight: see [`crate::long_lived`]).
    pub long_lived: Arc<LongLived>,
    /// What rollouts judge: answers to requests the split assigned while a canary ran (never
    /// a forced one), by status class, and the backend's time to its response header, from
    /// the moment the request was all sent (so a client's slow upload is not in it).
    judged: [AtomicU64; 5],
    judged_latency: prometheus::Histogram,
}

impl Default for PoolStats {
    fn default() -> PoolStats {
        let opts = prometheus::HistogramOpts::new("judged", "backend time to header")
            .buckets(crate::metrics::DURATION_BUCKETS.to_vec());
        PoolStats {
            in_flight: AtomicU64::new(0),
            long_lived: Arc::default(),
            judged: Default::default(),
            judged_latency: prometheus::Histogram::with_opts(opts).expect("valid buckets"),
        }
    }
}

impl PoolStats {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts one judged answer of status class `class` (0-based), with the backend's time to
    /// header when a backend answered.
    pub fn judge(&self, class: usize, latency: Option<std::time::Duration>) {
        self.judged[class.min(4)].fetch_add(1, Ordering::Relaxed);
        if let Some(l) = latency {
            self.judged_latency.observe(l.as_secs_f64());
        }
    }

    /// Judged answers so far, by status class.
    pub fn judged_by_class(&self) -> [u64; 5] {
        self.judged.each_ref().map(|n| n.load(Ordering::Relaxed))
    }

    /// Judged backend times so far: cumulative counts per bucket, with the bucket's upper
    /// bound in seconds.
    pub fn judged_latency_buckets(&self) -> Vec<(f64, u64)> {
        let metric = prometheus::core::Metric::metric(&self.judged_latency);
        metric
            .get_histogram()
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect()
    }
}

/// Counts a request as in flight to a pool until it is dropped, whatever path the request takes
/// out (answered, failed, client gone).
#[derive(Debug)]
pub struct InFlight(Arc<PoolStats>);

impl InFlight {
    pub fn start(stats: &Arc<PoolStats>) -> InFlight {
        stats.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// One upstream address and what the proxy needs to reach it.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// The host name and port this address was resolved from, for a backend given by name.
    pub name: Option<Arc<str>>,
    pub health: Arc<HealthState>,
    /// A ready-made peer with the service's timeouts, cloned for each request.
    pub peer: HttpPeer,
}

/// A named set of backends (blue, green, …) in one table generation.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    /// The backends as the live state gives them (addresses and host names).
    pub targets: Vec<Target>,
    /// One per address the targets stand for now.
    pub backends: Vec<Arc<Backend>>,
    pub stats: Arc<PoolStats>,
    pub metrics: PoolMetrics,
    /// Parallel to `backends`: the counters of each backend in this pool.
    pub backend_metrics: Vec<BackendMetrics>,
    /// Requests of this pool that reached no backend.
    pub no_backend_metrics: BackendMetrics,
    next: AtomicUsize,
}

/// The metric handles a pool is built with.
#[derive(Debug, Clone)]
pub struct PoolHandles {
    pub pool: PoolMetrics,
    pub backends: Vec<BackendMetrics>,
    pub no_backend: BackendMetrics,
}

/// Which backends of a pool a request already tried, as a bit set of indexes. Exact because a
/// pool never has more than [`MAX_BACKENDS_PER_POOL`] (64) backends: the config and `pool set`
/// refuse more.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(u64);

const _: () = assert!(MAX_BACKENDS_PER_POOL <= u64::BITS as usize);

impl Tried {
    pub fn add(&mut self, index: usize) {
        debug_assert!(index < MAX_BACKENDS_PER_POOL);
        self.0 |= 1 << index;
    }

    pub fn contains(self, index: usize) -> bool {
        index < MAX_BACKENDS_PER_POOL && self.0 & (1 << index) != 0
    }

    pub fn remove(&mut self, index: usize) {
        if index < MAX_BACKENDS_PER_POOL {
            self.0 &= !(1 << index);
        }
    }

    pub fn count(self) -> u32 {
        self.0.count_ones()
    }
}

impl Pool {
    pub fn new(
        name: Arc<str>,
        backends: Vec<Arc<Backend>>,
        stats: Arc<PoolStats>,
        handles: PoolHandles,
    ) -> Pool {
        Pool {
            name,
            targets: Vec::new(),
            backends,
            stats,
            metrics: handles.pool,
            backend_metrics: handles.backends,
            no_backend_metrics: handles.no_backend,
            next: AtomicUsize::new(0),
        }
    }

    /// Requests answered so far, by status class, over every backend (and none).
    pub fn requests_by_class(&self) -> [u64; 5] {
        let mut out = [0u64; 5];
        for m in self
            .backend_metrics
            .iter()
            .chain(std::iter::once(&self.no_backend_metrics))
        {
            for (class, n) in out.iter_mut().enumerate() {
                *n += m.count(class);
            }
        }
        out
    }

    /// Failed connections to this pool's backends so far.
    pub fn connect_failures(&self) -> u64 {
        self.backend_metrics
            .iter()
            .map(|m| m.connect_failures.get())
            .sum()
    }

    /// The next backend in round-robin order that `tried` does not hold. In order of
    /// preference: a healthy (or unchecked) one, one whose health is not known yet, one that
    /// refused a connection moments ago. Never a backend known to be down.
    #[inline]
    pub fn select(&self, tried: Tried) -> Option<(usize, &Arc<Backend>)> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut unknown = None;
        let mut cooling = None;
        for i in 0..n {
            let index = (start + i) % n;
            if tried.contains(index) {
                continue;
            }
            let backend = &self.backends[index];
            let health = backend.health.get();
            if health == Health::Down {
                continue;
            }
            if backend.health.cooling_down() {
                cooling = cooling.or(Some((index, backend)));
                continue;
            }
            match health {
                Health::Healthy | Health::Unchecked => return Some((index, backend)),
                _ => unknown = unknown.or(Some((index, backend))),
            }
        }
        unknown.or(cooling)
    }

    /// Whether a backend `tried` does not hold could take the request ([`Pool::select`] would
    /// find one), without moving the round robin on.
    pub fn has_untried(&self, tried: Tried) -> bool {
        self.backends
            .iter()
            .enumerate()
            .any(|(i, b)| !tried.contains(i) && b.health.get() != Health::Down)
    }

    /// Backends that can take a request now.
    pub fn healthy_count(&self) -> usize {
        self.backends
            .iter()
            .filter(|b| matches!(b.health.get(), Health::Healthy | Health::Unchecked))
            .count()
    }

    /// The pool with the targets its backends came from.
    pub fn with_targets(mut self, targets: Vec<Target>) -> Pool {
        self.targets = targets;
        self
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(|b| b.addr).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(states: &[Health]) -> Pool {
        let backends = states
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
                Arc::new(Backend {
                    addr,
                    name: None,
                    health: Arc::new(HealthState::new(*h)),
                    peer: HttpPeer::new(addr, false, String::new()),
                })
            })
            .collect::<Vec<_>>();
        let m = crate::metrics::Metrics::default();
        let handles = PoolHandles {
            pool: m.pool("app", "blue"),
            backends: backends
                .iter()
                .map(|b| m.backend("app", "blue", &b.addr.to_string()))
                .collect(),
            no_backend: m.backend("app", "blue", "none"),
        };
        Pool::new("blue".into(), backends, Arc::default(), handles)
    }

    #[test]
    fn round_robin_over_healthy_backends() {
        let p = pool(&[Health::Healthy, Health::Healthy, Health::Healthy]);
        let picks: Vec<usize> = (0..6)
            .map(|_| p.select(Tried::default()).unwrap().0)
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn never_a_down_backend_when_a_healthy_one_exists() {
        let p = pool(&[Health::Down, Health::Healthy, Health::Down, Health::Unknown]);
        for _ in 0..20 {
            assert_eq!(p.select(Tried::default()).unwrap().0, 1);
        }
    }

    #[test]
    fn unknown_backends_serve_only_when_no_healthy_one_is_left() {
        let p = pool(&[Health::Down, Health::Unknown]);
        assert_eq!(p.select(Tried::default()).unwrap().0, 1);
        let all_down = pool(&[Health::Down, Health::Down]);
        assert!(all_down.select(Tried::default()).is_none());
    }

    #[test]
    fn a_backend_that_refused_a_connection_is_passed_over_while_others_serve() {
        let p = pool(&[Health::Unchecked, Health::Unchecked]);
        p.backends[0].health.failed();
        for _ in 0..10 {
            assert_eq!(p.select(Tried::default()).unwrap().0, 1);
        }
        let mut tried = Tried::default();
        tried.add(1);
        assert_eq!(
            p.select(tried).unwrap().0,
            0,
            "still tried when nothing else is left"
        );
    }

    #[test]
    fn retries_skip_what_was_tried() {
        let p = pool(&[Health::Healthy, Health::Healthy]);
        let (first, _) = p.select(Tried::default()).unwrap();
        let mut tried = Tried::default();
        tried.add(first);
        for _ in 0..5 {
            assert_ne!(p.select(tried).unwrap().0, first);
        }
        assert!(p.has_untried(tried));
        tried.add(1 - first);
        assert!(p.select(tried).is_none());
        assert!(!p.has_untried(tried));
        assert_eq!(tried.count(), 2);
        tried.remove(first);
        assert_eq!(p.select(tried).unwrap().0, first);
        let down = pool(&[Health::Healthy, Health::Down]);
        let mut tried = Tried::default();
        tried.add(0);
        assert!(!down.has_untried(tried), "a down backend takes no retry");
    }

    #[test]
    fn a_full_pool_of_64_is_tried_exactly() {
        let p = pool(&[Health::Healthy; MAX_BACKENDS_PER_POOL]);
        let mut tried = Tried::default();
        let mut seen = std::collections::HashSet::new();
        while let Some((i, _)) = p.select(tried) {
            assert!(seen.insert(i), "backend {i} picked twice");
            tried.add(i);
        }
        assert_eq!(seen.len(), MAX_BACKENDS_PER_POOL);
        assert_eq!(tried.count() as usize, MAX_BACKENDS_PER_POOL);
    }

    #[test]
    fn in_flight_counts_until_drop() {
        let stats: Arc<PoolStats> = Arc::default();
        let a = InFlight::start(&stats);
        let b = InFlight::start(&stats);
        assert_eq!(stats.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(stats.in_flight(), 0);
    }
}
