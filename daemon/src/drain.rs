//! Draining: waiting for the requests in flight to a pool to finish, and closing its
//! long-lived connections (WebSockets) once the drain timeout passes, so that a deploy script
//! can stop the old version right after a switch and its WebSocket clients reconnect to the new
//! one.
//!
//! The counts it watches ([`PoolStats`]) outlive table generations, so a wait started after a
//! switch sees every request and connection the old pool still serves, whichever table they
//! were routed by.

use std::sync::Arc;
use std::time::Duration;

use switchback_config::LongLivedPolicy;
use switchback_proxy::{PoolStats, RoutingTable};
use tokio::time::Instant;

/// How a wait for a pool to drain ended.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainOutcome {
    pub pool: String,
    /// True when no request was in flight any more and no long-lived connection was left open
    /// (with `long_lived = "keep"`, requests only); false when the timeout passed first.
    pub drained: bool,
    pub in_flight: u64,
    /// Long-lived connections closed when the timeout passed.
    pub closed: u64,
    pub waited: Duration,
}

/// How often the counts are read while waiting.
const POLL: Duration = Duration::from_millis(10);
/// How often `on_progress` hears the counts.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long closed long-lived connections get to end (their proxy tasks see the end of the
/// backend's stream at once; this only bounds the wait).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What a drain does and how long it waits.
#[derive(Debug, Clone, Copy)]
pub struct DrainPlan {
    pub timeout: Duration,
    pub long_lived: LongLivedPolicy,
}

/// Waits until no request is in flight to `pool` of `service` in `table` and it has no
/// long-lived connection open, or `timeout` passes; then closes its long-lived connections if
/// the policy says so and `still_left()` confirms that the pool takes no new traffic (a switch
/// back in the meantime keeps them). `on_progress` hears (in flight, long-lived) about once a
/// second while it waits. A pool the table does not have is drained at once.
pub async fn wait_drain(
    table: &RoutingTable,
    service: &str,
    pool: &str,
    plan: DrainPlan,
    still_left: impl Fn() -> bool,
    on_progress: impl FnMut(u64, u64),
) -> DrainOutcome {
    let stats = table
        .service(service)
        .and_then(|s| s.pool(pool))
        .map(|p| p.stats.clone());
    match stats {
        Some(stats) => drain(&stats, pool, plan, still_left, on_progress).await,
        None => DrainOutcome {
            pool: pool.to_string(),
            drained: true,
            in_flight: 0,
            closed: 0,
            waited: Duration::ZERO,
        },
    }
}

async fn drain(
    stats: &Arc<PoolStats>,
    pool: &str,
    plan: DrainPlan,
    still_left: impl Fn() -> bool,
    mut on_progress: impl FnMut(u64, u64),
) -> DrainOutcome {
    let started = Instant::now();
    let mut last_report = started;
    let counts = || {
        let long_lived = match plan.long_lived {
            LongLivedPolicy::Close => stats.long_lived.count(),
            LongLivedPolicy::Keep => 0,
        };
        (stats.in_flight(), long_lived)
    };
    loop {
        let (in_flight, long_lived) = counts();
        let waited = started.elapsed();
        if in_flight == 0 && long_lived == 0 {
            return DrainOutcome {
                pool: pool.to_string(),
                drained: true,
                in_flight,
                closed: 0,
                waited,
            };
        }
        if waited >= plan.timeout {
            break;
        }
        if last_report.elapsed() >= REPORT_EVERY {
            on_progress(in_flight, long_lived);
            last_report = Instant::now();
        }
        tokio::time::sleep(POLL.min(plan.timeout - waited)).await;
    }
    let mut closed = 0;
    if plan.long_lived == LongLivedPolicy::Close && still_left() {
        closed = stats.long_lived.close_all();
        let closing = Instant::now();
        while stats.long_lived.count() > 0 && closing.elapsed() < CLOSE_WAIT {
            tokio::time::sleep(POLL).await;
        }
    }
    let (in_flight, long_lived) = counts();
    DrainOutcome {
        pool: pool.to_string(),
        drained: in_flight == 0 && (long_lived == 0 || !still_left()),
        in_flight,
        closed,
        waited: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchback_proxy::pool::InFlight;

    const CLOSE_AFTER_5S: DrainPlan = DrainPlan {
        timeout: Duration::from_secs(5),
        long_lived: LongLivedPolicy::Close,
    };

    #[tokio::test(start_paused = true)]
    async fn a_drain_times_out_with_the_count_left_and_reports_each_second() {
        let stats: Arc<PoolStats> = Arc::default();
        let _stuck = InFlight::start(&stats);
        let mut reports = Vec::new();
        let out = drain(
            &stats,
            "blue",
            CLOSE_AFTER_5S,
            || true,
            |n, _| reports.push(n),
        )
        .await;
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
        let plan = DrainPlan {
            timeout: Duration::from_secs(30),
            ..CLOSE_AFTER_5S
        };
        let out = drain(&stats, "blue", plan, || true, |_, _| {}).await;
        assert!(out.drained, "{out:?}");
        assert_eq!(out.in_flight, 0);
        assert!(
            out.waited >= Duration::from_millis(1200) && out.waited < Duration::from_millis(1300),
            "ended with the last request: {out:?}"
        );
    }

    /// A registered long-lived connection: a real socket pair on loopback.
    fn open_long_lived(
        stats: &PoolStats,
    ) -> (
        std::net::TcpStream,
        switchback_proxy::long_lived::LongLivedGuard,
    ) {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        let guard = stats.long_lived.register(ours.as_raw_fd()).unwrap();
        (peer, guard)
    }

    #[tokio::test(start_paused = true)]
    async fn long_lived_connections_are_closed_when_the_timeout_passes_unless_kept() {
        use std::io::Read;
        let stats: Arc<PoolStats> = Arc::default();
        let (mut peer, guard) = open_long_lived(&stats);
        let mut reports = Vec::new();
        // Ended by the test once closed, as pingora's copy loop ends its connection.
        let out = drain(
            &stats,
            "blue",
            CLOSE_AFTER_5S,
            || true,
            |n, l| reports.push((n, l)),
        )
        .await;
        assert_eq!(out.closed, 1, "{out:?}");
        assert_eq!(
            out.waited,
            Duration::from_secs(7),
            "the close wait ran out: {out:?}"
        );
        assert_eq!(
            peer.read(&mut [0u8; 4]).unwrap(),
            0,
            "the socket was shut down"
        );
        assert_eq!(reports[0], (0, 1));
        drop(guard);

        // A pool that serves again (a switch back) keeps its connections.
        let (_peer, _guard) = open_long_lived(&stats);
        let out = drain(&stats, "blue", CLOSE_AFTER_5S, || false, |_, _| {}).await;
        assert_eq!(out.closed, 0);
        assert!(out.drained, "{out:?}");

        // "keep": requests only.
        let keep = DrainPlan {
            long_lived: LongLivedPolicy::Keep,
            ..CLOSE_AFTER_5S
        };
        let out = drain(&stats, "blue", keep, || true, |_, _| {}).await;
        assert!(out.drained && out.closed == 0, "{out:?}");
        assert_eq!(out.waited, Duration::ZERO);
        assert_eq!(stats.long_lived.count(), 1);
    }
}
