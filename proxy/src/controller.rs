//! The one writer of the routing state.
//!
//! Every change (switch, rollback, pool set) goes through [`Controller::commit`]: it builds the
//! next [`LiveState`] and [`RoutingTable`] from the current ones, persists the state (temp file,
//! fsync, rename, fsync dir, on a blocking thread), and only then swaps the table in. A failed
//! write changes nothing. Writers are serialized by one async mutex; readers (the request path)
//! never take it.
//!
//! Rollouts ([`crate::rollout`]) run as tasks that call back into the controller for each step,
//! so that a rollout and a person at the CLI can never both change a service at once: while a
//! rollout runs, `switch` and `canary` are refused and `rollback` aborts the rollout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use switchback_config::{
    defaults, CanaryState, Config, LiveState, ServiceState, StateError, StateLock, StateStore,
};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::canary::BUCKETS;
use crate::health::{probe, Health, HealthRegistry, HealthState};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::rollout::{percent, Outcome, Rollout};
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
    #[error("a rollout of pool {pool:?} is running on service {service:?}: wait for it, or stop it with `switchback rollout --abort -s {service}`; nothing changed")]
    RolloutRunning { service: String, pool: String },
    #[error("no rollout is running on service {service:?}")]
    NoRollout { service: String },
    #[error("{0}")]
    BadPercent(String),
    #[error("pool {pool:?} is the active pool of service {service:?}: a canary sends clients to another pool")]
    ActivePool { service: String, pool: String },
    #[error("{0}; nothing changed")]
    BadRollout(String),
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

/// What `canary` did.
#[derive(Debug, Clone)]
pub struct CanaryOutcome {
    pub service: String,
    /// The canary pool (for `canary POOL 0`: the pool named).
    pub pool: String,
    pub active: String,
    /// The new weight in thousandths (0: no canary).
    pub permille: u32,
    /// The canary before, if any.
    pub previous: Option<(String, u32)>,
    pub generation: u64,
}

