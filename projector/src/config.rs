//! Typed configuration, parsed once at start from flags and environment.
//! Every setting has an env var and a documented default.

use std::time::Duration;

/// Settings of the projector. Its URLs sit in `infra::cli` groups whose `Debug`
/// leaves them out (they may carry passwords).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// PostgreSQL holding the event store (read for gap repair and rebuild)
    /// and the read models (written).
    #[command(flatten)]
    pub postgres: infra::postgres::PostgresArgs,
    /// Connections in the pool. The live loop uses one at a time; rebuild
    /// and gap repair share it.
    #[arg(long, env = "PROJECTOR_DB_POOL", default_value_t = 4)]
    pub db_pool: u32,
    /// Apply the platform's migrations at start (this binary carries
    /// `migrations/`, including the projector's own tables).
    #[arg(long, env = "PROJECTOR_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
    /// Kafka (or tansu / Redpanda) bootstrap servers.
    #[command(flatten)]
    pub kafka: infra::cli::KafkaArgs,
    /// Topic receiving records the projector cannot decode (poison records),
    /// with the reason in headers.
    #[arg(
        long,
        env = "MESSENGER_DEAD_LETTER_TOPIC",
        default_value = "messenger.dead-letter"
    )]
    pub dead_letter_topic: String,
    /// Consumer `fetch.wait.max.ms`: how long the broker may hold a fetch
    /// with no new record. Kafka answers as soon as a record arrives, so
    /// there this only bounds idle polling; tansu holds every fetch for this
    /// long, so on the dev stack it is the projector's lag behind the live
    /// frames (which no longer wait for it, ADR 0006): what a read right
    /// after a frame may wait at the read fence. Each poll costs tansu one
    /// SQL round per partition, idle or not.
    #[arg(long, env = "PROJECTOR_FETCH_WAIT_MS", default_value_t = 50)]
    pub fetch_wait_ms: u32,
    /// Extra librdkafka properties (`key=value`, comma-separated in the env
    /// var) for the consumer and the dead-letter producer, applied last:
    /// TLS or SASL settings of a real cluster, fetch sizes, ...
    #[arg(
        long = "kafka-option",
        env = "PROJECTOR_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    pub kafka_options: Vec<String>,
    /// Kafka consumer group. Instances sharing it split the partitions.
    #[arg(long, env = "PROJECTOR_GROUP_ID", default_value = "projector")]
    pub group_id: String,
    /// Redis for pub/sub fan-out and cache generations.
    #[command(flatten)]
    pub redis: infra::cli::RedisArgs,
    /// Most Kafka records applied in one read-model transaction. A batch is
    /// whatever is immediately available up to this size, so a quiet topic
    /// is projected record by record with no added latency.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// Events per transaction when rebuilding from the event store.
    #[arg(long, env = "PROJECTOR_REBUILD_BATCH_SIZE", default_value_t = 5000)]
    pub rebuild_batch_size: i64,
    /// How long to keep retrying Redis (generations, then publishes) after a
    /// commit before giving up on that batch's fan-out, seconds. Cached
    /// values carry a TTL, so a lost invalidation heals by itself.
    #[arg(long, env = "PROJECTOR_REDIS_RETRY_SECS", default_value_t = 30)]
    pub redis_retry_secs: u64,
}

impl Config {
    /// [`Self::redis_retry_secs`] as a duration.
    pub fn redis_retry(&self) -> Duration {
        Duration::from_secs(self.redis_retry_secs)
    }
}
