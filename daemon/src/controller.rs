//! The one writer of the routing state.
//!
//! Every change (switch, rollback, canary, pool set, a rollout's steps) goes through
//! [`Controller::commit`]: it builds the next [`LiveState`] and [`RoutingTable`] from the
//! current ones, persists the state (temp file, fsync, rename, fsync dir, on a blocking
//! thread), and only then swaps the table in. A failed write changes nothing. Writers are
//! serialized by one async mutex; readers (the request path) never take it.
//!
//! Rollouts keep a handle here ([`Rollout`]) so that a rollout and a person at the CLI can never
//! both change a service at once: while one runs, `switch` and `canary` are refused and
//! `rollback` aborts it. The task that drives a rollout ([`crate::drive`]) changes the state
//! through the public methods below, like any other caller.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use switchback_config::{
    applied_config, plan_reload, CanaryState, Config, LiveState, RolloutMark, ServiceState,
    StateError, StateLock, StateStore, Target,
};
use switchback_proxy::health::HealthState;
use switchback_proxy::names::Resolved;
use switchback_proxy::split::BUCKETS;
use switchback_proxy::{HealthRegistry, Metrics, Pool, RoutingTable, ServiceRoute};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::change::{
    CanaryOutcome, DeployError, PoolSetOutcome, ReloadOutcome, StartError, SwitchOutcome,
};
use crate::fleet::{Fleet, Follower};
use crate::health_check::wait_healthy;
use crate::judge::{percent, RolloutSpec};
use crate::rollout::{Outcome, Rollout, RolloutResult};

/// Which kind of change moves the active pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Switch,
    Rollback,
    /// The last step of a rollout: the only change allowed while one runs.
    Promote,
}

/// Whether a change that could not be persisted still goes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsaved {
    /// Nothing changes: the default for every change asked for.
    Refuse,
    /// Serve it anyway and report the failed write: for taking traffic off a failing canary,
    /// where serving the stable pool matters more than remembering it.
    ServeAnyway,
}

pub struct Controller {
    /// The config running now: replaced whole by a reload.
    config: ArcSwap<Config>,
    /// Bumped by every reload, for the services that set themselves up from the config.
    reloads: tokio::sync::watch::Sender<u64>,
    table: Arc<ArcSwap<RoutingTable>>,
    live: Mutex<LiveState>,
    /// What `live` holds, for readers that cannot wait for its lock (status).
    published: ArcSwap<LiveState>,
    /// The last answer for every host name the live state gives a backend by; changed under
    /// the `live` lock only, so that a table is always built from a state and its answers.
    resolved: ArcSwap<Resolved>,
    store: StateStore,
    registry: Arc<HealthRegistry>,
    metrics: Arc<Metrics>,
    notices: Vec<String>,
    /// The last rollout of each service, running or finished.
    rollouts: std::sync::Mutex<HashMap<String, Arc<Rollout>>>,
    /// Set while an upgrade hands the process over: no change is written any more (the new
    /// process owns the state from its start).
    frozen: std::sync::atomic::AtomicBool,
    lock: StateLock,
    /// Fleet mode: every change goes through etcd first (see [`crate::fleet`]).
    fleet: Option<Arc<Fleet>>,
}

/// The environment variable that hands an upgrade's new process the state dir's lock: the
/// number of the descriptor, inherited, that holds it.
pub const STATE_LOCK_FD_ENV: &str = "SWITCHBACK_STATE_LOCK_FD";

fn inherited_lock() -> Option<std::os::unix::io::RawFd> {
    std::env::var(STATE_LOCK_FD_ENV).ok()?.parse().ok()
}

impl Controller {
    /// Takes the state dir, restores the saved state over the config (setting an untrustworthy
    /// state file aside, with a notice), and builds the first routing table.
    pub fn start(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Controller, StartError> {
        let store = StateStore::new(&config.state.dir);
        let state_dir = |source| StartError::StateDir {
            dir: config.state.dir.clone(),
            source,
        };
        store.prepare().map_err(state_dir)?;
        let lock = match inherited_lock() {
            Some(fd) => store.adopt_lock(fd)?,
            None => store.lock()?,
        };
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
                    notices.push(format!(
                        "the state file {} does not match the config ({reason})",
                        store.path().display()
                    ));
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
            let kept = store.set_aside().map_err(state_dir)?;
            let last = notices.pop().unwrap_or_default();
            let notice = format!(
                "{last}; it was set aside as {} and the config file's state is live",
                kept.display()
            );
            warn!("{notice}");
            notices.push(notice);
        }
        store.save(&live).map_err(state_dir)?;
        let registry = Arc::new(HealthRegistry::default());
        // Names are looked up after the start (see `apply_names`): until then, a backend given
        // by name stands for no address.
        let resolved = Resolved::default();
        let table = RoutingTable::build(&config, &live, &resolved, None, &registry, &metrics);
        let fleet = match &config.fleet {
            Some(f) => {
                let secret =
                    crate::fleet::read_key_file(&f.key_file).map_err(StartError::FleetKey)?;
                Some(Arc::new(Fleet::new(f.clone(), &secret)))
            }
            None => None,
        };
        Ok(Controller {
            config: ArcSwap::new(config),
            reloads: tokio::sync::watch::Sender::new(0),
            table: Arc::new(ArcSwap::from_pointee(table)),
            published: ArcSwap::from_pointee(live.clone()),
            live: Mutex::new(live),
            resolved: ArcSwap::from_pointee(resolved),
            store,
            registry,
            metrics,
            notices,
            rollouts: Default::default(),
            frozen: Default::default(),
            lock,
            fleet,
        })
    }

