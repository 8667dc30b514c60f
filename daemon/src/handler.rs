//! The control handler: turns protocol requests into controller calls and controller results
//! into protocol replies. The only place that knows both the protocol and the controller.
//!
//! A request carries only what the user typed; every default (rollout steps and limits, drain
//! and health-wait timeouts) is filled in here, from `switchback_config::defaults`.

use std::sync::Arc;

use async_trait::async_trait;
use switchback_certs::{CertManager, CertSource, CertStatus};
use switchback_config::{defaults, TlsMode};
use switchback_control::{
    Caller, ControlError, DrainReport, ErrorCode, Event, Handler, PoolSetReply, Progress, Reply,
    Request, SwitchReply,
};
use switchback_control::{
    CanaryReply, CanaryView, CertSourceKind, CertView, CertsReply, ReloadReply, RolloutReply,
    UpgradeReply, WindowView,
};

use crate::change::{DeployError, SwitchOutcome};
use crate::controller::Controller;
use crate::drain;
use crate::drive::start_rollout;
use crate::judge::{percent, Window};
use crate::rollout::{Rollout, RolloutEvent, RolloutProgress, RolloutResult};
use crate::status;
use crate::upgrade::Upgrader;

mod deploy;

pub struct ControlHandler {
    controller: Arc<Controller>,
    certs: Option<Arc<CertManager>>,
    upgrader: Option<Arc<Upgrader>>,
    deploys: deploy::Deploys,
}

fn cert_view(s: CertStatus) -> CertView {
    let (source, cert_file) = match &s.source {
        CertSource::Acme => (CertSourceKind::Acme, None),
        CertSource::File { cert, .. } => (CertSourceKind::File, Some(cert.display().to_string())),
    };
    CertView {
        host: s.host,
        source,
        cert_file,
        served: s.served.is_some(),
        names: s
            .served
            .as_ref()
            .map(|i| i.names.clone())
            .unwrap_or_default(),
        issuer: s.served.as_ref().map(|i| i.issuer.clone()),
        serial: s.served.as_ref().map(|i| i.serial.clone()),
        not_before: s.served.as_ref().map(|i| i.not_before),
        not_after: s.served.as_ref().map(|i| i.not_after),
        next_renewal: s.next_renewal,
        last_error: s.last_error,
        consecutive_failures: s.consecutive_failures,
        failures_total: s.failures_total,
    }
}

impl ControlHandler {
    pub fn new(controller: Arc<Controller>, certs: Option<Arc<CertManager>>) -> ControlHandler {
        ControlHandler {
            controller,
            certs,
            upgrader: None,
            deploys: deploy::Deploys::default(),
        }
    }

    /// Answers `upgrade` with `upgrader` (a handler without one refuses it).
    pub fn with_upgrader(mut self, upgrader: Arc<Upgrader>) -> ControlHandler {
        self.upgrader = Some(upgrader);
        self
    }

    /// Fleet mode: a change answers once every connected node serves it.
    async fn fleet_acks(&self, generation: u64) -> Result<(), ControlError> {
        self.controller
            .wait_fleet(generation)
            .await
            .map_err(to_control)
    }

    fn certs(&self) -> Result<&Arc<CertManager>, ControlError> {
        self.certs
            .as_ref()
            .ok_or_else(|| ControlError::new(ErrorCode::UnknownHost, "no service has TLS"))
    }

