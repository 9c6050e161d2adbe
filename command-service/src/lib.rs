//! command-service: every write of Messenger.
//!
//! # Layout (a code tour, in the order a command travels)
//!
//! - [`grpc`]: tonic service; reads the acting user from metadata, maps
//!   errors to statuses (the only such mapping).
//! - [`commands`]: the application service; parses input into domain values,
//!   picks the aggregate, writes side tables in the same transaction.
//! - [`store`]: the event store; aggregate cache with per-stream locks,
//!   snapshots, optimistic concurrency with bounded retries.
//! - [`lookup`]: the Postgres adapter of the domain's lookup port.
//! - [`credentials`]: argon2id hashing and reset tokens (secrets stay here).
//! - [`relay`]: the outbox relay from the event store to Kafka.
//! - [`config`]: typed settings from flags and environment.
//!
//! [`Application::build`] wires it together; [`Application::run_until_stopped`]
//! serves until the shutdown future resolves, then drains in-flight calls and
//! stops the relay.

pub mod commands;
pub mod config;
pub mod credentials;
pub mod grpc;
pub mod lookup;
pub mod relay;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use domain::Limits;
use proto::command::v1::command_service_server::CommandServiceServer;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::commands::Commands;
use crate::config::Config;
use crate::credentials::{HashParams, Hasher};
use crate::relay::{Relay, RelayConfig};
use crate::store::StoreTuning;

/// The migrations of the whole platform (`migrations/` at the repo root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects a pool to `url`.
pub async fn connect(url: &str, size: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().context("parsing the database URL")?;
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")
}

/// A built, not yet running, command-service.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    commands: Arc<Commands>,
    relay: Option<Relay>,
    tls: tonic::transport::ServerTlsConfig,
}

impl Application {
    /// Connects, migrates (if configured), binds the listener.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let pool = connect(&config.database_url, config.db_pool).await?;
        if config.migrate {
            MIGRATOR.run(&pool).await.context("applying migrations")?;
        }
        let hasher = Hasher::new(HashParams {
            memory_kib: config.argon2_memory_kib,
            iterations: config.argon2_iterations,
            parallelism: config.argon2_parallelism,
        })?;
        let limits = Limits {
            body_max: config.message_body_max,
            group_max_members: config.group_max_members,
            ..Limits::default()
        };
        let commands = Arc::new(Commands::new(
            pool.clone(),
            StoreTuning {
                snapshot_every: config.snapshot_every,
                cache_capacity: config.aggregate_cache,
                max_attempts: config.max_attempts,
            },
            hasher,
            limits,
            chrono::Duration::seconds(config.reset_token_ttl_secs.clamp(60, 1800)),
        ));
        let relay = if config.relay {
            Some(Relay::new(
                pool,
                RelayConfig {
                    brokers: config.kafka_brokers.clone(),
                    topic: config.events_topic.clone(),
                    batch_size: config.relay_batch_size.max(1),
                    poll_interval: Duration::from_millis(config.relay_poll_ms.max(10)),
                    linger_ms: config.relay_linger_ms,
                    extra: config.relay_kafka_pairs(),
                },
            )?)
        } else {
            None
        };
        let tls = infra::tls::server(&config.pki_dir, &config.tls_name)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            commands,
            relay,
            tls,
        })
    }

    /// Where the gRPC server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The command layer, for in-process callers (benchmarks, CLI).
    pub fn commands(&self) -> Arc<Commands> {
        self.commands.clone()
    }

    /// Serves until `shutdown` resolves; then in-flight calls finish and the
    /// relay stops after its current round.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let relay_task = self.relay.map(|r| {
            let rx = stop_rx.clone();
            tokio::spawn(async move {
                if let Err(e) = r.run(rx).await {
                    tracing::error!(error = ?e, "relay stopped with an error");
                }
            })
        });
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<CommandServiceServer<grpc::CommandGrpc>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        tracing::info!(addr = %self.addr, "command-service listening (mTLS)");
        let mut stop_for_server = stop_rx.clone();
        // Small request/response pairs: without TCP_NODELAY, Nagle and
        // delayed ACKs add ~40 ms to a call (`Server::tcp_nodelay` applies
        // only to listeners tonic binds itself, not to an incoming stream).
        let incoming = TcpListenerStream::new(self.listener).map(|conn| {
            if let Ok(stream) = &conn {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
            }
            conn
        });
        let server = tonic::transport::Server::builder()
            .tls_config(self.tls)?
            .add_service(health_service)
            .add_service(reflection)
            .add_service(CommandServiceServer::new(grpc::CommandGrpc::new(
                self.commands,
            )))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_for_server.wait_for(|s| *s).await;
            });
        let server = tokio::spawn(server);
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        server.await??;
        if let Some(t) = relay_task {
            t.await?;
        }
        Ok(())
    }
}
