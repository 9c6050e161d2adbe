//! Consumer positions kept in PostgreSQL instead of Kafka's group
//! coordinator (ADR 0005).
//!
//! The projector and the notifier assign themselves every partition of the
//! events topic and read from the offsets stored here. No JoinGroup,
//! SyncGroup or heartbeat is involved, so nothing depends on the broker's
//! group coordinator (tansu 0.6's loses track of members across restarts
//! and then never hands out an assignment). One instance per group consumes
//! at a time: it holds a session advisory lock keyed by the group, and a
//! standby waits for it, as the outbox relay does.

use std::collections::HashMap;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use infra::retry::Backoff;
use infra::shutdown::Shutdown;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::stream_consumer::MessageStream;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{Connection, PgConnection, PgPool};

/// A consumer of the events topic that keeps its offsets in PostgreSQL:
/// what the projector's and the notifier's live loops share.
pub struct EventsConsumer {
    consumer: StreamConsumer,
    /// Its settings, for the metadata lookup at assignment.
    config: ClientConfig,
    offsets: OffsetStore,
}

impl std::fmt::Debug for EventsConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsConsumer")
            .field("offsets", &self.offsets)
            .finish_non_exhaustive()
    }
}

impl EventsConsumer {
    /// A consumer in `group` (the offsets' key) of `topic`, polling every
    /// `fetch_wait_ms`; `options` are extra librdkafka properties, applied
    /// last. Nothing is subscribed: [`Self::start`] assigns the partitions.
    pub fn new(
        brokers: &str,
        group: &str,
        topic: &str,
        fetch_wait_ms: u32,
        options: &[(&str, &str)],
    ) -> KafkaResult<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string());
        for (k, v) in options {
            config.set(*k, *v);
        }
        Ok(Self {
            consumer: config.create()?,
            config,
            offsets: OffsetStore::new(group, topic),
        })
    }

    /// Where the offsets are kept.
    pub fn offsets(&self) -> &OffsetStore {
        &self.offsets
    }

    /// Leads the group, then assigns every partition, retrying while the
    /// broker or PostgreSQL is away. Returns the leader connection (hold it
    /// while consuming), or `None` on shutdown.
    pub async fn start(&self, pool: &PgPool, shutdown: &Shutdown) -> Option<PgConnection> {
        let leader = self.offsets.lead(pool, shutdown).await?;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
        loop {
            match self
                .offsets
                .assign(&self.consumer, &self.config, pool)
                .await
            {
                Ok(_) => return Some(leader),
                Err(e) => {
                    tracing::warn!(error = %e, "assigning the topic's partitions failed; retrying");
                }
            }
            if shutdown.sleep(backoff.next_delay()).await {
                return None;
            }
        }
    }

    /// Batches of at most `max` records (see [`Batches`]).
    pub fn batches(&self, max: usize) -> Batches<'_> {
        Batches {
            stream: self.consumer.stream(),
            max: max.max(1),
        }
    }
}

/// Batches from an [`EventsConsumer`]: wait for one record, then take what
/// is ready without waiting, so a quiet topic is handled record by record
/// and a busy one in large batches.
pub struct Batches<'a> {
    stream: MessageStream<'a, DefaultConsumerContext>,
    max: usize,
}

impl std::fmt::Debug for Batches<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Batches<'_> {
    /// The next batch; `None` on shutdown. Consumer errors are logged and
    /// waited out with backoff.
    pub async fn next(&mut self, shutdown: &Shutdown) -> Option<Vec<OwnedMessage>> {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
        let first = loop {
            let m = tokio::select! {
                () = shutdown.triggered() => return None,
                m = self.stream.next() => m?,
            };
            match m {
                Ok(m) => break m.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    if shutdown.sleep(backoff.next_delay()).await {
                        return None;
                    }
                }
            }
        };
        let mut batch = Vec::with_capacity(self.max.min(64));
        batch.push(first);
        while batch.len() < self.max {
            match self.stream.next().now_or_never() {
                Some(Some(Ok(m))) => batch.push(m.detach()),
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
                _ => break,
            }
        }
        Some(batch)
    }
}

/// Where a consumer group is, per partition of one topic.
#[derive(Debug, Clone)]
pub struct OffsetStore {
    group: String,
    topic: String,
}