    async fn handle_certs(&self, request: Request) -> Result<Reply, ControlError> {
        let certs = self.certs()?;
        let list = match request {
            Request::Certs => certs.statuses(),
            Request::CertsRenew { host } => {
                let known = certs
                    .statuses()
                    .iter()
                    .any(|s| s.host.eq_ignore_ascii_case(&host));
                if !known {
                    let hosts: Vec<String> = certs.statuses().into_iter().map(|s| s.host).collect();
                    return Err(ControlError::new(
                        ErrorCode::UnknownHost,
                        format!("no TLS host named {host:?} (hosts: {})", hosts.join(", ")),
                    ));
                }
                vec![certs.renew_now(&host).await.map_err(|e| {
                    ControlError::new(
                        ErrorCode::RenewFailed,
                        format!("{host}: {e}; the current certificate stays served"),
                    )
                })?]
            }
            Request::ReloadCerts => {
                let reloaded = certs.reload_files(true);
                let failed: Vec<String> = reloaded
                    .iter()
                    .filter(|s| s.consecutive_failures > 0)
                    .map(|s| {
                        format!(
                            "{}: {}",
                            s.host,
                            s.last_error.as_deref().unwrap_or("failed")
                        )
                    })
                    .collect();
                if !failed.is_empty() {
                    return Err(ControlError::new(
                        ErrorCode::CertLoadFailed,
                        format!(
                            "{}; those hosts keep the certificate they had",
                            failed.join("; ")
                        ),
                    ));
                }
                reloaded
            }
            _ => unreachable!("only certificate requests come here"),
        };
        Ok(Reply::Certs(CertsReply {
            certs: list.into_iter().map(cert_view).collect(),
        }))
    }
}

/// Reads the running config's file again and applies it (`reload`, and SIGHUP): a file with
/// any problem changes nothing, and the error lists every problem as file:line: key.
pub async fn reload(
    controller: &Controller,
    certs: Option<&Arc<CertManager>>,
    force: bool,
    who: &str,
) -> Result<ReloadReply, ControlError> {
    let path = controller.config().source.clone();
    let new = tokio::task::spawn_blocking(move || switchback_config::load(&path))
        .await
        .map_err(|e| ControlError::new(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| {
            ControlError::new(
                ErrorCode::BadConfig,
                format!("{e}\nthe config file has problems; nothing changed"),
            )
        })?;
    let mut o = controller
        .reload(new, force, who)
        .await
        .map_err(to_control)?;
    // TLS hosts new in the file: certificates loaded or ordered, when the process has what
    // it takes (an HTTPS listener, and an ACME account for an ACME host).
    let config = controller.config();
    let wants_tls = config.services.iter().any(|s| s.tls != TlsMode::Off);
    match certs {
        Some(certs) => {
            match certs.add_hosts(&config) {
                Ok(added) => o.changes.extend(added.into_iter().map(|h| {
                    format!("TLS host {h:?} added: its certificate is loaded or ordered")
                })),
                Err(hosts) => o.needs_upgrade.push(format!(
                    "the ACME hosts {} (no ACME service was set up at start)",
                    hosts.join(", ")
                )),
            }
        }
        None if wants_tls => o
            .needs_upgrade
            .push("TLS (no service had TLS at start: no HTTPS listener was set up)".to_string()),
        None => {}
    }
    Ok(ReloadReply {
        config_file: o.config_file.display().to_string(),
        changes: o.changes,
        needs_upgrade: o.needs_upgrade,
        generation: o.generation,
    })
}

/// A percentage from the wire as thousandths: 0 to 100, at most one decimal.
fn permille(value: f64, what: &str) -> Result<u32, ControlError> {
    let tenths = value * 10.0;
    if !value.is_finite() || !(0.0..=100.0).contains(&value) {
        return Err(ControlError::new(
            ErrorCode::BadPercent,
            format!("{what} {value} is out of range: use 0 to 100"),
        ));
    }
    if (tenths - tenths.round()).abs() > 1e-6 {
        return Err(ControlError::new(
            ErrorCode::BadPercent,
            format!("{what} {value} has more than one decimal: use a value like 12.5"),
        ));
    }
    Ok(tenths.round() as u32)
}

fn window_view(w: &Window) -> WindowView {
    WindowView {
        requests: w.requests,
        errors: w.errors,
        error_rate: (w.error_rate() * 1000.0).round() / 10.0,
        connect_failures: w.connect_failures,
        p95_ms: w.p95.map(|s| (s * 10_000.0).round() / 10.0),
    }
}

fn progress_event(r: &Rollout, p: &RolloutProgress) -> Event {
    Event::RolloutProgress {
        service: r.service.clone(),
        pool: r.pool.clone(),
        stable_pool: r.stable.clone(),
        step: p.step,
        steps: p.steps,
        percent: percent(p.permille),
        canary: window_view(&p.canary),
        stable: window_view(&p.stable),
        next_step_in_ms: p.next_step_in.as_millis() as u64,
        waiting_for_requests: p.waiting,
    }
}

fn rollout_reply(r: &Rollout, result: &RolloutResult) -> Reply {
    let p = &result.progress;
    Reply::Rollout(RolloutReply {
        service: r.service.clone(),
        pool: r.pool.clone(),
        stable_pool: r.stable.clone(),
        outcome: result.outcome,
        reason: result.reason.clone(),
        step: p.step,
        steps: p.steps,
        percent: percent(p.permille),
        canary: window_view(&p.canary),
        stable: window_view(&p.stable),
        generation: result.generation,
    })
}

/// Passes a rollout's events on to `progress` until it ends, and answers with its end.
async fn follow(r: &Arc<Rollout>, progress: &Progress) -> Reply {
    let mut events = r.subscribe();
    if let Some(result) = r.result() {
        return rollout_reply(r, &result);
    }
    loop {
        match events.recv().await {
            Ok(RolloutEvent::Step {
                step,
                steps,
                permille,
            }) => progress.send(Event::RolloutStep {
                service: r.service.clone(),
                pool: r.pool.clone(),
                step,
                steps,
                percent: percent(permille),
            }),
            Ok(RolloutEvent::Progress(p)) => progress.send(progress_event(r, &p)),
            Ok(RolloutEvent::Finished(result)) => return rollout_reply(r, &result),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                return rollout_reply(r, &r.finished().await)
            }
        }
    }
}

