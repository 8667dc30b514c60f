//! Backend health as the request path reads it: one atomic load per pick.
//!
//! A backend's [`HealthState`] is shared by every routing-table generation and every pool that
//! lists the backend, keyed by (service, address) in the [`HealthRegistry`]. The checker (in the
//! control plane) probes whatever the registry holds for a service and records each result
//! here, so backends added by `pool set` are checked from the next round on, and backends no
//! table uses any more are forgotten.
//!
//! Verdicts follow common practice (HAProxy's rise/fall): the first probe decides for a new
//! backend; after that a healthy backend goes down after `unhealthy_threshold` failures in a row
//! and comes back after `healthy_threshold` passes in a row.
//!
//! Between probes, the request path adds a passive check, as nginx's `max_fails` does: a
//! backend that refused a connection, or failed a request in a way the service's `retry_on`
//! names (see [`crate::retry`]), is passed over for [`PASSIVE_COOLDOWN`] while its pool has
//! another backend, so that a backend that died since the last probe does not cost every
//! request a failure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What the proxy knows of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Checked and passing.
    Healthy,
    /// Checked and failing: no request goes there while a healthy backend exists.
    Down,
    /// Health checks are on, but no probe has answered yet.
    Unknown,
    /// The service has no health check; the backend is presumed able to serve.
    Unchecked,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Down => "down",
            Health::Unknown => "unknown",
            Health::Unchecked => "unchecked",
        }
    }

    fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Unknown,
            1 => Health::Healthy,
            2 => Health::Down,
            _ => Health::Unchecked,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Health::Unknown => 0,
            Health::Healthy => 1,
            Health::Down => 2,
            Health::Unchecked => 3,
        }
    }
}

/// How long a backend that failed a request is passed over.
pub const PASSIVE_COOLDOWN: Duration = Duration::from_secs(5);

/// Milliseconds on a monotonic clock private to this process (never 0).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The health of one backend: read on every request, written by its checker.
#[derive(Debug)]
pub struct HealthState {
    state: AtomicU8,
    passes: AtomicU32,
    failures: AtomicU32,
    /// Until when (in [`now_ms`] time) the backend is passed over after a failed connect; 0
    /// when it is not.
    cooldown_until: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// For a backend given by name, the name and port its health checks send as `Host` (the
    /// first name this address was reached by).
    host: std::sync::OnceLock<Arc<str>>,
}

impl HealthState {
    pub fn new(initial: Health) -> HealthState {
        HealthState {
            state: AtomicU8::new(initial.to_u8()),
            passes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            cooldown_until: AtomicU64::new(0),
            last_error: Mutex::new(None),
            host: std::sync::OnceLock::new(),
        }
    }

    /// Names the backend for its health checks' `Host`, unless a name already did.
    pub fn name_host(&self, host: &Arc<str>) {
        let _ = self.host.set(host.clone());
    }

    /// What health checks send as `Host`, if the backend was given by name.
    pub fn host(&self) -> Option<&str> {
        self.host.get().map(|h| &**h)
    }

    /// A request could not connect, or the backend failed it: pass this backend over for a
    /// while.
    pub fn failed(&self) {
        self.cooldown_until.store(
            now_ms() + PASSIVE_COOLDOWN.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    /// Whether a recent failure says to pass this backend over.
    #[inline]
    pub fn cooling_down(&self) -> bool {
        let until = self.cooldown_until.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }

    #[inline]
    pub fn get(&self) -> Health {
        Health::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set(&self, health: Health) {
        self.state.store(health.to_u8(), Ordering::Relaxed);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records one probe result and returns the new verdict when it changed.
    pub fn observe<E: std::fmt::Display>(
        &self,
        result: Result<(), E>,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<Health> {
        let old = self.get();
        let passed = result.is_ok();
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            result.err().map(|e| e.to_string());
        let (passes, failures) = if passed {
            self.failures.store(0, Ordering::Relaxed);
            (self.passes.fetch_add(1, Ordering::Relaxed) + 1, 0)
        } else {
            self.passes.store(0, Ordering::Relaxed);
            (0, self.failures.fetch_add(1, Ordering::Relaxed) + 1)
        };
        let new = match old {
            Health::Unknown | Health::Unchecked => {
                if passed {
                    Health::Healthy
                } else {
                    Health::Down
                }
            }
            Health::Healthy if failures >= unhealthy_threshold => Health::Down,
            Health::Down if passes >= healthy_threshold => Health::Healthy,
            other => other,
        };
        if new != old {
            self.set(new);
            Some(new)
        } else {
            None
        }
    }
}

/// Every backend's health, by (service, address), shared across routing-table generations.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    entries: Mutex<HashMap<(String, SocketAddr), Arc<HealthState>>>,
}

impl HealthRegistry {
    /// The health of a backend, created on first use: `Unknown` when the service checks health,
    /// `Unchecked` when it does not.
    pub fn get(&self, service: &str, addr: SocketAddr, checked: bool) -> Arc<HealthState> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .entry((service.to_string(), addr))
            .or_insert_with(|| {
                Arc::new(HealthState::new(if checked {
                    Health::Unknown
                } else {
                    Health::Unchecked
                }))
            })
            .clone()
    }

    /// The backends of a service that something still uses; forgets the others.
    pub fn targets(&self, service: &str) -> Vec<(SocketAddr, Arc<HealthState>)> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, state| Arc::strong_count(state) > 1);
        entries
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|((_, addr), state)| (*addr, state.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_probe_decides_then_thresholds_apply() {
        let s = HealthState::new(Health::Unknown);
        assert_eq!(s.observe(Ok::<(), &str>(()), 2, 3), Some(Health::Healthy));
        assert_eq!(s.observe(Err("x"), 2, 3), None);
        assert_eq!(s.observe(Err("x"), 2, 3), None);
        assert_eq!(s.observe(Err("x"), 2, 3), Some(Health::Down));
        assert_eq!(s.last_error().as_deref(), Some("x"));
        assert_eq!(s.observe(Ok::<(), &str>(()), 2, 3), None);
        assert_eq!(s.observe(Ok::<(), &str>(()), 2, 3), Some(Health::Healthy));
        assert_eq!(s.last_error(), None);
    }

    #[test]
    fn a_pass_resets_the_failure_count() {
        let s = HealthState::new(Health::Healthy);
        s.observe(Err("x"), 2, 2);
        s.observe(Ok::<(), &str>(()), 2, 2);
        assert_eq!(
            s.observe(Err("x"), 2, 2),
            None,
            "failures must be consecutive"
        );
        assert_eq!(s.get(), Health::Healthy);
    }

    #[test]
    fn a_failed_connect_cools_a_backend_down_for_a_while() {
        let s = HealthState::new(Health::Healthy);
        assert!(!s.cooling_down());
        s.failed();
        assert!(s.cooling_down());
        s.cooldown_until.store(now_ms() - 1, Ordering::Relaxed);
        assert!(!s.cooling_down(), "the cooldown ends");
    }

    #[test]
    fn registry_forgets_backends_nobody_uses() {
        let r = HealthRegistry::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let held = r.get("app", a, true);
        let _dropped = r.get("app", "127.0.0.1:2".parse().unwrap(), true);
        drop(_dropped);
        let targets = r.targets("app");
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].0, a);
        assert!(Arc::ptr_eq(&targets[0].1, &held));
        assert!(r.targets("other").is_empty());
    }
}
