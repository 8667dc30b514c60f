//! `deploy`: new backends to the pool that is not active, health-gated, then a switch (or a
//! rollout) and the old pool's drain, as one command.
//!
//! A deploy is made of the same steps a person would take (`pool set --wait`, `switch` or
//! `rollout`, `switch --wait-drain`), each through the controller as those commands go. It runs
//! in a task of its own, so a client that goes away (a CI job cancelled, a dropped SSH session)
//! leaves it going; every client that asks follows its events through a [`Deploy`] handle,
//! the last one of each service kept here.
//!
//! Refusals come before anything changes: the pool to deploy to (the one that is not active,
//! or the one named when the service has more than two), the backends' addresses, another
//! deploy or a rollout running on the service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchback_config::defaults;
use switchback_control::{
    ControlError, DeployOutcome, DeployPhase, DeployReply, DrainReport, ErrorCode, Event, Progress,
    Reply, RolloutOutcome,
};
use tokio::sync::{broadcast, watch};
use tracing::info;

use super::{drain_left_pool, follow, to_control};
use crate::controller::Controller;
use crate::drive::start_rollout;
use crate::judge::RolloutSpec;

/// What a deploy is asked to do, checked.
pub struct Plan {
    pub service: String,
    pub pool: String,
    /// The pool active as it began.
    pub previous: String,
    pub backends: Vec<switchback_config::Target>,
    /// With a rollout of these steps and limits instead of a switch.
    pub rollout: Option<RolloutSpec>,
    pub health_timeout: Duration,
    pub drain_timeout: Option<Duration>,
}

/// A deploy's end: its answer, or why it stopped.
type End = Result<DeployReply, ControlError>;

/// One deploy, running or ended: its events for whoever follows it, and its end.
pub struct Deploy {
    pub service: String,
    events: broadcast::Sender<Event>,
    end: watch::Sender<Option<End>>,
}

impl Deploy {
    fn new(service: String) -> Deploy {
        Deploy {
            service,
            events: broadcast::channel(256).0,
            end: watch::channel(None).0,
        }
    }

    pub fn is_running(&self) -> bool {
        self.end.borrow().is_none()
    }

    fn send(&self, event: Event) {
        // No follower: the event is for nobody.
        let _ = self.events.send(event);
    }

    /// Passes the deploy's events on to `progress` until it ends, and answers with its end.
    pub async fn follow(&self, progress: &Progress) -> Result<Reply, ControlError> {
        let mut events = self.events.subscribe();
        let mut end = self.end.subscribe();
        loop {
            let ended = end.borrow_and_update().clone();
            if let Some(ended) = ended {
                while let Ok(event) = events.try_recv() {
                    progress.send(event);
                }
                return ended.map(Reply::Deploy);
            }
            tokio::select! {
                event = events.recv() => {
                    if let Ok(event) = event {
                        progress.send(event);
                    }
                }
                changed = end.changed() => {
                    if changed.is_err() {
                        return Err(ControlError::new(ErrorCode::Internal, "the deploy ended without an answer"));
                    }
                }
            }
        }
    }
}

/// The last deploy of each service.
#[derive(Default)]
pub struct Deploys {
    last: Mutex<HashMap<String, Arc<Deploy>>>,
}

impl Deploys {
    /// The last deploy of `service`, running or ended.
    pub fn last(&self, service: &str) -> Option<Arc<Deploy>> {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
    }

    /// Refuses while a deploy runs on `service`.
    pub fn refuse_running(&self, service: &str) -> Result<(), ControlError> {
        match self.last(service) {
            Some(d) if d.is_running() => Err(running(service)),
            _ => Ok(()),
        }
    }

