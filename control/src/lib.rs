//! The control protocol of switchback, with its server and its client.
//!
//! ```text
//!   deploy tool / CI / `switchback switch`           the switchback process
//!   ┌──────────────┐   JSON lines, unix socket   ┌──────────────┐   Handler   ┌─────────┐
//!   │ client.rs    │ ──────────────────────────▶ │ server.rs    │ ──────────▶ │ (binary)│
//!   └──────────────┘ ◀── events…, final answer ─ └──────────────┘             └─────────┘
//!                       protocol.rs: every type on the wire
//! ```
//!
//! This crate does not call into the proxy. It defines what a command is and hands it to a
//! [`server::Handler`] that the binary provides, so other tools can speak the protocol without
//! linking the proxy.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{Client, ClientError};
pub use protocol::*;
pub use server::{bind, bind_taking_over, serve, BindError, Caller, Handler, Progress};
