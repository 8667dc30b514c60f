//! What a change to the routing state did, or why it was refused: the controller's answers,
//! which the control handler turns into protocol replies and error codes.

use std::path::PathBuf;
use std::time::Duration;

use switchback_config::{StateError, Target};

use crate::judge::{percent, SpecError};

/// Why a change was refused. Nothing changed when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no service named {name:?} (services: {known})")]
    UnknownService { name: String, known: String },
    #[error("there are several services ({known}): name one with -s SERVICE")]
    ServiceRequired { known: String },
    #[error("service {service:?} has no pool named {pool:?} (pools: {known})")]
    UnknownPool {
        service: String,
        pool: String,
        known: String,
    },
    #[error("pool {pool:?} of service {service:?} has no healthy backend ({detail}); nothing changed (use --force to switch anyway)")]
    NoHealthyBackend {
        service: String,
        pool: String,
        detail: String,
    },
    #[error("service {service:?} has no previous pool to roll back to")]
    NothingToRollBackTo { service: String },
    #[error("{0}")]
    BadAddress(String),
    #[error("pool {pool:?} of service {service:?}: the new backends did not pass their health checks within {}ms ({detail}); nothing changed", timeout.as_millis())]
    HealthTimeout {
        service: String,
        pool: String,
        timeout: Duration,
        detail: String,
    },
    #[error("cannot write the state file: {0}; nothing changed")]
    StateWrite(std::io::Error),
    #[error("a rollout of pool {pool:?} is running on service {service:?}: wait for it, or stop it with `switchback rollout --abort -s {service}`; nothing changed")]
    RolloutRunning { service: String, pool: String },
    #[error("no rollout is running on service {service:?}")]
    NoRollout { service: String },
    #[error("{}% is out of range: use 0 to 100", percent(*permille))]
    BadPercent { permille: u32 },
    #[error("pool {pool:?} is the active pool of service {service:?}: a canary sends clients to another pool")]
    ActivePool { service: String, pool: String },
    #[error("{0}; nothing changed")]
    BadRollout(#[from] SpecError),
    #[error("an upgrade is handing this process over to a new one: changes go to the new process (try again in a moment); nothing changed")]
    Upgrading,
    #[error("the reload was refused, nothing changed: {}; use --force to apply it anyway", .0.join("; "))]
    ReloadRefused(Vec<String>),
    #[error("a rollout judges the canary by its metrics, and [metrics] enabled = false turns them off; nothing changed")]
    MetricsOff,
    #[error("fleet store unreachable ({0}): this node keeps serving its last applied state, and refuses changes until etcd is back; nothing changed")]
    FleetUnreachable(String),
    #[error("the fleet store did not answer the write ({0}): the change may or may not have been made; this node serves what it had, and `switchback status` tells once it is back")]
    FleetWriteUnknown(String),
    #[error("conflict: another node changed service {service:?} meanwhile (the fleet is at generation {generation}); check `switchback status` and try again; nothing changed")]
    Conflict { service: String, generation: u64 },
    #[error("generation {generation} was written to the fleet, but these nodes did not apply it within {}ms: {}; they converge when they can", timeout.as_millis(), nodes.join(", "))]
    FleetLagging {
        generation: u64,
        timeout: Duration,
        nodes: Vec<String>,
    },
    #[error("a rollout of pool {pool:?} on service {service:?} is driven by fleet node {node:?}: stop it there (`switchback rollout --abort`), or wait for it; nothing changed")]
    RemoteRollout {
        service: String,
        pool: String,
        node: String,
    },
}

/// Why the proxy could not start from its state dir.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state dir {}: {source}", dir.display())]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("fleet.key_file: {0}")]
    FleetKey(String),
}

/// What a switch or rollback did.
#[derive(Debug, Clone)]
pub struct SwitchOutcome {
    pub service: String,
    /// The pool new requests go to now.
    pub pool: String,
    /// The pool traffic moved away from; for a switch that changed nothing, the pool
    /// `rollback` would go back to.
    pub moved_from: String,
    pub changed: bool,
    pub generation: u64,
}

/// What `canary` did.
#[derive(Debug, Clone)]
pub struct CanaryOutcome {
    pub service: String,
    /// The canary pool (for `canary POOL 0`: the pool named).
    pub pool: String,
    pub active: String,
    /// The new weight in thousandths (0: no canary).
    pub permille: u32,
    /// The canary this change replaced, if there was one: pool and weight.
    pub replaced: Option<(String, u32)>,
    pub generation: u64,
}

/// What `pool set` did.
#[derive(Debug, Clone)]
pub struct PoolSetOutcome {
    pub service: String,
    pub pool: String,
    pub backends: Vec<Target>,
    pub replaced_backends: Vec<Target>,
    /// Each given name that resolves to no address now, with why.
    pub unresolved: Vec<String>,
    pub generation: u64,
}

/// What `reload` did.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub config_file: PathBuf,
    /// What changed, one line each.
    pub changes: Vec<String>,
    /// What the file changes that only a new process applies.
    pub needs_upgrade: Vec<String>,
    pub generation: u64,
}
