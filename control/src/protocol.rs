//! The control protocol, in one file: what a deploy tool may ask and what it gets back.
//!
//! JSON lines over a unix socket. The client writes one request object per line; the server
//! answers each with zero or more progress lines (`{"event":...}`) and then exactly one final
//! line, `{"ok":true,...}` or `{"ok":false,"error":{"code":...,"message":...}}`. Error codes are
//! stable; messages are for humans. docs/control-protocol.md documents every command with an
//! example, and the tests below pin the wire format.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest request line the server reads; longer lines are refused and the connection
/// closed.
pub const MAX_LINE: usize = 1024 * 1024;

/// A command, as sent on the wire: `{"cmd":"switch","service":"app","pool":"green"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Every service (or one), its pools, backends and health, and the traffic split.
    Status {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    /// Send every new request for `service` to `pool`.
    Switch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        pool: String,
        /// Switch even when the pool has no healthy backend.
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
        /// Answer only once no request is in flight to the old pool (or `drain_timeout` passed).
        #[serde(default, skip_serializing_if = "is_false")]
        wait_drain: bool,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_duration"
        )]
        drain_timeout: Option<Duration>,
    },
    /// Back to the pool that was active before the last switch.
    Rollback {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    /// Replace a pool's backends.
    PoolSet {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        pool: String,
        backends: Vec<String>,
        /// Apply only once every new backend passes its health check.
        #[serde(default, skip_serializing_if = "is_false")]
        wait: bool,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_duration"
        )]
        timeout: Option<Duration>,
    },
    /// Every TLS host's certificate: names, issuer, validity, next renewal, last error.
    Certs,
    /// Order a new certificate for an ACME host now, and answer once it is served (or failed).
    CertsRenew { host: String },
    /// Load every file certificate pair again.
    ReloadCerts,
    /// Read the config file again and apply it: checked whole first; on any problem nothing
    /// changes. A reload that removes a pool in use (the active one, a canary, a rollout's) is
    /// refused unless `force`.
    Reload {
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    /// Start a new process from the binary at the path this one was started from, hand it
    /// the listening sockets once it is ready, and drain and exit. Answers once the sockets
    /// are handed over, with both pids; the new process answers `status` once it serves.
    Upgrade,
    /// Send `percent` (0 to 100, one decimal) of the service's clients to `pool`; 0 ends the
    /// canary.
    Canary {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        pool: String,
        percent: f64,
        /// Even when the pool has no healthy backend.
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    /// Move a canary of `pool` through `steps`, judging it after each `interval`; promote it
    /// at the end or roll back at the first breach. Streams `rollout_step` and
    /// `rollout_progress` events; the final answer says how it ended.
    Rollout {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        pool: String,
        /// Percentages, increasing (default 5, 25, 50, 100).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        steps: Option<Vec<f64>>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_duration"
        )]
        interval: Option<Duration>,
        /// Percent of 5xx answers (and of failed connections) that rolls back (default 5).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_error_rate: Option<f64>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_duration"
        )]
        max_p95: Option<Duration>,
        /// Canary requests a step needs before it is judged (default 50).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_requests: Option<u64>,
        /// Even when the pool has no healthy backend.
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    /// Follow the running rollout (events, then its end); or get the end of the last one.
    RolloutWatch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    /// Stop the running rollout and send every client back to the stable pool.
    RolloutAbort {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    /// Deploy `backends` to the pool that is not active (`pool` when the service has more than
    /// two): set them, and wait until they pass their health checks (within `health_timeout`,
    /// else nothing changes); switch to the pool, or with `rollout` roll it out (the rollout
    /// fields as `rollout` takes them); then wait for the old pool to drain. It runs in the
    /// proxy: a client that goes away does not stop it, and `deploy_watch` follows it again.
    /// Streams `deploy_phase` events and those of each phase; the final answer says how it
    /// ended. One deploy or rollout runs per service at a time.
    Deploy {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
        backends: Vec<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        rollout: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        steps: Option<Vec<f64>>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_duration"
        )]
        interval: Option<Duration>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_error_rate: Option<f64>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_duration"
        )]
        max_p95: Option<Duration>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_requests: Option<u64>,
        /// How long the new backends have to pass their health checks (default 60s).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_duration"
        )]
        health_timeout: Option<Duration>,
        /// How long the old pool may take to drain (default: the service's `drain_timeout`).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_duration"
        )]
        drain_timeout: Option<Duration>,
    },
    /// Follow the running deploy (events, then its end); or get the end of the last one.
    DeployWatch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The command names this build understands, to tell an unknown command from a malformed one.
