//! PASETO v4.public access tokens (Ed25519, pasetors).
//!
//! Public rather than local: any service holding only the public key can
//! verify a token, and a leaked verification key forges nothing. Claims:
//! `sub` (user id), `sid` (session id), `iat`, `nbf`, `exp`, `aud`
//! (`messenger`). The implicit assertion binds tokens to this platform.
//! Revocation is not in the token: the gateway checks the session in Redis
//! on every request, so a revoked session's token stops working at once.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use pasetors::claims::{Claims, ClaimsValidationRules};
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::token::UntrustedToken;
use pasetors::version4::V4;
use pasetors::{public, Public};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const AUDIENCE: &str = "messenger";
const IMPLICIT: &[u8] = b"messenger-access-v1";

/// What a valid access token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessClaims {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// `exp` as Unix seconds: open WebSockets close then unless the client
    /// re-authenticates.
    pub expires_at: i64,
}

/// Why a token was refused (all answer 401; the distinction is for tests
/// and logs).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed or its signature is wrong")]
    Invalid,
    #[error("the token has expired")]
    Expired,
}

/// The signing key pair.
pub struct Tokens {
    secret: AsymmetricSecretKey<V4>,
    public: AsymmetricPublicKey<V4>,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// A fresh random key pair (tests).
    pub fn generate(ttl: Duration) -> anyhow::Result<Self> {
        let kp = AsymmetricKeyPair::<V4>::generate()
            .map_err(|e| anyhow::anyhow!("generating a key pair: {e}"))?;
        Ok(Self {
            secret: kp.secret,
            public: kp.public,
            ttl,
        })
    }

