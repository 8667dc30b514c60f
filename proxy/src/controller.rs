//! The one writer of the routing state.
//!
//! Every change (switch, rollback, pool set) goes through [`Controller::commit`]: it builds the
//! next [`LiveState`] and [`RoutingTable`] from the current ones, persists the state (temp file,
//! fsync, rename, fsync dir, on a blocking thread), and only then swaps the table in. A failed
//! write changes nothing. Writers are serialized by one async mutex; readers (the request path)
//! never take it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use switchback_config::{defaults, Config, LiveState, StateError, StateLock, StateStore};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::health::{probe, Health, HealthRegistry, HealthState};
use crate::metrics::Metrics;
use crate::routing::{RoutingTable, ServiceRoute};

/// Why a change was refused. Nothing changed when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no service named {name:?} (services: {known})")]
    UnknownService { name: String, known: String },
    #[error("there are several services ({known}): name one with -s SERVICE")]
    ServiceRequired { known: String },
    #[error("service {service:?} has no pool named {pool:?} (pools: {known})")]
    UnknownPool {
        service: String,
        pool: String,
        known: String,
    },
    #[error("pool {pool:?} of service {service:?} has no healthy backend ({detail}); nothing changed (use --force to switch anyway)")]
    NoHealthyBackend {
        service: String,
        pool: String,
        detail: String,
    },
    #[error("service {service:?} has no previous pool to roll back to")]
    NoPreviousPool { service: String },
    #[error("{0}")]
    BadAddress(String),
    #[error("pool {pool:?} of service {service:?}: the new backends did not pass their health checks within {}ms ({detail}); nothing changed", timeout.as_millis())]
    HealthTimeout {
        service: String,
        pool: String,
        timeout: Duration,
        detail: String,
    },
    #[error("cannot write the state file: {0}; nothing changed")]
    StateWrite(std::io::Error),
}

/// Why the proxy could not start from its state dir.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state dir {}: {source}", dir.display())]
    StateDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// What a switch or rollback did.
#[derive(Debug, Clone)]
pub struct SwitchOutcome {
    pub service: String,
    pub pool: String,
    pub previous: String,
    pub changed: bool,
    pub generation: u64,
}

/// How a wait for the old pool to drain ended.
#[derive(Debug, Clone)]
pub struct DrainOutcome {
    pub pool: String,
    pub drained: bool,
    pub in_flight: u64,
    pub waited: Duration,
}

/// What `pool set` did.
#[derive(Debug, Clone)]
pub struct PoolSetOutcome {
    pub service: String,
    pub pool: String,
    pub backends: Vec<SocketAddr>,
    pub previous_backends: Vec<SocketAddr>,
    pub generation: u64,
}

pub struct Controller {
    config: Arc<Config>,
    table: Arc<ArcSwap<RoutingTable>>,
    live: Mutex<LiveState>,
    store: StateStore,
    registry: Arc<HealthRegistry>,
    metrics: Arc<Metrics>,
    notices: Vec<String>,
    _lock: StateLock,
}