pub const COMMANDS: &[&str] = &[
    "status",
    "switch",
    "rollback",
    "pool_set",
    "certs",
    "certs_renew",
    "reload_certs",
    "reload",
    "upgrade",
    "canary",
    "rollout",
    "rollout_watch",
    "rollout_abort",
    "deploy",
    "deploy_watch",
];

/// Stable error codes. Tools match on these; the message is for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not JSON, or not a well-formed request.
    BadRequest,
    /// The `cmd` is not one this build knows.
    UnknownCommand,
    /// The request line is longer than [`MAX_LINE`].
    LineTooLong,
    UnknownService,
    /// There are several services and the request named none.
    ServiceRequired,
    UnknownPool,
    /// The pool has no healthy backend (add `force` to switch anyway).
    NoHealthyBackend,
    /// `rollback` with no earlier pool to go back to.
    NoPreviousPool,
    BadAddress,
    /// The new backends did not pass their health checks in time; nothing changed.
    HealthTimeout,
    /// The new state could not be persisted; nothing changed.
    StateWriteFailed,
    /// No TLS host of that name.
    UnknownHost,
    /// An ACME order failed (or the host's certificate comes from files); the old
    /// certificate stays served.
    RenewFailed,
    /// A certificate file pair could not be loaded; the old certificate stays served.
    CertLoadFailed,
    /// A canary percentage outside 0 to 100, or with more than one decimal.
    BadPercent,
    /// A canary or rollout of the pool that is already active.
    ActivePool,
    /// A rollout runs on the service: `switch` and `canary` wait for its end (or an abort).
    RolloutRunning,
    /// A deploy runs on the service: another deploy or a rollout waits for its end.
    DeployRunning,
    /// `deploy_watch` with no deploy on the service.
    NoDeploy,
    /// The service has more than two pools: `deploy` needs the pool named.
    PoolRequired,
    /// `rollout_abort` or `rollout_watch` with no rollout on the service.
    NoRollout,
    /// Rollout steps or limits that cannot work (steps that do not increase, …).
    BadRollout,
    /// `reload`: the config file has problems (the message lists each as file:line: key);
    /// nothing changed.
    BadConfig,
    /// `reload`: the new config removes a pool in use; nothing changed (add `force`).
    ReloadRefused,
    /// `upgrade`: the new process could not start or take over; this one keeps serving.
    UpgradeFailed,
    /// The server is shutting down, out of connection slots, or handing over to a new process.
    Unavailable,
    /// Fleet mode: another node changed the same service meanwhile; nothing changed here.
    Conflict,
    /// Fleet mode: this node cannot reach etcd; it keeps serving, and nothing changed.
    FleetUnreachable,
    /// Fleet mode: the change was written, but some live nodes did not apply it within
    /// `fleet.ack_timeout`; they converge when they can.
    FleetLagging,
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::UnknownService => "unknown_service",
            ErrorCode::ServiceRequired => "service_required",
            ErrorCode::UnknownPool => "unknown_pool",
            ErrorCode::NoHealthyBackend => "no_healthy_backend",
            ErrorCode::NoPreviousPool => "no_previous_pool",
            ErrorCode::BadAddress => "bad_address",
            ErrorCode::HealthTimeout => "health_timeout",
            ErrorCode::StateWriteFailed => "state_write_failed",
            ErrorCode::UnknownHost => "unknown_host",
            ErrorCode::RenewFailed => "renew_failed",
            ErrorCode::CertLoadFailed => "cert_load_failed",
            ErrorCode::BadPercent => "bad_percent",
            ErrorCode::ActivePool => "active_pool",
            ErrorCode::RolloutRunning => "rollout_running",
            ErrorCode::DeployRunning => "deploy_running",
            ErrorCode::NoDeploy => "no_deploy",
            ErrorCode::PoolRequired => "pool_required",
            ErrorCode::NoRollout => "no_rollout",
            ErrorCode::BadRollout => "bad_rollout",
            ErrorCode::BadConfig => "bad_config",
            ErrorCode::ReloadRefused => "reload_refused",
            ErrorCode::UpgradeFailed => "upgrade_failed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Conflict => "conflict",
            ErrorCode::FleetUnreachable => "fleet_unreachable",
            ErrorCode::FleetLagging => "fleet_lagging",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error answer: `{"ok":false,"error":{"code":"unknown_pool","message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub code: ErrorCode,
    pub message: String,
}

impl ControlError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ControlError {
        ControlError {
            code,
            message: message.into(),
        }
    }
}

/// The successful answers, one shape per command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Status(StatusReply),
    Switch(SwitchReply),
    PoolSet(PoolSetReply),
    Certs(CertsReply),
    Canary(CanaryReply),
    Rollout(RolloutReply),
    Deploy(DeployReply),
    Reload(ReloadReply),
    Upgrade(UpgradeReply),
}

/// The answer to `upgrade`: the sockets went from `old_pid` to `new_pid`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeReply {
    pub old_pid: u32,
    pub new_pid: u32,
}

/// The answer to `reload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReply {
    /// The file that was read.
    pub config_file: String,
    /// What changed, one line each (empty: the file changes nothing that runs).
    pub changes: Vec<String>,
    /// What the file changes that only a new process applies (`switchback upgrade`): the
    /// rest was applied.
    pub needs_upgrade: Vec<String>,
    pub generation: u64,
}

