//! Rollouts: a canary that steps up by itself while the proxy watches it, and rolls back by
//! itself when it misbehaves.
//!
//! A rollout runs as a task inside the proxy, not in the CLI that started it: the CLI (or any
//! number of them) only watches. At each step the canary gets a larger share of clients; every
//! second the canary pool's live numbers since the step began (5xx ratio, p95 latency,
//! connection failures) are judged against the limits and against the stable pool's numbers
//! of the same window. A breach sends every client back to the stable pool at once. After the
//! last step the canary pool becomes the active pool.
//!
//! The judging itself is in [`crate::judge`]; this module holds the rollout's handle (what
//! watchers subscribe to) and the task that drives it through the controller.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use switchback_config::{CanaryState, RolloutMark};
use tokio::sync::{broadcast, watch};
use tracing::{error, info, warn};

use crate::controller::{Change, Controller, DeployError};
pub use crate::judge::{
    judge, percent, RolloutSpec, Snapshot, Verdict, Window, MAX_WAIT_INTERVALS,
};

/// How a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every step passed; the canary pool is the active pool.
    Promoted,
    /// A step breached a limit; every client is back on the stable pool.
    RolledBack,
    /// Stopped on request; every client is back on the stable pool.
    Aborted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Promoted => "promoted",
            Outcome::RolledBack => "rolled_back",
            Outcome::Aborted => "aborted",
        }
    }
}

/// Where a rollout stands: the step, and the numbers of the step's window so far.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutProgress {
    /// 1-based.
    pub step: usize,
    pub steps: usize,
    pub permille: u32,
    pub canary: Window,
    pub stable: Window,
    /// Until the step is judged (zero when it waits for requests).
    pub next_step_in: Duration,
    /// The interval is over but the canary has not had enough requests to be judged.
    pub waiting: bool,
}

/// The end of a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutResult {
    pub outcome: Outcome,
    /// Why it rolled back or was aborted.
    pub reason: Option<String>,
    /// The step it ended on, and that step's numbers.
    pub progress: RolloutProgress,
    pub generation: u64,
}

/// What a rollout tells its watchers.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutEvent {
    /// A new step began: the canary weight is now `permille`.
    Step {
        step: usize,
        steps: usize,
        permille: u32,
    },
    /// About once a second.
    Progress(RolloutProgress),
    Finished(RolloutResult),
}

/// A rollout, running or finished, as the controller keeps it.
pub struct Rollout {
    pub service: String,
    pub pool: String,
    /// The pool that was active when it started, where it rolls back to.
    pub stable: String,
    pub spec: RolloutSpec,
    pub started: SystemTime,
    events: broadcast::Sender<RolloutEvent>,
    abort: watch::Sender<Option<String>>,
    latest: Mutex<Option<RolloutProgress>>,
    result: watch::Sender<Option<RolloutResult>>,
}

impl Rollout {
    pub fn new(service: String, pool: String, stable: String, spec: RolloutSpec) -> Rollout {
        Rollout {
            service,
            pool,
            stable,
            spec,
            started: SystemTime::now(),
            events: broadcast::channel(256).0,
            abort: watch::channel(None).0,
            latest: Mutex::new(None),
            result: watch::channel(None).0,
        }
    }

    /// Events from now on. Check [`Rollout::result`] after subscribing: a rollout that ended
    /// before sends nothing more.
    pub fn subscribe(&self) -> broadcast::Receiver<RolloutEvent> {
        self.events.subscribe()
    }

    pub fn result(&self) -> Option<RolloutResult> {
        self.result.borrow().clone()
    }

    pub fn is_running(&self) -> bool {
        self.result.borrow().is_none()
    }

    /// The last progress report, for `status`.
    pub fn latest(&self) -> Option<RolloutProgress> {
        self.latest.lock().expect("not poisoned").clone()
    }

    /// Asks the rollout to stop and roll back; `reason` says who asked.
    pub fn abort(&self, reason: String) {
        self.abort.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }

    pub fn abort_requested(&self) -> watch::Receiver<Option<String>> {
        self.abort.subscribe()
    }

