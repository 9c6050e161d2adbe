//! projector: Kafka to read models and cache invalidation; rebuild from
//! the first event.
//!
//! The projector consumes the event topic in a consumer group, applies each
//! event to Postgres read models exactly once, and after each commit bumps
//! the cache generations and marks each conversation's projected head (the
//! read fence of the live path, which command-service's relay publishes:
//! ADR 0006). Records it cannot decode go to a dead-letter topic.
//! `projector rebuild` recreates projections from the event store.
//!
//! # Layout (a code tour, in the order an event travels)
//!
//! - [`live`]: the consumer loop; batches, retries, offset commits after
//!   the read-model transaction, and the [`live::Stats`] counters.
//! - [`domain::decode`]: decoding a record into a
//!   [`DecodedEvent`](domain::decode::DecodedEvent): envelope, upcasters,
//!   typed domain event; or a [`Poison`](domain::decode::Poison), which goes
//!   to the dead-letter topic ([`event_stream::dead_letter`]) with the
//!   reason in headers. Kafka offsets live in PostgreSQL
//!   ([`event_stream::offsets`]).
//! - [`engine`]: applies a batch to projections in one transaction, with
//!   per-stream checkpoints (dedupe) and gap repair from the event store.
//! - [`projection`]: the `Projection` trait and the registry, the
//!   framework analysts extend (docs/projections.md).
//! - [`projections`]: the projections shipped: `core` (the read model of
//!   query-service) and `messages_per_user_day` (the analyst's example).
//! - [`fanout`]: after commit, `INCR` cache generations then `SET` the
//!   projected heads (`infra::keys` layout).
//! - [`store`]: reading the event store (gap repair, rebuild).
//! - [`rebuild`]: reset and replay by global position, with a progress bar,
//!   and why the store rather than Kafka offset 0.
//! - [`config`]: typed settings from flags and environment.
//!
//! [`Application::build`] connects everything; [`Application::run_until_stopped`]
//! consumes until the shutdown future resolves, finishing the batch in
//! progress. [`rebuild`](fn@rebuild) is the `rebuild` subcommand.

pub mod config;
pub mod engine;
pub mod fanout;
pub mod live;
pub mod projection;
pub mod projections;
pub mod rebuild;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use domain::decode::Decoder;
use infra::shutdown::Shutdown;
use sqlx::PgPool;

use crate::config::Config;
use crate::engine::Engine;
use crate::fanout::Fanout;
use crate::live::{LiveLoop, Stats};
use crate::projection::Registry;
use crate::rebuild::{RebuildOptions, RebuildReport};

pub use infra::postgres::{connect, MIGRATOR};

async fn prepare_database(config: &Config) -> anyhow::Result<PgPool> {
    infra::postgres::connect_and_migrate(
        &config.postgres.database_url,
        config.db_pool,
        config.migrate,
    )
    .await
}

/// A built, not yet running, live projector.
#[derive(Debug)]
pub struct Application {
    live: LiveLoop,
    stats: Arc<Stats>,
    pool: PgPool,
}

impl Application {
    /// Connects to PostgreSQL (migrating if configured), Redis and Kafka,
    /// with the built-in projections.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        Self::build_with(config, projections::builtin(), Decoder::new()).await
    }

    /// Like [`Self::build`] with a chosen registry and decoder.
    pub async fn build_with(
        config: &Config,
        registry: Registry,
        decoder: Decoder,
    ) -> anyhow::Result<Self> {
        let pool = prepare_database(config).await?;
        let redis = infra::redis::connect(&config.redis.redis_url).await?;
        let (source, dead_letter) = event_stream::open(
            &config.kafka,
            event_stream::GroupSettings {
                group_id: &config.group_id,
                fetch_wait_ms: config.fetch_wait_ms,
                dead_letter_topic: &config.dead_letter_topic,
                kafka_options: &config.kafka_options,
            },
        )?;
        let stats = Arc::new(Stats::default());
        let live = LiveLoop {
            source,
            pool: pool.clone(),
            engine: Engine::new(decoder),
            projections: registry.all().to_vec(),
            fanout: Fanout::new(redis, config.redis_retry()),
            prefix: config.redis.redis_prefix.clone(),
            dead_letter,
            batch_size: config.batch_size.max(1),
            stats: stats.clone(),
        };
        tracing::info!(
            topic = %config.kafka.events_topic,
            group = %config.group_id,
            projections = ?registry.all().iter().map(|p| p.name()).collect::<Vec<_>>(),
            "projector built"
        );
        Ok(Self { live, stats, pool })
    }

    /// Live counters (records, applications, skips, dead letters, ...).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The read-model database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Projects `events` now, exactly as the live loop projects a batch of
    /// records (one transaction with dedupe and gap repair, then the Redis
    /// fan-out), without Kafka: for tools and for measuring the live path
    /// apart from the broker.
    pub async fn project(
        &self,
        events: &[domain::decode::DecodedEvent],
    ) -> anyhow::Result<engine::Outcome> {
        self.live.project(events).await
    }

    /// Consumes until `shutdown` resolves, then finishes the batch in
    /// progress, commits its offsets and closes Redis.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = Shutdown::new();
        let fanout = self.live.fanout.clone();
        let mut task = tokio::spawn(self.live.run(stop.clone()));
        tokio::select! {
            () = shutdown => {
                tracing::info!("shutting down");
                stop.trigger();
                (&mut task).await?;
            }
            r = &mut task => r?,
        }
        fanout.quit().await;
        Ok(())
    }
}

/// The `rebuild` subcommand: resets `projection` (all when `None`) and
/// replays the event store into it. After rebuilding `core`, every cached
/// conversation and user scope is invalidated (generations bumped), since
/// the rebuilt rows may differ from what was cached.
pub async fn rebuild(
    config: &Config,
    projection: Option<&str>,
    progress: bool,
) -> anyhow::Result<RebuildReport> {
    let registry = projections::builtin();
    let projections = registry.select(projection)?;
    let pool = prepare_database(config).await?;
    let engine = Engine::new(Decoder::new());
    let report = rebuild::rebuild(
        &pool,
        &engine,
        &projections,
        RebuildOptions {
            batch_size: config.rebuild_batch_size,
            progress,
        },
    )
    .await?;
    if report.projections.contains(&projections::core::NAME) {
        invalidate_caches(config, &pool).await?;
    }
    pool.close().await;
    Ok(report)
}

/// Bumps the generation of every conversation and user scope.
async fn invalidate_caches(config: &Config, pool: &PgPool) -> anyhow::Result<()> {
    use infra::keys::generation;
    let convs: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT conversation_id FROM rm_conversations")
        .fetch_all(pool)
        .await?;
    let users: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT user_id FROM rm_users")
        .fetch_all(pool)
        .await?;
    let p = &config.redis.redis_prefix;
    let keys: Vec<String> = convs
        .iter()
        .map(|c| generation(p, "conv", &c.to_string()))
        .chain(users.iter().map(|u| generation(p, "user", &u.to_string())))
        .collect();
    let client = infra::redis::connect(&config.redis.redis_url).await?;
    let fanout = Fanout::new(client, config.redis_retry());
    fanout
        .bump(&keys)
        .await
        .context("bumping cache generations")?;
    fanout.quit().await;
    tracing::info!(
        scopes = keys.len(),
        "cache generations bumped after the rebuild"
    );
    Ok(())
}
