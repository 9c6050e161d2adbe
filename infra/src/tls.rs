//! Mutual TLS for gRPC between services, from a PKI directory laid out by
//! [`crate::pki`]: `ca.pem`, and `NAME.pem` / `NAME.key` per service.

use std::path::Path;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Makes *ring* the process's rustls provider unless one is installed.
///
/// rustls picks a provider from its cargo features only when exactly one
/// is on. The workspace asks for *ring* everywhere, but a workspace build
/// unifies features across members, and `tools/dev-broker` (tansu) turns
/// on aws-lc-rs too; tonic's TLS then finds no default and panics. Every
/// TLS configuration of ours goes through here first, so the choice does
/// not depend on what else is linked. Idempotent and cheap.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one first: fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn read(dir: &Path, file: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(file);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// The certificate and key of `name`.
pub fn identity(dir: &Path, name: &str) -> anyhow::Result<Identity> {
    Ok(Identity::from_pem(
        read(dir, &format!("{name}.pem"))?,
        read(dir, &format!("{name}.key"))?,
    ))
}

/// The local CA.
pub fn ca(dir: &Path) -> anyhow::Result<Certificate> {
    Ok(Certificate::from_pem(read(dir, "ca.pem")?))
}

/// Server side: present `name`'s certificate and require a client
/// certificate signed by the CA (a client without one is refused in the
/// handshake).
pub fn server(dir: &Path, name: &str) -> anyhow::Result<ServerTlsConfig> {
    install_crypto_provider();
    Ok(ServerTlsConfig::new()
        .identity(identity(dir, name)?)
        .client_ca_root(ca(dir)?)
        .client_auth_optional(false))
}

/// Client side: present `name`'s certificate, trust only the CA, and expect
/// the server to be `server_name` (the dev certificates carry `localhost`
/// and each service's name).
pub fn client(dir: &Path, name: &str, server_name: &str) -> anyhow::Result<ClientTlsConfig> {
    install_crypto_provider();
    Ok(ClientTlsConfig::new()
        .ca_certificate(ca(dir)?)
        .identity(identity(dir, name)?)
        .domain_name(server_name))
}