    /// Waits for the end of the rollout.
    pub async fn finished(&self) -> RolloutResult {
        let mut rx = self.result.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                unreachable!("the rollout holds the sender");
            }
        }
    }

    pub(crate) fn send(&self, event: RolloutEvent) {
        match &event {
            RolloutEvent::Progress(p) => {
                *self.latest.lock().expect("not poisoned") = Some(p.clone());
            }
            RolloutEvent::Finished(r) => {
                *self.latest.lock().expect("not poisoned") = Some(r.progress.clone());
                self.result.send_replace(Some(r.clone()));
            }
            RolloutEvent::Step {
                step,
                steps,
                permille,
            } => {
                *self.latest.lock().expect("not poisoned") = Some(RolloutProgress {
                    step: *step,
                    steps: *steps,
                    permille: *permille,
                    canary: Window::default(),
                    stable: Window::default(),
                    next_step_in: self.spec.interval,
                    waiting: false,
                });
            }
        }
        let _ = self.events.send(event);
    }
}

impl Controller {
    /// Starts a rollout of `pool` on a service, as a task of its own; the returned handle
    /// reports its progress and end.
    pub async fn start_rollout(
        self: &Arc<Self>,
        service: Option<&str>,
        pool: &str,
        spec: RolloutSpec,
        force: bool,
        who: &str,
    ) -> Result<Arc<Rollout>, DeployError> {
        let service = self.resolve_service(service)?;
        spec.check().map_err(DeployError::BadRollout)?;
        if !self.metrics.enabled {
            return Err(DeployError::BadRollout(
                "a rollout judges the canary by its metrics, and [metrics] enabled = false turns them off".into(),
            ));
        }
        let live = self.live.lock().await;
        self.refuse_during_rollout(&service)?;
        let table = self.table.load_full();
        let route = table.configured(&service);
        Self::check_pool(route, pool)?;
        let stable = route.active_pool().name.to_string();
        if stable == pool {
            return Err(DeployError::ActivePool {
                service,
                pool: pool.to_string(),
            });
        }
        if !force {
            Self::check_healthy(&service, route.pool(pool).expect("checked above"))?;
        }
        let rollout = Arc::new(Rollout::new(
            service.clone(),
            pool.to_string(),
            stable.clone(),
            spec,
        ));
        self.rollouts
            .lock()
            .expect("not poisoned")
            .insert(service.clone(), rollout.clone());
        drop(live);
        let steps: Vec<f64> = rollout.spec.steps.iter().map(|s| percent(*s)).collect();
        info!(service = %service, pool = %pool, stable = %stable, steps = ?steps, interval_ms = rollout.spec.interval.as_millis() as u64, by = %who, "rollout started");
        tokio::spawn(self.clone().drive(rollout.clone()));
        Ok(rollout)
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

    fn snapshots(&self, service: &str, canary: &str, stable: &str) -> (Snapshot, Snapshot) {
        let table = self.table.load();
        let route = table.configured(service);
        let of = |name: &str| {
            route
                .pool(name)
                .map(|p| Snapshot::of(p))
                .unwrap_or_default()
        };
        (of(canary), of(stable))
    }

    /// The rollout task: each step, then the verdict.
    async fn drive(self: Arc<Self>, rollout: Arc<Rollout>) {
        let (service, pool, stable) = (&rollout.service, &rollout.pool, &rollout.stable);
        let spec = &rollout.spec;
        let steps = spec.steps.len();
        let mut abort = rollout.abort_requested();
        let started = switchback_config::time::unix_now();
        let mut last = RolloutProgress {
            step: 0,
            steps,
            permille: 0,
            canary: Default::default(),
            stable: Default::default(),
            next_step_in: spec.interval,
            waiting: false,
        };
        for (i, &permille) in spec.steps.iter().enumerate() {
            let step = i + 1;
            last = RolloutProgress {
                step,
                permille,
                ..last
            };
            let mark = RolloutMark {
                pool: pool.clone(),
                step,
                steps,
                started,
            };
            let applied = self
                .update_service(service, false, |s| {
                    s.canary = Some(CanaryState {
                        pool: pool.clone(),
                        permille,
                    });
                    s.rollout = Some(mark);
                })
                .await;
            if let Err(e) = applied {
                let reason = format!("step {step} could not be applied: {e}");
                return self
                    .end(&rollout, Outcome::RolledBack, Some(reason), last)
                    .await;
            }
            info!(service = %service, pool = %pool, step, steps, percent = percent(permille), "rollout step");
            rollout.send(RolloutEvent::Step {
                step,
                steps,
                permille,
            });
            let (canary0, stable0) = self.snapshots(service, pool, stable);
            let step_started = Instant::now();
            loop {
                let asked = abort.borrow_and_update().clone();
                if let Some(reason) = asked {
                    return self
                        .end(&rollout, Outcome::Aborted, Some(reason), last)
                        .await;
                }
                let left = spec.interval.saturating_sub(step_started.elapsed());
                let tick = if left.is_zero() {
                    Duration::from_secs(1)
                } else {
                    left.min(Duration::from_secs(1))
                };
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = abort.changed() => continue,
                }
                let (canary1, stable1) = self.snapshots(service, pool, stable);
                let elapsed = step_started.elapsed();
                last = RolloutProgress {
                    step,
                    steps,
                    permille,
                    canary: canary1.since(&canary0),
                    stable: stable1.since(&stable0),
                    next_step_in: spec.interval.saturating_sub(elapsed),
                    waiting: false,
                };
                let verdict = judge(spec, &last.canary, &last.stable);
                last.waiting = verdict == Verdict::TooFewRequests && elapsed >= spec.interval;
                rollout.send(RolloutEvent::Progress(last.clone()));
                match verdict {
                    Verdict::Breach(why) => {
                        let reason = format!("step {step} ({}%): {why}", percent(permille));
                        return self
                            .end(&rollout, Outcome::RolledBack, Some(reason), last)
                            .await;
                    }
                    Verdict::Pass if elapsed >= spec.interval => break,
                    Verdict::TooFewRequests if elapsed >= spec.interval * MAX_WAIT_INTERVALS => {
                        let reason = format!(
                            "step {step} ({}%): only {} requests reached the canary in {}s; at least {} are needed to judge it",
                            percent(permille),
                            last.canary.requests,
                            elapsed.as_secs(),
                            spec.min_requests
                        );
                        return self
                            .end(&rollout, Outcome::RolledBack, Some(reason), last)
                            .await;
                    }
                    _ => {}
                }
            }
        }
        self.end(&rollout, Outcome::Promoted, None, last).await
    }

