//! The data path of switchback: routing, pools, health checks and the pingora proxy.
//!
//! ```text
//!            control commands                        requests
//!                  │                                     │
//!           ┌──────▼──────┐  build, persist, swap  ┌──────▼──────┐
//!           │ controller  │ ─────────────────────▶ │ ArcSwap<    │ load once per request
//!           └──────┬──────┘                        │ RoutingTable│◀──── http (ProxyHttp)
//!                  │ registers backends            └──────┬──────┘         │ select
//!           ┌──────▼──────┐  verdicts (atomics)           │ pools          ▼
//!           │ health      │ ─────────────────────────▶ pool::Backend ──▶ backend
//!           └─────────────┘
//! ```
//!
//! The request path never takes a lock: it reads one `Arc` of the table, atomics for health
//! and in-flight counts, and nothing else.

pub mod access_log;
pub mod admin;
pub mod canary;
pub mod controller;
mod drain;
pub mod health;
pub mod http;
pub mod judge;
pub mod metrics;
pub mod pool;
pub mod rollout;
pub mod routing;
mod text;

pub use controller::{
    CanaryOutcome, Controller, DeployError, PoolSetOutcome, StartError, SwitchOutcome,
};
pub use drain::DrainOutcome;
pub use health::{Health, HealthRegistry};
pub use http::{ConnectionCounter, SwitchbackProxy};
pub use metrics::Metrics;
pub use routing::RoutingTable;
