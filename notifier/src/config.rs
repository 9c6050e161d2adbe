//! Typed configuration, parsed once at start from flags and environment.
//! Every setting has an env var and a documented default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of the notifier. `Debug` is hand-written: the database, Redis
/// and SMTP URLs may carry passwords, and the VAPID key file is a secret.
#[derive(Clone, clap::Args)]
pub struct Config {
    /// PostgreSQL with the read models (membership, users, read markers) and
    /// the notifier's own tables.
    #[command(flatten)]
    pub postgres: infra::postgres::PostgresArgs,
    /// Connections in the pool (gRPC, consumer, push worker, digests).
    #[arg(long, env = "NOTIFIER_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// Apply the platform's migrations at start.
    #[arg(long, env = "NOTIFIER_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "NOTIFIER_ADDR", default_value = "127.0.0.1:50053")]
    pub listen: SocketAddr,
    /// Directory with `ca.pem` and this service's `NAME.pem`/`NAME.key`.
    #[command(flatten)]
    pub pki: infra::cli::PkiArgs,
    /// gRPC server options.
    #[command(flatten)]
    pub grpc: infra::cli::GrpcArgs,
    /// Certificate name of this service inside the PKI directory.
    #[arg(long, env = "NOTIFIER_TLS_NAME", default_value = "notifier")]
    pub tls_name: String,
    /// Kafka (or tansu / Redpanda) bootstrap servers.
    #[command(flatten)]
    pub kafka: infra::cli::KafkaArgs,
    /// Topic for poison records and for pushes that failed for good.
    #[arg(
        long,
        env = "MESSENGER_DEAD_LETTER_TOPIC",
        default_value = "messenger.dead-letter"
    )]
    pub dead_letter_topic: String,
    /// Kafka consumer group of the notifier.
    #[arg(long, env = "NOTIFIER_GROUP_ID", default_value = "notifier")]
    pub group_id: String,
    /// Consumer `fetch.wait.max.ms` (see the projector's setting: tansu
    /// holds every fetch this long). Notifications are for users who are
    /// away: a fraction of a second more costs them nothing, and each idle
    /// poll costs the broker.
    #[arg(long, env = "NOTIFIER_FETCH_WAIT_MS", default_value_t = 250)]
    pub fetch_wait_ms: u32,
    /// Extra librdkafka properties (`key=value`, comma-separated).
    #[arg(
        long = "kafka-option",
        env = "NOTIFIER_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    pub kafka_options: Vec<String>,
    /// Most records handled in one transaction.
    #[arg(long, env = "NOTIFIER_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// How long a MessageSent may wait for the projector to project its
    /// conversation up to the message (membership is read from the read
    /// models), seconds; then it is dead-lettered as `not_projected`.
    #[arg(long, env = "NOTIFIER_PROJECTION_WAIT_SECS", default_value_t = 60)]
    pub projection_wait_secs: u64,
    /// Redis with the gateways' presence keys.
    #[command(flatten)]
    pub redis: infra::cli::RedisArgs,
    /// Push also to users with a live WebSocket (presence key in Redis).
    #[arg(long, env = "NOTIFIER_PUSH_WHEN_ONLINE", default_value_t = false, action = clap::ArgAction::Set)]
    pub push_when_online: bool,
    /// The VAPID private key: a PEM file (SEC1 or PKCS#8) or a file holding
    /// the base64url raw 32-byte scalar. `./dev up` generates `.dev/vapid.pem`.
    #[arg(
        long,
        env = "NOTIFIER_VAPID_PRIVATE_KEY_FILE",
        default_value = ".dev/vapid.pem"
    )]
    pub vapid_private_key_file: PathBuf,
    /// VAPID `sub` claim: a contact for push services (`mailto:` or https).
    #[arg(
        long,
        env = "NOTIFIER_VAPID_SUBJECT",
        default_value = "mailto:ops@messenger.invalid"
    )]
    pub vapid_subject: String,
    /// RFC 8030 TTL of a push, seconds: how long a push service keeps it for
    /// an offline browser.
    #[arg(long, env = "NOTIFIER_PUSH_TTL_SECS", default_value_t = 86_400)]
    pub push_ttl_secs: u32,
    /// Timeout of one push request, milliseconds.
    #[arg(long, env = "NOTIFIER_PUSH_TIMEOUT_MS", default_value_t = 10_000)]
    pub push_timeout_ms: u64,
    /// Concurrent push requests per push-service origin: a slow or dead
    /// service only ever holds this many.
    #[arg(long, env = "NOTIFIER_PUSH_PER_ORIGIN", default_value_t = 16)]
    pub push_per_origin: usize,
    /// Concurrent push requests in all.
    #[arg(long, env = "NOTIFIER_PUSH_CONCURRENCY", default_value_t = 256)]
    pub push_concurrency: usize,
    /// Attempts of one push (429, 5xx, timeouts) before it is dead-lettered.
    #[arg(long, env = "NOTIFIER_PUSH_MAX_ATTEMPTS", default_value_t = 6)]
    pub push_max_attempts: i32,
    /// First retry delay, milliseconds; doubles per attempt, with jitter,
    /// at least a `Retry-After`, at most `push_backoff_max_ms`.
    #[arg(long, env = "NOTIFIER_PUSH_BACKOFF_MS", default_value_t = 1_000)]
    pub push_backoff_ms: u64,
    /// Longest retry delay, milliseconds.
    #[arg(long, env = "NOTIFIER_PUSH_BACKOFF_MAX_MS", default_value_t = 300_000)]
    pub push_backoff_max_ms: u64,
    /// How long a claimed push belongs to the instance that claimed it,
    /// seconds; after that another instance (or this one after a restart)
    /// sends it again. At least the request timeout plus one second (a
    /// shorter lease is raised to that, with a warning).
    #[arg(long, env = "NOTIFIER_PUSH_LEASE_SECS", default_value_t = 60)]
    pub push_lease_secs: u64,
    /// PEM file of extra CA certificates trusted for push services (besides
    /// the system's): a private push service, or the test harness's.
    #[arg(long, env = "NOTIFIER_PUSH_EXTRA_CA_FILE")]
    pub push_extra_ca_file: Option<PathBuf>,
    /// Push-service hosts the notifier may send to, comma-separated host
    /// suffixes (`example.com` also covers `a.example.com`), each allowing
    /// port 443 unless it names a port (`push.example:8443`) or any
    /// (`push.example:*`). Empty: the public push services of Chrome,
    /// Firefox, Edge and Safari (`notifier::endpoint::DEFAULT_ALLOWED_HOSTS`).
    /// Endpoints elsewhere are refused at registration and never contacted.
    #[arg(long, env = "NOTIFIER_PUSH_ALLOWED_HOSTS", value_delimiter = ',')]
    pub push_allowed_hosts: Vec<String>,
    /// Networks a push endpoint may resolve to although they are not public
    /// (CIDRs or addresses, comma-separated): a private push service, or
    /// the tests' on loopback. Empty (the default): loopback, private,
    /// link-local, unique-local, CGNAT and reserved addresses are refused.
    #[arg(long, env = "NOTIFIER_PUSH_ALLOWED_NETWORKS", value_delimiter = ',')]
    pub push_allowed_networks: Vec<String>,
    /// Most push subscriptions per user; registering one more replaces the
    /// oldest (a browser that re-subscribes gets a new endpoint and rarely
    /// unsubscribes the old one).
    #[arg(
        long,
        env = "NOTIFIER_MAX_SUBSCRIPTIONS_PER_USER",
        default_value_t = 10
    )]
    pub max_subscriptions_per_user: u32,
    /// Poll interval of the push and digest workers, milliseconds (they are
    /// also woken at once when the consumer queues work).
    #[arg(long, env = "NOTIFIER_POLL_MS", default_value_t = 250)]
    pub poll_ms: u64,
    /// Default delay before unread messages are mailed, seconds (users may
    /// choose their own).
    #[arg(long, env = "NOTIFIER_EMAIL_DELAY_SECS", default_value_t = 600)]
    pub email_delay_secs: u32,
    /// SMTP server: `smtp://host:port` (plain, for the local sink),
    /// `smtp://host:port?tls=required` (STARTTLS), `smtps://host:port`
    /// (TLS); credentials as `smtp://user:pass@host`.
    #[arg(
        long,
        env = "MESSENGER_SMTP_URL",
        default_value = "smtp://127.0.0.1:52525"
    )]
    pub smtp_url: String,
    /// Sender of digest emails.
    #[arg(
        long,
        env = "NOTIFIER_MAIL_FROM",
        default_value = "Messenger <notifications@messenger.invalid>"
    )]
    pub mail_from: String,
}

impl Config {
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms.max(10))
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("kafka", &self.kafka)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("group_id", &self.group_id)
            .field("redis", &self.redis)
            .field("push_when_online", &self.push_when_online)
            .field("vapid_subject", &self.vapid_subject)
            .field("email_delay_secs", &self.email_delay_secs)
            .finish_non_exhaustive()
    }
}
