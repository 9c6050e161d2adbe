//! Shared infrastructure for Messenger's services, tests and local stack.
//!
//! This crate stays thin: it holds plumbing that more than one service (or
//! the dev tooling) needs, named for what it does, and nothing of the domain.
//!
//! # Layout
//!
//! - [`pki`]: the local certificate authority of the dev stack. It writes a
//!   CA and one certificate per service (valid for both TLS server and client
//!   authentication, so the same pair serves mutual TLS on either side). The
//!   `messenger-pki` binary (`src/bin/messenger-pki.rs`) is its command-line
//!   front end; `./dev up` runs it once into `.dev/pki`.
//! - [`tls`]: tonic mutual-TLS configurations built from such a directory:
//!   servers require a client certificate signed by the CA; clients present
//!   their own and trust only the CA.
//! - [`keys`]: the Redis key and pub/sub channel layout and the cache
//!   coherence scheme shared by projector, query-service and gateway.
//! - [`telemetry`]: one `tracing` subscriber setup for every binary.

pub mod keys;
pub mod pki;
pub mod telemetry;
pub mod tls;