impl Controller {
    /// Takes the state dir, restores the saved state over the config (setting an untrustworthy
    /// state file aside, with a notice), and builds the first routing table.
    pub fn start(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Controller, StartError> {
        let store = StateStore::new(&config.state.dir);
        store.prepare().map_err(|source| StartError::StateDir {
            dir: config.state.dir.clone(),
            source,
        })?;
        let lock = store.lock()?;
        let mut notices = Vec::new();
        let from_file = LiveState::from_config(&config);
        let (live, saved_ok) = match store.load() {
            Ok(None) => (from_file, true),
            Ok(Some(saved)) => match LiveState::restore(&config, saved) {
                Ok(live) => (live, true),
                Err(reason) => {
                    let notice = format!(
                        "the state file {} does not match the config ({reason})",
                        store.path().display()
                    );
                    notices.push(notice);
                    (from_file, false)
                }
            },
            Err(e @ StateError::Corrupt { .. }) => {
                notices.push(e.to_string());
                (from_file, false)
            }
            Err(e) => return Err(e.into()),
        };
        if !saved_ok {
            let kept = store.set_aside().map_err(|source| StartError::StateDir {
                dir: config.state.dir.clone(),
                source,
            })?;
            let last = notices.pop().unwrap_or_default();
            let notice = format!(
                "{last}; it was set aside as {} and the config file's state is live",
                kept.display()
            );
            warn!("{notice}");
            notices.push(notice);
        }
        store.save(&live).map_err(|source| StartError::StateDir {
            dir: config.state.dir.clone(),
            source,
        })?;
        let registry = Arc::new(HealthRegistry::default());
        let table = RoutingTable::build(&config, &live, None, &registry, &metrics);
        Ok(Controller {
            config,
            table: Arc::new(ArcSwap::from_pointee(table)),
            live: Mutex::new(live),
            store,
            registry,
            metrics,
            notices,
            _lock: lock,
        })
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The handle the request path loads the live table from.
    pub fn table_handle(&self) -> Arc<ArcSwap<RoutingTable>> {
        self.table.clone()
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    pub fn registry(&self) -> Arc<HealthRegistry> {
        self.registry.clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    pub fn state_path(&self) -> std::path::PathBuf {
        self.store.path()
    }

    pub async fn live_state(&self) -> LiveState {
        self.live.lock().await.clone()
    }

    /// The service a command is about: the one named, or the only one.
    pub fn resolve_service(&self, name: Option<&str>) -> Result<String, DeployError> {
        let known = || {
            self.config
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(n) if self.config.service(n).is_some() => Ok(n.to_string()),
            Some(n) => Err(DeployError::UnknownService {
                name: n.to_string(),
                known: known(),
            }),
            None if self.config.services.len() == 1 => Ok(self.config.services[0].name.clone()),
            None => Err(DeployError::ServiceRequired { known: known() }),
        }
    }

    fn check_pool(route: &ServiceRoute, pool: &str) -> Result<(), DeployError> {
        match route.pool(pool) {
            Some(_) => Ok(()),
            None => Err(DeployError::UnknownPool {
                service: route.name().to_string(),
                pool: pool.to_string(),
                known: route
                    .pools
                    .iter()
                    .map(|p| p.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Persists `next`, then makes it live. On a failed write nothing changes.
    async fn commit(&self, live: &mut LiveState, mut next: LiveState) -> Result<u64, DeployError> {
        next.generation = live.generation + 1;
        let table = RoutingTable::build(
            &self.config,
            &next,
            Some(&self.table.load()),
            &self.registry,
            &self.metrics,
        );
        let store = self.store.clone();
        let to_save = next.clone();
        tokio::task::spawn_blocking(move || store.save(&to_save))
            .await
            .map_err(|e| DeployError::StateWrite(std::io::Error::other(e)))?
            .map_err(DeployError::StateWrite)?;
        self.table.store(Arc::new(table));
        let generation = next.generation;
        *live = next;
        Ok(generation)
    }

    /// Makes `pool` the active pool of a service. Refuses a pool with no healthy backend
    /// unless `force`. `who` names the asker in the log.
    pub async fn switch(
        &self,
        service: Option<&str>,
        pool: &str,
        force: bool,
        who: &str,
    ) -> Result<SwitchOutcome, DeployError> {
        self.change_active(service, pool, force, who, false).await
    }

    async fn change_active(
        &self,
        service: Option<&str>,
        pool: &str,
        force: bool,
        who: &str,
        rollback: bool,
    ) -> Result<SwitchOutcome, DeployError> {
        let service = self.resolve_service(service)?;
        let mut live = self.live.lock().await;
        let table = self.table.load_full();
        let route = table
            .service(&service)
            .expect("services come from the config");
        Self::check_pool(route, pool)?;
        let current = route.active_pool().name.to_string();
        if current == pool {
            return Ok(SwitchOutcome {
                service,
                pool: pool.to_string(),
                previous: live.services[route.name()]
                    .previous
                    .clone()
                    .unwrap_or_else(|| current.clone()),
                changed: false,
                generation: live.generation,
            });
        }
        let target = route.pool(pool).expect("checked above");
        if !force && target.healthy_count() == 0 {
            let detail = if target.backends.is_empty() {
                "it has no backends".to_string()
            } else {
                target
                    .backends
                    .iter()
                    .map(|b| {
                        let error = b
                            .health
                            .last_error()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default();
                        format!("{} {}{error}", b.addr, b.health.get().as_str())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(DeployError::NoHealthyBackend {
                service,
                pool: pool.to_string(),
                detail,
            });
        }
        let mut next = live.clone();
        let s = next
            .services
            .get_mut(&service)
            .expect("services come from the config");
        s.previous = Some(current.clone());
        s.active = pool.to_string();
        let generation = self.commit(&mut live, next).await?;
        self.metrics.count_switch(&service, rollback);
        let what = if rollback { "rolled back" } else { "switched" };
        info!(service = %service, pool = %pool, previous = %current, generation, by = %who, "{what}");
        Ok(SwitchOutcome {
            service,
            pool: pool.to_string(),
            previous: current,
            changed: true,
            generation,
        })
    }

    /// Switches back to the pool that was active before the last switch.
    pub async fn rollback(
        &self,
        service: Option<&str>,
        force: bool,
        who: &str,
    ) -> Result<SwitchOutcome, DeployError> {
        let service = self.resolve_service(service)?;
        let previous = self.live.lock().await.services[&service].previous.clone();
        let previous = previous.ok_or(DeployError::NoPreviousPool {
            service: service.clone(),
        })?;
        self.change_active(Some(&service), &previous, force, who, true)
            .await
    }

    /// Waits until no request is in flight to `pool`, or `timeout` passes. `on_progress` hears
    /// the count about once a second while it waits.
    pub async fn wait_drain(
        &self,
        service: &str,
        pool: &str,
        timeout: Duration,
        mut on_progress: impl FnMut(u64),
    ) -> DrainOutcome {
        let stats = self
            .table
            .load()
            .service(service)
            .and_then(|s| s.pool(pool))
            .map(|p| p.stats.clone());
        let started = Instant::now();
        let mut last_report = started;
        let Some(stats) = stats else {
            return DrainOutcome {
                pool: pool.to_string(),
                drained: true,
                in_flight: 0,
                waited: Duration::ZERO,
            };
        };
        loop {
            let in_flight = stats.in_flight();
            let waited = started.elapsed();
            if in_flight == 0 || waited >= timeout {
                return DrainOutcome {
                    pool: pool.to_string(),
                    drained: in_flight == 0,
                    in_flight,
                    waited,
                };
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                on_progress(in_flight);
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10).min(timeout - waited)).await;
        }
    }

    /// Replaces the backends of a pool. With `wait`, the new backends must first pass their
    /// health checks within that time, or nothing changes.
    pub async fn set_pool(
        &self,
        service: Option<&str>,
        pool: &str,
        backends: Vec<SocketAddr>,
        wait: Option<Duration>,
        who: &str,
        mut on_progress: impl FnMut(usize, usize),
    ) -> Result<PoolSetOutcome, DeployError> {
        let service = self.resolve_service(service)?;
        {
            let table = self.table.load();
            let route = table
                .service(&service)
                .expect("services come from the config");
            Self::check_pool(route, pool)?;
        }
        if backends.is_empty() {
            return Err(DeployError::BadAddress("no backend given".into()));
        }
        // Held until the new table holds them too, so the checker keeps probing them.
        let mut held: Vec<Arc<HealthState>> = Vec::new();
        if let Some(timeout) = wait {
            held = self
                .wait_healthy(&service, pool, &backends, timeout, &mut on_progress)
                .await?;
        }
        let mut live = self.live.lock().await;
        let mut next = live.clone();
        let p = next
            .services
            .get_mut(&service)
            .and_then(|s| s.pools.get_mut(pool))
            .expect("pool checked above");
        let previous_backends = std::mem::replace(&mut p.backends, backends.clone());
        let generation = self.commit(&mut live, next).await?;
        drop(held);
        info!(service = %service, pool = %pool, backends = ?backends, previous = ?previous_backends, generation, by = %who, "pool backends replaced");
        Ok(PoolSetOutcome {
            service,
            pool: pool.to_string(),
            backends,
            previous_backends,
            generation,
        })
    }

    async fn wait_healthy(
        &self,
        service: &str,
        pool: &str,
        backends: &[SocketAddr],
        timeout: Duration,
        on_progress: &mut impl FnMut(usize, usize),
    ) -> Result<Vec<Arc<HealthState>>, DeployError> {
        let service_config = self.config.service(service).expect("resolved above");
        let checked = service_config.health.is_some();
        let states: Vec<Arc<HealthState>> = backends
            .iter()
            .map(|a| self.registry.get(service, *a, checked))
            .collect();
        // Services without a health check still get one probe per backend, of "/".
        let (path, probe_timeout, interval) = match &service_config.health {
            Some(h) => (h.path.clone(), h.timeout, h.interval),
            None => (
                defaults::HEALTH_PATH.to_string(),
                defaults::HEALTH_TIMEOUT,
                Duration::from_millis(500),
            ),
        };
        let deadline = Instant::now() + timeout;
        let mut reported = usize::MAX;
        let mut errors: Vec<Option<String>> = vec![None; backends.len()];
        loop {
            let mut healthy = 0;
            for (i, (addr, state)) in backends.iter().zip(&states).enumerate() {
                let ok = if checked {
                    errors[i] = state.last_error();
                    state.get() == Health::Healthy
                } else {
                    let result = probe(*addr, &path, probe_timeout).await;
                    errors[i] = result.as_ref().err().cloned();
                    result.is_ok()
                };
                healthy += ok as usize;
            }
            if healthy != reported {
                on_progress(healthy, backends.len());
                reported = healthy;
            }
            if healthy == backends.len() {
                return Ok(states);
            }
            if Instant::now() >= deadline {
                let detail = backends
                    .iter()
                    .zip(&states)
                    .zip(&errors)
                    .filter(|((_, s), _)| !checked || s.get() != Health::Healthy)
                    .map(|((a, s), e)| match e {
                        Some(e) => format!("{a}: {e}"),
                        None if checked => format!("{a}: {}", s.get().as_str()),
                        None => format!("{a}: passed"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(DeployError::HealthTimeout {
                    service: service.to_string(),
                    pool: pool.to_string(),
                    timeout,
                    detail,
                });
            }
            let pause = if checked {
                Duration::from_millis(20)
            } else {
                interval
            };
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }
}