    /// Starts `plan` in a task of its own, unless a deploy already runs on its service.
    pub fn start(
        &self,
        controller: &Arc<Controller>,
        plan: Plan,
        who: &str,
    ) -> Result<Arc<Deploy>, ControlError> {
        let deploy = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.get(&plan.service).is_some_and(|d| d.is_running()) {
                return Err(running(&plan.service));
            }
            let deploy = Arc::new(Deploy::new(plan.service.clone()));
            last.insert(plan.service.clone(), deploy.clone());
            deploy
        };
        info!(service = %plan.service, pool = %plan.pool, previous = %plan.previous, rollout = plan.rollout.is_some(), by = %who, "deploy started");
        let (controller, who, running) = (controller.clone(), who.to_string(), deploy.clone());
        tokio::spawn(async move {
            let end = run(&controller, &running, plan, &who).await;
            match &end {
                Ok(r) => {
                    info!(service = %r.service, pool = %r.pool, outcome = ?r.outcome, "deploy ended")
                }
                Err(e) => {
                    info!(service = %running.service, code = e.code.as_str(), error = %e.message, "deploy failed")
                }
            }
            running.end.send_replace(Some(end));
        });
        Ok(deploy)
    }
}

fn running(service: &str) -> ControlError {
    ControlError::new(
        ErrorCode::DeployRunning,
        format!("a deploy is running on service {service:?}: wait for it, or follow it with `switchback deploy --watch -s {service}`; nothing changed"),
    )
}

/// The pool a deploy goes to on `service`: `asked`, or else the one pool that is not active.
pub fn pick_pool(
    controller: &Controller,
    service: &str,
    asked: Option<&str>,
) -> Result<(String, String), ControlError> {
    let table = controller.table();
    let route = table.service(service).ok_or_else(|| {
        ControlError::new(ErrorCode::UnknownService, format!("no service {service:?}"))
    })?;
    let active = route.active_pool().name.to_string();
    let names: Vec<&str> = route.pools.iter().map(|p| &*p.name).collect();
    let pool = match asked {
        Some(pool) if !names.contains(&pool) => {
            return Err(ControlError::new(
                ErrorCode::UnknownPool,
                format!(
                    "service {service:?} has no pool {pool:?} (it has {})",
                    names.join(", ")
                ),
            ))
        }
        Some(pool) if pool == active => {
            return Err(ControlError::new(
                ErrorCode::ActivePool,
                format!("pool {pool:?} is the active pool of service {service:?}: deploy to a pool that is not; nothing changed"),
            ))
        }
        Some(pool) => pool.to_string(),
        None => {
            let idle: Vec<&str> = names.iter().copied().filter(|n| *n != active).collect();
            match idle.as_slice() {
                [pool] => pool.to_string(),
                [] => {
                    return Err(ControlError::new(
                        ErrorCode::PoolRequired,
                        format!("service {service:?} has only its active pool {active:?}: a deploy needs a second pool to go to"),
                    ))
                }
                _ => {
                    return Err(ControlError::new(
                        ErrorCode::PoolRequired,
                        format!(
                            "service {service:?} has {} pools that are not active ({}): name one with --pool",
                            idle.len(),
                            idle.join(", ")
                        ),
                    ))
                }
            }
        }
    };
    Ok((pool, active))
}