fn to_control(e: DeployError) -> ControlError {
    let code = match &e {
        DeployError::UnknownService { .. } => ErrorCode::UnknownService,
        DeployError::ServiceRequired { .. } => ErrorCode::ServiceRequired,
        DeployError::UnknownPool { .. } => ErrorCode::UnknownPool,
        DeployError::NoHealthyBackend { .. } => ErrorCode::NoHealthyBackend,
        DeployError::NothingToRollBackTo { .. } => ErrorCode::NoPreviousPool,
        DeployError::BadAddress(_) => ErrorCode::BadAddress,
        DeployError::HealthTimeout { .. } => ErrorCode::HealthTimeout,
        DeployError::StateWrite(_) => ErrorCode::StateWriteFailed,
        DeployError::RolloutRunning { .. } => ErrorCode::RolloutRunning,
        DeployError::NoRollout { .. } => ErrorCode::NoRollout,
        DeployError::BadPercent { .. } => ErrorCode::BadPercent,
        DeployError::ActivePool { .. } => ErrorCode::ActivePool,
        DeployError::BadRollout(_) | DeployError::MetricsOff => ErrorCode::BadRollout,
        DeployError::ReloadRefused(_) => ErrorCode::ReloadRefused,
        DeployError::Upgrading => ErrorCode::Unavailable,
        DeployError::FleetUnreachable(_) | DeployError::FleetWriteUnknown(_) => {
            ErrorCode::FleetUnreachable
        }
        DeployError::Conflict { .. } => ErrorCode::Conflict,
        DeployError::FleetLagging { .. } => ErrorCode::FleetLagging,
        DeployError::RemoteRollout { .. } => ErrorCode::RolloutRunning,
    };
    ControlError::new(code, e.to_string())
}

/// Waits for the pool a switch left to drain (`timeout`, else the service's `drain_timeout`),
/// then closes its long-lived connections as the service's `long_lived` says, unless the pool
/// takes traffic again by then.
async fn drain_left_pool(
    controller: &Controller,
    service_name: &str,
    left: &str,
    timeout: Option<std::time::Duration>,
    on_progress: impl FnMut(u64, u64),
) -> drain::DrainOutcome {
    let config = controller.config();
    let service = config.service(service_name);
    let plan = drain::DrainPlan {
        timeout: timeout
            .or(service.map(|s| s.drain_timeout))
            .unwrap_or(defaults::DRAIN_TIMEOUT),
        long_lived: service.map(|s| s.long_lived).unwrap_or_default(),
    };
    let still_left = || {
        let table = controller.table();
        let Some(route) = table.service(service_name) else {
            return true;
        };
        route
            .pool_index(left)
            .is_none_or(|i| !crate::controller::serves(route, i))
    };
    drain::wait_drain(
        &controller.table(),
        service_name,
        left,
        plan,
        still_left,
        on_progress,
    )
    .await
}

