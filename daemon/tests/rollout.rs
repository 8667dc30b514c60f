//! Rollouts in process, on tokio's paused clock: the steps, the verdicts, the end. Traffic is
//! the pools' own counters and histograms moved as the request path would move them, so each
//! test takes milliseconds however long its rollout's intervals are.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::Plane;
use switchback_control::RolloutOutcome;
use switchback_daemon::drive::start_rollout;
use switchback_daemon::judge::RolloutSpec;
use switchback_daemon::rollout::{RolloutEvent, RolloutResult};
use switchback_daemon::Controller;

fn spec(steps: &[u32]) -> RolloutSpec {
    RolloutSpec {
        steps: steps.to_vec(),
        interval: Duration::from_secs(10),
        max_error_rate: 0.05,
        max_p95: Duration::from_secs(2),
        min_requests: 20,
    }
}

/// Answers `n` requests the split assigned to `pool`, `errors` of them with a 5xx, each
/// backend taking `seconds` to its response header: what the data path records for a judged
/// request.
fn serve(controller: &Controller, pool: &str, n: u64, errors: u64, seconds: f64) {
    let table = controller.table();
    let pool = table.configured("app").pool(pool).unwrap();
    let took = Some(Duration::from_secs_f64(seconds));
    for i in 0..n {
        pool.stats.judge(if i < errors { 4 } else { 1 }, took);
    }
}

/// A steady stream of traffic: every 250 ms, 5 requests to each pool, the canary failing
/// `canary_errors` of each 5 once `fail_from_step` is reached.
fn traffic(
    controller: Arc<Controller>,
    canary_errors: u64,
    fail_from_step: u32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let weight = controller
                .table()
                .configured("app")
                .split
                .canary
                .map_or(0, |c| c.permille);
            let step = match weight {
                0 => 0,
                w if w <= 100 => 1,
                w if w <= 500 => 2,
                _ => 3,
            };
            let errors = if step >= fail_from_step {
                canary_errors
            } else {
                0
            };
            serve(&controller, "green", 5, errors, 0.01);
            serve(&controller, "blue", 5, 0, 0.01);
        }
    })
}

async fn run_to_end(
    controller: &Arc<Controller>,
    spec: RolloutSpec,
) -> (Vec<RolloutEvent>, RolloutResult) {
    let rollout = start_rollout(controller, None, "green", spec, false, "test")
        .await
        .expect("the rollout starts");
    let mut events = rollout.subscribe();
    let mut seen = Vec::new();
    loop {
        match events.recv().await {
            Ok(RolloutEvent::Finished(r)) => return (seen, r),
            Ok(e) => seen.push(e),
            Err(e) => panic!("events stopped: {e}"),
        }
    }
}

fn steps_of(events: &[RolloutEvent]) -> Vec<(usize, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            RolloutEvent::Step { step, permille, .. } => Some((*step, *permille)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_healthy_canary_steps_through_and_is_promoted() {
    let p = Plane::new("");
    let feeding = traffic(p.controller.clone(), 0, u32::MAX);
    let started = tokio::time::Instant::now();
    let (events, end) = run_to_end(&p.controller, spec(&[100, 500, 1000])).await;
    feeding.abort();
    assert_eq!(end.outcome, RolloutOutcome::Promoted, "{:?}", end.reason);
    assert_eq!(steps_of(&events), vec![(1, 100), (2, 500), (3, 1000)]);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(32),
        "three steps of 10 s each: {waited:?}"
    );
    assert!(
        events.iter().any(
            |e| matches!(e, RolloutEvent::Progress(p) if p.step == 2 && p.canary.requests > 0)
        ),
        "progress reports the canary's numbers"
    );
    let live = p.controller.live_state().await;
    let app = &live.services["app"];
    assert_eq!(app.active, "green");
    assert_eq!(app.rollback_to.as_deref(), Some("blue"));
    assert_eq!((app.canary.clone(), app.rollout.clone()), (None, None));
    assert_eq!(end.generation, 4, "three steps and the promotion");
}

#[tokio::test(start_paused = true)]
async fn a_canary_that_fails_in_step_two_is_rolled_back_at_once() {
    let p = Plane::new("");
    // 2 of every 5 canary requests fail from step 2 on: 40%, far over the 5% limit.
    let feeding = traffic(p.controller.clone(), 2, 2);
    let started = tokio::time::Instant::now();
    let (events, end) = run_to_end(&p.controller, spec(&[100, 500, 1000])).await;
    feeding.abort();
    assert_eq!(end.outcome, RolloutOutcome::RolledBack);
    let reason = end.reason.unwrap_or_default();
    assert!(reason.starts_with("step 2 (50%): 5xx ratio"), "{reason}");
    assert_eq!(steps_of(&events), vec![(1, 100), (2, 500)]);
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_secs(10) && waited < Duration::from_secs(13),
        "judged within a few seconds of the failures starting: {waited:?}"
    );
    let live = p.controller.live_state().await;
    assert_eq!(live.services["app"].active, "blue");
    assert_eq!(
        live.services["app"].canary, None,
        "every client back on blue"
    );
    let rollbacks = p
        .controller
        .metrics()
        .gather()
        .into_iter()
        .find(|f| f.name() == "switchback_rollbacks_total")
        .map(|f| f.get_metric()[0].get_counter().get_value());
    assert_eq!(rollbacks, Some(1.0));
}

#[tokio::test(start_paused = true)]
async fn a_slow_canary_is_judged_by_its_p95() {
    let p = Plane::new("");
    let controller = p.controller.clone();
    let feeding = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            serve(&controller, "green", 5, 0, 3.0);
        }
    });
    let (_, end) = run_to_end(&p.controller, spec(&[100, 1000])).await;
    feeding.abort();
    assert_eq!(end.outcome, RolloutOutcome::RolledBack);
    let reason = end.reason.unwrap_or_default();
    assert!(
        reason.contains("p95") && reason.contains("over the limit of 2.00s"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_canary_nobody_reaches_is_never_promoted() {
    let p = Plane::new("");
    let (events, end) = run_to_end(&p.controller, spec(&[100, 1000])).await;
    assert_eq!(end.outcome, RolloutOutcome::RolledBack);
    let reason = end.reason.unwrap_or_default();
    assert!(
        reason.contains("only 0 requests reached the canary in 100s"),
        "{reason}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RolloutEvent::Progress(p) if p.waiting)),
        "progress says the step waits for requests"
    );
    assert_eq!(
        p.controller.live_state().await.services["app"].active,
        "blue"
    );
}