/// The deploy's steps, in its own task.
async fn run(controller: &Arc<Controller>, deploy: &Deploy, plan: Plan, who: &str) -> End {
    let Plan {
        service,
        pool,
        previous,
        backends,
        rollout,
        health_timeout,
        drain_timeout,
    } = plan;
    let phase = |phase| {
        deploy.send(Event::DeployPhase {
            service: service.clone(),
            pool: pool.clone(),
            phase,
            previous: previous.clone(),
        })
    };
    phase(DeployPhase::Health);
    let set = controller
        .set_pool(
            Some(&service),
            &pool,
            backends,
            Some(health_timeout),
            who,
            |healthy, total| {
                deploy.send(Event::WaitingHealth {
                    service: service.clone(),
                    pool: pool.clone(),
                    healthy,
                    total,
                })
            },
        )
        .await
        .map_err(to_control)?;
    controller
        .wait_fleet(set.generation)
        .await
        .map_err(to_control)?;
    let mut reply = DeployReply {
        service: service.clone(),
        pool: pool.clone(),
        previous: previous.clone(),
        backends: set.backends.iter().map(ToString::to_string).collect(),
        previous_backends: set
            .replaced_backends
            .iter()
            .map(ToString::to_string)
            .collect(),
        outcome: DeployOutcome::Switched,
        rollout: None,
        drain: None,
        generation: set.generation,
    };
    // The pool traffic left, once it left one.
    let left = match rollout {
        Some(spec) => {
            phase(DeployPhase::Rollout);
            let rollout = start_rollout(controller, Some(&service), &pool, spec, false, who)
                .await
                .map_err(to_control)?;
            let (progress, mut events) = Progress::channel();
            let followed = follow(&rollout, &progress);
            tokio::pin!(followed);
            let ended = loop {
                tokio::select! {
                    ended = &mut followed => break ended,
                    Some(event) = events.recv() => deploy.send(event),
                }
            };
            while let Ok(event) = events.try_recv() {
                deploy.send(event);
            }
            let Reply::Rollout(ended) = ended else {
                return Err(ControlError::new(
                    ErrorCode::Internal,
                    "a rollout ended without its answer",
                ));
            };
            reply.generation = ended.generation;
            let promoted = ended.outcome == RolloutOutcome::Promoted;
            reply.outcome = if promoted {
                DeployOutcome::Promoted
            } else {
                DeployOutcome::RolledBack
            };
            reply.rollout = Some(ended);
            promoted.then(|| previous.clone())
        }
        None => {
            phase(DeployPhase::Switch);
            let switched = controller
                .switch(Some(&service), &pool, false, who)
                .await
                .map_err(to_control)?;
            controller
                .wait_fleet(switched.generation)
                .await
                .map_err(to_control)?;
            reply.generation = switched.generation;
            switched.changed.then_some(switched.moved_from)
        }
    };
    if let Some(left) = left {
        phase(DeployPhase::Drain);
        let drained = drain_left_pool(controller, &service, &left, drain_timeout, |n, l| {
            deploy.send(Event::Draining {
                service: service.clone(),
                pool: left.clone(),
                in_flight: n,
                long_lived: l,
            })
        })
        .await;
        reply.drain = Some(DrainReport {
            pool: drained.pool,
            drained: drained.drained,
            in_flight: drained.in_flight,
            closed: drained.closed,
            waited_ms: drained.waited.as_millis() as u64,
        });
    }
    Ok(reply)
}

/// The health wait of a deploy that names none.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Checks a rollout's steps and limits as `rollout` takes them, with the defaults filled in.
pub fn rollout_spec(
    steps: Option<Vec<f64>>,
    interval: Option<Duration>,
    max_error_rate: Option<f64>,
    max_p95: Option<Duration>,
    min_requests: Option<u64>,
) -> Result<RolloutSpec, ControlError> {
    let steps = steps
        .as_deref()
        .unwrap_or(defaults::ROLLOUT_STEPS)
        .iter()
        .map(|s| super::permille(*s, "step"))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|e| ControlError::new(ErrorCode::BadRollout, e.message))?;
    let spec = RolloutSpec {
        steps,
        interval: interval.unwrap_or(defaults::ROLLOUT_INTERVAL),
        max_error_rate: max_error_rate.unwrap_or(defaults::ROLLOUT_MAX_ERROR_RATE) / 100.0,
        max_p95: max_p95.unwrap_or(defaults::ROLLOUT_MAX_P95),
        min_requests: min_requests.unwrap_or(defaults::ROLLOUT_MIN_REQUESTS),
    };
    spec.check()
        .map_err(|e| ControlError::new(ErrorCode::BadRollout, e.to_string()))?;
    Ok(spec)
}
