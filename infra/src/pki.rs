//! The dev stack's local certificate authority.
//!
//! [`generate`] writes, into one directory:
//!
//! | file | what it is |
//! |---|---|
//! | `ca.pem`, `ca.key` | a self-signed CA, valid 10 years; services trust it for mTLS |
//! | `NAME.pem`, `NAME.key` | a leaf signed by that CA for each name, with the SANs `localhost`, `127.0.0.1`, `::1` and `NAME`; valid for TLS client authentication only (`gateway`, `operator`, `client`), server authentication only (the services and `gateway-https`), or both (any other name) |
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM, written with mode `0600`; files appear
//! atomically (written aside, then renamed). Existing files are kept (unless a leaf's usages are outdated), so
//! running it again is a no-op, unless [`Existing::Replace`] is asked for.
//! When the CA has to be (re)created, every requested leaf is re-issued with
//! it, since leaves of an older CA would no longer chain.
//!
//! [`generate_untrusted_client`] writes a client certificate signed by a
//! throwaway CA that is never written anywhere: the certificate a test
//! presents to prove that a service refuses clients it does not know.

use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _, Result};
use chrono::{Datelike as _, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The names `messenger-pki` issues certificates for when none is given:
/// every service; `gateway-https`, the gateway's public HTTPS certificate
/// (not its client identity); `operator`, for operator RPCs such as role
/// grants; and `client` for tools (health checks, reflection).
pub const DEFAULT_NAMES: &[&str] = &[
    "command-service",
    "query-service",
    "projector",
    "notifier",
    "gateway",
    "gateway-https",
    "operator",
    "client",
];

/// Names whose certificate is only ever a TLS client: the gateway (to the
/// services), the operator and tools. Their leaves carry only ClientAuth.
const CLIENT_ONLY: &[&str] = &["gateway", "operator", "client"];
/// Names that only ever serve: the services no one's client is (they call
/// no other service) and the gateway's HTTPS listener. ServerAuth only, so
/// a stolen service key cannot even open a connection as a client.
const SERVER_ONLY: &[&str] = &[
    "command-service",
    "query-service",
    "projector",
    "notifier",
    "gateway-https",
];

/// Whether an existing leaf was issued with other usages than [`purposes`]
/// gives its name now (a directory from before the split into client-only
/// and server-only certificates): it is then issued again, by the same CA.
/// An unreadable file counts as outdated.
fn outdated(cert_path: &Path, name: &str) -> bool {
    let Ok(pem) = fs::read(cert_path) else {
        return true;
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&pem) else {
        return true;
    };
    let Ok(cert) = pem.parse_x509() else {
        return true;
    };
    let Ok(Some(eku)) = cert.extended_key_usage() else {
        return true;
    };
    let want = purposes(name);
    eku.value.server_auth != want.contains(&ExtendedKeyUsagePurpose::ServerAuth)
        || eku.value.client_auth != want.contains(&ExtendedKeyUsagePurpose::ClientAuth)
}

/// What a leaf named `name` may be used for (other names: both).
fn purposes(name: &str) -> Vec<ExtendedKeyUsagePurpose> {
    if CLIENT_ONLY.contains(&name) {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    } else if SERVER_ONLY.contains(&name) {
        vec![ExtendedKeyUsagePurpose::ServerAuth]
    } else {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    }
}

/// File name of the CA certificate inside the PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the PKI directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Subject of the CA. Leaves issued later from a reloaded `ca.key` carry this
/// as their issuer name, so it must never change for an existing directory.
const CA_COMMON_NAME: &str = "Messenger local development CA";
const ORGANIZATION: &str = "Messenger (local development)";
/// Lifetime of the CA and of the leaves: this is a development PKI, long
/// enough that a checkout never sees its certificates expire.
const VALIDITY_DAYS: i64 = 3650;

/// What [`generate_with`] does with files that already exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Keep them; only missing files are written (idempotent).
    Keep,
    /// Replace everything asked for, the CA included.
    Replace,
}

/// Writes the CA and a leaf per name into `dir`, keeping existing files.
///
/// See the [module documentation](self) for what is written.
pub fn generate(dir: &Path, names: &[&str]) -> Result<()> {
    generate_with(dir, names, Existing::Keep).map(drop)
}