/// Next offsets of a batch: per partition, one past its highest record.
pub fn next_offsets(batch: &[OwnedMessage]) -> Vec<(i32, i64)> {
    let mut next: Vec<(i32, i64)> = Vec::new();
    for m in batch {
        match next.iter_mut().find(|(p, _)| *p == m.partition()) {
            Some((_, o)) => *o = (*o).max(m.offset() + 1),
            None => next.push((m.partition(), m.offset() + 1)),
        }
    }
    next
}

impl OffsetStore {
    pub fn new(group: &str, topic: &str) -> Self {
        Self {
            group: group.to_owned(),
            topic: topic.to_owned(),
        }
    }

    /// The stored next offset of every partition that has one.
    pub async fn load(&self, pool: &PgPool) -> sqlx::Result<HashMap<i32, i64>> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Advances the stored offsets (never backwards), on the caller's
    /// connection or transaction.
    pub async fn save(&self, conn: &mut PgConnection, next: &[(i32, i64)]) -> sqlx::Result<()> {
        if next.is_empty() {
            return Ok(());
        }
        let (partitions, offsets): (Vec<i32>, Vec<i64>) = next.iter().copied().unzip();
        sqlx::query(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) \
             SELECT $1, $2, p, o FROM UNNEST($3::int[], $4::bigint[]) AS t(p, o) \
             ON CONFLICT (group_id, topic, partition) DO UPDATE \
             SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset)",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(&partitions)
        .bind(&offsets)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Advisory lock key of the group: FNV-1a of its name, so every
    /// instance computes the same one.
    fn lock_key(&self) -> i64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in "consumer-group:".bytes().chain(self.group.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h as i64
    }

    /// Waits until this instance leads the group (holds its advisory lock
    /// on the returned connection; dropping it lets a standby take over).
    /// `None` on shutdown.
    pub async fn lead(&self, pool: &PgPool, shutdown: &Shutdown) -> Option<PgConnection> {
        let mut waiting_logged = false;
        loop {
            if shutdown.is_triggered() {
                return None;
            }
            match self.try_lead(pool).await {
                Ok(Some(conn)) => return Some(conn),
                Ok(None) if !waiting_logged => {
                    tracing::info!(group = %self.group, "another instance consumes for this group; standing by");
                    waiting_logged = true;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "taking the consumer-group lock failed; retrying");
                }
            }
            if shutdown.sleep(Duration::from_secs(1)).await {
                return None;
            }
        }
    }

    async fn try_lead(&self, pool: &PgPool) -> sqlx::Result<Option<PgConnection>> {
        let mut conn = pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.lock_key())
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(conn))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Assigns every partition of the topic to `consumer`, each from its
    /// stored offset or, if it has none, from the beginning. Returns the
    /// number of partitions.
    async fn assign(
        &self,
        consumer: &StreamConsumer,
        config: &ClientConfig,
        pool: &PgPool,
    ) -> anyhow::Result<usize> {
        let stored = self.load(pool).await?;
        let partitions = partitions(config.clone(), self.topic.clone()).await?;
        let mut tpl = TopicPartitionList::with_capacity(partitions.len());
        for p in &partitions {
            let from = stored
                .get(p)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(&self.topic, *p, from)?;
        }
        consumer.assign(&tpl)?;
        tracing::info!(group = %self.group, topic = %self.topic, partitions = partitions.len(), stored = stored.len(), "assigned every partition");
        Ok(partitions.len())
    }
}

/// The partitions of `topic`, from a throwaway metadata client on a
/// blocking thread (librdkafka's metadata call blocks).
async fn partitions(config: ClientConfig, topic: String) -> anyhow::Result<Vec<i32>> {
    tokio::task::spawn_blocking(move || -> KafkaResult<Vec<i32>> {
        let client: BaseConsumer = config.create()?;
        let md = client.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopic,
            ))?;
        if let Some(e) = t.error() {
            return Err(KafkaError::MetadataFetch(e.into()));
        }
        let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        if ps.is_empty() {
            return Err(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        ps.sort_unstable();
        Ok(ps)
    })
    .await?
    .map_err(Into::into)
}
