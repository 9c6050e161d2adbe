//! The service kernel of Messenger: what every service stands on, written
//! once, plus the dev tooling's shared pieces. Nothing of the domain.
//!
//! # Layout
//!
//! A service's `main` parses its `Config` (which flattens the groups of
//! [`cli`]), calls [`telemetry::init`], builds its `Application` and runs it
//! until [`shutdown::signal`]. Inside, the pieces it needs:
//!
//! - [`shutdown`]: the signal future and the [`shutdown::Shutdown`] handle
//!   every loop watches (and sleeps its backoff on).
//! - [`retry`]: the one exponential [`retry::Backoff`].
//! - [`cli`]: parsing for embedding, the one reading of extra Kafka options,
//!   and the shared setting groups (`MESSENGER_*` names).
//! - [`postgres`] (feature `postgres`): the pool setup and the one
//!   `MIGRATOR` of `migrations/`.
//! - [`redis`] (feature `redis`): the client builder with the one reconnect
//!   policy.
//! - [`grpc`] (feature `grpc-server`): the one gRPC server bring-up (mTLS,
//!   health, TCP_NODELAY, optional reflection).
//! - [`tls`] (feature `tls`): tonic mutual-TLS configurations built from a PKI directory:
//!   servers require a client certificate signed by the CA; clients present
//!   their own and trust only the CA.
//! - [`pki`] (feature `pki`): the local certificate authority of the dev stack. It writes a
//!   CA and one certificate per service (valid for both TLS server and client
//!   authentication, so the same pair serves mutual TLS on either side). The
//!   `messenger-pki` binary (`src/bin/messenger-pki.rs`) is its command-line
//!   front end; `./dev up` runs it once into `.dev/pki`.
//! - [`keys`]: the Redis key and pub/sub channel layout and the cache
//!   coherence scheme shared by projector, query-service and gateway.
//! - [`telemetry`]: one `tracing` subscriber setup for every binary.

pub mod cli;
#[cfg(feature = "grpc-server")]
pub mod grpc;
pub mod keys;
#[cfg(feature = "pki")]
pub mod pki;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;
