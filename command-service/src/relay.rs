//! The outbox relay: gives committed events their global position and
//! publishes them to Kafka, at least once, in per-stream order.
//!
//! One relay leads at a time (a session advisory lock held on a dedicated
//! connection); others wait to take over. Each round:
//!
//! 1. `assign`: in one statement (its own transaction), under the
//!    `relay_state` row lock, give the next positions to committed events
//!    that have none, in insertion order (which within a stream is sequence
//!    order). Because only this statement allocates positions and it
//!    commits before the next round, positions become visible in order with
//!    no hole. A round that finds nothing writes nothing.
//! 2. `publish`: produce them (`acks=all`, one request in flight per
//!    broker so retries cannot reorder), key = aggregate id, value = the
//!    envelope, and wait for every delivery.
//! 3. `mark_published`: record the highest position delivered.
//!
//! A crash between 2 and 3 republishes that batch on restart (`pending`):
//! duplicates are possible, loss is not.
//!
//! # Waking
//!
//! Between rounds the relay sleeps on a [`RelayWake`]. Appends of this
//! process signal it in memory right after their commit; appends of other
//! processes (a command-service without a leading relay) send
//! `NOTIFY events_appended` after theirs, which a listener task turns into
//! the same signal. Signals coalesce: however many commits happened during
//! a round, one more round follows. A slow poll is only a safety net.
//!
//! (Until migration `20261203000002` a statement trigger sent the NOTIFY
//! inside every append's transaction. PostgreSQL serializes notifying
//! commits under one database-wide lock held through the commit's WAL
//! flush, so appends of different conversations could not share a flush.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

use crate::live::LivePublisher;

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
    /// Copy envelope fields into record headers (`COMMAND_SERVICE_RELAY_HEADERS`).
    pub headers: bool,
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

/// The signal between appends and the relay (see the module docs).
#[derive(Debug, Default)]
pub struct RelayWake {
    notify: tokio::sync::Notify,
    /// Whether this process's relay leads, i.e. whether an in-memory
    /// signal reaches the relay that will publish the append.
    local_leader: AtomicBool,
}

/// The channel other processes' appends notify.
pub const APPENDED_CHANNEL: &str = "events_appended";

impl RelayWake {
    /// Called by the event store after each committed append.
    pub async fn appended(&self, pool: &PgPool) {
        if self.local_leader.load(Ordering::Acquire) {
            self.notify.notify_one();
            return;
        }
        // Autocommit and outside the append's transaction: it takes no
        // transaction id, so no WAL flush happens under the notify lock.
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(APPENDED_CHANNEL)
            .execute(pool)
            .await
        {
            // The relay's poll picks the events up regardless.
            tracing::warn!(error = %e, "could not notify the relay");
        }
    }

    /// Wakes the relay (a notification from another process).
    fn wake(&self) {
        self.notify.notify_one();
    }
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
    wake: Arc<RelayWake>,
    live: Option<LivePublisher>,
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
            wake: Arc::new(RelayWake::default()),
            live: None,
        })
    }

    /// Publishes each round's frames to Redis before producing it (the
    /// live path, [`crate::live`]).
    pub fn with_live(mut self, live: LivePublisher) -> Self {
        self.live = Some(live);
        self
    }

    /// Shares `wake` with the event store of this process, so its appends
    /// wake this relay in memory while it leads.
    pub fn with_wake(mut self, wake: Arc<RelayWake>) -> Self {
        self.wake = wake;
        self
    }

    /// Step 1: positions for up to `batch_size` committed, unpositioned events.
    ///
    /// One autocommit statement: the `relay_state` row is locked (by `st`)
    /// only when there is something to number, and bumped by as many as
    /// were numbered; an empty round only reads.
    pub async fn assign(&self) -> Result<Vec<OutboxEvent>, RelayError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "WITH st AS (SELECT last_position FROM relay_state FOR UPDATE), \
             todo AS ( \
                 SELECT id, (SELECT last_position FROM st) + row_number() OVER (ORDER BY id) AS pos \
                 FROM (SELECT id FROM events WHERE position IS NULL ORDER BY id LIMIT $1) t \
             ), \
             numbered AS ( \
                 UPDATE events e SET position = todo.pos FROM todo WHERE e.id = todo.id \
                 RETURNING e.position, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
                           e.event_version, e.payload::text AS payload, e.metadata::text AS metadata \
             ), \
             bumped AS ( \
                 UPDATE relay_state SET last_position = last_position + (SELECT count(*) FROM numbered) \
                 WHERE EXISTS (SELECT 1 FROM numbered) \
             ) \
             SELECT * FROM numbered",
        )
        .bind(self.config.batch_size)
        .fetch_all(&self.pool)
        .await?;
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
            let record = FutureRecord::to(&self.config.topic)
                .key(e.aggregate_id.as_str())
                .payload(e.value.as_str());
            let position = e.position.to_string();
            let sequence = e.sequence.to_string();
            let record = if self.config.headers {
                record.headers(Self::headers(e, &sequence, &position))
            } else {
                record
            };
            // send_result enqueues without waiting; with one request in
            // flight, a partition's records stay in order.
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

    /// The record headers of `e` (schemas/README.md).
    fn headers(e: &OutboxEvent, sequence: &str, position: &str) -> OwnedHeaders {
        OwnedHeaders::new_with_capacity(5)
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
                value: Some(sequence),
            })
            .insert(Header {
                key: "position",
                value: Some(position),
            })
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
            if let Some(live) = &self.live {
                live.publish(events).await;
            }
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
        listener.listen(APPENDED_CHANNEL).await?;
        let listening = {
            let wake = self.wake.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = shutdown.triggered() => break,
                        n = listener.recv() => match n {
                            Ok(_) => wake.wake(),
                            Err(e) => {
                                // PgListener reconnects on the next recv;
                                // the poll covers what the gap misses.
                                tracing::warn!(error = %e, "relay listener error");
                                wake.wake();
                                let _ = shutdown.sleep(Duration::from_millis(200)).await;
                            }
                        },
                    }
                }
            })
        };
        self.wake.local_leader.store(true, Ordering::Release);
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
                        () = self.wake.notify.notified() => {}
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
        self.wake.local_leader.store(false, Ordering::Release);
        listening.abort();
        let _ = self.producer.flush(Duration::from_secs(5));
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LEADER_LOCK)
            .execute(&mut leader)
            .await;
        Ok(())
    }
}