fn switch_reply(o: SwitchOutcome, drain: Option<DrainReport>) -> Reply {
    Reply::Switch(SwitchReply {
        service: o.service,
        pool: o.pool,
        previous: o.moved_from,
        changed: o.changed,
        generation: o.generation,
        drain,
    })
}

#[async_trait]
impl Handler for ControlHandler {
    async fn handle(
        &self,
        request: Request,
        caller: Caller,
        progress: Progress,
    ) -> Result<Reply, ControlError> {
        let who = match (caller.uid, caller.pid) {
            (Some(uid), Some(pid)) => format!("control socket uid={uid} pid={pid}"),
            (Some(uid), None) => format!("control socket uid={uid}"),
            _ => "control socket".to_string(),
        };
        match request {
            Request::Status { service } => status::read(&self.controller, service.as_deref())
                .map(Reply::Status)
                .map_err(to_control),
            Request::Switch {
                service,
                pool,
                force,
                wait_drain,
                drain_timeout,
            } => {
                let outcome = self
                    .controller
                    .switch(service.as_deref(), &pool, force, &who)
                    .await
                    .map_err(to_control)?;
                self.fleet_acks(outcome.generation).await?;
                let drain = if wait_drain && outcome.changed {
                    let (service, old) = (outcome.service.clone(), outcome.moved_from.clone());
                    let d = drain_left_pool(
                        &self.controller,
                        &outcome.service,
                        &outcome.moved_from,
                        drain_timeout,
                        |n, l| {
                            progress.send(Event::Draining {
                                service: service.clone(),
                                pool: old.clone(),
                                in_flight: n,
                                long_lived: l,
                            })
                        },
                    )
                    .await;
                    Some(DrainReport {
                        pool: d.pool,
                        drained: d.drained,
                        in_flight: d.in_flight,
                        closed: d.closed,
                        waited_ms: d.waited.as_millis() as u64,
                    })
                } else {
                    None
                };
                Ok(switch_reply(outcome, drain))
            }
            Request::Rollback { service, force } => {
                let outcome = self
                    .controller
                    .rollback(service.as_deref(), force, &who)
                    .await
                    .map_err(to_control)?;
                self.fleet_acks(outcome.generation).await?;
                Ok(switch_reply(outcome, None))
            }
            request @ (Request::Certs | Request::CertsRenew { .. } | Request::ReloadCerts) => {
                self.handle_certs(request).await
            }
            Request::Reload { force } => {
                let reply = reload(&self.controller, self.certs.as_ref(), force, &who).await?;
                self.fleet_acks(reply.generation).await?;
                Ok(Reply::Reload(reply))
            }
            Request::Upgrade => {
                let upgrader = self.upgrader.as_ref().ok_or_else(|| {
                    ControlError::new(ErrorCode::UpgradeFailed, "this process cannot upgrade")
                })?;
                let (old_pid, new_pid) = upgrader.upgrade(&self.controller).await?;
                Ok(Reply::Upgrade(UpgradeReply { old_pid, new_pid }))
            }
            Request::Canary {
                service,
                pool,
                percent: asked,
                force,
            } => {
                let weight = permille(asked, "percentage")?;
                let o = self
                    .controller
                    .set_canary(service.as_deref(), &pool, weight, force, &who)
                    .await
                    .map_err(to_control)?;
                self.fleet_acks(o.generation).await?;
                Ok(Reply::Canary(CanaryReply {
                    service: o.service,
                    pool: o.pool,
                    active: o.active,
                    percent: percent(o.permille),
                    previous: o.replaced.map(|(pool, w)| CanaryView {
                        pool,
                        percent: percent(w),
                    }),
                    generation: o.generation,
                }))
            }
            Request::Rollout {
                service,
                pool,
                steps,
                interval,
                max_error_rate,
                max_p95,
                min_requests,
                force,
            } => {
                let spec =
                    deploy::rollout_spec(steps, interval, max_error_rate, max_p95, min_requests)?;
                let resolved = self
                    .controller
                    .resolve_service(service.as_deref())
                    .map_err(to_control)?;
                self.deploys.refuse_running(&resolved)?;
                let rollout = start_rollout(
                    &self.controller,
                    service.as_deref(),
                    &pool,
                    spec,
                    force,
                    &who,
                )
                .await
                .map_err(to_control)?;
                Ok(follow(&rollout, &progress).await)
            }
            Request::RolloutWatch { service } => {
                let service = self
                    .controller
                    .resolve_service(service.as_deref())
                    .map_err(to_control)?;
                let rollout = self.controller.rollout(&service).ok_or_else(|| {
                    to_control(DeployError::NoRollout {
                        service: service.clone(),
                    })
                })?;
                Ok(follow(&rollout, &progress).await)
            }
            Request::RolloutAbort { service } => {
                let (rollout, result) = self
                    .controller
                    .abort_rollout(service.as_deref(), &who)
                    .await
                    .map_err(to_control)?;
                Ok(rollout_reply(&rollout, &result))
            }
            Request::Deploy {
                service,
                pool,
                backends,
                rollout,
                steps,
                interval,
                max_error_rate,
                max_p95,
                min_requests,
                health_timeout,
                drain_timeout,
            } => {
                let service = self
                    .controller
                    .resolve_service(service.as_deref())
                    .map_err(to_control)?;
                self.deploys.refuse_running(&service)?;
                let backends = switchback_config::parse_backends(&backends)
                    .map_err(|e| ControlError::new(ErrorCode::BadAddress, e))?;
                let rollout = match rollout {
                    true => Some(deploy::rollout_spec(
                        steps,
                        interval,
                        max_error_rate,
                        max_p95,
                        min_requests,
                    )?),
                    false => None,
                };
                let (pool, previous) =
                    deploy::pick_pool(&self.controller, &service, pool.as_deref())?;
                if let Some(r) = self.controller.running_rollout(&service) {
                    return Err(to_control(DeployError::RolloutRunning {
                        service,
                        pool: r.pool.clone(),
                    }));
                }
                let plan = deploy::Plan {
                    service,
                    pool,
                    previous,
                    backends,
                    rollout,
                    health_timeout: health_timeout.unwrap_or(deploy::HEALTH_TIMEOUT),
                    drain_timeout,
                };
                let deploy = self.deploys.start(&self.controller, plan, &who)?;
                deploy.follow(&progress).await
            }
            Request::DeployWatch { service } => {
                let service = self
                    .controller
                    .resolve_service(service.as_deref())
                    .map_err(to_control)?;
                let deploy = self.deploys.last(&service).ok_or_else(|| {
                    ControlError::new(
                        ErrorCode::NoDeploy,
                        format!("no deploy has run on service {service:?} since the proxy started"),
                    )
                })?;
                deploy.follow(&progress).await
            }
            Request::PoolSet {
                service,
                pool,
                backends,
                wait,
                timeout,
            } => {
                let addrs = switchback_config::parse_backends(&backends)
                    .map_err(|e| ControlError::new(ErrorCode::BadAddress, e))?;
                let service_name = self
                    .controller
                    .resolve_service(service.as_deref())
                    .map_err(to_control)?;
                let wait = wait.then(|| timeout.unwrap_or(defaults::POOL_SET_WAIT));
                let o = self
                    .controller
                    .set_pool(
                        Some(&service_name),
                        &pool,
                        addrs,
                        wait,
                        &who,
                        |healthy, total| {
                            progress.send(Event::WaitingHealth {
                                service: service_name.clone(),
                                pool: pool.clone(),
                                healthy,
                                total,
                            })
                        },
                    )
                    .await
                    .map_err(to_control)?;
                self.fleet_acks(o.generation).await?;
                Ok(Reply::PoolSet(PoolSetReply {
                    service: o.service,
                    pool: o.pool,
                    backends: o.backends.iter().map(ToString::to_string).collect(),
                    previous_backends: o
                        .replaced_backends
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    generation: o.generation,
                    unresolved: o.unresolved,
                }))
            }
        }
    }
}
