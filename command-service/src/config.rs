//! Typed configuration, parsed once at start from flags and environment.
//! Every setting has an env var and a documented default (README table).

use std::net::SocketAddr;

/// Environment names renamed to the `<SERVICE>_<GROUP>_<NAME>` pattern:
/// the old ones still apply for one release, with a warning
/// ([`infra::cli::accept_renamed_env`]).
pub const RENAMED_ENV: &[(&str, &str)] = &[
    ("SNAPSHOT_EVERY", "COMMAND_SERVICE_SNAPSHOT_EVERY"),
    (
        "AGGREGATE_CACHE_CAPACITY",
        "COMMAND_SERVICE_AGGREGATE_CACHE_CAPACITY",
    ),
    ("COMMAND_MAX_ATTEMPTS", "COMMAND_SERVICE_MAX_ATTEMPTS"),
    ("ARGON2_MEMORY_KIB", "COMMAND_SERVICE_ARGON2_MEMORY_KIB"),
    ("ARGON2_ITERATIONS", "COMMAND_SERVICE_ARGON2_ITERATIONS"),
    ("ARGON2_PARALLELISM", "COMMAND_SERVICE_ARGON2_PARALLELISM"),
    (
        "RESET_TOKEN_TTL_SECS",
        "COMMAND_SERVICE_RESET_TOKEN_TTL_SECS",
    ),
    ("RELAY_BATCH_SIZE", "COMMAND_SERVICE_RELAY_BATCH_SIZE"),
    ("RELAY_LINGER_MS", "COMMAND_SERVICE_RELAY_LINGER_MS"),
    ("RELAY_KAFKA_OPTIONS", "COMMAND_SERVICE_RELAY_KAFKA_OPTIONS"),
    ("RELAY_POLL_MS", "COMMAND_SERVICE_RELAY_POLL_MS"),
];

/// Settings of command-service. Its database URL sits in an `infra`
/// group whose `Debug` leaves it out (it may carry a password).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// PostgreSQL holding the event store and command-side tables.
    #[command(flatten)]
    pub postgres: infra::postgres::PostgresArgs,
    /// Connections in the pool.
    #[arg(long, env = "COMMAND_SERVICE_DB_POOL", default_value_t = 32)]
    pub db_pool: u32,
    /// Kafka, and the topic receiving every event.
    #[command(flatten)]
    pub kafka: infra::cli::KafkaArgs,
    /// Redis, where the relay publishes live frames (ADR 0006).
    #[command(flatten)]
    pub redis: infra::cli::RedisArgs,
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "COMMAND_SERVICE_ADDR", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory with `ca.pem` and this service's `NAME.pem`/`NAME.key`.
    #[command(flatten)]
    pub pki: infra::cli::PkiArgs,
    /// gRPC server options.
    #[command(flatten)]
    pub grpc: infra::cli::GrpcArgs,
    /// Certificate name of this service inside the PKI directory.
    #[arg(
        long,
        env = "COMMAND_SERVICE_TLS_NAME",
        default_value = "command-service"
    )]
    pub tls_name: String,
    /// Run the outbox relay in this process (one leader across instances).
    #[arg(long, env = "COMMAND_SERVICE_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub relay: bool,
    /// Most events the relay publishes per round.
    #[arg(long, env = "COMMAND_SERVICE_RELAY_BATCH_SIZE", default_value_t = 1000)]
    pub relay_batch_size: i64,
    /// Producer `linger.ms`.
    #[arg(long, env = "COMMAND_SERVICE_RELAY_LINGER_MS", default_value_t = 1)]
    pub relay_linger_ms: u32,
    /// Extra librdkafka producer properties for the relay, comma-separated
    /// `key=value` pairs (e.g. `compression.type=lz4,debug=eos`); an entry
    /// without `=` is refused.
    #[arg(
        long,
        env = "COMMAND_SERVICE_RELAY_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    pub relay_kafka_options: Vec<String>,
    /// Copy `event_type`, `event_version`, `aggregate_type`, `sequence` and
    /// `position` into Kafka record headers (schemas/README.md). Off by
    /// default: no consumer of ours reads them (the value carries them),
    /// and tansu stores each header as a row of its own. Turn on for
    /// tools that route on headers.
    #[arg(long, env = "COMMAND_SERVICE_RELAY_HEADERS", default_value_t = false, action = clap::ArgAction::Set)]
    pub relay_headers: bool,
    /// How long the relay retries publishing a round's live frames to
    /// Redis before it produces the round to Kafka without them.
    #[arg(
        long,
        env = "COMMAND_SERVICE_RELAY_LIVE_RETRY_MS",
        default_value_t = 2000
    )]
    pub relay_live_retry_ms: u64,
    /// Safety-net poll interval of the relay, milliseconds.
    #[arg(long, env = "COMMAND_SERVICE_RELAY_POLL_MS", default_value_t = 1000)]
    pub relay_poll_ms: u64,
    /// Apply migrations at start.
    #[arg(long, env = "COMMAND_SERVICE_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
    /// Snapshot every this many events of a stream.
    #[arg(long, env = "COMMAND_SERVICE_SNAPSHOT_EVERY", default_value_t = 100)]
    pub snapshot_every: i64,
    /// Streams kept in memory per aggregate type.
    #[arg(
        long,
        env = "COMMAND_SERVICE_AGGREGATE_CACHE_CAPACITY",
        default_value_t = 100_000
    )]
    pub aggregate_cache: usize,
    /// Attempts on optimistic-concurrency conflicts.
    #[arg(long, env = "COMMAND_SERVICE_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// argon2id memory cost, KiB (OWASP minimum 19456).
    #[arg(
        long,
        env = "COMMAND_SERVICE_ARGON2_MEMORY_KIB",
        default_value_t = 19_456
    )]
    pub argon2_memory_kib: u32,
    /// argon2id iterations (OWASP minimum 2 at 19 MiB).
    #[arg(long, env = "COMMAND_SERVICE_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,
    /// argon2id lanes.
    #[arg(long, env = "COMMAND_SERVICE_ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,
    /// Lifetime of a password-reset token, seconds (at most 1800).
    #[arg(
        long,
        env = "COMMAND_SERVICE_RESET_TOKEN_TTL_SECS",
        default_value_t = 1800
    )]
    pub reset_token_ttl_secs: i64,
    /// Longest message body, characters.
    #[arg(long, env = "MESSENGER_MESSAGE_BODY_MAX", default_value_t = 4000)]
    pub message_body_max: usize,
    /// Largest group, members.
    #[arg(long, env = "MESSENGER_GROUP_MAX_MEMBERS", default_value_t = 1000)]
    pub group_max_members: usize,
}

impl Config {
    /// `relay_kafka_options` as pairs; an entry without `=` is refused.
    pub fn relay_kafka_pairs(&self) -> Result<Vec<(String, String)>, String> {
        Ok(infra::cli::kafka_options(&self.relay_kafka_options)?
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }
}