/// Like [`generate`], choosing what happens to existing files. Returns the
/// paths written, empty when everything was already there.
pub fn generate_with(dir: &Path, names: &[&str], existing: Existing) -> Result<Vec<PathBuf>> {
    for name in names {
        check_name(name)?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();

    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    let (issuer, ca_is_new) = match (ca_cert.exists(), ca_key.exists(), existing) {
        (true, true, Existing::Keep) => (load_ca(&ca_key)?, false),
        (false, false, _) | (_, _, Existing::Replace) => {
            let key = KeyPair::generate().context("generating the CA key")?;
            let cert = ca_params()?
                .self_signed(&key)
                .context("self-signing the CA")?;
            write_file(&ca_key, &key.serialize_pem(), true)?;
            write_file(&ca_cert, &cert.pem(), false)?;
            written.extend([ca_cert, ca_key]);
            (Issuer::new(ca_params()?, key), true)
        }
        _ => bail!(
            "{} holds only one of {CA_CERT_FILE} and {CA_KEY_FILE}; \
             rerun with --force to create a new CA (and new certificates)",
            dir.display()
        ),
    };

    for name in names {
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        let present = cert_path.exists() && key_path.exists();
        if present && !ca_is_new && existing == Existing::Keep && !outdated(&cert_path, name) {
            continue;
        }
        let key = KeyPair::generate().with_context(|| format!("generating the key of {name}"))?;
        let cert = leaf_params(name)?
            .signed_by(&key, &issuer)
            .with_context(|| format!("signing the certificate of {name}"))?;
        write_file(&key_path, &key.serialize_pem(), true)?;
        write_file(&cert_path, &cert.pem(), false)?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}

/// Writes `NAME.pem` and `NAME.key` in `dir`: a client certificate shaped
/// like the real ones but signed by a throwaway CA that nobody trusts.
///
/// Always overwrites. Give each test its own directory: two writers racing
/// on the same name could leave a certificate beside the other's key.
pub fn generate_untrusted_client(dir: &Path, name: &str) -> Result<()> {
    check_name(name)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate().context("generating the throwaway CA key")?;
    let mut params = ca_params()?;
    // Same shape as the real CA but a different name and key, so the only
    // reason to refuse it is that it is not the trusted CA.
    params.distinguished_name = distinguished_name("Untrusted throwaway CA");
    let issuer = Issuer::new(params, ca_key);

    let key = KeyPair::generate().context("generating the untrusted client key")?;
    let cert = leaf_params(name)?
        .signed_by(&key, &issuer)
        .context("signing the untrusted client certificate")?;
    write_file(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    write_file(&dir.join(format!("{name}.pem")), &cert.pem(), false)?;
    Ok(())
}

/// Rebuilds the issuer from the stored CA key and the fixed CA subject: the
/// leaf then names the same issuer and carries the same authority key
/// identifier (derived from the key) as the leaves issued at creation.
fn load_ca(key_path: &Path) -> Result<Issuer<'static, KeyPair>> {
    let pem =
        fs::read_to_string(key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let key = KeyPair::from_pem(&pem).with_context(|| format!("parsing {}", key_path.display()))?;
    Ok(Issuer::new(ca_params()?, key))
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params)?;
    Ok(params)
}

fn leaf_params(name: &str) -> Result<CertificateParams> {
    let mut sans = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    let own = match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            name.try_into()
                .with_context(|| format!("{name:?} is not usable as a DNS name"))?,
        ),
    };
    if !sans.contains(&own) {
        sans.push(own);
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = purposes(name);
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params)?;
    Ok(params)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Valid from yesterday (tolerates a little clock skew between processes)
/// for [`VALIDITY_DAYS`].
fn set_validity(params: &mut CertificateParams) -> Result<()> {
    let day = |offset_days: i64| -> Result<_> {
        let date = (Utc::now() + chrono::Duration::days(offset_days)).date_naive();
        let month = u8::try_from(date.month())?;
        let day = u8::try_from(date.day())?;
        Ok(rcgen::date_time_ymd(date.year(), month, day))
    };
    params.not_before = day(-1)?;
    params.not_after = day(VALIDITY_DAYS)?;
    Ok(())
}

/// A name becomes a file name and a DNS SAN: keep it to one DNS-ish label
/// set, and never let it shadow the CA's files.
fn check_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !name.starts_with(['-', '.']),
        "certificate name {name:?} must be 1-63 characters of [A-Za-z0-9.-], not starting with '-' or '.'"
    );
    ensure!(
        name != "ca",
        "certificate name \"ca\" is reserved for the CA"
    );
    Ok(())
}

