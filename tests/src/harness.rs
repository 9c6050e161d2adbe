//! Test harness: each test owns a fresh database and a fresh Kafka topic, and
//! starts the services it needs in-process on port 0 against the real
//! PostgreSQL and Kafka-protocol broker of the dev stack (`./dev test` starts
//! them and exports their addresses).

use crate::running::Running;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use command_service::commands::Commands;
use proto::command::v1::command_service_client::CommandServiceClient;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tonic::transport::{Channel, Endpoint};

/// Addresses of the running stack, from the environment `./dev test` sets.
#[derive(Debug, Clone)]
pub struct StackEnv {
    /// A superuser URL to the server (database `postgres`); tests create their own.
    pub admin_database_url: String,
    pub kafka_brokers: String,
}

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with `./dev test` (it starts the stack and sets it)"
        )
    })
}

/// The stack's addresses.
pub fn stack() -> &'static StackEnv {
    static ENV: OnceLock<StackEnv> = OnceLock::new();
    ENV.get_or_init(|| StackEnv {
        admin_database_url: required("MESSENGER_TEST_DATABASE_URL"),
        kafka_brokers: required("MESSENGER_KAFKA_BROKERS"),
    })
}

/// A PKI generated once per test process: the CA, every service, a
/// `client` certificate and an `untrusted` one from another CA.
pub fn pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "messenger-test-pki-{}",
            uuid::Uuid::now_v7().simple()
        ));
        infra::pki::generate(&dir, infra::pki::DEFAULT_NAMES)
            .unwrap_or_else(|e| panic!("generating the test PKI: {e:#}"));
        infra::pki::generate_untrusted_client(&dir, "untrusted")
            .unwrap_or_else(|e| panic!("generating the untrusted client: {e:#}"));
        dir
    })
}

fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let (base, _) = url.rsplit_once('/').context("database URL has no path")?;
    let query = url
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    Ok(format!("{base}/{db}{query}"))
}

/// Creates an empty database with the platform's migrations applied.
pub async fn fresh_database() -> anyhow::Result<(String, PgPool)> {
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&stack().admin_database_url)
        .await
        .context("connecting to the test PostgreSQL")?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let url = with_database(&stack().admin_database_url, &name)?;
    let pool = command_service::connect(&url, 16).await?;
    command_service::MIGRATOR.run(&pool).await?;
    Ok((url, pool))
}

/// Creates a topic no other test uses.
pub async fn fresh_topic(partitions: i32) -> anyhow::Result<String> {
    let topic = format!("test-events-{}", uuid::Uuid::now_v7().simple());
    crate::kafka::create_topic(&stack().kafka_brokers, &topic, partitions).await?;
    Ok(topic)
}

/// Options for an in-process command-service.
#[derive(Debug, Clone)]
pub struct CommandServiceOptions {
    /// Run the relay inside it.
    pub relay: bool,
    /// Redis prefix of the live frames its relay publishes; `None` = a
    /// fresh one (the projector, query-service and gateway of a test use
    /// the service's, [`CommandService::redis_prefix`]).
    pub redis_prefix: Option<String>,
    /// Extra `--flag value` arguments (any of its config).
    pub extra_args: Vec<String>,
}

impl Default for CommandServiceOptions {
    fn default() -> Self {
        Self {
            relay: true,
            redis_prefix: None,
            extra_args: Vec::new(),
        }
    }
}

/// A command-service running in this process.
#[derive(Debug)]
pub struct CommandService {
    pub addr: std::net::SocketAddr,
    pub database_url: String,
    pub pool: PgPool,
    pub topic: String,
    /// The Redis prefix of its relay's live frames.
    pub redis_prefix: String,
    pub commands: Arc<Commands>,
    running: Running,
}

/// Fast argon2 for tests that are not about hashing cost.
const FAST_HASH: [&str; 6] = [
    "--argon2-memory-kib",
    "1024",
    "--argon2-iterations",
    "1",
    "--argon2-parallelism",
    "1",
];

impl CommandService {
    /// Fresh database and topic, then start.
    pub async fn start(opts: CommandServiceOptions) -> anyhow::Result<Self> {
        let (url, pool) = fresh_database().await?;
        let topic = fresh_topic(4).await?;
        Self::start_on(url, pool, topic, opts).await
    }

    /// Start against an existing database and topic (e.g. after a restart).
    pub async fn start_on(
        url: String,
        pool: PgPool,
        topic: String,
        opts: CommandServiceOptions,
    ) -> anyhow::Result<Self> {
        let pki = pki().to_string_lossy().into_owned();
        let redis_prefix = opts
            .redis_prefix
            .clone()
            .unwrap_or_else(crate::query_support::unique_prefix);
        let mut args: Vec<String> = vec![
            "command-service".into(),
            "--redis-url".into(),
            crate::projector_support::redis_url().into(),
            "--redis-prefix".into(),
            redis_prefix.clone(),
            "--database-url".into(),
            url.clone(),
            "--kafka-brokers".into(),
            stack().kafka_brokers.clone(),
            "--events-topic".into(),
            topic.clone(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--pki-dir".into(),
            pki,
            "--relay".into(),
            opts.relay.to_string(),
            "--db-pool".into(),
            "16".into(),
            "--relay-poll-ms".into(),
            "200".into(),
        ];
        args.extend(FAST_HASH.iter().map(|s| s.to_string()));
        args.extend(opts.extra_args);
        let config = infra::cli::parse_from::<command_service::config::Config, _, _>(args)?;
        let app = command_service::Application::build(&config).await?;
        let addr = app.local_addr();
        let commands = app.commands();
        let running = Running::spawn(|stop| app.run_until_stopped(stop));
        Ok(Self {
            addr,
            database_url: url,
            pool,
            topic,
            redis_prefix,
            commands,
            running,
        })
    }

    /// A gRPC client presenting the `gateway` certificate: the identity
    /// the service lets act for users.
    pub async fn client(&self) -> anyhow::Result<CommandServiceClient<Channel>> {
        self.client_as("gateway").await
    }

    /// A gRPC client presenting the `operator` certificate (role grants).
    pub async fn operator(&self) -> anyhow::Result<CommandServiceClient<Channel>> {
        self.client_as("operator").await
    }

    /// A gRPC client presenting certificate `name` from the test PKI.
    pub async fn client_as(&self, name: &str) -> anyhow::Result<CommandServiceClient<Channel>> {
        let tls = infra::tls::client(pki(), name, "localhost")?;
        let channel = Endpoint::from_shared(format!("https://localhost:{}", self.addr.port()))?
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(CommandServiceClient::new(channel))
    }

    /// Graceful stop: in-flight calls finish, the relay ends its round.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.running.stop().await
    }
}

/// Builds a request acting as `user`.
pub fn as_user<T>(user: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = user.parse() {
        req.metadata_mut().insert(proto::meta::USER_ID, v);
    }
    req
}
