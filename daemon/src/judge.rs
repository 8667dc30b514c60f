//! Judging a canary: the limits of a rollout, a pool's numbers over a window, and the verdict.
//!
//! A window is the difference between two [`Snapshot`]s of a pool's counters and duration
//! histogram, the same ones the Prometheus exporter reads ([`crate::scrape`]), so what a
//! rollout judged is what the dashboard shows. Everything here is pure and tested beside the
//! code.

use std::collections::BTreeMap;
use std::time::Duration;

/// One pool's counters on each node that serves it, by node name.
pub type Counts = BTreeMap<String, Snapshot>;

use switchback_proxy::split::BUCKETS;
use switchback_proxy::Pool;

/// What a rollout does and where its limits are.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    /// Canary weights in thousandths, strictly increasing, 1 to 1000.
    pub steps: Vec<u32>,
    /// How long each step is watched before the next.
    pub interval: Duration,
    /// The highest acceptable share (0 to 1) of 5xx answers, and of failed connections.
    pub max_error_rate: f64,
    /// The highest acceptable 95th percentile of request duration.
    pub max_p95: Duration,
    /// Requests the canary must have answered in a step before it is judged.
    pub min_requests: u64,
}

/// A step is given up to this many intervals to see `min_requests`; then the rollout rolls
/// back, since a canary nobody uses was never judged.
pub const MAX_WAIT_INTERVALS: u32 = 10;

/// Why a rollout's steps or limits cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("no steps: give percentages like 5,25,50,100")]
    NoSteps,
    #[error("steps must increase: {} comes after {}", percent(*.later), percent(*.earlier))]
    NotIncreasing { earlier: u32, later: u32 },
    #[error("step {} is out of range: use more than 0 and at most 100", percent(*.0))]
    StepOutOfRange(u32),
    #[error("interval must be at least 1s")]
    IntervalTooShort,
    #[error("max error rate must be more than 0 and at most 100 (percent)")]
    ErrorRateOutOfRange,
    #[error("max p95 must be more than zero")]
    ZeroP95,
    #[error("min requests must be at least 1")]
    ZeroMinRequests,
}

impl RolloutSpec {
    /// Checks the spec; the error says what is wrong.
    pub fn check(&self) -> Result<(), SpecError> {
        if self.steps.is_empty() {
            return Err(SpecError::NoSteps);
        }
        for w in self.steps.windows(2) {
            if w[1] <= w[0] {
                return Err(SpecError::NotIncreasing {
                    earlier: w[0],
                    later: w[1],
                });
            }
        }
        if let Some(bad) = self.steps.iter().find(|s| **s == 0 || **s > BUCKETS) {
            return Err(SpecError::StepOutOfRange(*bad));
        }
        if self.interval < Duration::from_secs(1) {
            return Err(SpecError::IntervalTooShort);
        }
        if !(self.max_error_rate > 0.0 && self.max_error_rate <= 1.0) {
            return Err(SpecError::ErrorRateOutOfRange);
        }
        if self.max_p95.is_zero() {
            return Err(SpecError::ZeroP95);
        }
        if self.min_requests == 0 {
            return Err(SpecError::ZeroMinRequests);
        }
        Ok(())
    }
}

/// A weight in thousandths as a percentage.
pub fn percent(permille: u32) -> f64 {
    permille as f64 / 10.0
}

/// A pool's counters at one moment (in fleet mode, one node's: nodes publish them, and a
/// rollout judges their sum).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    by_class: [u64; 5],
    connect_failures: u64,
    /// Cumulative counts per histogram bucket, with the bucket's upper bound in seconds.
    buckets: Vec<(f64, u64)>,
}

impl Snapshot {
    /// The pool's judged numbers: only requests the split assigned (no forced ones), timed
    /// from the request sent to the backend's response header.
    pub fn of(pool: &Pool) -> Snapshot {
        Snapshot {
            by_class: pool.stats.judged_by_class(),
            connect_failures: pool.connect_failures(),
            buckets: pool.stats.judged_latency_buckets(),
        }
    }

    /// `self` plus `other`: counters of the same pool on two nodes (the same histogram).
    pub fn add(&mut self, other: &Snapshot) {
        for (mine, theirs) in self.by_class.iter_mut().zip(other.by_class) {
            *mine += theirs;
        }
        self.connect_failures += other.connect_failures;
        if self.buckets.is_empty() {
            self.buckets = other.buckets.clone();
        } else if self.buckets.len() == other.buckets.len() {
            for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
                mine.1 += theirs.1;
            }
        }
    }

    /// Takes the nodes `now` has and `start` lacks into `start` as they are now: a node whose
    /// counters arrive after a step began counts from its first counters on.
    pub fn start_new_nodes(start: &mut Counts, now: &Counts) {
        for (node, snapshot) in now {
            start
                .entry(node.clone())
                .or_insert_with(|| snapshot.clone());
        }
    }

    /// What happened on several nodes between two moments: the sum of each node's window, for
    /// the nodes seen at both (see [`Snapshot::start_new_nodes`]).
    pub fn window_of(now: &Counts, start: &Counts) -> Window {
        let (mut sum_now, mut sum_start) = (Snapshot::default(), Snapshot::default());
        for (node, then) in start {
            if let Some(now) = now.get(node) {
                sum_now.add(now);
                sum_start.add(then);
            }
        }
        sum_now.since(&sum_start)
    }

    /// What happened between `start` and this snapshot.
    pub fn since(&self, start: &Snapshot) -> Window {
        let by_class: Vec<u64> = self
            .by_class
            .iter()
            .zip(start.by_class)
            .map(|(now, then)| now.saturating_sub(then))
            .collect();
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, (bound, now))| {
                let then = start.buckets.get(i).map_or(0, |b| b.1);
                (*bound, now.saturating_sub(then))
            })
            .collect();
        Window {
            requests: by_class.iter().sum(),
            errors: by_class[4],
            connect_failures: self.connect_failures.saturating_sub(start.connect_failures),
            p95: quantile(&buckets, 0.95),
        }
    }
}