/// A canary: `percent` of a service's clients go to `pool`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryView {
    pub pool: String,
    pub percent: f64,
}

/// The answer to `canary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryReply {
    pub service: String,
    pub pool: String,
    /// The stable pool: everyone else goes there.
    pub active: String,
    /// 0 when the canary was ended.
    pub percent: f64,
    /// The canary before this change, if there was one.
    pub previous: Option<CanaryView>,
    pub generation: u64,
}

/// One pool's numbers since the current rollout step began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowView {
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    /// Percent of answers with a 5xx status.
    pub error_rate: f64,
    pub connect_failures: u64,
    /// The 95th percentile of request duration in milliseconds; null before any request.
    pub p95_ms: Option<f64>,
}

/// The end of a rollout: the final answer to `rollout`, `rollout_watch` and `rollout_abort`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutReply {
    pub service: String,
    pub pool: String,
    pub stable_pool: String,
    pub outcome: RolloutOutcome,
    /// Why it rolled back or was aborted.
    pub reason: Option<String>,
    /// The step it ended on (1-based) and that step's percentage.
    pub step: usize,
    pub steps: usize,
    pub percent: f64,
    /// The numbers of that step.
    pub canary: WindowView,
    pub stable: WindowView,
    pub generation: u64,
}

/// The end of a deploy: the final answer to `deploy` and `deploy_watch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployReply {
    pub service: String,
    /// The pool the new backends went to.
    pub pool: String,
    /// The pool that was active before.
    pub previous: String,
    pub backends: Vec<String>,
    /// The backends `pool` had before.
    pub previous_backends: Vec<String>,
    pub outcome: DeployOutcome,
    /// The rollout's end, for a deploy `--rollout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutReply>,
    /// The old pool's drain, once traffic left it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainReport>,
    pub generation: u64,
}

/// How a deploy ended, when its new backends passed their health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployOutcome {
    /// The new pool is active, and the old one drained (or its drain timed out).
    Switched,
    /// The rollout promoted the new pool, and the old one drained.
    Promoted,
    /// The rollout rolled back (or was aborted): every client is on the old pool.
    RolledBack,
}

/// A deploy's phases, as `deploy_phase` events name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployPhase {
    /// The new backends are set aside for the pool, waiting for their health checks.
    Health,
    /// They passed: the pool is switched to.
    Switch,
    /// They passed: the pool is rolled out.
    Rollout,
    /// Traffic left the old pool: waiting for its requests to finish.
    Drain,
}

/// How a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutOutcome {
    /// Every step passed; the pool is now the active pool.
    Promoted,
    /// A limit was breached; every client is back on the stable pool.
    RolledBack,
    /// Stopped on request; every client is back on the stable pool.
    Aborted,
}

impl RolloutOutcome {
    /// The outcome as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutOutcome::Promoted => "promoted",
            RolloutOutcome::RolledBack => "rolled_back",
            RolloutOutcome::Aborted => "aborted",
        }
    }
}

/// A rollout as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub pool: String,
    pub stable_pool: String,
    pub running: bool,
    pub step: usize,
    pub steps: usize,
    pub percent: f64,
    /// Seconds since the Unix epoch.
    pub started: i64,
    /// For a finished rollout: how it ended, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RolloutOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Fleet mode: the node that drives it, when it is another node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The answer to `certs`, `certs_renew` and `reload_certs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertsReply {
    pub certs: Vec<CertView>,
}

