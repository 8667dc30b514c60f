//! Draining: waiting for the requests in flight to a pool to finish, so that a deploy script
//! can stop the old version right after a switch.
//!
//! The count it watches ([`PoolStats`]) outlives table generations, so a wait started after a
//! switch sees every request the old pool still serves, whichever table they were routed by.

use std::sync::Arc;
use std::time::Duration;

use switchback_proxy::{PoolStats, RoutingTable};
use tokio::time::Instant;

/// How a wait for a pool to drain ended.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainOutcome {
    pub pool: String,
    /// True when nothing was in flight any more; false when the timeout passed first.
    pub drained: bool,
    pub in_flight: u64,
    pub waited: Duration,
}

/// How often the count is read while waiting.
const POLL: Duration = Duration::from_millis(10);
/// How often `on_progress` hears the count.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Waits until no request is in flight to `pool` of `service` in `table`, or `timeout`
/// passes. `on_progress` hears the count about once a second while it waits. A pool the table
/// does not have is drained at once.
pub async fn wait_drain(
    table: &RoutingTable,
    service: &str,
    pool: &str,
    timeout: Duration,
    on_progress: impl FnMut(u64),
) -> DrainOutcome {
    let stats = table
        .service(service)
        .and_then(|s| s.pool(pool))
        .map(|p| p.stats.clone());
    match stats {
        Some(stats) => wait_for_zero(&stats, pool, timeout, on_progress).await,
        None => DrainOutcome {
            pool: pool.to_string(),
            drained: true,
            in_flight: 0,
            waited: Duration::ZERO,
        },
    }
}

async fn wait_for_zero(
    stats: &Arc<PoolStats>,
    pool: &str,
    timeout: Duration,
    mut on_progress: impl FnMut(u64),
) -> DrainOutcome {
    let started = Instant::now();
    let mut last_report = started;
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
        if last_report.elapsed() >= REPORT_EVERY {
            on_progress(in_flight);
            last_report = Instant::now();
        }
        tokio::time::sleep(POLL.min(timeout - waited)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchback_proxy::pool::InFlight;

    #[tokio::test(start_paused = true)]
    async fn a_drain_times_out_with_the_count_left_and_reports_each_second() {
        let stats: Arc<PoolStats> = Arc::default();
        let _stuck = InFlight::start(&stats);
        let mut reports = Vec::new();
        let out = wait_for_zero(&stats, "blue", Duration::from_secs(5), |n| reports.push(n)).await;
        assert!(!out.drained, "{out:?}");
        assert_eq!(out.in_flight, 1);
        assert_eq!(out.waited, Duration::from_secs(5), "{out:?}");
        assert_eq!(
            reports,
            vec![1, 1, 1, 1],
            "one report a second while waiting"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_when_the_last_request_does() {
        let stats: Arc<PoolStats> = Arc::default();
        let a = InFlight::start(&stats);
        let b = InFlight::start(&stats);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(a);
            tokio::time::sleep(Duration::from_millis(900)).await;
            drop(b);
        });
        let out = wait_for_zero(&stats, "blue", Duration::from_secs(30), |_| {}).await;
        assert!(out.drained, "{out:?}");
        assert_eq!(out.in_flight, 0);
        assert!(
            out.waited >= Duration::from_millis(1200) && out.waited < Duration::from_millis(1300),
            "ended with the last request: {out:?}"
        );
    }
}
