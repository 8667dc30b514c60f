//! switchback's file formats: the config file a user writes and the state file switchback
//! keeps.
//!
//! ```text
//!   switchback.toml ──parse──▶ schema (as written, with spans)
//!                                 │ validate: every problem, file:line:key
//!                                 ▼
//!                              Config ──from_config──▶ LiveState ◀──restore── state.json
//!                                                         │ (what is live now)
//!                                                         └──save (atomic)──▶ state.json
//! ```
//!
//! Nothing here knows about the proxy or the control socket: both depend on this crate, never
//! the other way round.

pub mod address;
pub mod atomic;
pub mod duration;
pub mod htpasswd;
pub mod model;
pub mod nginx;
pub mod reload;
mod schema;
pub mod starter;
pub mod state;
pub mod template;
pub mod time;
pub mod validate;
mod validate_access;
mod validate_canary;
mod validate_fleet;
mod validate_http;
mod validate_routes;
mod validate_service;
mod validate_tls;

pub use address::{parse_backend_list, parse_backends, parse_socket_addr, parse_target, Target};
pub use duration::{parse_duration, HumanDuration};
pub use model::*;
pub use reload::{applied_config, plan_reload, ReloadPlan};
pub use state::{
    CanaryState, LiveState, Missing, PoolState, RestoreError, RolloutMark, ServiceState,
    StateError, StateLock, StateStore,
};
pub use validate::{load, parse, valid_name, ConfigError, Problem};
pub use validate_tls::decode_base64url;
