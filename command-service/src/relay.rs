//! The outbox relay: gives committed events their global position and
//! publishes them to Kafka, at least once, in per-stream order.
//!
//! One relay leads at a time (a session advisory lock held on a dedicated
//! connection); others wait to take over. Each round:
//!
//! 1. `assign`: in one transaction, under the `relay_state` row lock, give
//!    the next positions to committed events that have none, in insertion
//!    order (which within a stream is sequence order). Because only this
//!    transaction allocates positions and it commits before the next round,
//!    positions become visible in order with no hole.
//! 2. `publish`: produce them (`acks=all`, one request in flight per
//!    broker so retries cannot reorder), key = aggregate id, value = the
//!    envelope, and wait for every delivery.
//! 3. `mark_published`: record the highest position delivered.
//!
//! A crash between 2 and 3 republishes that batch on restart (`pending`):
//! duplicates are possible, loss is not. The relay sleeps on LISTEN
//! `events_appended` (NOTIFY fires at commit), so an event reaches Kafka
//! within milliseconds; a slow poll is only a safety net.

use std::time::Duration;

use infra::postgres::EventRow;
use infra::retry::Backoff;
use infra::shutdown::Shutdown;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::value::RawValue;
use sqlx::postgres::PgListener;
use sqlx::PgPool;

/// Advisory lock key of the relay leader ("msgrelay").
const LEADER_LOCK: i64 = 0x6d73_6772_656c_6179;

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Topic every event goes to.
    pub topic: String,
    /// Most events per round.
    pub batch_size: i64,
    /// Safety-net poll interval when no notification arrives.
    pub poll_interval: Duration,
    /// librdkafka `linger.ms`: how long the producer waits to batch.
    pub linger_ms: u32,
    /// Extra librdkafka producer properties (`key=value`), applied last.
    pub extra: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("bad stored row: {0}")]
    Row(String),
}

/// One event ready to publish.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The envelope, serialised once.
    pub value: String,
}

fn to_outbox(row: &EventRow) -> Result<OutboxEvent, RelayError> {
    let envelope = row.envelope::<&RawValue>().map_err(RelayError::Row)?;
    let value = serde_json::to_string(&envelope).map_err(|e| RelayError::Row(e.to_string()))?;
    let position = envelope
        .position
        .ok_or_else(|| RelayError::Row("an unpositioned event".into()))?;
    Ok(OutboxEvent {
        position,
        aggregate_type: envelope.aggregate_type,
        aggregate_id: envelope.aggregate_id,
        sequence: envelope.sequence,
        event_type: envelope.event_type,
        event_version: row.event_version.clone(),
        value,
    })
}

