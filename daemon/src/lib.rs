//! The control plane of switchback: everything that decides what the data plane serves.
//!
//! ```text
//!   control socket ─▶ handler ─┬──────────────▶ controller ── build, persist, swap ──▶ table
//!   (switchback-control)       │ rollout:       ▲   │ (one writer)          (switchback-proxy)
//!                              ├─ drive ────────┘   └─ holds each service's rollout handle
//!                              │   └─ judge (pure: a window of numbers → verdict)
//!                              ├─ deploy: pool set → switch or rollout → drain, in a task
//!                              ├─ drain (waits on a pool's in-flight count)
//!                              └─ status (read model) ◀── admin: /metrics (scrape), /readyz
//!   health_check ── probes ──▶ backend health states (the request path reads them)
//!   runtime: the pingora server, its services, signals, and a clean exit
//! ```
//!
//! Dependencies point one way: the handler uses the controller and the rollout driver; the
//! driver uses the controller's public API like any other caller; the controller keeps rollout
//! handles but never drives one. No module here imports one that imports it back.

pub mod admin;
pub mod change;
pub mod controller;
pub mod drain;
pub mod drive;
pub mod etcd;
pub mod fleet;
pub mod handler;
pub mod health_check;
pub mod judge;
pub mod names;
pub mod rollout;
pub mod runtime;
pub mod scrape;
pub mod status;
pub mod upgrade;

pub use change::{DeployError, StartError};
pub use controller::Controller;
pub use handler::ControlHandler;
pub use runtime::{run, RunError};