    /// Fleet mode: this node's link to the fleet.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// Fleet mode: this node's name.
    pub fn fleet_node(&self) -> Option<String> {
        self.fleet.as_ref().map(|f| f.node().to_string())
    }

    /// Fleet mode: waits until every connected node serves `generation`, or names the nodes
    /// that lag after `fleet.ack_timeout`. Without a fleet, returns at once.
    pub async fn wait_fleet(&self, generation: u64) -> Result<(), DeployError> {
        match &self.fleet {
            Some(fleet) => fleet.wait_applied(generation).await,
            None => Ok(()),
        }
    }

    /// Fleet mode: refuses a change to a service whose rollout another node drives (or a
    /// rollout of this node's that no longer runs: it is ended by [`Follower::end_orphans`]).
    fn refuse_remote_rollout(&self, live: &LiveState, service: &str) -> Result<(), DeployError> {
        if self.fleet.is_none() || self.running_rollout(service).is_some() {
            return Ok(());
        }
        match live.services.get(service).and_then(|s| s.rollout.as_ref()) {
            Some(mark) => Err(DeployError::RemoteRollout {
                service: service.to_string(),
                pool: mark.pool.clone(),
                node: mark.node.clone().unwrap_or_default(),
            }),
            None => Ok(()),
        }
    }

    /// The descriptor that holds the state dir's lock.
    pub fn state_lock_fd(&self) -> std::os::unix::io::RawFd {
        self.lock.raw_fd()
    }

    /// Stops (or, with `false`, resumes) every change: while an upgrade's new process starts,
    /// it is the one that writes the state.
    pub fn freeze(&self, frozen: bool) {
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }

    /// The config running now.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Changes with every reload: for what sets itself up from the config (health checks).
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
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

    pub fn state_path(&self) -> PathBuf {
        self.store.path()
    }

    /// A copy of the live state, as last persisted.
    pub async fn live_state(&self) -> LiveState {
        self.live.lock().await.clone()
    }

    /// The generation of the live state.
    pub async fn generation(&self) -> u64 {
        self.live.lock().await.generation
    }

    /// The service a command is about: the one named, or the only one.
    /// The last answer for every host name a backend is given by.
    pub fn resolved(&self) -> Arc<Resolved> {
        self.resolved.load_full()
    }

    /// Every host name a backend of the live state is given by.
    pub async fn names_in_use(&self) -> Vec<String> {
        names_of(&*self.live.lock().await)
    }

    /// Takes new answers for host names: when an address came or went, the table is built
    /// again (the same generation: the state did not change) and swapped in. Requests in flight
    /// finish on the backends they have; a backend whose address stays keeps its health.
    /// Answers for names no longer in use are dropped. Returns whether any address changed.
    pub async fn apply_names(&self, answers: &Resolved) -> bool {
        let live = self.live.lock().await;
        let in_use = names_of(&live);
        let before = self.resolved.load_full();
        let mut next = Resolved::default();
        for host in &in_use {
            if let Some(answer) = answers.get(host).or_else(|| before.get(host)) {
                next.insert(host.clone(), answer.clone());
            }
        }
        if next == *before {
            return false;
        }
        let moved = in_use.iter().any(|host| {
            let addrs = |r: &Resolved| r.get(host).map(|a| a.addrs.clone()).unwrap_or_default();
            addrs(&next) != addrs(&before)
        });
        for host in &in_use {
            let (old, new) = (before.get(host), next.get(host));
            if old.map(|a| &a.addrs) != new.map(|a| &a.addrs) {
                let list = |a: Option<&switchback_proxy::names::Answer>| {
                    a.map(|a| a.addrs.iter().map(ToString::to_string).collect::<Vec<_>>())
                        .unwrap_or_default()
                };
                match new.and_then(|a| a.error.as_deref()) {
                    Some(e) if new.is_some_and(|a| a.addrs.is_empty()) => {
                        warn!(name = %host, was = ?list(old), "backend name {e}; its backends are out of service until it resolves")
                    }
                    _ => {
                        info!(name = %host, addresses = ?list(new), was = ?list(old), "backend name resolved")
                    }
                }
            } else if let Some(e) = new.and_then(|a| a.error.as_deref()) {
                if old.and_then(|a| a.error.as_deref()) != Some(e) {
                    warn!(name = %host, error = %e, "backend name: keeping the last addresses");
                }
            }
        }
        self.resolved.store(Arc::new(next));
        if moved {
            let table = self.next_table(&live);
            let before = self.table.swap(Arc::new(table));
            self.forget_departed(&before);
        }
        moved
    }