/// The relay; its steps are public so tests can stop it between them.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    config: RelayConfig,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(pool: PgPool, config: RelayConfig) -> Result<Self, RelayError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            // Not the idempotent producer: every consumer of the topic is
            // idempotent by (stream, sequence) already, and a retry may
            // duplicate but, with one request in flight, not reorder.
            // Broker-side idempotence costs tansu 0.6 three SQL round trips
            // per partition batch, and an epoch bump (librdkafka's answer
            // to a timed-out request under load) panics its storage task
            // ("more or less than one row"), wedging the broker. Against a
            // real Kafka, COMMAND_SERVICE_RELAY_KAFKA_OPTIONS can turn it back on, with
            // max.in.flight.requests.per.connection=5.
            .set("enable.idempotence", "false")
            .set("max.in.flight.requests.per.connection", "1")
            .set("acks", "all")
            .set("linger.ms", config.linger_ms.to_string())
            .set("message.timeout.ms", "120000");
        for (k, v) in &config.extra {
            client.set(k, v);
        }
        let producer: FutureProducer = client.create()?;
        Ok(Self {
            pool,
            producer,
            config,
        })
    }

    /// Step 1: positions for up to `batch_size` committed, unpositioned events.
    pub async fn assign(&self) -> Result<Vec<OutboxEvent>, RelayError> {
        let mut tx = self.pool.begin().await?;
        let last: i64 = sqlx::query_scalar("SELECT last_position FROM relay_state FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        let rows: Vec<EventRow> = sqlx::query_as(
            "WITH todo AS ( \
                 SELECT id, $1::bigint + row_number() OVER (ORDER BY id) AS pos \
                 FROM (SELECT id FROM events WHERE position IS NULL ORDER BY id LIMIT $2) t \
             ) \
             UPDATE events e SET position = todo.pos FROM todo WHERE e.id = todo.id \
             RETURNING e.position, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
                       e.event_version, e.payload::text AS payload, e.metadata::text AS metadata",
        )
        .bind(last)
        .bind(self.config.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        sqlx::query("UPDATE relay_state SET last_position = $1")
            .bind(last + rows.len() as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut out = rows.iter().map(to_outbox).collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|e| e.position);
        Ok(out)
    }

    /// Events positioned but not yet known to be on Kafka (after a crash).
    pub async fn pending(&self) -> Result<Vec<OutboxEvent>, RelayError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT e.position, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
                    e.event_version, e.payload::text AS payload, e.metadata::text AS metadata \
             FROM events e, relay_state r \
             WHERE e.position > r.published_position AND e.position <= r.last_position \
             ORDER BY e.position LIMIT $1",
        )
        .bind(self.config.batch_size)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(to_outbox).collect()
    }

    /// Step 2: produce every event and wait until Kafka has them all.
    pub async fn publish(&self, events: &[OutboxEvent]) -> Result<(), RelayError> {
        let mut deliveries = Vec::with_capacity(events.len());
        for e in events {
            let position = e.position.to_string();
            let sequence = e.sequence.to_string();
            let headers = OwnedHeaders::new_with_capacity(5)
                .insert(Header {
                    key: "event_type",
                    value: Some(e.event_type.as_str()),
                })
                .insert(Header {
                    key: "event_version",
                    value: Some(e.event_version.as_str()),
                })
                .insert(Header {
                    key: "aggregate_type",
                    value: Some(e.aggregate_type.as_str()),
                })
                .insert(Header {
                    key: "sequence",
                    value: Some(sequence.as_str()),
                })
                .insert(Header {
                    key: "position",
                    value: Some(position.as_str()),
                });
            let record = FutureRecord::to(&self.config.topic)
                .key(e.aggregate_id.as_str())
                .payload(e.value.as_str())
                .headers(headers);
            // send_result enqueues without waiting; ordering per partition is
            // kept by the idempotent producer.
            match self.producer.send_result(record) {
                Ok(d) => deliveries.push(d),
                Err((err, _)) => return Err(err.into()),
            }
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => return Err(err.into()),
                Err(_) => return Err(rdkafka::error::KafkaError::Canceled.into()),
            }
        }
        Ok(())
    }

    /// Step 3: remember that everything up to `position` is on Kafka.
    pub async fn mark_published(&self, position: i64) -> Result<(), RelayError> {
        sqlx::query("UPDATE relay_state SET published_position = GREATEST(published_position, $1)")
            .bind(position)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn round(&self, events: &[OutboxEvent]) -> Result<(), RelayError> {
        if let Some(last) = events.last() {
            self.publish(events).await?;
            self.mark_published(last.position).await?;
            tracing::debug!(count = events.len(), position = last.position, "published");
        }
        Ok(())
    }

    /// Leads (once it holds the advisory lock) until `shutdown` triggers.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RelayError> {
        let mut leader = self.pool.acquire().await?.detach();
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut leader)
                .await?;
            if got {
                break;
            }
            if shutdown.sleep(Duration::from_secs(1)).await {
                return Ok(());
            }
        }
        tracing::info!(topic = %self.config.topic, "relay leading");
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen("events_appended").await?;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        // After start and after any failure, first republish what was
        // positioned but not confirmed; otherwise only assign new work.
        let mut recovering = true;
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let step = async {
                if recovering {
                    let pending = self.pending().await?;
                    if !pending.is_empty() {
                        self.round(&pending).await?;
                        return Ok::<(bool, bool), RelayError>((true, false));
                    }
                }
                let fresh = self.assign().await?;
                let had = !fresh.is_empty();
                self.round(&fresh).await?;
                Ok((had, true))
            };
            match step.await {
                Ok((true, caught_up)) => {
                    recovering &= !caught_up;
                    backoff.reset();
                }
                Ok((false, _)) => {
                    recovering = false;
                    backoff.reset();
                    tokio::select! {
                        () = shutdown.triggered() => {}
                        n = listener.try_recv() => {
                            if let Err(e) = n {
                                tracing::warn!(error = %e, "relay listener error");
                            }
                        }
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                }
                Err(e) => {
                    recovering = true;
                    tracing::error!(error = %e, "relay round failed; retrying");
                    shutdown.sleep(backoff.next_delay()).await;
                }
            }
        }
        let _ = self.producer.flush(Duration::from_secs(5));
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LEADER_LOCK)
            .execute(&mut leader)
            .await;
        Ok(())
    }
}