/// Where a host's certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertSourceKind {
    /// Ordered and renewed by ACME.
    Acme,
    /// A certificate and key file pair.
    File,
}

/// One TLS host and the certificate served for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertView {
    pub host: String,
    pub source: CertSourceKind,
    /// For `file`: the certificate chain file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// Whether a certificate is served for the host now.
    pub served: bool,
    #[serde(default)]
    pub names: Vec<String>,
    pub issuer: Option<String>,
    pub serial: Option<String>,
    /// Seconds since the Unix epoch.
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
    /// ACME: when the next order is due, in seconds since the Unix epoch.
    pub next_renewal: Option<i64>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub failures_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The process that answers: it serves (after an upgrade, the new one).
    pub pid: u32,
    /// Its version (the binary's).
    pub version: String,
    /// When it started, in seconds since the Unix epoch.
    pub started: i64,
    /// Bumped by every change to the routing state.
    pub generation: u64,
    pub config_file: String,
    pub state_file: String,
    /// Things an operator should know, like a state file that was set aside at start.
    #[serde(default)]
    pub notices: Vec<String>,
    pub services: Vec<ServiceStatus>,
    /// Fleet mode only: this node and the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// Fleet mode: how this node follows the fleet's state in etcd, and the nodes it knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// This node's name.
    pub node: String,
    /// Whether this node is connected to etcd: changes are refused while it is not.
    pub connected: bool,
    /// Why it is not connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Every node known, this one first.
    pub nodes: Vec<FleetNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetNode {
    pub name: String,
    /// The generation of the fleet state it serves.
    pub generation: u64,
    /// When it last wrote to etcd, in seconds since the Unix epoch.
    pub last_seen: i64,
    /// Whether it holds a live lease in etcd now.
    pub connected: bool,
    /// Why part of the fleet state does not apply on it (a pool its config lacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub hosts: Vec<String>,
    pub path_prefix: String,
    /// The listeners the service is routed on (`services.NAME.listen`); empty: every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
    /// Serves the names no service on its listeners has.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    /// The service answers every request with this redirect (and has no pools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectView>,
    /// The pool new requests go to now (empty for a redirect).
    pub active: String,
    /// The pool the config file names; differs from `active` after a switch.
    pub configured_active: String,
    pub previous: Option<String>,
    /// Where new requests go, in percent per pool.
    pub split: Vec<SplitShare>,
    /// A share of clients sent to another pool than `active`.
    #[serde(default)]
    pub canary: Option<CanaryView>,
    /// The running rollout, or the last one.
    #[serde(default)]
    pub rollout: Option<RolloutStatus>,
    pub pools: Vec<PoolStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedirectView {
    pub to: String,
    pub code: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitShare {
    pub pool: String,
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    /// Requests being proxied to this pool right now.
    pub in_flight: u64,
    /// WebSockets and other upgraded connections open to this pool (not in `in_flight`).
    #[serde(default)]
    pub long_lived: u64,
    /// Whether the live backends differ from the config file's (after `pool set`).
    pub differs_from_config: bool,
    pub backends: Vec<BackendStatus>,
}

/// What the proxy knows of a backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendHealth {
    /// Checked and passing.
    Healthy,
    /// Checked and failing: no request goes there while the pool has a healthy backend.
    Down,
    /// Checked, but no probe has answered yet.
    Unknown,
    /// The service has no health check; the backend is presumed able to serve.
    Unchecked,
}

impl BackendHealth {
    /// The state as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendHealth::Healthy => "healthy",
            BackendHealth::Down => "down",
            BackendHealth::Unknown => "unknown",
            BackendHealth::Unchecked => "unchecked",
        }
    }

    /// Whether a request may be sent there (healthy, or not checked at all).
    pub fn serves(self) -> bool {
        matches!(self, BackendHealth::Healthy | BackendHealth::Unchecked)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: String,
    /// The host name and port this address was resolved from, for a backend given by name.
    /// A name that resolves to no address is listed with its own text as `address`, down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub health: BackendHealth,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The answer to `switch` and `rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchReply {
    pub service: String,
    pub pool: String,
    /// The pool that was active before; `rollback` goes back to it.
    pub previous: String,
    /// False when `pool` was already active (nothing changed).
    pub changed: bool,
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainReport {
    pub pool: String,
    /// True when the old pool reached zero requests in flight; false when the timeout passed.
    pub drained: bool,
    /// Requests still in flight when the wait ended.
    pub in_flight: u64,
    /// Long-lived connections (WebSockets) closed when the drain timeout passed.
    #[serde(default)]
    pub closed: u64,
    pub waited_ms: u64,
}

/// The answer to `pool_set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolSetReply {
    pub service: String,
    pub pool: String,
    pub backends: Vec<String>,
    pub previous_backends: Vec<String>,
    pub generation: u64,
    /// Backends given by a name that resolves to no address now: accepted (the name may be a
    /// container that is not up yet), but the pool has no backend for them until it does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<String>,
}

