//! Web push on the wire: RFC 8291 message encryption (`aes128gcm`, RFC
//! 8188), RFC 8292 VAPID and the RFC 8030 request, on RustCrypto (`p256`,
//! `hkdf`, `aes-gcm`). ADR 0004 says why this is not the `web-push` crate.
//!
//! Nothing here logs; key material never leaves these types (their `Debug`
//! prints public parts only).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePrivateKey;
use p256::{PublicKey, SecretKey};
use rand::RngCore;
use sha2::Sha256;

/// Record size announced in the `aes128gcm` header; a push message is one
/// record, so this only bounds the plaintext (RFC 8291: 4096).
const RECORD_SIZE: u32 = 4096;
/// Largest plaintext in one 4096-byte record: minus header (86), tag (16)
/// and the padding delimiter (1).
pub const MAX_PLAINTEXT: usize = 4096 - 86 - 16 - 1;

/// Why a key or subscription cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the VAPID key is neither PEM (SEC1 / PKCS#8) nor a base64url 32-byte scalar")]
    BadVapidKey,
    #[error("p256dh is not a base64url uncompressed P-256 point")]
    BadP256dh,
    #[error("auth is not a base64url 16-byte secret")]
    BadAuth,
    #[error("the payload is longer than one record allows")]
    TooLong,
    #[error("encryption failed")]
    Encrypt,
}

/// The application server's VAPID key pair.
#[derive(Clone)]
pub struct VapidKey {
    signing: SigningKey,
    /// Uncompressed public point, base64url: `k=` and the API's public key.
    public_b64: String,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public_key", &self.public_b64)
            .finish_non_exhaustive()
    }
}

impl VapidKey {
    /// Parses a PEM private key (SEC1 `EC PRIVATE KEY` or PKCS#8) or a
    /// base64url raw scalar.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let secret = if text.starts_with("-----BEGIN EC PRIVATE KEY") {
            SecretKey::from_sec1_pem(text).map_err(|_| KeyError::BadVapidKey)?
        } else if text.starts_with("-----BEGIN PRIVATE KEY") {
            SecretKey::from_pkcs8_pem(text).map_err(|_| KeyError::BadVapidKey)?
        } else {
            let raw = B64
                .decode(text.trim_end_matches('='))
                .map_err(|_| KeyError::BadVapidKey)?;
            SecretKey::from_slice(&raw).map_err(|_| KeyError::BadVapidKey)?
        };
        Ok(Self::from_secret(&secret))
    }

    /// A fresh random key (for `notifier generate-vapid-key` and tests).
    pub fn generate() -> Self {
        Self::from_secret(&random_secret())
    }

    fn from_secret(secret: &SecretKey) -> Self {
        let public = secret.public_key().to_encoded_point(false);
        Self {
            signing: SigningKey::from(secret),
            public_b64: B64.encode(public.as_bytes()),
        }
    }

    /// SEC1 PEM of the private key, for writing the key file.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        let secret = SecretKey::from(self.signing.as_nonzero_scalar());
        secret
            .to_sec1_pem(p256::pkcs8::LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|_| KeyError::BadVapidKey)
    }

    /// base64url uncompressed public point (API.md's `public_key`).
    pub fn public_key(&self) -> &str {
        &self.public_b64
    }

    /// The `Authorization` header value for a push to `audience` (the
    /// endpoint's origin): `vapid t=<ES256 JWT>, k=<public key>`.
    pub fn authorization(&self, audience: &str, subject: &str, expires_unix: i64) -> String {
        let header = B64.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({"aud": audience, "exp": expires_unix, "sub": subject});
        let claims = B64.encode(claims.to_string().as_bytes());
        let signing_input = format!("{header}.{claims}");
        let signature: Signature = self.signing.sign(signing_input.as_bytes());
        let jwt = format!("{signing_input}.{}", B64.encode(signature.to_bytes()));
        format!("vapid t={jwt}, k={}", self.public_b64)
    }
}

fn random_secret() -> SecretKey {
    let mut rng = rand::rng();
    loop {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        // Fails only for zero or a value >= the group order (~2^-32).
        if let Ok(k) = SecretKey::from_slice(&bytes) {
            return k;
        }
    }
}

/// A browser's subscription keys, parsed.
#[derive(Clone)]
pub struct UaKeys {
    public: PublicKey,
    public_bytes: Vec<u8>,
    auth: [u8; 16],
}

impl std::fmt::Debug for UaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UaKeys(..)")
    }
}

impl UaKeys {
    /// From the base64url `p256dh` and `auth` of a PushSubscription.
    pub fn parse(p256dh: &str, auth: &str) -> Result<Self, KeyError> {
        let public_bytes = B64
            .decode(p256dh.trim_end_matches('='))
            .map_err(|_| KeyError::BadP256dh)?;
        if public_bytes.len() != 65 || public_bytes[0] != 4 {
            return Err(KeyError::BadP256dh);
        }
        let public = PublicKey::from_sec1_bytes(&public_bytes).map_err(|_| KeyError::BadP256dh)?;
        let auth_bytes = B64
            .decode(auth.trim_end_matches('='))
            .map_err(|_| KeyError::BadAuth)?;
        let auth: [u8; 16] = auth_bytes.try_into().map_err(|_| KeyError::BadAuth)?;
        Ok(Self {
            public,
            public_bytes,
            auth,
        })
    }
}

/// RFC 8291: encrypts `plaintext` for `ua` as one `aes128gcm` record
/// (header with salt, record size and the ephemeral public key, then the
/// ciphertext), with a fresh ephemeral key and salt.
pub fn encrypt(ua: &UaKeys, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    encrypt_with(ua, plaintext, &random_secret(), salt)
}

