//! The data plane of switchback: what every request touches, and nothing else.
//!
//! ```text
//!                         control plane (switchback-daemon): build, persist, swap
//!                                              │
//!   requests ──▶ h1 (own HTTP/1.1) or http (pingora's ProxyHttp), both through policy.rs
//!                  │ ── load once ─▶ ArcSwap<RoutingTable>     routing.rs
//!                  │                                 │ per service: pools + Split
//!                  │ split::choose (bucket, cookie,  ▼
//!                  │ override) ──────────────▶ pool::Pool ── select ──▶ Backend ──▶ upstream
//!                  │                                 │ health: one atomic load (health.rs)
//!                  └─ logging ─▶ metrics handles (atomics), access_log lane (own thread)
//! ```
//!
//! The request path takes no lock in the steady state: it reads one `Arc` of the table, atomics
//! for health, counters and in-flight counts, its own worker thread's backend waits
//! (`read_deadline`, whose entries it reuses: its list is locked only for a new one) and lane of
//! access-log records (`lane`), and nothing else. This crate depends on the config and on
//! pingora (and on the ACME challenge store, to answer HTTP-01 challenges); it knows nothing of
//! the control socket, the controller, or how certificates are ordered. Its modules form no
//! cycle: `split`, `metrics`, `health`, `read_deadline`, `lane`, `host_and_path` and `text`
//! depend on nothing here; `forwarding` on `text`; `access_log` on `lane`, `host_and_path` and
//! `text`; `pool` on `metrics` and `health`; `routing` on those; `policy` (the decisions of a
//! request, whichever path carries it) on `routing`, `split` and `access_log`; `answers` (the
//! proxy's own answers, which both paths write) on `policy`; `http` (pingora's
//! hooks) and `h1` (switchback's own HTTP/1.1 path) on `policy`; `connections` on both;
//! `workers` (the worker threads that accept and serve connections) on `connections` and
//! `client_tcp` (a plain client connection as pingora's stream type), which depends on nothing.

pub mod access;
pub mod access_log;
pub mod answers;
pub mod client_tcp;
pub mod compress;
pub mod connections;
pub mod forwarding;
pub mod h1;
pub mod headers;
pub mod health;
mod host_and_path;
pub mod http;
mod lane;
pub mod long_lived;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod pool;
pub mod proxy_protocol;
pub mod read_deadline;
mod recycle;
pub mod request_id;
pub mod retry;
pub mod routing;
pub mod split;
mod text;
pub mod tunnel;
pub mod workers;

pub use connections::{ClientLimits, Connections};
pub use health::{Health, HealthRegistry, HealthState};
pub use http::SwitchbackProxy;
pub use metrics::Metrics;
pub use pool::{Backend, Pool, PoolStats};
pub use routing::{RoutingTable, ServiceRoute};
