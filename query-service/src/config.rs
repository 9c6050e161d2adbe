//! Typed configuration, parsed once at start from flags and environment.
//! Every setting has an env var and a documented default.

use std::net::SocketAddr;
use std::time::Duration;

/// Environment names renamed to the `<SERVICE>_<GROUP>_<NAME>` pattern:
/// the old ones still apply for one release, with a warning
/// ([`infra::cli::accept_renamed_env`]).
pub const RENAMED_ENV: &[(&str, &str)] = &[
    ("QUERY_CACHE", "QUERY_SERVICE_CACHE"),
    ("QUERY_CACHE_TTL_SECS", "QUERY_SERVICE_CACHE_TTL_SECS"),
    ("QUERY_REDIS_TIMEOUT_MS", "QUERY_SERVICE_REDIS_TIMEOUT_MS"),
    ("QUERY_REDIS_POOL", "QUERY_SERVICE_REDIS_POOL"),
];

/// Settings of query-service. Its URLs sit in `infra::cli` groups whose `Debug`
/// leaves them out (they may carry passwords).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// PostgreSQL holding the read models and the event store.
    #[command(flatten)]
    pub postgres: infra::postgres::PostgresArgs,
    /// Connections in the pool.
    #[arg(long, env = "QUERY_SERVICE_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "QUERY_SERVICE_ADDR", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// Directory with `ca.pem` and this service's `NAME.pem`/`NAME.key`.
    #[command(flatten)]
    pub pki: infra::cli::PkiArgs,
    /// gRPC server options.
    #[command(flatten)]
    pub grpc: infra::cli::GrpcArgs,
    /// Certificate name of this service inside the PKI directory.
    #[arg(long, env = "QUERY_SERVICE_TLS_NAME", default_value = "query-service")]
    pub tls_name: String,
    /// Redis holding the cache and its generation counters.
    #[command(flatten)]
    pub redis: infra::cli::RedisArgs,
    /// Use the Redis cache at all (`false` reads PostgreSQL only; for
    /// measurements and emergencies).
    #[arg(long, env = "QUERY_SERVICE_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub cache: bool,
    /// Lifetime of a cached value, seconds. Coherence does not depend on it
    /// (generations do that); it bounds memory and the effect of a lost
    /// generation increment.
    #[arg(long, env = "QUERY_SERVICE_CACHE_TTL_SECS", default_value_t = 300)]
    pub cache_ttl_secs: u64,
    /// Longest wait for one Redis command before reading PostgreSQL instead,
    /// milliseconds.
    #[arg(long, env = "QUERY_SERVICE_REDIS_TIMEOUT_MS", default_value_t = 200)]
    pub redis_timeout_ms: u64,
    /// Longest wait of a conversation read for the projector to reach the
    /// frames already sent live (the read fence, ADR 0006), milliseconds;
    /// 0 turns the fence off.
    #[arg(long, env = "QUERY_SERVICE_READ_FENCE_MS", default_value_t = 1000)]
    pub read_fence_ms: u64,
    /// Redis connections (each pipelines many requests).
    #[arg(long, env = "QUERY_SERVICE_REDIS_POOL", default_value_t = 2)]
    pub redis_pool: usize,
}

impl Config {
    /// `cache_ttl_secs` as a duration (at least one second).
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_secs.max(1))
    }

    /// `redis_timeout_ms` as a duration (at least one millisecond).
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms.max(1))
    }
}