    /// Ends a rollout: promotes the canary pool, or sends every client back to the stable
    /// pool, then tells the watchers.
    async fn end(
        &self,
        rollout: &Rollout,
        mut outcome: Outcome,
        mut reason: Option<String>,
        progress: RolloutProgress,
    ) {
        let service = &rollout.service;
        if outcome == Outcome::Promoted {
            let promoted = self
                .change_active(
                    Some(service),
                    &rollout.pool,
                    true,
                    "rollout",
                    Change::Promote,
                )
                .await;
            match promoted {
                Ok(o) => {
                    info!(service = %service, pool = %rollout.pool, generation = o.generation, "rollout promoted");
                    rollout.send(RolloutEvent::Finished(RolloutResult {
                        outcome,
                        reason,
                        progress,
                        generation: o.generation,
                    }));
                    return;
                }
                // Nothing changed: never leave the canary half-way, go back to stable.
                Err(e) => {
                    outcome = Outcome::RolledBack;
                    reason = Some(format!("every step passed, but the promotion failed: {e}"));
                }
            }
        }
        self.metrics.count_canary_rollback(service);
        let applied = self
            .update_service(service, true, |s| {
                s.canary = None;
                s.rollout = None;
            })
            .await;
        let generation = match applied {
            Ok(g) => g,
            Err(e) => {
                error!(service = %service, pool = %rollout.pool, error = %e, "rollout could not record its end");
                let note = format!("the end of the rollout could not be recorded: {e}");
                reason = Some(match reason {
                    Some(r) => format!("{r}; {note}"),
                    None => note,
                });
                self.live.lock().await.generation
            }
        };
        let reason_text = reason.clone().unwrap_or_default();
        warn!(service = %service, pool = %rollout.pool, stable = %rollout.stable, outcome = outcome.as_str(), reason = %reason_text, generation, "rollout rolled back");
        rollout.send(RolloutEvent::Finished(RolloutResult {
            outcome,
            reason,
            progress,
            generation,
        }));
    }
}
