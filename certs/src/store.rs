//! Certificates and the ACME account on disk, in the state dir.
//!
//! ```text
//!   <state dir>/certs/<host>.pem     key and chain in one file, mode 0600
//!   <state dir>/acme/account.json    ACME account credentials and directory, mode 0600
//!   <state dir>/acme/lock            held while an order runs (one issuer per state dir)
//!   <state dir>/acme/challenges/     HTTP-01 answers (see challenge.rs)
//! ```
//!
//! Key and chain share one file so that the pair on disk is always a pair: the file is
//! written atomically, and a crash leaves the old pair or the new one, never a new key with
//! an old certificate.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchback_config::atomic::{ensure_private_dir, try_lock, write_atomic, FileLock};

#[derive(Debug, Clone)]
pub struct CertStore {
    certs: PathBuf,
    acme: PathBuf,
}

/// The ACME account as saved: which directory it belongs to, and its credentials (opaque
/// JSON from instant-acme, holding the account key).
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedAccount {
    pub directory: String,
    pub credentials: serde_json::Value,
}

impl CertStore {
    pub fn new(state_dir: &Path) -> CertStore {
        CertStore {
            certs: state_dir.join("certs"),
            acme: state_dir.join("acme"),
        }
    }

    fn cert_path(&self, host: &str) -> PathBuf {
        // Host names are validated (letters, digits, '-', '.'), so they are safe file names.
        self.certs.join(format!("{host}.pem"))
    }

    /// The saved key and chain for `host`, as one PEM text, if any.
    pub fn load_cert(&self, host: &str) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.cert_path(host)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Saves key and chain for `host` atomically, mode 0600.
    pub fn save_cert(&self, host: &str, key_pem: &str, chain_pem: &str) -> io::Result<()> {
        ensure_private_dir(&self.certs)?;
        let mut pem = String::with_capacity(key_pem.len() + chain_pem.len() + 1);
        pem.push_str(key_pem.trim_end());
        pem.push('\n');
        pem.push_str(chain_pem.trim_end());
        pem.push('\n');
        write_atomic(&self.cert_path(host), pem.as_bytes(), 0o600)
    }

    pub fn load_account(&self) -> io::Result<Option<SavedAccount>> {
        match std::fs::read(self.acme.join("account.json")) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("account.json: {e}"))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save_account(&self, account: &SavedAccount) -> io::Result<()> {
        ensure_private_dir(&self.acme)?;
        let bytes = serde_json::to_vec_pretty(account).map_err(io::Error::other)?;
        write_atomic(&self.acme.join("account.json"), &bytes, 0o600)
    }

    /// The issuance lock, if no other process holds it.
    pub fn try_lock_issuance(&self) -> io::Result<Option<FileLock>> {
        ensure_private_dir(&self.acme)?;
        try_lock(&self.acme.join("lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::material::{load_pair, tests::self_signed};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_saved_pair_loads_back_from_one_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new(dir.path());
        assert!(store.load_cert("a.example.com").unwrap().is_none());
        let (cert, key) = self_signed(&["a.example.com"]);
        store.save_cert("a.example.com", &key, &cert).unwrap();
        let pem = store.load_cert("a.example.com").unwrap().unwrap();
        let m = load_pair(&pem, &pem).unwrap();
        assert_eq!(m.info.names, vec!["a.example.com"]);
        let mode = std::fs::metadata(dir.path().join("certs/a.example.com.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn one_issuer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new(dir.path());
        let held = store.try_lock_issuance().unwrap().expect("free");
        assert!(store.try_lock_issuance().unwrap().is_none());
        drop(held);
        assert!(store.try_lock_issuance().unwrap().is_some());
    }
}
