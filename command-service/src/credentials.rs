//! Password hashing and reset tokens: the secrets that never enter the log.
//!
//! - argon2id with OWASP's recommended parameters (19 MiB, t=2, p=1) or the
//!   configured stronger ones; hashing runs on the blocking pool.
//! - Verifying an unknown login hashes against a fixed dummy hash, so it
//!   costs the same as a wrong password.
//! - Reset tokens: 256 random bits, base64url, stored as SHA-256.

use std::sync::Arc;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy)]
pub struct HashParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for HashParams {
    /// OWASP Password Storage Cheat Sheet: argon2id, m=19 MiB, t=2, p=1.
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("hashing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Hashes and verifies passwords.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    dummy_hash: String,
    /// At most one hash per core at a time. Each takes `memory_kib` (19 MiB
    /// at OWASP's parameters) and is CPU-bound: more at once only queue on
    /// the cores while holding their memory, and every blocking thread
    /// keeps its own allocator arena afterwards (the bench's 100 parallel
    /// registrations left command-service at 1.6 GiB RSS).
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Hasher {
    pub fn new(p: HashParams) -> Result<Self, CredentialError> {
        let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None)
            .map_err(|e| CredentialError::Hash(e.to_string()))?;
        let dummy_hash = hash_with(&params, "dummy password for unknown logins")?;
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Ok(Self {
            params,
            dummy_hash,
            slots: Arc::new(Semaphore::new(cores)),
        })
    }

    fn argon(params: &Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
    }

    /// Hashes `password` into a PHC string, off the async threads.
    pub async fn hash(&self, password: String) -> Result<String, CredentialError> {
        let params = self.params.clone();
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|e| CredentialError::Hash(e.to_string()))?;
        tokio::task::spawn_blocking(move || hash_with(&params, &password)).await?
    }

    /// Verifies `password` against `hash`, or against the dummy hash when
    /// the login is unknown (`None`), so both cost the same. The comparison
    /// inside argon2 is constant-time.
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, CredentialError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let params = self.params.clone();
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|e| CredentialError::Hash(e.to_string()))?;
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Self::argon(&params)
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await?;
        Ok(ok && known)
    }
}

fn hash_with(params: &Params, password: &str) -> Result<String, CredentialError> {
    let salt = SaltString::generate(&mut OsRng);
    Hasher::argon(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CredentialError::Hash(e.to_string()))
}

/// A fresh reset token (to mail) and its hash (to store).
pub fn new_reset_token() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = token_hash(&token);
    (token, hash)
}

/// SHA-256 of a presented token, as stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Hasher {
        Hasher::new(HashParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn hash_verifies_and_wrong_password_does_not() {
        let h = fast();
        let hash = h.hash("s3cret-pass".into()).await.unwrap_or_default();
        assert!(hash.starts_with("$argon2id$"));
        assert!(h
            .verify("s3cret-pass".into(), Some(hash.clone()))
            .await
            .unwrap_or(false));
        assert!(!h
            .verify("wrong-pass".into(), Some(hash))
            .await
            .unwrap_or(true));
        assert!(!h
            .verify("dummy password for unknown logins".into(), None)
            .await
            .unwrap_or(true));
    }

    #[test]
    fn tokens_are_256_bit_and_hash_stably() {
        let (t, h) = new_reset_token();
        assert_eq!(t.len(), 43);
        assert_eq!(token_hash(&t), h);
        assert_ne!(new_reset_token().0, t);
    }
}
