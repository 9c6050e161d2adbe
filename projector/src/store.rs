//! Reading the event store (`events`, same database as the read models):
//! a range of one stream for gap repair, and the global log by position for
//! rebuilds. Rows are turned into the same envelope as on Kafka, so they go
//! through the same [`Decoder`](domain::decode::Decoder).

use domain::decode::{Poison, PoisonReason};
use domain::envelope::Envelope;
use infra::postgres::{EventRow, EVENT_COLUMNS};
use serde_json::Value;
use sqlx::PgConnection;

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

fn envelope(row: &EventRow) -> Result<Envelope<Value>, StoreError> {
    row.envelope().map_err(|detail| StoreError::Row {
        aggregate_type: row.aggregate_type.clone(),
        aggregate_id: row.aggregate_id.clone(),
        sequence: row.sequence,
        poison: Poison::new(PoisonReason::Undecodable, detail),
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
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM events \
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
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
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
