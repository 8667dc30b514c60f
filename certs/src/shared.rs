//! Fleet mode: the certificates, the ACME account and the HTTP-01 answers that several proxies
//! share through one store (etcd, implemented in the control plane), so that a name is
//! ordered once for the whole fleet, every node serves the certificate, and whichever node
//! the CA's validation reaches answers it.
//!
//! ```text
//!   node A: lock_order(host) ─▶ order ─▶ put_challenge ─▶ (CA validates on node B: B answers
//!           from the answers the store sent it) ─▶ save_cert ─▶ every node takes it
//! ```

use async_trait::async_trait;

use crate::store::SavedAccount;

/// Whether this node may order a name for the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderLock {
    /// It may: until [`SharedStore::unlock_order`], or until the node leaves the fleet.
    Acquired,
    /// Another node orders it now.
    HeldBy(String),
}

/// The store a fleet shares certificates through. Errors are the store's own words.
#[async_trait]
pub trait SharedStore: Send + Sync {
    /// Returns once what the store holds has been read (certificates other nodes got are
    /// served before this node thinks of ordering them).
    async fn ready(&self);
    async fn lock_order(&self, host: &str) -> Result<OrderLock, String>;
    async fn unlock_order(&self, host: &str);
    async fn load_account(&self) -> Result<Option<SavedAccount>, String>;
    async fn save_account(&self, account: &SavedAccount) -> Result<(), String>;
    /// A new key and chain (one PEM text) for `host`, for every node.
    async fn save_cert(&self, host: &str, pem: &[u8]) -> Result<(), String>;
    async fn put_challenge(&self, token: &str, key_authorization: &str) -> Result<(), String>;
    async fn remove_challenge(&self, token: &str);
}
