//! HTTP-01 challenge answers: `GET /.well-known/acme-challenge/<token>` on the plain HTTP
//! listener returns the key authorization for that token.
//!
//! Tokens live in memory for the process that ordered, and in the state dir
//! (`acme/challenges/<token>`) for any other switchback process serving the same listeners
//! (during an upgrade, two processes share them): whichever process receives the validation
//! request can answer it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use switchback_config::atomic::{ensure_private_dir, write_atomic};

/// The URL path prefix of HTTP-01 challenges.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Debug)]
pub struct ChallengeStore {
    memory: RwLock<HashMap<String, String>>,
    dir: PathBuf,
}

/// Tokens are base64url: anything else is not a token and must not become a path.
fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ChallengeStore {
    /// Tokens are kept under `state_dir/acme/challenges`.
    pub fn new(state_dir: &Path) -> ChallengeStore {
        ChallengeStore {
            memory: RwLock::new(HashMap::new()),
            dir: state_dir.join("acme").join("challenges"),
        }
    }

    /// Publishes the answer for `token` until [`ChallengeStore::remove`].
    pub fn put(&self, token: &str, key_authorization: &str) -> std::io::Result<()> {
        if !valid_token(token) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not an ACME token",
            ));
        }
        ensure_private_dir(&self.dir)?;
        write_atomic(&self.dir.join(token), key_authorization.as_bytes(), 0o600)?;
        self.memory
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), key_authorization.to_string());
        Ok(())
    }

    pub fn remove(&self, token: &str) {
        self.memory
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
        if valid_token(token) {
            let _ = std::fs::remove_file(self.dir.join(token));
        }
    }

    /// Fleet mode: an answer another node published, served from memory.
    pub fn remember(&self, token: &str, key_authorization: &str) {
        if valid_token(token) {
            self.memory
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(token.to_string(), key_authorization.to_string());
        }
    }

    /// Fleet mode: an answer another node took back.
    pub fn forget(&self, token: &str) {
        self.memory
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    /// The key authorization for `token`, from memory or from the state dir.
    pub fn answer(&self, token: &str) -> Option<String> {
        if !valid_token(token) {
            return None;
        }
        if let Some(a) = self
            .memory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
        {
            return Some(a.clone());
        }
        std::fs::read_to_string(self.dir.join(token)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_from_memory_and_from_another_process_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = ChallengeStore::new(dir.path());
        let other = ChallengeStore::new(dir.path());
        one.put("tok-EN_1", "tok-EN_1.thumb").unwrap();
        assert_eq!(one.answer("tok-EN_1").as_deref(), Some("tok-EN_1.thumb"));
        assert_eq!(
            other.answer("tok-EN_1").as_deref(),
            Some("tok-EN_1.thumb"),
            "shared through the state dir"
        );
        one.remove("tok-EN_1");
        assert_eq!(other.answer("tok-EN_1"), None);
    }

    #[test]
    fn tokens_cannot_walk_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChallengeStore::new(dir.path());
        assert!(s.put("../../etc/passwd", "x").is_err());
        assert_eq!(s.answer("../state.json"), None);
        assert_eq!(s.answer(""), None);
    }
}