/// A progress line sent before the final answer of a long command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// `switch --wait-drain`: requests still in flight to the old pool.
    Draining {
        service: String,
        pool: String,
        in_flight: u64,
        /// Long-lived connections still open (closed when the drain timeout passes).
        #[serde(default)]
        long_lived: u64,
    },
    /// `pool set --wait`: how many new backends pass their health check so far.
    WaitingHealth {
        service: String,
        pool: String,
        healthy: usize,
        total: usize,
    },
    /// `rollout`: a step began; `percent` of clients now go to `pool`.
    RolloutStep {
        service: String,
        pool: String,
        step: usize,
        steps: usize,
        percent: f64,
    },
    /// `deploy`: a phase began.
    DeployPhase {
        service: String,
        /// The pool the new backends go to.
        pool: String,
        phase: DeployPhase,
        /// The pool that was active when the deploy began.
        previous: String,
    },
    /// `rollout`: about once a second, the numbers of the step so far.
    RolloutProgress {
        service: String,
        pool: String,
        stable_pool: String,
        step: usize,
        steps: usize,
        percent: f64,
        canary: WindowView,
        stable: WindowView,
        /// Until the step is judged.
        next_step_in_ms: u64,
        /// The step's interval is over, but the canary has had fewer than `min_requests`.
        waiting_for_requests: bool,
    },
}

/// One line from the server, as a client reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerLine {
    Event(Event),
    Ok(serde_json::Map<String, serde_json::Value>),
    Err(ControlError),
}

/// Encodes a final success line (without the newline): `{"ok":true, ...reply}`.
pub fn encode_ok(reply: &Reply) -> String {
    #[derive(Serialize)]
    struct Ok<'a> {
        ok: bool,
        #[serde(flatten)]
        reply: &'a Reply,
    }
    serde_json::to_string(&Ok { ok: true, reply }).expect("replies always serialize")
}

/// Encodes a final error line (without the newline).
pub fn encode_err(error: &ControlError) -> String {
    #[derive(Serialize)]
    struct Err<'a> {
        ok: bool,
        error: &'a ControlError,
    }
    serde_json::to_string(&Err { ok: false, error }).expect("errors always serialize")
}

/// Encodes a progress line (without the newline).
pub fn encode_event(event: &Event) -> String {
    serde_json::to_string(event).expect("events always serialize")
}

/// Parses a request line, telling malformed JSON, unknown commands and bad fields apart.
pub fn decode_request(line: &[u8]) -> Result<Request, ControlError> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        ControlError::new(
            ErrorCode::BadRequest,
            format!(
                "not a JSON object: {e}; send one object per line, like {{\"cmd\":\"status\"}}"
            ),
        )
    })?;
    let cmd = value
        .as_object()
        .ok_or_else(|| ControlError::new(ErrorCode::BadRequest, "a request must be a JSON object"))?
        .get("cmd")
        .and_then(|c| c.as_str())
        .ok_or_else(|| {
            ControlError::new(
                ErrorCode::BadRequest,
                format!(
                    "the request has no \"cmd\" string (commands: {})",
                    COMMANDS.join(", ")
                ),
            )
        })?
        .to_string();
    if !COMMANDS.contains(&cmd.as_str()) {
        return Err(ControlError::new(
            ErrorCode::UnknownCommand,
            format!(
                "unknown command {cmd:?} (commands: {})",
                COMMANDS.join(", ")
            ),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ControlError::new(ErrorCode::BadRequest, format!("{cmd}: {e}")))
}

/// Parses a line from the server.
pub fn decode_server_line(line: &str) -> Result<ServerLine, String> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| format!("the server sent a line that is not JSON: {e}"))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err("the server sent a line that is not an object".into());
    };
    if map.contains_key("event") {
        return serde_json::from_value(serde_json::Value::Object(map))
            .map(ServerLine::Event)
            .map_err(|e| format!("the server sent an event this client does not know: {e}"));
    }
    match map.remove("ok") {
        Some(serde_json::Value::Bool(true)) => Ok(ServerLine::Ok(map)),
        Some(serde_json::Value::Bool(false)) => {
            let error = map
                .remove("error")
                .ok_or_else(|| "the server sent ok:false without an error".to_string())?;
            serde_json::from_value(error)
                .map(ServerLine::Err)
                .map_err(|e| format!("the server sent an error this client cannot read: {e}"))
        }
        _ => Err("the server sent a line with neither \"ok\" nor \"event\"".into()),
    }
}

