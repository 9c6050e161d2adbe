//! PostgreSQL: the one pool setup, the one set of migrations, and the
//! connection setting every service that touches the database flattens
//! into its `Config`.

use std::time::Duration;

use anyhow::Context;
use domain::envelope::{Envelope, EventMetadata};
use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The migrations of the whole platform (`migrations/` at the repo root),
/// embedded at compile time (`build.rs` tells cargo to watch the folder).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The database URL. `Debug` is hand-written: the URL may carry a password.
#[derive(Clone, clap::Args)]
pub struct PostgresArgs {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "MESSENGER_DATABASE_URL",
        default_value = "postgres://messenger:messenger@127.0.0.1:55432/messenger"
    )]
    pub database_url: String,
}

impl std::fmt::Debug for PostgresArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresArgs").finish_non_exhaustive()
    }
}

/// How long a pooled connection may sit idle before a checkout pings it.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A pool of at most `size` connections (at least one) to `url`; waiting
/// for a free connection fails after 10 s.
///
/// A checkout pings the server first only when the connection has been
/// idle for [`PING_IF_IDLE_FOR`]. sqlx's default pings before every
/// checkout: a round trip (2 of the 7 of an append) that a busy pool does
/// not need, since its connections were in use a moment ago. One that sat
/// idle through a PostgreSQL restart is caught by the ping and replaced,
/// instead of failing the request that drew it (seen in the fault test: a
/// history read after the restart answered 500).
pub async fn connect(url: &str, size: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().context("parsing the database URL")?;
    PgPoolOptions::new()
        .max_connections(size.max(1))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < PING_IF_IDLE_FOR {
                    return Ok(true);
                }
                // An error closes this connection; the pool takes another.
                sqlx::Connection::ping(conn).await.map(|()| true)
            })
        })
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")
}

/// [`connect`], then [`MIGRATOR`] when `migrate` is set.
pub async fn connect_and_migrate(url: &str, size: u32, migrate: bool) -> anyhow::Result<PgPool> {
    let pool = connect(url, size).await?;
    if migrate {
        MIGRATOR.run(&pool).await.context("applying migrations")?;
    }
    Ok(pool)
}

/// The columns of `events` that [`EventRow`] reads, for `SELECT`s of a
/// single table (a join names them with its alias, as they are here).
pub const EVENT_COLUMNS: &str = "position, aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload::text AS payload, metadata::text AS metadata";

/// One row of the event store as selected by [`EVENT_COLUMNS`]: the one
/// mapping from `events` to an [`Envelope`] (the relay's, the projector's
/// gap repair and rebuild, query-service's audit and replay).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    /// `None` until the relay positions the event.
    pub position: Option<i64>,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The payload as JSON text.
    pub payload: String,
    /// [`EventMetadata`] as JSON text.
    pub metadata: String,
}

impl EventRow {
    /// The envelope, its payload decoded as `P` (borrowing from the row
    /// where `P` can, e.g. `&RawValue`). `Err` says what is corrupt.
    pub fn envelope<'a, P: Deserialize<'a>>(&'a self) -> Result<Envelope<P>, String> {
        let payload = serde_json::from_str(&self.payload).map_err(|e| format!("payload: {e}"))?;
        self.with_payload(payload)
    }

    /// The envelope with the payload as stored, moved rather than copied.
    pub fn into_raw_envelope(mut self) -> Result<Envelope<Box<RawValue>>, String> {
        let payload = RawValue::from_string(std::mem::take(&mut self.payload))
            .map_err(|e| format!("payload: {e}"))?;
        self.with_payload(payload)
    }

    fn with_payload<P>(&self, payload: P) -> Result<Envelope<P>, String> {
        let meta: EventMetadata =
            serde_json::from_str(&self.metadata).map_err(|e| format!("metadata: {e}"))?;
        Ok(Envelope {
            event_id: meta.event_id,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            sequence: self.sequence,
            event_type: self.event_type.clone(),
            event_version: self
                .event_version
                .parse()
                .map_err(|_| format!("version {:?}", self.event_version))?,
            occurred_at: meta.occurred_at,
            actor: meta.actor,
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
            position: self.position,
            payload,
        })
    }
}