    /// The table for `state` with the running config and the last answers for names, reusing
    /// what the live table has of it.
    fn next_table(&self, state: &LiveState) -> RoutingTable {
        RoutingTable::build(
            &self.config.load(),
            state,
            &self.resolved.load(),
            Some(&self.table.load()),
            &self.registry,
            &self.metrics,
        )
    }

    /// Drops from the metrics every backend `before` had that the live table no longer has
    /// in the same service and pool.
    fn forget_departed(&self, before: &RoutingTable) {
        let now = self.table.load();
        for old in &before.services {
            for pool in &old.pools {
                let kept = now
                    .service(old.name())
                    .and_then(|s| s.pool(&pool.name))
                    .map(|p| p.addresses())
                    .unwrap_or_default();
                for addr in pool.addresses().iter().filter(|a| !kept.contains(a)) {
                    self.metrics
                        .forget_backend(old.name(), &pool.name, &addr.to_string());
                }
            }
        }
    }

    /// Adds `answers` to the ones a table is built with; the caller holds the `live` lock.
    fn take_answers(&self, answers: &Resolved) {
        if answers.is_empty() {
            return;
        }
        let mut resolved = Resolved::clone(&self.resolved.load());
        for (host, answer) in answers.hosts() {
            resolved.insert(host.to_string(), answer.clone());
        }
        self.resolved.store(Arc::new(resolved));
    }

    pub fn resolve_service(&self, name: Option<&str>) -> Result<String, DeployError> {
        let config = self.config.load();
        let known = || {
            config
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(n) if config.service(n).is_some() => Ok(n.to_string()),
            Some(n) => Err(DeployError::UnknownService {
                name: n.to_string(),
                known: known(),
            }),
            None => {
                // Redirects have no pools to change: the one service with pools is meant.
                let mut with_pools = config.services.iter().filter(|s| s.redirect.is_none());
                match (with_pools.next(), with_pools.next()) {
                    (Some(only), None) => Ok(only.name.clone()),
                    _ => Err(DeployError::ServiceRequired { known: known() }),
                }
            }
        }
    }

    /// The rollout running on `service`, if one is.
    pub fn running_rollout(&self, service: &str) -> Option<Arc<Rollout>> {
        self.rollout(service).filter(|r| r.is_running())
    }