fn encrypt_with(
    ua: &UaKeys,
    plaintext: &[u8],
    ephemeral: &SecretKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, KeyError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(KeyError::TooLong);
    }
    let as_public = ephemeral.public_key().to_encoded_point(false);
    let as_public = as_public.as_bytes();
    let shared = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), ua.public.as_affine());
    // IKM = HKDF(auth_secret, ecdh_secret, "WebPush: info" 0x00 ua_public as_public, 32)
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(&ua.public_bytes);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&ua.auth), shared.raw_secret_bytes().as_slice())
        .expand(&key_info, &mut ikm)
        .map_err(|_| KeyError::Encrypt)?;
    // RFC 8188 content encryption key and nonce.
    let hk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    hk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|_| KeyError::Encrypt)?;
    hk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|_| KeyError::Encrypt)?;
    let mut padded = Vec::with_capacity(plaintext.len() + 1);
    padded.extend_from_slice(plaintext);
    padded.push(2); // delimiter of the last (only) record, no padding
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|_| KeyError::Encrypt)?;
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), padded.as_slice())
        .map_err(|_| KeyError::Encrypt)?;
    let mut body = Vec::with_capacity(16 + 4 + 1 + as_public.len() + ciphertext.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&ciphertext);
    Ok(body)
}

/// `scheme://host[:port]` of an endpoint URL: the VAPID audience and the
/// unit of per-push-service concurrency. `None` unless it is an absolute
/// http(s) URL with a host.
pub fn origin(endpoint: &str) -> Option<String> {
    let url = reqwest::Url::parse(endpoint).ok()?;
    if !matches!(url.scheme(), "https" | "http") {
        return None;
    }
    url.host_str()?;
    Some(url.origin().ascii_serialization())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;

    /// RFC 8291 section 5's example, byte for byte.
    #[test]
    fn rfc8291_example() {
        let ua_private = B64
            .decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")
            .unwrap();
        let ua_public = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
        let auth = "BTBZMqHH6r4Tts7J_aSIgg";
        let as_private = B64
            .decode("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")
            .unwrap();
        let salt: [u8; 16] = B64
            .decode("DGv6ra1nlYgDCS1FRnbzlw")
            .unwrap()
            .try_into()
            .unwrap();
        let ua = UaKeys::parse(ua_public, auth).unwrap();
        assert_eq!(
            SecretKey::from_slice(&ua_private)
                .unwrap()
                .public_key()
                .to_encoded_point(false)
                .as_bytes(),
            ua.public_bytes.as_slice()
        );
        let body = encrypt_with(
            &ua,
            b"When I grow up, I want to be a watermelon",
            &SecretKey::from_slice(&as_private).unwrap(),
            salt,
        )
        .unwrap();
        assert_eq!(
            B64.encode(body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn vapid_jwt_verifies_and_carries_the_claims() {
        let key = VapidKey::generate();
        let again = VapidKey::parse(&key.to_pem().unwrap()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let header = key.authorization("https://push.example", "mailto:a@b.c", 2_000_000_000);
        let rest = header.strip_prefix("vapid t=").unwrap();
        let (jwt, k) = rest.split_once(", k=").unwrap();
        assert_eq!(k, key.public_key());
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let public = PublicKey::from_sec1_bytes(&B64.decode(k).unwrap()).unwrap();
        let signature = Signature::from_slice(&B64.decode(sig).unwrap()).unwrap();
        VerifyingKey::from(public)
            .verify(input.as_bytes(), &signature)
            .unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(input.split_once('.').unwrap().1).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://push.example");
        assert_eq!(claims["exp"], 2_000_000_000);
        assert_eq!(claims["sub"], "mailto:a@b.c");
    }

    #[test]
    fn bad_input_is_refused_not_panicked_on() {
        assert!(UaKeys::parse("", "").is_err());
        assert!(UaKeys::parse("AAAA", "BTBZMqHH6r4Tts7J_aSIgg").is_err());
        assert!(VapidKey::parse("not a key").is_err());
        assert_eq!(
            origin("https://push.example:8443/wpush/abc").as_deref(),
            Some("https://push.example:8443")
        );
        assert_eq!(origin("ftp://x/y"), None);
        assert_eq!(origin("nope"), None);
    }

    use proptest::prelude::*;

    proptest! {
        /// A subscription's keys as a client sends them: any text is
        /// parsed or refused, never a panic.
        #[test]
        fn any_subscription_keys_are_parsed_or_refused(p256dh in any::<String>(), auth in any::<String>()) {
            let _ = UaKeys::parse(&p256dh, &auth);
        }

        /// Base64url of any bytes: only a 65-byte uncompressed point on the
        /// curve with a 16-byte secret is accepted.
        #[test]
        fn key_bytes_are_checked(point in prop::collection::vec(any::<u8>(), 0..80), secret in prop::collection::vec(any::<u8>(), 0..24)) {
            let parsed = UaKeys::parse(&B64.encode(&point), &B64.encode(&secret));
            if parsed.is_ok() {
                prop_assert_eq!(point.len(), 65);
                prop_assert_eq!(point[0], 4);
                prop_assert_eq!(secret.len(), 16);
            }
        }

        /// Any endpoint text: an origin only for absolute http(s) URLs,
        /// and then one without path, query or credentials.
        #[test]
        fn any_endpoint_has_an_origin_or_none(endpoint in any::<String>(), path in "[a-z0-9/._~-]{0,40}") {
            if let Some(o) = origin(&endpoint) {
                prop_assert!(o.starts_with("https://") || o.starts_with("http://"));
            }
            let url = format!("https://push.example.test/{path}?q=1");
            let got = origin(&url);
            prop_assert_eq!(got.as_deref(), Some("https://push.example.test"));
        }
    }
}
