//! Reading the event store (`events`, same database as the read models):
//! a range of one stream for gap repair, and the global log by position for
//! rebuilds. Rows are turned into the same envelope as on Kafka, so they go
//! through the same [`Decoder`](domain::decode::Decoder).

use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use domain::decode::{Poison, PoisonReason};

const COLUMNS: &str = "aggregate_type, aggregate_id, sequence, event_type, event_version, \
                       payload::text AS payload, metadata::text AS metadata, position";

/// Failures reading the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored event {aggregate_type}/{aggregate_id}#{sequence} cannot be read: {poison}")]
    Row {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        poison: Poison,
    },
}

#[derive(serde::Deserialize)]
struct Meta {
    event_id: Uuid,
    actor: String,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
}

fn envelope(row: &PgRow) -> Result<Envelope<Value>, StoreError> {
    let aggregate_type: String = row.try_get("aggregate_type")?;
    let aggregate_id: String = row.try_get("aggregate_id")?;
    let sequence: i64 = row.try_get("sequence")?;
    let bad = |detail: String| StoreError::Row {
        aggregate_type: aggregate_type.clone(),
        aggregate_id: aggregate_id.clone(),
        sequence,
        poison: Poison::new(PoisonReason::Undecodable, detail),
    };
    let version: String = row.try_get("event_version")?;
    let payload: String = row.try_get("payload")?;
    let metadata: String = row.try_get("metadata")?;
    let meta: Meta = serde_json::from_str(&metadata).map_err(|e| bad(e.to_string()))?;
    Ok(Envelope {
        event_id: meta.event_id,
        aggregate_type: aggregate_type.clone(),
        aggregate_id: aggregate_id.clone(),
        sequence,
        event_type: row.try_get("event_type")?,
        event_version: version
            .parse()
            .map_err(|_| bad(format!("version {version:?}")))?,
        occurred_at: meta.occurred_at,
        actor: meta.actor,
        correlation_id: meta.correlation_id,
        causation_id: meta.causation_id,
        position: row.try_get("position")?,
        payload: serde_json::from_str(&payload).map_err(|e| bad(e.to_string()))?,
    })
}

/// Events of one stream with `after < sequence < before`, in order.
pub async fn stream_range(
    conn: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
    after: i64,
    before: i64,
) -> Result<Vec<Envelope<Value>>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM events \
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 AND sequence < $4 \
         ORDER BY sequence"
    ))
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(after)
    .bind(before)
    .fetch_all(conn)
    .await?;
    rows.iter().map(envelope).collect()
}

/// Up to `limit` positioned events after `position`, in global order.
pub async fn after_position(
    conn: &mut PgConnection,
    position: i64,
    limit: i64,
) -> Result<Vec<Envelope<Value>>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
    ))
    .bind(position)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(envelope).collect()
}

/// The highest position assigned so far (0 for an empty log).
pub async fn head_position(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(max(position), 0)::bigint FROM events")
            .fetch_one(conn)
            .await?,
    )
}
