//! Certificates for switchback: ACME orders and renewal, the on-disk store, file pairs, and
//! the SNI resolver the TLS listeners use.
//!
//! ```text
//!   acme.rs ──order (HTTP-01, answered via challenge.rs)──▶ store.rs (state dir, 0600 keys)
//!      ▲                                                        │ load_pair (material.rs)
//!      │ due / forced / failed+backoff                          ▼
//!   manager.rs ──────────── set(host, CertifiedKey) ─────▶ resolver.rs (ArcSwap'd map)
//!      ▲ file pairs: mtime poll, reload-certs                   │ every TLS handshake
//!                                                               ▼
//!                                                        rustls ServerConfig
//! ```
//!
//! A new or renewed certificate is served from the next handshake on, with no listener
//! rebuild. A certificate that fails to load or renew never affects the others: the resolver
//! keeps serving what it had.

pub mod acme;
pub mod challenge;
pub mod manager;
pub mod material;
pub mod resolver;
pub mod shared;
pub mod store;

pub use challenge::ChallengeStore;

/// Makes ring rustls's process-wide crypto provider, as pingora's TLS listeners use it; the
/// ACME client needs one installed. Call once at start; later calls change nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
pub use acme::AcmeError;
pub use manager::{CertManager, CertSource, CertStatus, RenewError};
pub use material::{load_pair, CertError, CertInfo, CertMaterial};
pub use resolver::SniResolver;
pub use shared::{OrderLock, SharedStore};
pub use store::SavedAccount;
