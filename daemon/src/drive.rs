//! The task that drives a rollout: each step through the controller, the numbers of the
//! step's window judged about once a second, then the end (promote, or back to stable).
//!
//! It uses only the controller's public API, as a person at the CLI would: a step is a canary
//! change, the end is a promotion or a return to the stable pool. The task runs inside the
//! proxy, not in the CLI that started it; the [`Rollout`] handle tells watchers how it goes.

use std::sync::Arc;
use std::time::Duration;

use switchback_config::RolloutMark;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::change::DeployError;
use crate::controller::Controller;
use crate::judge::{judge, percent, Counts, RolloutSpec, Snapshot, Verdict, MAX_WAIT_INTERVALS};
use crate::rollout::{Outcome, Rollout, RolloutEvent, RolloutProgress, RolloutResult};

/// Starts a rollout of `pool` on a service as a task of its own; the returned handle reports
/// its progress and end.
pub async fn start_rollout(
    controller: &Arc<Controller>,
    service: Option<&str>,
    pool: &str,
    spec: RolloutSpec,
    force: bool,
    who: &str,
) -> Result<Arc<Rollout>, DeployError> {
    let rollout = controller.begin_rollout(service, pool, spec, force).await?;
    let steps: Vec<f64> = rollout.spec.steps.iter().map(|s| percent(*s)).collect();
    info!(service = %rollout.service, pool = %rollout.pool, stable = %rollout.stable, steps = ?steps, interval_ms = rollout.spec.interval.as_millis() as u64, by = %who, "rollout started");
    tokio::spawn(drive(controller.clone(), rollout.clone()));
    Ok(rollout)
}

/// The numbers of the canary and the stable pool now: this node's, and in fleet mode those
/// the other connected nodes published.
fn snapshots(controller: &Controller, rollout: &Rollout) -> (Counts, Counts) {
    let table = controller.table();
    let route = table.configured(&rollout.service);
    let of = |name: &str| {
        let mut counts = controller
            .fleet()
            .map(|f| f.pool_counts(&rollout.service, name))
            .unwrap_or_default();
        let mine = route
            .pool(name)
            .map(|p| Snapshot::of(p))
            .unwrap_or_default();
        counts.insert(controller.fleet_node().unwrap_or_default(), mine);
        counts
    };
    (of(&rollout.pool), of(&rollout.stable))
}

/// Each step, then the end.
async fn drive(controller: Arc<Controller>, rollout: Arc<Rollout>) {
    let (outcome, reason, last) = steps(&controller, &rollout).await;
    end(&controller, &rollout, outcome, reason, last).await
}

/// Runs the steps until one breaches, is aborted or starves, or the last one passes: how the
/// rollout should end, why, and the numbers of the step it ended on.
async fn steps(
    controller: &Controller,
    rollout: &Rollout,
) -> (Outcome, Option<String>, RolloutProgress) {
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
            pool: rollout.pool.clone(),
            step,
            steps,
            started,
            node: controller.fleet_node(),
        };
        if let Err(e) = controller.set_rollout_step(rollout, permille, mark).await {
            let reason = format!("step {step} could not be applied: {e}");
            return (Outcome::RolledBack, Some(reason), last);
        }
        info!(service = %rollout.service, pool = %rollout.pool, step, steps, percent = percent(permille), "rollout step");
        rollout.send(RolloutEvent::Step {
            step,
            steps,
            permille,
        });
        let (mut canary0, mut stable0) = snapshots(controller, rollout);
        let step_started = Instant::now();
        loop {
            let asked = abort.borrow_and_update().clone();
            if let Some(reason) = asked {
                return (Outcome::Aborted, Some(reason), last);
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
            let (canary1, stable1) = snapshots(controller, rollout);
            Snapshot::start_new_nodes(&mut canary0, &canary1);
            Snapshot::start_new_nodes(&mut stable0, &stable1);
            let elapsed = step_started.elapsed();
            last = RolloutProgress {
                step,
                steps,
                permille,
                canary: Snapshot::window_of(&canary1, &canary0),
                stable: Snapshot::window_of(&stable1, &stable0),
                next_step_in: spec.interval.saturating_sub(elapsed),
                waiting: false,
            };
            let verdict = judge(spec, &last.canary, &last.stable);
            last.waiting = verdict == Verdict::TooFewRequests && elapsed >= spec.interval;
            rollout.send(RolloutEvent::Progress(last.clone()));
            match verdict {
                Verdict::Breach(why) => {
                    let reason = format!("step {step} ({}%): {why}", percent(permille));
                    return (Outcome::RolledBack, Some(reason), last);
                }
                Verdict::Pass if elapsed >= spec.interval => break,
                Verdict::TooFewRequests if elapsed >= spec.interval * MAX_WAIT_INTERVALS => {
                    let reason = starved(spec, step, permille, last.canary.requests, elapsed);
                    return (Outcome::RolledBack, Some(reason), last);
                }
                _ => {}
            }
        }
    }
    (Outcome::Promoted, None, last)
}

fn starved(spec: &RolloutSpec, step: usize, permille: u32, seen: u64, waited: Duration) -> String {
    format!(
        "step {step} ({}%): only {seen} requests reached the canary in {}s; at least {} are needed to judge it",
        percent(permille),
        waited.as_secs(),
        spec.min_requests
    )
}

/// Ends a rollout: promotes the canary pool, or sends every client back to the stable pool,
/// then tells the watchers.
async fn end(
    controller: &Controller,
    rollout: &Rollout,
    mut outcome: Outcome,
    mut reason: Option<String>,
    progress: RolloutProgress,
) {
    let service = &rollout.service;
    if outcome == Outcome::Promoted {
        match controller.promote(rollout).await {
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
    let generation = match controller.return_to_stable(rollout).await {
        Ok(g) => g,
        Err(e) => {
            error!(service = %service, pool = %rollout.pool, error = %e, "rollout could not record its end");
            let note = format!("the end of the rollout could not be recorded: {e}");
            reason = Some(match reason {
                Some(r) => format!("{r}; {note}"),
                None => note,
            });
            controller.generation().await
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