/// Writes `contents` to a sibling temporary file, then renames it over
/// `path`, so a reader never sees half a key.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<()> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("PKI paths end in a file name")?;
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use webpki::{anchor_from_trusted_cert, EndEntityCert, KeyUsage};

    /// A fresh directory per test, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            Self(std::env::temp_dir().join(format!("messenger-pki-{}", uuid::Uuid::new_v4())))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn cert(dir: &Path, file: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(dir.join(file))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"))
    }

    /// Verifies `leaf` against `ca` the way rustls does on each side of a
    /// mutual TLS connection: chain, validity, extended key usage, and name.
    /// Verifies `leaf` against `ca` for the usages its name should have
    /// (see [`purposes`]), and checks that it is refused for the others.
    fn verify(ca: &CertificateDer<'_>, leaf: &CertificateDer<'_>, name: &str) -> Result<()> {
        let anchors = [anchor_from_trusted_cert(ca)?];
        let ee = EndEntityCert::try_from(leaf)?;
        let (server, client) = (!CLIENT_ONLY.contains(&name), !SERVER_ONLY.contains(&name));
        for (usage, expected) in [
            (KeyUsage::server_auth(), server),
            (KeyUsage::client_auth(), client),
        ] {
            let got = ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &[],
                UnixTime::now(),
                usage,
                None,
                None,
            );
            if !expected {
                ensure!(got.is_err(), "{name} is valid for a usage it must not have");
                continue;
            }
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &[],
                UnixTime::now(),
                usage,
                None,
                None,
            )?;
        }
        for subject in ["localhost", "127.0.0.1", "::1", name] {
            ee.verify_is_valid_for_subject_name(&ServerName::try_from(subject)?)?;
        }
        Ok(())
    }

    #[test]
    fn leaves_chain_to_the_ca_for_server_and_client_auth_and_files_are_kept() -> Result<()> {
        let tmp = TempDir::new();
        let dir = tmp.0.as_path();
        generate(dir, &["gateway"])?;
        let ca = cert(dir, CA_CERT_FILE);
        verify(&ca, &cert(dir, "gateway.pem"), "gateway")?;

        // Second run: nothing existing is touched; a new name is issued by
        // the CA reloaded from disk and chains to the same ca.pem.
        let before = fs::read(dir.join("gateway.key"))?;
        let written = generate_with(dir, &["gateway", "client"], Existing::Keep)?;
        assert_eq!(written, [dir.join("client.pem"), dir.join("client.key")]);
        assert_eq!(fs::read(dir.join("gateway.key"))?, before);
        verify(&ca, &cert(dir, "client.pem"), "client")?;
        // Server-only and dual-use names.
        generate_with(dir, &["notifier", "custom-service"], Existing::Keep)?;
        verify(&ca, &cert(dir, "notifier.pem"), "notifier")?;
        verify(&ca, &cert(dir, "custom-service.pem"), "custom-service")?;

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.join(CA_KEY_FILE))?.permissions().mode();
            assert_eq!(mode & 0o077, 0, "the CA key is readable by others");
        }

        // --force replaces the CA, and the leaves with it.
        generate_with(dir, &["gateway"], Existing::Replace)?;
        let new_ca = cert(dir, CA_CERT_FILE);
        assert_ne!(new_ca, ca);
        verify(&new_ca, &cert(dir, "gateway.pem"), "gateway")?;
        Ok(())
    }

    #[test]
    fn untrusted_client_does_not_chain_to_the_ca() -> Result<()> {
        let tmp = TempDir::new();
        let dir = tmp.0.as_path();
        generate(dir, &[])?;
        generate_untrusted_client(dir, "intruder")?;
        let Err(err) = verify(
            &cert(dir, CA_CERT_FILE),
            &cert(dir, "intruder.pem"),
            "intruder",
        ) else {
            panic!("a certificate from another CA must not verify");
        };
        assert!(
            matches!(
                err.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::UnknownIssuer)
            ),
            "{err:#}"
        );
        Ok(())
    }

    #[test]
    fn names_that_would_escape_or_shadow_files_are_refused() {
        for bad in ["", "ca", "../x", "a/b", "-x", "with space"] {
            assert!(
                generate(Path::new("/nonexistent"), &[bad]).is_err(),
                "{bad:?}"
            );
        }
    }
}