/// Which kind of change moves the active pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Switch,
    Rollback,
    /// The last step of a rollout: the only change allowed while one runs.
    Promote,
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
    pub(crate) table: Arc<ArcSwap<RoutingTable>>,
    pub(crate) live: Mutex<LiveState>,
    store: StateStore,
    registry: Arc<HealthRegistry>,
    pub(crate) metrics: Arc<Metrics>,
    notices: Vec<String>,
    /// The last rollout of each service, running or finished.
    pub(crate) rollouts: std::sync::Mutex<HashMap<String, Arc<Rollout>>>,
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
                Ok((live, restored_notices)) => {
                    for n in &restored_notices {
                        warn!("{n}");
                    }
                    notices.extend(restored_notices);
                    (live, true)
                }
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
            rollouts: Default::default(),
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

    pub(crate) fn check_pool(route: &ServiceRoute, pool: &str) -> Result<(), DeployError> {
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
    async fn commit(&self, live: &mut LiveState, next: LiveState) -> Result<u64, DeployError> {
        self.commit_inner(live, next, false).await
    }

    /// As [`Controller::commit`]; with `even_unsaved`, a failed write still makes `next` live
    /// (the error is returned after): for taking traffic off a failing canary, where serving
    /// the stable pool matters more than remembering it.
    async fn commit_inner(
        &self,
        live: &mut LiveState,
        mut next: LiveState,
        even_unsaved: bool,
    ) -> Result<u64, DeployError> {
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
        let saved = tokio::task::spawn_blocking(move || store.save(&to_save))
            .await
            .map_err(|e| DeployError::StateWrite(std::io::Error::other(e)))
            .and_then(|r| r.map_err(DeployError::StateWrite));
        if saved.is_err() && !even_unsaved {
            return saved.map(|_| 0);
        }
        self.table.store(Arc::new(table));
        let generation = next.generation;
        *live = next;
        saved.map(|_| generation)
    }

    /// Changes one service's live state through `change` and commits it.
    pub(crate) async fn update_service(
        &self,
        service: &str,
        even_unsaved: bool,
        change: impl FnOnce(&mut ServiceState),
    ) -> Result<u64, DeployError> {
        let mut live = self.live.lock().await;
        let mut next = live.clone();
        change(
            next.services
                .get_mut(service)
                .expect("services come from the config"),
        );
        self.commit_inner(&mut live, next, even_unsaved).await
    }

    /// The rollout running on `service`, if one is.
    pub fn running_rollout(&self, service: &str) -> Option<Arc<Rollout>> {
        self.rollout(service).filter(|r| r.is_running())
    }

    /// The last rollout of `service`, running or finished.
    pub fn rollout(&self, service: &str) -> Option<Arc<Rollout>> {
        self.rollouts
            .lock()
            .expect("not poisoned")
            .get(service)
            .cloned()
    }

    pub(crate) fn refuse_during_rollout(&self, service: &str) -> Result<(), DeployError> {
        match self.running_rollout(service) {
            Some(r) => Err(DeployError::RolloutRunning {
                service: service.to_string(),
                pool: r.pool.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Refuses a pool with no healthy backend, saying what each backend is doing.
    pub(crate) fn check_healthy(service: &str, target: &Pool) -> Result<(), DeployError> {
        if target.healthy_count() > 0 {
            return Ok(());
        }
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
        Err(DeployError::NoHealthyBackend {
            service: service.to_string(),
            pool: target.name.to_string(),
            detail,
        })
    }

    /// Makes `pool` the active pool of a service, ending any canary. Refuses a pool with no
    /// healthy backend unless `force`, and any switch while a rollout runs. `who` names the
    /// asker in the log.
    pub async fn switch(
        &self,
        service: Option<&str>,
        pool: &str,
        force: bool,
        who: &str,
    ) -> Result<SwitchOutcome, DeployError> {
        self.change_active(service, pool, force, who, Change::Switch)
            .await
    }

    pub(crate) async fn change_active(
        &self,
        service: Option<&str>,
        pool: &str,
        force: bool,
        who: &str,
        change: Change,
    ) -> Result<SwitchOutcome, DeployError> {
        let service = self.resolve_service(service)?;
        let mut live = self.live.lock().await;
        if change != Change::Promote {
            self.refuse_during_rollout(&service)?;
        }
        let table = self.table.load_full();
        let route = table.configured(&service);
        Self::check_pool(route, pool)?;
        let current = route.active_pool().name.to_string();
        let state = &live.services[route.name()];
        if current == pool && state.canary.is_none() && state.rollout.is_none() {
            return Ok(SwitchOutcome {
                service,
                pool: pool.to_string(),
                previous: state.previous.clone().unwrap_or_else(|| current.clone()),
                changed: false,
                generation: live.generation,
            });
        }
        if !force {
            Self::check_healthy(&service, route.pool(pool).expect("checked above"))?;
        }
        let mut next = live.clone();
        let s = next
            .services
            .get_mut(&service)
            .expect("services come from the config");
        if current != pool {
            s.previous = Some(current.clone());
        }
        s.active = pool.to_string();
        s.canary = None;
        s.rollout = None;
        let generation = self.commit(&mut live, next).await?;
        let what = match change {
            Change::Switch => "switched",
            Change::Rollback => "rolled back",
            Change::Promote => "rollout promoted",
        };
        if current != pool {
            self.metrics
                .count_switch(&service, change == Change::Rollback);
        }
        info!(service = %service, pool = %pool, previous = %current, generation, by = %who, "{what}");
        Ok(SwitchOutcome {
            service,
            pool: pool.to_string(),
            previous: current,
            changed: true,
            generation,
        })
    }

    /// Undoes the last change: a running rollout is aborted, a canary is ended (every client
    /// back on the active pool), else the pool that was active before the last switch comes
    /// back.
    pub async fn rollback(
        &self,
        service: Option<&str>,
        force: bool,
        who: &str,
    ) -> Result<SwitchOutcome, DeployError> {
        let service = self.resolve_service(service)?;
        if let Some(rollout) = self.running_rollout(&service) {
            rollout.abort(format!("rollback by {who}"));
            let result = rollout.finished().await;
            return Ok(SwitchOutcome {
                service,
                pool: rollout.stable.clone(),
                previous: rollout.pool.clone(),
                changed: result.outcome != Outcome::Promoted,
                generation: result.generation,
            });
        }
        let canary = self.live.lock().await.services[&service].canary.clone();
        if let Some(canary) = canary {
            let ended = self.set_canary(Some(&service), &canary.pool, 0, false, who);
            let o = ended.await?;
            self.metrics.count_canary_rollback(&service);
            return Ok(SwitchOutcome {
                service,
                pool: o.active,
                previous: canary.pool,
                changed: true,
                generation: o.generation,
            });
        }
        let previous = self.live.lock().await.services[&service].previous.clone();
        let previous = previous.ok_or(DeployError::NoPreviousPool {
            service: service.clone(),
        })?;
        self.change_active(Some(&service), &previous, force, who, Change::Rollback)
            .await
    }

    /// Sends `permille` thousandths of a service's clients to `pool` (0 ends the canary).
    /// Refuses the active pool, a pool with no healthy backend (unless `force`), and any
    /// change while a rollout runs.
    pub async fn set_canary(
        &self,
        service: Option<&str>,
        pool: &str,
        permille: u32,
        force: bool,
        who: &str,
    ) -> Result<CanaryOutcome, DeployError> {
        let service = self.resolve_service(service)?;
        if permille > BUCKETS {
            return Err(DeployError::BadPercent(format!(
                "{}% is out of range: use 0 to 100",
                percent(permille)
            )));
        }
        let mut live = self.live.lock().await;
        self.refuse_during_rollout(&service)?;
        let table = self.table.load_full();
        let route = table.configured(&service);
        Self::check_pool(route, pool)?;
        let active = route.active_pool().name.to_string();
        if permille > 0 && active == pool {
            return Err(DeployError::ActivePool {
                service,
                pool: pool.to_string(),
            });
        }
        if permille > 0 && !force {
            Self::check_healthy(&service, route.pool(pool).expect("checked above"))?;
        }
        let previous = live.services[&service]
            .canary
            .as_ref()
            .map(|c| (c.pool.clone(), c.permille));
        let wanted = (permille > 0).then(|| CanaryState {
            pool: pool.to_string(),
            permille,
        });
        if live.services[&service].canary == wanted {
            return Ok(CanaryOutcome {
                service,
                pool: pool.to_string(),
                active,
                permille,
                previous,
                generation: live.generation,
            });
        }
        let mut next = live.clone();
        next.services
            .get_mut(&service)
            .expect("services come from the config")
            .canary = wanted;
        let generation = self.commit(&mut live, next).await?;
        info!(service = %service, pool = %pool, percent = percent(permille), stable = %active, generation, by = %who, "canary set");
        Ok(CanaryOutcome {
            service,
            pool: pool.to_string(),
            active,
            permille,
            previous,
            generation,
        })
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
            let route = table.configured(&service);
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