/// Durations travel as the strings users write: `"30s"`.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};
    use switchback_config::{parse_duration, HumanDuration};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&HumanDuration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_wire_form() {
        let r = decode_request(br#"{"cmd":"switch","service":"app","pool":"green"}"#).unwrap();
        assert_eq!(
            r,
            Request::Switch {
                service: Some("app".into()),
                pool: "green".into(),
                force: false,
                wait_drain: false,
                drain_timeout: None
            }
        );
        let r = decode_request(
            br#"{"cmd":"pool_set","pool":"green","backends":["127.0.0.1:9012"],"wait":true,"timeout":"10s"}"#,
        )
        .unwrap();
        assert!(
            matches!(r, Request::PoolSet { wait: true, timeout: Some(t), .. } if t == Duration::from_secs(10))
        );
        assert_eq!(
            serde_json::to_string(&Request::Status { service: None }).unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Certs).unwrap(),
            r#"{"cmd":"certs"}"#
        );
        assert_eq!(
            decode_request(br#"{"cmd":"reload_certs"}"#).unwrap(),
            Request::ReloadCerts
        );
        assert_eq!(
            decode_request(br#"{"cmd":"reload"}"#).unwrap(),
            Request::Reload { force: false }
        );
        assert_eq!(
            serde_json::to_string(&Request::Reload { force: true }).unwrap(),
            r#"{"cmd":"reload","force":true}"#
        );
    }

    #[test]
    fn round_trip_every_request() {
        let all = vec![
            Request::Status {
                service: Some("app".into()),
            },
            Request::Switch {
                service: None,
                pool: "green".into(),
                force: true,
                wait_drain: true,
                drain_timeout: Some(Duration::from_secs(30)),
            },
            Request::Rollback {
                service: None,
                force: false,
            },
            Request::Certs,
            Request::CertsRenew {
                host: "app.example.com".into(),
            },
            Request::ReloadCerts,
            Request::Reload { force: true },
            Request::Upgrade,
            Request::PoolSet {
                service: Some("app".into()),
                pool: "blue".into(),
                backends: vec!["127.0.0.1:1".into()],
                wait: true,
                timeout: Some(Duration::from_millis(1500)),
            },
            Request::Deploy {
                service: Some("app".into()),
                pool: None,
                backends: vec!["127.0.0.1:1".into(), "api.internal:80".into()],
                rollout: true,
                steps: Some(vec![10.0, 100.0]),
                interval: Some(Duration::from_secs(60)),
                max_error_rate: Some(1.5),
                max_p95: Some(Duration::from_millis(800)),
                min_requests: Some(20),
                health_timeout: Some(Duration::from_secs(30)),
                drain_timeout: None,
            },
            Request::DeployWatch { service: None },
        ];
        for r in all {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(decode_request(line.as_bytes()).unwrap(), r, "{line}");
        }
    }

    #[test]
    fn malformed_unknown_and_bad_fields_have_distinct_codes() {
        assert_eq!(
            decode_request(b"{not json").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            decode_request(b"[1,2]").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            decode_request(br#"{"pool":"x"}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            decode_request(br#"{"cmd":"explode"}"#).unwrap_err().code,
            ErrorCode::UnknownCommand
        );
        let e = decode_request(br#"{"cmd":"switch","pool":"g","colour":"red"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("colour"), "{}", e.message);
        let e =
            decode_request(br#"{"cmd":"switch","pool":"g","drain_timeout":"soon"}"#).unwrap_err();
        assert!(e.message.contains("not a duration"), "{}", e.message);
    }

    #[test]
    fn every_example_in_the_protocol_doc_parses() {
        let doc = include_str!("../../docs/control-protocol.md");
        let mut requests = 0;
        let mut answers = 0;
        let mut lines = doc.lines().peekable();
        while let Some(line) = lines.next() {
            if !line.starts_with("{\"") {
                continue;
            }
            // Long examples continue on indented lines.
            let mut text = line.to_string();
            while lines.peek().is_some_and(|l| l.starts_with(' ')) {
                text.push_str(lines.next().unwrap().trim());
            }
            if text.starts_with("{\"cmd\"") {
                decode_request(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
                requests += 1;
            } else {
                match decode_server_line(&text).unwrap_or_else(|e| panic!("{text}: {e}")) {
                    ServerLine::Ok(map) => {
                        let reply: Result<Reply, _> =
                            serde_json::from_value(serde_json::Value::Object(map));
                        reply.unwrap_or_else(|e| panic!("{text}: {e}"));
                    }
                    ServerLine::Err(_) | ServerLine::Event(_) => {}
                }
                answers += 1;
            }
        }
        assert!(
            requests >= 8 && answers >= 6,
            "examples went missing: {requests} requests, {answers} answers"
        );
    }

    #[test]
    fn error_code_names_match_the_wire() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::UnknownCommand,
            ErrorCode::LineTooLong,
            ErrorCode::UnknownService,
            ErrorCode::ServiceRequired,
            ErrorCode::UnknownPool,
            ErrorCode::NoHealthyBackend,
            ErrorCode::NoPreviousPool,
            ErrorCode::BadAddress,
            ErrorCode::HealthTimeout,
            ErrorCode::StateWriteFailed,
            ErrorCode::UnknownHost,
            ErrorCode::RenewFailed,
            ErrorCode::CertLoadFailed,
            ErrorCode::BadConfig,
            ErrorCode::ReloadRefused,
            ErrorCode::UpgradeFailed,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn wire_enums_keep_their_names() {
        for o in [
            RolloutOutcome::Promoted,
            RolloutOutcome::RolledBack,
            RolloutOutcome::Aborted,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        for h in [
            BackendHealth::Healthy,
            BackendHealth::Down,
            BackendHealth::Unknown,
            BackendHealth::Unchecked,
        ] {
            assert_eq!(serde_json::to_value(h).unwrap(), h.as_str());
        }
        assert_eq!(serde_json::to_value(CertSourceKind::Acme).unwrap(), "acme");
        assert_eq!(serde_json::to_value(CertSourceKind::File).unwrap(), "file");
        let b: BackendStatus =
            serde_json::from_str(r#"{"address":"127.0.0.1:1","health":"down"}"#).unwrap();
        assert_eq!(b.health, BackendHealth::Down);
        assert!(serde_json::from_str::<BackendStatus>(
            r#"{"address":"127.0.0.1:1","health":"sickly"}"#
        )
        .is_err());
    }

    #[test]
    fn final_lines_carry_ok_first_and_decode_back() {
        let reply = Reply::Switch(SwitchReply {
            service: "app".into(),
            pool: "green".into(),
            previous: "blue".into(),
            changed: true,
            generation: 3,
            drain: None,
        });
        let line = encode_ok(&reply);
        assert!(line.starts_with(r#"{"ok":true,"service":"app""#), "{line}");
        let ServerLine::Ok(map) = decode_server_line(&line).unwrap() else {
            panic!("{line}")
        };
        let back: SwitchReply = serde_json::from_value(serde_json::Value::Object(map)).unwrap();
        assert_eq!(Reply::Switch(back), reply);

        let err = ControlError::new(ErrorCode::UnknownPool, "no pool named \"gren\"");
        let line = encode_err(&err);
        assert_eq!(
            line,
            r#"{"ok":false,"error":{"code":"unknown_pool","message":"no pool named \"gren\""}}"#
        );
        assert_eq!(decode_server_line(&line).unwrap(), ServerLine::Err(err));

        let ev = Event::Draining {
            service: "app".into(),
            pool: "blue".into(),
            in_flight: 2,
            long_lived: 1,
        };
        let line = encode_event(&ev);
        assert!(line.starts_with(r#"{"event":"draining""#), "{line}");
        assert_eq!(decode_server_line(&line).unwrap(), ServerLine::Event(ev));
    }
}