    /// The last rollout of `service`, running or finished.
    pub fn rollout(&self, service: &str) -> Option<Arc<Rollout>> {
        self.rollouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
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
        let service = self.resolve_service(service)?;
        self.change_active(&service, pool, force, who, Change::Switch)
            .await
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
                moved_from: rollout.pool.clone(),
                changed: result.outcome != Outcome::Promoted,
                generation: result.generation,
            });
        }
        let (canary, rollback_to) = {
            let live = self.live.lock().await;
            self.refuse_remote_rollout(&live, &service)?;
            let s = live
                .services
                .get(&service)
                .ok_or_else(|| unknown(&service))?;
            (s.canary.clone(), s.rollback_to.clone())
        };
        if let Some(canary) = canary {
            let ended = self
                .set_canary(Some(&service), &canary.pool, 0, false, who)
                .await?;
            self.metrics.count_canary_rollback(&service);
            return Ok(SwitchOutcome {
                service,
                pool: ended.active,
                moved_from: canary.pool,
                changed: true,
                generation: ended.generation,
            });
        }
        let Some(rollback_to) = rollback_to else {
            return Err(DeployError::NothingToRollBackTo { service });
        };
        self.change_active(&service, &rollback_to, force, who, Change::Rollback)
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
            return Err(DeployError::BadPercent { permille });
        }
        let mut live = self.live.lock().await;
        self.refuse_during_rollout(&service)?;
        self.refuse_remote_rollout(&live, &service)?;
        let table = self.table.load_full();
        let route = route(&table, &service)?;
        let target = Self::pool_of(route, pool)?;
        let active = route.active_pool().name.to_string();
        if permille > 0 && active == pool {
            return Err(DeployError::ActivePool {
                service,
                pool: pool.to_string(),
            });
        }
        if permille > 0 && !force {
            Self::check_healthy(&service, target)?;
        }
        let current = live
            .services
            .get(&service)
            .ok_or_else(|| unknown(&service))?
            .canary
            .clone();
        let replaced = current.as_ref().map(|c| (c.pool.clone(), c.permille));
        let wanted = (permille > 0).then(|| CanaryState {
            pool: pool.to_string(),
            permille,
        });
        let generation = if current == wanted {
            live.generation
        } else {
            let mut next = live.clone();
            service_mut(&mut next, &service)?.canary = wanted;
            let generation = self.commit(&mut live, next, Unsaved::Refuse).await?;
            info!(service = %service, pool = %pool, percent = percent(permille), stable = %active, generation, by = %who, "canary set");
            generation
        };
        Ok(CanaryOutcome {
            service,
            pool: pool.to_string(),
            active,
            permille,
            replaced,
            generation,
        })
    }

    /// Replaces the backends of a pool. With `wait`, the new backends must first pass their
    /// health checks within that time, or nothing changes.
    pub async fn set_pool(
        &self,
        service: Option<&str>,
        pool: &str,
        backends: Vec<Target>,
        wait: Option<Duration>,
        who: &str,
        mut on_progress: impl FnMut(usize, usize),
    ) -> Result<PoolSetOutcome, DeployError> {
        let service = self.resolve_service(service)?;
        Self::pool_of(route(&self.table.load(), &service)?, pool)?;
        if backends.is_empty() {
            return Err(DeployError::BadAddress("no backend given".into()));
        }
        // New names are looked up now, not at the next round: a deploy names containers that
        // just started.
        let hosts: Vec<String> = backends
            .iter()
            .filter_map(|t| t.host().map(str::to_string))
            .collect();
        let looked_up = if hosts.is_empty() {
            Resolved::default()
        } else {
            let config = self.config.load_full();
            crate::names::lookup(&config.resolver, &hosts, &self.resolved.load())
                .await
                .answers
        };
        // Held until the new table holds them too, so the checker keeps probing them.
        let mut held: Vec<Arc<HealthState>> = Vec::new();
        if let Some(timeout) = wait {
            for (host, answer) in looked_up.hosts() {
                if answer.addrs.is_empty() {
                    return Err(DeployError::BadAddress(format!(
                        "{host} {}: nothing to wait for",
                        answer.error.as_deref().unwrap_or("does not resolve")
                    )));
                }
            }
            let expanded = looked_up.expand(&backends);
            let addrs: Vec<_> = expanded.iter().map(|(a, _)| *a).collect();
            let config = self.config.load_full();
            let config = config.service(&service).ok_or_else(|| unknown(&service))?;
            // Named before the wait, so that its probes already ask for the name.
            for (addr, from) in &expanded {
                if let Some(from) = from {
                    let state = self.registry.get(&service, *addr, config.health.is_some());
                    state.name_host(&from.to_string().into());
                    held.push(state);
                }
            }
            held = wait_healthy(&self.registry, config, &addrs, timeout, &mut on_progress)
                .await
                .map_err(|e| DeployError::HealthTimeout {
                    service: service.clone(),
                    pool: pool.to_string(),
                    timeout: e.timeout,
                    detail: e.detail,
                })?;
        }
        let mut live = self.live.lock().await;
        let mut next = live.clone();
        let p = service_mut(&mut next, &service)?
            .pools
            .get_mut(pool)
            .ok_or_else(|| DeployError::UnknownPool {
                service: service.clone(),
                pool: pool.to_string(),
                known: String::new(),
            })?;
        let replaced_backends = std::mem::replace(&mut p.backends, backends.clone());
        let unresolved = backends
            .iter()
            .filter_map(|t| {
                let answer = looked_up.get(t.host()?)?;
                answer.addrs.is_empty().then(|| {
                    format!(
                        "{t} {}",
                        answer.error.as_deref().unwrap_or("does not resolve")
                    )
                })
            })
            .collect();
        self.take_answers(&looked_up);
        let generation = self.commit(&mut live, next, Unsaved::Refuse).await?;
        drop(held);
        info!(service = %service, pool = %pool, backends = ?backends, replaced = ?replaced_backends, generation, by = %who, "pool backends replaced");
        Ok(PoolSetOutcome {
            service,
            pool: pool.to_string(),
            backends,
            replaced_backends,
            generation,
            unresolved,
        })
    }

    /// Checks and registers a rollout of `pool` on a service. The caller drives it (see
    /// [`crate::drive`]); until it ends, `switch` and `canary` are refused on the service.
    pub async fn begin_rollout(
        &self,
        service: Option<&str>,
        pool: &str,
        spec: RolloutSpec,
        force: bool,
    ) -> Result<Arc<Rollout>, DeployError> {
        let service = self.resolve_service(service)?;
        spec.check()?;
        if !self.metrics.enabled {
            return Err(DeployError::MetricsOff);
        }
        let live = self.live.lock().await;
        self.refuse_during_rollout(&service)?;
        self.refuse_remote_rollout(&live, &service)?;
        let table = self.table.load_full();
        let route = route(&table, &service)?;
        let target = Self::pool_of(route, pool)?;
        let stable = route.active_pool().name.to_string();
        if stable == pool {
            return Err(DeployError::ActivePool {
                service,
                pool: pool.to_string(),
            });
        }
        if !force {
            Self::check_healthy(&service, target)?;
        }
        let rollout = Arc::new(Rollout::new(
            service.clone(),
            pool.to_string(),
            stable,
            spec,
        ));
        self.rollouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service, rollout.clone());
        Ok(rollout)
    }

    /// Puts a rollout's step live: `permille` of the clients on its pool, marked in the state
    /// so that a restart knows a rollout was under way.
    pub async fn set_rollout_step(
        &self,
        rollout: &Rollout,
        permille: u32,
        mark: RolloutMark,
    ) -> Result<u64, DeployError> {
        let mut live = self.live.lock().await;
        let mut next = live.clone();
        let s = service_mut(&mut next, &rollout.service)?;
        s.canary = Some(CanaryState {
            pool: rollout.pool.clone(),
            permille,
        });
        s.rollout = Some(mark);
        self.commit(&mut live, next, Unsaved::Refuse).await
    }

    /// The end of a rollout that passed: its pool becomes the active pool.
    pub async fn promote(&self, rollout: &Rollout) -> Result<SwitchOutcome, DeployError> {
        self.change_active(
            &rollout.service,
            &rollout.pool,
            true,
            "rollout",
            Change::Promote,
        )
        .await
    }

    /// Sends every client of a rollout's service back to the stable pool, and counts the
    /// rollback. Goes live even when the state cannot be written (the error says so).
    pub async fn return_to_stable(&self, rollout: &Rollout) -> Result<u64, DeployError> {
        self.metrics.count_canary_rollback(&rollout.service);
        let mut live = self.live.lock().await;
        let mut next = live.clone();
        let s = service_mut(&mut next, &rollout.service)?;
        s.canary = None;
        s.rollout = None;
        self.commit(&mut live, next, Unsaved::ServeAnyway).await
    }

    /// Asks the rollout running on a service to stop and roll back, and waits until it has.
    pub async fn abort_rollout(
        &self,
        service: Option<&str>,
        who: &str,
    ) -> Result<(Arc<Rollout>, RolloutResult), DeployError> {
        let service = self.resolve_service(service)?;
        let rollout = self
            .running_rollout(&service)
            .ok_or(DeployError::NoRollout { service })?;
        rollout.abort(format!("aborted by {who}"));
        let result = rollout.finished().await;
        Ok((rollout, result))
    }

    fn refuse_during_rollout(&self, service: &str) -> Result<(), DeployError> {
        match self.running_rollout(service) {
            Some(r) => Err(DeployError::RolloutRunning {
                service: service.to_string(),
                pool: r.pool.clone(),
            }),
            None => Ok(()),
        }
    }

    async fn change_active(
        &self,
        service: &str,
        pool: &str,
        force: bool,
        who: &str,
        change: Change,
    ) -> Result<SwitchOutcome, DeployError> {
        let mut live = self.live.lock().await;
        if change != Change::Promote {
            self.refuse_during_rollout(service)?;
            self.refuse_remote_rollout(&live, service)?;
        }
        let table = self.table.load_full();
        let route = route(&table, service)?;
        let target = Self::pool_of(route, pool)?;
        let current = route.active_pool().name.to_string();
        let state = live.services.get(service).ok_or_else(|| unknown(service))?;
        if current == pool && state.canary.is_none() && state.rollout.is_none() {
            return Ok(SwitchOutcome {
                service: service.to_string(),
                pool: pool.to_string(),
                moved_from: state.rollback_to.clone().unwrap_or_else(|| current.clone()),
                changed: false,
                generation: live.generation,
            });
        }
        if !force {
            Self::check_healthy(service, target)?;
        }
        let mut next = live.clone();
        let s = service_mut(&mut next, service)?;
        if current != pool {
            s.rollback_to = Some(current.clone());
        }
        s.active = pool.to_string();
        s.canary = None;
        s.rollout = None;
        let generation = self.commit(&mut live, next, Unsaved::Refuse).await?;
        let what = match change {
            Change::Switch => "switched",
            Change::Rollback => "rolled back",
            Change::Promote => "rollout promoted",
        };
        if current != pool {
            self.metrics
                .count_switch(service, change == Change::Rollback);
        }
        info!(service = %service, pool = %pool, previous = %current, generation, by = %who, "{what}");
        Ok(SwitchOutcome {
            service: service.to_string(),
            pool: pool.to_string(),
            moved_from: current,
            changed: true,
            generation,
        })
    }

    /// Applies a new config file, checked whole by the caller: its routing becomes one new
    /// table generation; the live choices it still has room for stay (see
    /// [`switchback_config::reload`]). A reload that removes a pool in use is refused unless
    /// `force`, which first ends the rollouts it would break. Requests in flight finish on the
    /// table they started with.
    pub async fn reload(
        &self,
        new: Config,
        force: bool,
        who: &str,
    ) -> Result<ReloadOutcome, DeployError> {
        if force {
            // Rollouts end outside the state lock: their last step takes it.
            let plan = {
                let live = self.live.lock().await;
                self.plan(&new, &live, true)?
            };
            for service in &plan.ends_rollouts {
                if let Some(rollout) = self.running_rollout(service) {
                    rollout.abort(format!("ended by a forced reload ({who})"));
                    rollout.finished().await;
                }
            }
        }
        // Names the new file brings are looked up before it goes live, so that their pools do
        // not wait for the next round.
        let new_hosts: Vec<String> = {
            let resolved = self.resolved.load();
            new.backend_names()
                .iter()
                .filter_map(|t| t.host())
                .filter(|h| resolved.get(h).is_none())
                .map(str::to_string)
                .collect()
        };
        let looked_up = if new_hosts.is_empty() {
            Resolved::default()
        } else {
            crate::names::lookup(&new.resolver, &new_hosts, &Resolved::default())
                .await
                .answers
        };
        let mut live = self.live.lock().await;
        let plan = self.plan(&new, &live, force)?;
        if let Some(service) = plan.ends_rollouts.first() {
            // A rollout began again meanwhile.
            return Err(DeployError::ReloadRefused(vec![format!(
                "a rollout started on service {service:?} during the reload; try again"
            )]));
        }
        let running = self.config.load_full();
        let applied = applied_config(&running, new);
        if applied == *running {
            info!(needs_upgrade = ?plan.needs_upgrade, by = %who, "config reloaded: nothing changed");
            return Ok(ReloadOutcome {
                config_file: running.source.clone(),
                changes: Vec::new(),
                needs_upgrade: plan.needs_upgrade,
                generation: live.generation,
            });
        }
        let old = self.config.swap(Arc::new(applied));
        self.take_answers(&looked_up);
        let generation = match self.commit(&mut live, plan.state, Unsaved::Refuse).await {
            Ok(generation) => generation,
            Err(e) => {
                self.config.store(old);
                return Err(e);
            }
        };
        self.reloads.send_modify(|n| *n += 1);
        info!(generation, changes = ?plan.changes, needs_upgrade = ?plan.needs_upgrade, by = %who, "config reloaded");
        Ok(ReloadOutcome {
            config_file: self.config.load().source.clone(),
            changes: plan.changes,
            needs_upgrade: plan.needs_upgrade,
            generation,
        })
    }

    /// The reload of `new` over the running config and `live`, counting a rollout that was
    /// started but has not marked its first step yet as running.
    fn plan(
        &self,
        new: &Config,
        live: &LiveState,
        force: bool,
    ) -> Result<switchback_config::ReloadPlan, DeployError> {
        let mut seen = live.clone();
        for (service, state) in seen.services.iter_mut() {
            if let (None, Some(rollout)) = (&state.rollout, self.running_rollout(service)) {
                state.rollout = Some(RolloutMark {
                    pool: rollout.pool.clone(),
                    step: 0,
                    steps: 0,
                    started: 0,
                    node: None,
                });
            }
        }
        let mut plan = plan_reload(&self.config.load(), new, &seen, force)
            .map_err(DeployError::ReloadRefused)?;
        for (service, state) in plan.state.services.iter_mut() {
            if live
                .services
                .get(service)
                .is_none_or(|s| s.rollout.is_none())
            {
                state.rollout = None;
            }
        }
        Ok(plan)
    }

    /// Persists `next`, then makes it live. On a failed write nothing changes, unless
    /// `unsaved` says to serve it anyway (the error is returned after).
    async fn commit(
        &self,
        live: &mut LiveState,
        mut next: LiveState,
        unsaved: Unsaved,
    ) -> Result<u64, DeployError> {
        if self.frozen.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(DeployError::Upgrading);
        }
        if let Some(fleet) = &self.fleet {
            let (state, revision) = match fleet.write(live, &next).await {
                Ok(written) => written,
                Err(e) if unsaved == Unsaved::ServeAnyway => {
                    // Taking traffic off a failing canary matters more than the fleet
                    // agreeing: this node serves it, and the fleet's state wins again when
                    // the node reads it next.
                    next.generation = live.generation;
                    let _ = self.install(live, next, Unsaved::ServeAnyway).await;
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            self.adopt_fleet(fleet, live, state, revision).await;
            return Ok(live.generation);
        }
        next.generation = live.generation + 1;
        self.install(live, next, unsaved).await?;
        Ok(live.generation)
    }

    /// Makes the fleet's `state` (at `revision`) this node's, as far as its config has the
    /// pools it names; the caller holds the `live` lock. In fleet mode the state file is the
    /// last state applied, for a start while etcd is down: a failed write of it is logged, and
    /// the state served anyway.
    async fn adopt_fleet(
        &self,
        fleet: &Fleet,
        live: &mut LiveState,
        state: LiveState,
        revision: i64,
    ) {
        let config = self.config.load_full();
        let (fitted, problems) = live.adopt(&config, &state);
        for problem in &problems {
            warn!(
                generation = state.generation,
                "fleet state: {problem}; that service keeps what it had here"
            );
        }
        if fitted != *live {
            if let Err(e) = self.install(live, fitted, Unsaved::ServeAnyway).await {
                warn!(error = %e, "fleet state applied, but not saved to the state file");
            }
        }
        let error = (!problems.is_empty()).then(|| problems.join("; "));
        fleet.note_applied(state, revision, error);
    }

    /// Persists `next`, then makes it live (its generation as it is). On a failed write
    /// nothing changes, unless `unsaved` says to serve it anyway (the error is returned after).
    async fn install(
        &self,
        live: &mut LiveState,
        next: LiveState,
        unsaved: Unsaved,
    ) -> Result<(), DeployError> {
        let table = self.next_table(&next);
        let store = self.store.clone();
        let to_save = next.clone();
        let saved = tokio::task::spawn_blocking(move || store.save(&to_save))
            .await
            .map_err(|e| DeployError::StateWrite(std::io::Error::other(e)))
            .and_then(|r| r.map_err(DeployError::StateWrite));
        if saved.is_err() && unsaved == Unsaved::Refuse {
            return saved;
        }
        let before = self.table.swap(Arc::new(table));
        self.drain_left_pools(&before);
        self.forget_departed(&before);
        self.published.store(Arc::new(next.clone()));
        *live = next;
        saved
    }

    /// The live state as last made live, without waiting for a change in progress.
    pub fn state_now(&self) -> Arc<LiveState> {
        self.published.load_full()
    }

    /// Fleet mode: ends, on the stable pool, every rollout whose driving node is gone from
    /// the fleet (its lease ended) or no longer runs it (it restarted).
    pub async fn end_orphan_rollouts(&self, fleet: &Fleet) {
        let nodes = fleet.nodes();
        let mut live = self.live.lock().await;
        let orphans: Vec<(String, RolloutMark)> = live
            .services
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.rollout.clone()?)))
            .filter(|(name, mark)| {
                let driver = mark.node.as_deref().unwrap_or_default();
                if driver == fleet.node() {
                    return self.running_rollout(name).is_none();
                }
                !nodes.iter().any(|n| n.name == driver && n.connected)
            })
            .collect();
        for (service, mark) in orphans {
            let mut next = live.clone();
            if let Ok(s) = service_mut(&mut next, &service) {
                s.canary = None;
                s.rollout = None;
            }
            match self.commit(&mut live, next, Unsaved::Refuse).await {
                Ok(generation) => {
                    self.metrics.count_canary_rollback(&service);
                    warn!(service = %service, pool = %mark.pool, driver = ?mark.node, step = mark.step, steps = mark.steps, generation, "the node driving a rollout left the fleet: the rollout ended, every client is on the stable pool")
                }
                // Another node ended it first, or etcd went away: the next look decides.
                Err(e) => {
                    info!(service = %service, error = %e, "an orphaned rollout was not ended here")
                }
            }
        }
    }

    /// For every pool that took new requests in `before` and takes none now (a switch, a
    /// rollback, a canary ended, a rollout promoted or rolled back, a forced reload), a task
    /// that closes its long-lived connections once the service's drain timeout passes, unless
    /// the pool serves again by then (see [`crate::drain`]).
    fn drain_left_pools(&self, before: &RoutingTable) {
        let now = self.table.load();
        for old in &before.services {
            let Some(route) = now.service(old.name()) else {
                continue;
            };
            for (i, pool) in old.pools.iter().enumerate() {
                let left = serves(old, i)
                    && route
                        .pool_index(&pool.name)
                        .is_some_and(|j| !serves(route, j));
                // A request still in flight may yet be upgraded (its 101 not back yet): it is
                // watched too.
                let idle = pool.stats.in_flight() == 0 && pool.stats.long_lived.count() == 0;
                if !left || idle {
                    continue;
                }
                let plan = crate::drain::DrainPlan {
                    timeout: route.config.drain_timeout,
                    long_lived: route.config.long_lived,
                };
                let (table, service, pool) = (
                    self.table.clone(),
                    old.name().to_string(),
                    pool.name.to_string(),
                );
                tokio::spawn(async move {
                    let still_left = || {
                        let t = table.load();
                        let Some(route) = t.service(&service) else {
                            return true;
                        };
                        route.pool_index(&pool).is_none_or(|j| !serves(route, j))
                    };
                    let d = crate::drain::wait_drain(
                        &table.load(),
                        &service,
                        &pool,
                        plan,
                        still_left,
                        |_, _| {},
                    )
                    .await;
                    if d.closed > 0 {
                        info!(
                            service = %service,
                            pool = %pool,
                            closed = d.closed,
                            "drain timeout passed: long-lived connections closed"
                        );
                    }
                });
            }
        }
    }

    fn pool_of<'a>(route: &'a ServiceRoute, pool: &str) -> Result<&'a Arc<Pool>, DeployError> {
        route.pool(pool).ok_or_else(|| DeployError::UnknownPool {
            service: route.name().to_string(),
            pool: pool.to_string(),
            known: if route.redirect.is_some() {
                "none: it answers every request with its redirect".to_string()
            } else {
                route
                    .pools
                    .iter()
                    .map(|p| p.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
    }

    /// Refuses a pool with no healthy backend, saying what each backend is doing.
    fn check_healthy(service: &str, target: &Pool) -> Result<(), DeployError> {
        if target.healthy_count() > 0 {
            return Ok(());
        }
        let detail =
            if target.backends.is_empty() && target.targets.iter().any(|t| t.host().is_some()) {
                format!(
                    "its backends {} resolve to no address yet",
                    target
                        .targets
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else if target.backends.is_empty() {
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
}

/// Every host name a backend of `live` is given by, sorted, once each.
fn names_of(live: &LiveState) -> Vec<String> {
    let mut hosts: Vec<String> = live
        .services
        .values()
        .flat_map(|s| s.pools.values())
        .flat_map(|p| &p.backends)
        .filter_map(|t| t.host().map(str::to_string))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// One service's state in `next`; every service of the config has one (a reload may have
/// removed the service since the request named it).
fn service_mut<'a>(
    next: &'a mut LiveState,
    service: &str,
) -> Result<&'a mut ServiceState, DeployError> {
    next.services
        .get_mut(service)
        .ok_or_else(|| unknown(service))
}

/// A service's routes in `table`.
fn route<'a>(table: &'a RoutingTable, service: &str) -> Result<&'a ServiceRoute, DeployError> {
    table.service(service).ok_or_else(|| unknown(service))
}

/// A service a reload removed while a request about it waited.
fn unknown(service: &str) -> DeployError {
    DeployError::UnknownService {
        name: service.to_string(),
        known: "it was removed by a reload".to_string(),
    }
}

/// Whether pool `index` of `route` takes new requests: it is active, or the canary.
pub(crate) fn serves(route: &ServiceRoute, index: usize) -> bool {
    route.split.active == index || route.split.canary.is_some_and(|c| c.pool == index)
}

#[async_trait::async_trait]
impl Follower for Controller {
    async fn apply(&self, fleet: &Fleet, state: LiveState, revision: i64) {
        let mut live = self.live.lock().await;
        if revision <= fleet.applied_revision() {
            return;
        }
        let was = live.generation;
        self.adopt_fleet(fleet, &mut live, state, revision).await;
        if live.generation != was {
            info!(
                generation = live.generation,
                was, revision, "fleet state applied"
            );
        }
        // Names another node gave a pool are looked up now, not at the next round.
        let resolved = self.resolved.load_full();
        let new: Vec<String> = names_of(&live)
            .into_iter()
            .filter(|h| resolved.get(h).is_none())
            .collect();
        drop(live);
        if !new.is_empty() {
            let config = self.config.load_full();
            let round = crate::names::lookup(&config.resolver, &new, &resolved).await;
            self.apply_names(&round.answers).await;
        }
    }

    async fn local_state(&self) -> LiveState {
        self.live.lock().await.clone()
    }

    async fn end_orphans(&self, fleet: &Fleet) {
        self.end_orphan_rollouts(fleet).await;
    }

    async fn rollout_counts(&self) -> Vec<(String, crate::fleet::PoolCounts)> {
        let services: Vec<String> = {
            let live = self.live.lock().await;
            live.services
                .iter()
                .filter(|(_, s)| s.rollout.is_some())
                .map(|(name, _)| name.clone())
                .collect()
        };
        let table = self.table.load();
        services
            .into_iter()
            .filter_map(|service| {
                let pools = table
                    .service(&service)?
                    .pools
                    .iter()
                    .map(|p| (p.name.to_string(), crate::judge::Snapshot::of(p)))
                    .collect();
                Some((service, pools))
            })
            .collect()
    }
}
