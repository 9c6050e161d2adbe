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
//! - [`relay`]: the outbox relay from the event store to Kafka, and
//!   [`live`]: the frames it publishes to Redis for the gateways first.
//! - [`config`]: typed settings from flags and environment.
//!
//! [`Application::build`] wires it together; [`Application::run_until_stopped`]
//! serves until the shutdown future resolves, then drains in-flight calls and
//! stops the relay.

pub mod commands;
pub mod config;
pub mod credentials;
pub mod grpc;
pub mod live;
pub mod lookup;
pub mod relay;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use domain::Limits;
use infra::grpc::GrpcServer;
use infra::shutdown::Shutdown;
use proto::command::v1::command_service_server::CommandServiceServer;

use crate::commands::Commands;
use crate::config::Config;
use crate::credentials::{HashParams, Hasher};
use crate::relay::{Relay, RelayConfig};
use crate::store::StoreTuning;

pub use infra::postgres::{connect, MIGRATOR};

/// A built, not yet running, command-service.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    addr: SocketAddr,
    commands: Arc<Commands>,
    relay: Option<Relay>,
}

impl Application {
    /// Connects, migrates (if configured), binds the listener.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let pool = infra::postgres::connect_and_migrate(
            &config.postgres.database_url,
            config.db_pool,
            config.migrate,
        )
        .await?;
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
            Some(
                Relay::new(
                    pool,
                    RelayConfig {
                        brokers: config.kafka.kafka_brokers.clone(),
                        topic: config.kafka.events_topic.clone(),
                        batch_size: config.relay_batch_size.max(1),
                        poll_interval: Duration::from_millis(config.relay_poll_ms.max(10)),
                        linger_ms: config.relay_linger_ms,
                        headers: config.relay_headers,
                        extra: config.relay_kafka_pairs().map_err(anyhow::Error::msg)?,
                    },
                )?
                .with_wake(commands.relay_wake())
                .with_live(live::LivePublisher::new(
                    infra::redis::connect(&config.redis.redis_url).await?,
                    config.redis.redis_prefix.clone(),
                    Duration::from_millis(config.relay_live_retry_ms),
                )),
            )
        } else {
            None
        };
        let server = GrpcServer::bind(
            config.listen,
            &config.pki,
            &config.tls_name,
            &config.grpc,
            proto::FILE_DESCRIPTOR_SET,
        )
        .await?;
        let addr = server.local_addr()?;
        Ok(Self {
            server,
            addr,
            commands,
            relay,
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
        let stop = Shutdown::new();
        let relay_task = self.relay.map(|r| {
            let stop = stop.clone();
            tokio::spawn(async move {
                if let Err(e) = r.run(stop).await {
                    tracing::error!(error = ?e, "relay stopped with an error");
                }
            })
        });
        tracing::info!(addr = %self.addr, "command-service listening (mTLS)");
        // Role grants decide who reads every message (auditors): only an
        // operator certificate may ask, never the gateway acting for users.
        let server = self
            .server
            .add_service(CommandServiceServer::new(grpc::CommandGrpc::new(
                self.commands,
            )))
            .operator_methods(&[
                "/messenger.command.v1.CommandService/GrantRole",
                "/messenger.command.v1.CommandService/RevokeRole",
            ])
            .serve(stop.triggered_owned());
        let server = tokio::spawn(server);
        shutdown.await;
        tracing::info!("shutting down");
        stop.trigger();
        server.await??;
        if let Some(t) = relay_task {
            t.await?;
        }
        Ok(())
    }
}
