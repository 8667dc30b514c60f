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
//! A rollout is three parts: this module holds its handle (what the controller keeps and what
//! watchers subscribe to), [`crate::drive`] the task that steps it through the controller's
//! public API, and [`crate::judge`] the verdict on a window of numbers, which is pure.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use switchback_control::RolloutOutcome;
use tokio::sync::{broadcast, watch};

use crate::judge::{RolloutSpec, Window};

/// How a rollout ended: the protocol's enum, so that what the driver decided is what the
/// wire says.
pub type Outcome = RolloutOutcome;

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
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the rollout to stop and roll back; `reason` says who asked. Only the first ask
    /// counts.
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

    /// Records an event and tells every watcher; the driver's only way to report.
    pub fn send(&self, event: RolloutEvent) {
        match &event {
            RolloutEvent::Progress(p) => {
                *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.clone());
            }
            RolloutEvent::Finished(r) => {
                *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.progress.clone());
                self.result.send_replace(Some(r.clone()));
            }
            RolloutEvent::Step {
                step,
                steps,
                permille,
            } => {
                *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(RolloutProgress {
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