    /// Loads the key file (base64 of the 64-byte secret key), creating it
    /// with mode 0600 when missing and `create` is set.
    pub fn load_or_create(path: &Path, create: bool, ttl: Duration) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(text.trim(), ttl)
                .with_context(|| format!("reading the token key {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let kp = AsymmetricKeyPair::<V4>::generate()
                    .map_err(|e| anyhow::anyhow!("generating a key pair: {e}"))?;
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(kp.secret.as_bytes());
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).ok();
                }
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                match options.open(path) {
                    Ok(mut f) => {
                        f.write_all(encoded.as_bytes())?;
                        tracing::info!(path = %path.display(), "created a new token signing key");
                        Ok(Self {
                            secret: kp.secret,
                            public: kp.public,
                            ttl,
                        })
                    }
                    // Another gateway created it meanwhile: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create(path, false, ttl)
                    }
                    Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
                }
            }
            Err(e) => Err(e).with_context(|| format!("reading the token key {}", path.display())),
        }
    }

    fn from_base64(text: &str, ttl: Duration) -> anyhow::Result<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .context("the token key is not base64")?;
        let secret = AsymmetricSecretKey::<V4>::from(&bytes)
            .map_err(|e| anyhow::anyhow!("the token key is not an Ed25519 secret key: {e}"))?;
        let public = AsymmetricPublicKey::<V4>::try_from(&secret)
            .map_err(|e| anyhow::anyhow!("deriving the public key: {e}"))?;
        Ok(Self {
            secret,
            public,
            ttl,
        })
    }

    /// Lifetime of the tokens issued.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Signs an access token for the session.
    pub fn issue(&self, user_id: Uuid, session_id: Uuid) -> anyhow::Result<String> {
        self.issue_with_ttl(user_id, session_id, self.ttl)
    }

    /// Signs an access token with an explicit lifetime (tests of expiry).
    pub fn issue_with_ttl(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let mut claims =
            Claims::new_expires_in(&ttl).map_err(|e| anyhow::anyhow!("building claims: {e}"))?;
        let err = |e: pasetors::errors::Error| anyhow::anyhow!("setting a claim: {e}");
        claims.subject(&user_id.to_string()).map_err(err)?;
        claims.audience(AUDIENCE).map_err(err)?;
        claims
            .add_additional("sid", session_id.to_string())
            .map_err(err)?;
        public::sign(&self.secret, &claims, None, Some(IMPLICIT))
            .map_err(|e| anyhow::anyhow!("signing: {e}"))
    }

    /// The key refresh-token successors are derived with (see
    /// `sessions::SessionPolicy`): from the signing key, so every gateway
    /// holding it agrees, and separate from it by a label.
    pub fn successor_key(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"messenger refresh-token successor v1\0");
        h.update(self.secret.as_bytes());
        h.finalize().into()
    }

    /// Verifies signature, audience and time claims.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let untrusted =
            UntrustedToken::<Public, V4>::try_from(token).map_err(|_| TokenError::Invalid)?;
        let mut rules = ClaimsValidationRules::new();
        rules.validate_audience_with(AUDIENCE);
        let trusted = match public::verify(&self.public, &untrusted, &rules, None, Some(IMPLICIT)) {
            Ok(t) => t,
            Err(pasetors::errors::Error::ClaimValidation(
                pasetors::errors::ClaimValidationError::Exp,
            )) => return Err(TokenError::Expired),
            Err(_) => return Err(TokenError::Invalid),
        };
        let claims = trusted.payload_claims().ok_or(TokenError::Invalid)?;
        let get = |name: &str| -> Result<Uuid, TokenError> {
            claims
                .get_claim(name)
                .and_then(|v| v.as_str())
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or(TokenError::Invalid)
        };
        let expires_at = claims
            .get_claim("exp")
            .and_then(|v| v.as_str())
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp())
            .ok_or(TokenError::Invalid)?;
        Ok(AccessClaims {
            user_id: get("sub")?,
            session_id: get("sid")?,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_tamper_expire() -> anyhow::Result<()> {
        let tokens = Tokens::generate(Duration::from_secs(60))?;
        let (u, s) = (Uuid::now_v7(), Uuid::now_v7());
        let t = tokens.issue(u, s)?;
        let now = chrono::Utc::now().timestamp();
        let claims = tokens.verify(&t);
        assert_eq!(
            claims.as_ref().map(|c| (c.user_id, c.session_id)),
            Ok((u, s))
        );
        let exp = claims.map(|c| c.expires_at).unwrap_or_default();
        assert!((now + 55..=now + 61).contains(&exp), "exp {exp}, now {now}");
        // Any change of a byte in the payload or signature is refused.
        let mut bytes = t.clone().into_bytes();
        let i = bytes.len() - 5;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes)?;
        assert_eq!(tokens.verify(&tampered), Err(TokenError::Invalid));
        // Another key's token is refused.
        let other = Tokens::generate(Duration::from_secs(60))?;
        assert_eq!(other.verify(&t), Err(TokenError::Invalid));
        assert_eq!(tokens.verify("garbage"), Err(TokenError::Invalid));
        Ok(())
    }

    // Cases per property: proptest's default (256), or PROPTEST_CASES.
    proptest::proptest! {
        /// Untrusted bytes: never a panic, never accepted.
        #[test]
        fn arbitrary_tokens_are_refused(token in proptest::prelude::any::<String>()) {
            let tokens = shared_tokens();
            proptest::prop_assert!(tokens.verify(&token).is_err());
            let prefixed = format!("v4.public.{token}");
            proptest::prop_assert!(tokens.verify(&prefixed).is_err());
        }

        /// Any one byte of a real token changed: refused.
        #[test]
        fn any_altered_byte_is_refused(at in 0usize..1000, to in proptest::prelude::any::<u8>()) {
            let tokens = shared_tokens();
            let t = tokens.issue(Uuid::nil(), Uuid::nil()).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let mut bytes = t.clone().into_bytes();
            let i = at % bytes.len();
            proptest::prop_assume!(bytes[i] != to);
            bytes[i] = to;
            if let Ok(altered) = String::from_utf8(bytes) {
                proptest::prop_assert!(tokens.verify(&altered).is_err());
            }
        }
    }

    fn shared_tokens() -> &'static Tokens {
        static T: std::sync::OnceLock<Tokens> = std::sync::OnceLock::new();
        T.get_or_init(|| match Tokens::generate(Duration::from_secs(60)) {
            Ok(t) => t,
            Err(e) => panic!("generating a key: {e:#}"),
        })
    }

    #[test]
    fn key_file_roundtrip() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("gw-key-{}", Uuid::now_v7().simple()));
        let path = dir.join("k");
        let a = Tokens::load_or_create(&path, true, Duration::from_secs(60))?;
        let b = Tokens::load_or_create(&path, false, Duration::from_secs(60))?;
        let t = a.issue(Uuid::now_v7(), Uuid::now_v7())?;
        assert!(b.verify(&t).is_ok());
        std::fs::remove_dir_all(dir).ok();
        Ok(())
    }
}