/// The `q` quantile (seconds) of a cumulative histogram, interpolated linearly within the
/// bucket it falls in, as Prometheus' `histogram_quantile` does. Beyond the last bound it is
/// that bound.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            let in_bucket = (count - lower.1) as f64;
            let fraction = if in_bucket > 0.0 {
                (rank - lower.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * fraction);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// One pool's numbers over a window of a rollout step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    /// Answers with a 5xx status (the backend's or the proxy's own 502/503/504).
    pub errors: u64,
    pub connect_failures: u64,
    /// Seconds; None before any request.
    pub p95: Option<f64>,
}

impl Window {
    /// The share (0 to 1) of 5xx answers.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What the numbers of a window say.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Within every limit.
    Pass,
    /// Too few canary requests to judge yet.
    TooFewRequests,
    /// Out of limits: the reason, for people.
    Breach(String),
}

/// Judges the canary's window against the limits, and against the stable pool's window when
/// the stable pool saw enough requests to compare with.
pub fn judge(spec: &RolloutSpec, canary: &Window, stable: &Window) -> Verdict {
    if canary.requests < spec.min_requests {
        return Verdict::TooFewRequests;
    }
    let pct = |r: f64| r * 100.0;
    let limit = spec.max_error_rate;
    let errors = canary.error_rate();
    if errors > limit {
        return Verdict::Breach(format!(
            "5xx ratio {:.1}% ({} of {}) is over the limit of {:.1}%",
            pct(errors),
            canary.errors,
            canary.requests,
            pct(limit)
        ));
    }
    let failures = canary.connect_failures as f64 / canary.requests as f64;
    if failures > limit {
        return Verdict::Breach(format!(
            "{} failed connections for {} requests ({:.1}%) is over the limit of {:.1}%",
            canary.connect_failures,
            canary.requests,
            pct(failures),
            pct(limit)
        ));
    }
    let max_p95 = spec.max_p95.as_secs_f64();
    if let Some(p95) = canary.p95.filter(|p| *p > max_p95) {
        return Verdict::Breach(format!(
            "p95 {} is over the limit of {}",
            seconds(p95),
            seconds(max_p95)
        ));
    }
    if stable.requests >= spec.min_requests {
        let stable_errors = stable.error_rate();
        if errors > stable_errors + limit / 2.0 {
            return Verdict::Breach(format!(
                "5xx ratio {:.1}% is {:.1} points above the stable pool's {:.1}% (at most {:.1} allowed)",
                pct(errors),
                pct(errors - stable_errors),
                pct(stable_errors),
                pct(limit / 2.0)
            ));
        }
        if let (Some(p95), Some(stable_p95)) = (canary.p95, stable.p95) {
            if p95 > 2.0 * stable_p95 && p95 > max_p95 / 2.0 {
                return Verdict::Breach(format!(
                    "p95 {} is more than twice the stable pool's {} (and over half the limit)",
                    seconds(p95),
                    seconds(stable_p95)
                ));
            }
        }
    }
    Verdict::Pass
}

fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0}ms", s * 1000.0)
    } else {
        format!("{s:.2}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        RolloutSpec {
            steps: vec![50, 250, 500, 1000],
            interval: Duration::from_secs(30),
            max_error_rate: 0.05,
            max_p95: Duration::from_secs(2),
            min_requests: 50,
        }
    }

    fn window(requests: u64, errors: u64, p95: f64) -> Window {
        Window {
            requests,
            errors,
            connect_failures: 0,
            p95: Some(p95),
        }
    }

    fn snapshot(ok: u64, errors: u64, fast: u64, slow: u64) -> Snapshot {
        Snapshot {
            by_class: [0, ok, 0, 0, errors],
            connect_failures: 0,
            buckets: vec![(0.1, fast), (10.0, fast + slow)],
        }
    }

    #[test]
    fn a_fleet_window_sums_each_nodes_window() {
        let start: Counts = [
            ("a".to_string(), snapshot(100, 1, 101, 0)),
            ("b".to_string(), snapshot(50, 0, 50, 0)),
        ]
        .into();
        let now: Counts = [
            ("a".to_string(), snapshot(190, 1, 191, 0)),
            ("b".to_string(), snapshot(60, 10, 50, 20)),
            // Seen only now: its counters from before the step are not the step's.
            ("c".to_string(), snapshot(1000, 500, 1500, 0)),
        ]
        .into();
        let w = Snapshot::window_of(&now, &start);
        assert_eq!((w.requests, w.errors), (90 + 20, 10));
        // 110 requests: 90 fast, 20 slow; the 95th is in the slow bucket.
        assert!(w.p95.unwrap() > 0.1, "{w:?}");
        let alone: Counts = [("a".to_string(), snapshot(190, 1, 191, 0))].into();
        assert_eq!(Snapshot::window_of(&alone, &start).errors, 0);
    }

    #[test]
    fn specs_are_checked() {
        assert_eq!(spec().check(), Ok(()));
        let bad = |f: fn(&mut RolloutSpec)| {
            let mut s = spec();
            f(&mut s);
            s.check().unwrap_err()
        };
        let e = bad(|s| s.steps = vec![250, 50]);
        assert_eq!(
            e,
            SpecError::NotIncreasing {
                earlier: 250,
                later: 50
            }
        );
        assert_eq!(e.to_string(), "steps must increase: 5 comes after 25");
        assert!(matches!(
            bad(|s| s.steps = vec![50, 50]),
            SpecError::NotIncreasing { .. }
        ));
        assert_eq!(bad(|s| s.steps = vec![]), SpecError::NoSteps);
        assert_eq!(bad(|s| s.steps = vec![0, 10]), SpecError::StepOutOfRange(0));
        assert_eq!(
            bad(|s| s.steps = vec![500, 1010]),
            SpecError::StepOutOfRange(1010)
        );
        assert_eq!(
            bad(|s| s.max_error_rate = 0.0),
            SpecError::ErrorRateOutOfRange
        );
        assert_eq!(
            bad(|s| s.interval = Duration::from_millis(10)),
            SpecError::IntervalTooShort
        );
        assert_eq!(bad(|s| s.min_requests = 0), SpecError::ZeroMinRequests);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let b = [(0.01, 50), (0.1, 100), (1.0, 100)];
        assert_eq!(quantile(&b, 0.5), Some(0.01));
        let p95 = quantile(&b, 0.95).unwrap();
        assert!((p95 - 0.091).abs() < 1e-9, "{p95}");
        assert_eq!(quantile(&[(0.01, 0), (0.1, 0)], 0.95), None);
        assert_eq!(quantile(&[(0.01, 0), (0.1, 0), (10.0, 0)], 0.5), None);
    }

    #[test]
    fn a_window_is_the_difference_of_two_snapshots() {
        let start = Snapshot {
            by_class: [0, 100, 0, 0, 5],
            connect_failures: 1,
            buckets: vec![(0.01, 100), (0.1, 105)],
        };
        let now = Snapshot {
            by_class: [0, 190, 0, 3, 7],
            connect_failures: 4,
            buckets: vec![(0.01, 150), (0.1, 200)],
        };
        let w = now.since(&start);
        assert_eq!((w.requests, w.errors, w.connect_failures), (95, 2, 3));
        assert!(w.p95.unwrap() > 0.01 && w.p95.unwrap() <= 0.1);
    }

    #[test]
    fn judging_uses_the_limits_then_the_stable_pool() {
        let s = spec();
        let quiet = Window::default();
        assert_eq!(
            judge(&s, &window(49, 49, 9.0), &quiet),
            Verdict::TooFewRequests
        );
        assert_eq!(judge(&s, &window(100, 5, 0.2), &quiet), Verdict::Pass);
        let Verdict::Breach(why) = judge(&s, &window(100, 30, 0.2), &quiet) else {
            panic!()
        };
        assert!(why.contains("5xx ratio 30.0%"), "{why}");
        let Verdict::Breach(why) = judge(&s, &window(100, 0, 2.5), &quiet) else {
            panic!()
        };
        assert!(
            why.contains("p95 2.50s is over the limit of 2.00s"),
            "{why}"
        );
        let mut failing = window(100, 0, 0.1);
        failing.connect_failures = 10;
        assert!(matches!(judge(&s, &failing, &quiet), Verdict::Breach(_)));
        // Against the stable pool: 4% errors where stable has none is too many...
        assert!(matches!(
            judge(&s, &window(100, 4, 0.1), &window(1000, 0, 0.1)),
            Verdict::Breach(_)
        ));
        // ...but not where stable fails as often.
        assert_eq!(
            judge(&s, &window(100, 4, 0.1), &window(1000, 30, 0.1)),
            Verdict::Pass
        );
        // Three times slower than stable and over half the limit.
        assert!(matches!(
            judge(&s, &window(100, 0, 1.5), &window(1000, 0, 0.5)),
            Verdict::Breach(_)
        ));
        assert_eq!(
            judge(&s, &window(100, 0, 0.03), &window(1000, 0, 0.01)),
            Verdict::Pass,
            "fast in absolute terms is fine"
        );
    }
}
