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

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

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
    pub async fn lead(
        &self,
        pool: &PgPool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<PgConnection> {
        let mut waiting_logged = false;
        loop {
            if *shutdown.borrow() {
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
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return None,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
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

    /// Leads the group, then assigns every partition, retrying while the
    /// broker or PostgreSQL is away. Returns the leader connection (hold it
    /// while consuming), or `None` on shutdown.
    pub async fn start(
        &self,
        consumer: &StreamConsumer,
        config: &ClientConfig,
        pool: &PgPool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<PgConnection> {
        let leader = self.lead(pool, shutdown).await?;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.assign(consumer, config, pool).await {
                Ok(_) => return Some(leader),
                Err(e) => {
                    tracing::warn!(error = %e, "assigning the topic's partitions failed; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Assigns every partition of the topic to `consumer`, each from its
    /// stored offset or, if it has none, from the beginning. Returns the
    /// number of partitions.
    pub async fn assign(
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
