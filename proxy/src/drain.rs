//! Draining: waiting for the requests in flight to a pool to finish, so that a deploy script
//! can stop the old version right after a switch.

use std::time::{Duration, Instant};

use crate::controller::Controller;

/// How a wait for the old pool to drain ended.
#[derive(Debug, Clone)]
pub struct DrainOutcome {
    pub pool: String,
    pub drained: bool,
    pub in_flight: u64,
    pub waited: Duration,
}

impl Controller {
    /// Waits until no request is in flight to `pool`, or `timeout` passes. `on_progress` hears
    /// the count about once a second while it waits.
    pub async fn wait_drain(
        &self,
        service: &str,
        pool: &str,
        timeout: Duration,
        mut on_progress: impl FnMut(u64),
    ) -> DrainOutcome {
        let stats = self
            .table
            .load()
            .service(service)
            .and_then(|s| s.pool(pool))
            .map(|p| p.stats.clone());
        let started = Instant::now();
        let mut last_report = started;
        let Some(stats) = stats else {
            return DrainOutcome {
                pool: pool.to_string(),
                drained: true,
                in_flight: 0,
                waited: Duration::ZERO,
            };
        };
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
            if last_report.elapsed() >= Duration::from_secs(1) {
                on_progress(in_flight);
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10).min(timeout - waited)).await;
        }
    }
}
