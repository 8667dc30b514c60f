//! The status read model: what is live now, in the protocol's own types.
//!
//! One function reads the live routing table, the config and the rollouts into a
//! [`StatusReply`]. The control handler answers `status` with it, and the admin listener's
//! `/metrics` turns the same reply into its state gauges ([`crate::scrape`]), so the CLI and the
//! dashboard can never disagree about which pool is active or which backend is down.

use switchback_control::{
    BackendHealth, BackendStatus, CanaryView, FleetNode, FleetStatus, PoolStatus, RedirectView,
    RolloutStatus, ServiceStatus, SplitShare, StatusReply,
};
use switchback_proxy::health::Health;
use switchback_proxy::names::Resolved;
use switchback_proxy::{Pool, ServiceRoute};

use crate::change::DeployError;
use crate::controller::Controller;
use crate::judge::percent;
use crate::rollout::Rollout;

/// The status of every service, or of the one named.
pub fn read(controller: &Controller, only: Option<&str>) -> Result<StatusReply, DeployError> {
    if let Some(name) = only {
        controller.resolve_service(Some(name))?;
    }
    let table = controller.table();
    let services = table
        .services
        .iter()
        .filter(|s| only.is_none_or(|n| s.name() == n))
        .map(|route| service_status(controller, route))
        .collect();
    Ok(StatusReply {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started: *STARTED,
        generation: table.generation,
        config_file: controller.config().source.display().to_string(),
        state_file: controller.state_path().display().to_string(),
        notices: controller.notices().to_vec(),
        services,
        fleet: controller.fleet().map(|f| fleet_status(f)),
    })
}

fn fleet_status(fleet: &crate::fleet::Fleet) -> FleetStatus {
    FleetStatus {
        node: fleet.node().to_string(),
        connected: fleet.connected(),
        problem: fleet.problem(),
        nodes: fleet
            .nodes()
            .into_iter()
            .map(|n| FleetNode {
                name: n.name,
                generation: n.ack.generation,
                last_seen: n.ack.seen,
                connected: n.connected,
                error: n.ack.error,
            })
            .collect(),
    }
}

fn service_status(controller: &Controller, route: &ServiceRoute) -> ServiceStatus {
    let resolved = controller.resolved();
    ServiceStatus {
        name: route.name().to_string(),
        hosts: route.config.hosts.clone(),
        path_prefix: route.config.path_prefix.clone(),
        listen: route.config.listen.iter().map(|a| a.to_string()).collect(),
        default: route.config.default,
        redirect: route.config.redirect.as_ref().map(|r| RedirectView {
            to: r.to.clone(),
            code: r.code,
        }),
        active: route
            .pools
            .get(route.split.active)
            .map(|p| p.name.to_string())
            .unwrap_or_default(),
        configured_active: route.config.active.clone(),
        previous: route.rollback_to.map(|i| route.pools[i].name.to_string()),
        split: route
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| SplitShare {
                pool: p.name.to_string(),
                percent: (route.split.traffic_ratio(i) * 1000.0).round() / 10.0,
            })
            .filter(|s| s.percent > 0.0)
            .collect(),
        canary: route.split.canary.map(|c| CanaryView {
            pool: route.pools[c.pool].name.to_string(),
            percent: percent(c.permille),
        }),
        rollout: controller
            .running_rollout(route.name())
            .map(|r| rollout_status(&r))
            .or_else(|| remote_rollout(controller, route))
            .or_else(|| controller.rollout(route.name()).map(|r| rollout_status(&r))),
        pools: route
            .pools
            .iter()
            .map(|pool| PoolStatus {
                name: pool.name.to_string(),
                in_flight: pool.stats.in_flight(),
                long_lived: pool.stats.long_lived.count(),
                differs_from_config: route
                    .config
                    .pool(&pool.name)
                    .is_some_and(|p| p.backends != pool.targets),
                backends: backends_status(pool, &resolved),
            })
            .collect(),
    }
}

/// Each backend of a pool, by address, with the name it came from; and each name that stands
/// for no address now, as a backend that is down and says why.
fn backends_status(pool: &Pool, resolved: &Resolved) -> Vec<BackendStatus> {
    let mut out: Vec<BackendStatus> = pool
        .backends
        .iter()
        .map(|b| BackendStatus {
            address: b.addr.to_string(),
            name: b.name.as_deref().map(str::to_string),
            health: backend_health(b.health.get()),
            last_error: b.health.last_error(),
        })
        .collect();
    for target in &pool.targets {
        let Some(host) = target.host() else { continue };
        let text = target.to_string();
        if out.iter().any(|b| b.name.as_deref() == Some(text.as_str())) {
            continue;
        }
        let why = resolved
            .get(host)
            .and_then(|a| a.error.clone())
            .unwrap_or_else(|| "not resolved yet".into());
        out.push(BackendStatus {
            address: text.clone(),
            name: Some(text),
            health: BackendHealth::Down,
            last_error: Some(why),
        });
    }
    out
}

/// A backend's health as the protocol names it.
pub fn backend_health(h: Health) -> BackendHealth {
    match h {
        Health::Healthy => BackendHealth::Healthy,
        Health::Down => BackendHealth::Down,
        Health::Unknown => BackendHealth::Unknown,
        Health::Unchecked => BackendHealth::Unchecked,
    }
}

/// A rollout, running or finished, as `status` shows it.
pub fn rollout_status(r: &Rollout) -> RolloutStatus {
    let latest = r.latest();
    let result = r.result();
    RolloutStatus {
        pool: r.pool.clone(),
        stable_pool: r.stable.clone(),
        running: result.is_none(),
        step: latest.as_ref().map_or(0, |p| p.step),
        steps: r.spec.steps.len(),
        percent: latest.as_ref().map_or(0.0, |p| percent(p.permille)),
        started: r
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        outcome: result.as_ref().map(|x| x.outcome),
        reason: result.and_then(|x| x.reason),
        node: None,
    }
}

/// Fleet mode: a rollout another node drives, from the mark in the state.
fn remote_rollout(controller: &Controller, route: &ServiceRoute) -> Option<RolloutStatus> {
    let me = controller.fleet_node()?;
    let state = controller.state_now();
    let mark = state.services.get(route.name())?.rollout.clone()?;
    if mark.node.as_deref() == Some(me.as_str()) {
        return None;
    }
    Some(RolloutStatus {
        pool: mark.pool,
        stable_pool: route.active_pool().name.to_string(),
        running: true,
        step: mark.step,
        steps: mark.steps,
        percent: route.split.canary.map_or(0.0, |c| percent(c.permille)),
        started: mark.started,
        outcome: None,
        reason: None,
        node: mark.node,
    })
}

/// When this process started (first asked, which `run` does at once).
pub static STARTED: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
});
