//! The control handler: turns protocol requests into controller calls and controller results
//! into protocol replies. The only place that knows both the protocol and the proxy.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchback_control::{
    BackendStatus, Caller, ControlError, DrainReport, ErrorCode, Event, Handler, PoolSetReply,
    PoolStatus, Progress, Reply, Request, ServiceStatus, SplitShare, StatusReply, SwitchReply,
};
use switchback_proxy::{Controller, DeployError, SwitchOutcome};

const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ControlHandler {
    controller: Arc<Controller>,
}

impl ControlHandler {
    pub fn new(controller: Arc<Controller>) -> ControlHandler {
        ControlHandler { controller }
    }

    async fn status(&self, only: Option<&str>) -> Result<Reply, ControlError> {
        if let Some(name) = only {
            self.controller
                .resolve_service(Some(name))
                .map_err(to_control)?;
        }
        let table = self.controller.table();
        let config = self.controller.config();
        let services = table
            .services
            .iter()
            .filter(|s| only.is_none_or(|n| s.name() == n))
            .map(|route| {
                let configured = config
                    .service(route.name())
                    .expect("tables come from the config");
                let active = route.active_pool().name.to_string();
                ServiceStatus {
                    name: route.name().to_string(),
                    hosts: route.config.hosts.clone(),
                    path_prefix: route.config.path_prefix.clone(),
                    configured_active: configured.active.clone(),
                    previous: route.previous.map(|i| route.pools[i].name.to_string()),
                    split: vec![SplitShare {
                        pool: active.clone(),
                        percent: 100.0,
                    }],
                    active,
                    pools: route
                        .pools
                        .iter()
                        .map(|pool| PoolStatus {
                            name: pool.name.to_string(),
                            in_flight: pool.stats.in_flight(),
                            differs_from_config: configured
                                .pool(&pool.name)
                                .is_some_and(|p| p.backends != pool.addresses()),
                            backends: pool
                                .backends
                                .iter()
                                .map(|b| BackendStatus {
                                    address: b.addr.to_string(),
                                    health: b.health.get().as_str().to_string(),
                                    last_error: b.health.last_error(),
                                })
                                .collect(),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Reply::Status(StatusReply {
            generation: table.generation,
            config_file: config.source.display().to_string(),
            state_file: self.controller.state_path().display().to_string(),
            notices: self.controller.notices().to_vec(),
            services,
        }))
    }
}

fn to_control(e: DeployError) -> ControlError {
    let code = match &e {
        DeployError::UnknownService { .. } => ErrorCode::UnknownService,
        DeployError::ServiceRequired { .. } => ErrorCode::ServiceRequired,
        DeployError::UnknownPool { .. } => ErrorCode::UnknownPool,
        DeployError::NoHealthyBackend { .. } => ErrorCode::NoHealthyBackend,
        DeployError::NoPreviousPool { .. } => ErrorCode::NoPreviousPool,
        DeployError::BadAddress(_) => ErrorCode::BadAddress,
        DeployError::HealthTimeout { .. } => ErrorCode::HealthTimeout,
        DeployError::StateWrite(_) => ErrorCode::StateWriteFailed,
    };
    ControlError::new(code, e.to_string())
}

fn switch_reply(o: SwitchOutcome, drain: Option<DrainReport>) -> Reply {
    Reply::Switch(SwitchReply {
        service: o.service,
        pool: o.pool,
        previous: o.previous,
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
            Request::Status { service } => self.status(service.as_deref()).await,
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
                let drain = if wait_drain && outcome.changed {
                    let (service, old) = (outcome.service.clone(), outcome.previous.clone());
                    let d = self
                        .controller
                        .wait_drain(
                            &service,
                            &old,
                            drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
                            |n| {
                                progress.send(Event::Draining {
                                    service: service.clone(),
                                    pool: old.clone(),
                                    in_flight: n,
                                })
                            },
                        )
                        .await;
                    Some(DrainReport {
                        pool: d.pool,
                        drained: d.drained,
                        in_flight: d.in_flight,
                        waited_ms: d.waited.as_millis() as u64,
                    })
                } else {
                    None
                };
                Ok(switch_reply(outcome, drain))
            }
            Request::Rollback { service, force } => self
                .controller
                .rollback(service.as_deref(), force, &who)
                .await
                .map(|o| switch_reply(o, None))
                .map_err(to_control),
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
                let wait = wait.then(|| timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT));
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
                Ok(Reply::PoolSet(PoolSetReply {
                    service: o.service,
                    pool: o.pool,
                    backends: o.backends.iter().map(ToString::to_string).collect(),
                    previous_backends: o
                        .previous_backends
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    generation: o.generation,
                }))
            }
        }
    }
}
