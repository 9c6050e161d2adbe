//! The live loop: Kafka records to read models, then Redis (caches and
//! the read fence; the live frames are the relay's, ADR 0006).
//!
//! One round:
//!
//! 1. take what the consumer has ready, up to `batch_size` records (at
//!    least one: a quiet topic is projected record by record, no linger);
//! 2. decode; poison records go to the dead-letter topic (and are logged
//!    once, with their reason) before anything else happens;
//! 3. apply the good ones in one transaction through the
//!    [`Engine`](crate::engine::Engine) (dedupe, gap repair, checkpoints)
//!    and compute the Redis plan; the consumer offsets past the whole batch
//!    (poison included) are stored in the same transaction
//!    ([`offsets`](crate::offsets)); commit. Failures roll back and retry
//!    the same batch with backoff; nothing is skipped;
//! 4. run the Redis plan (generations, then projected heads; see
//!    [`fanout`](crate::fanout)).
//!
//! Offsets live in PostgreSQL, not in the broker: a batch's effects and
//! its offsets commit together, so a restart resumes exactly after the last
//! committed batch. A crash before the commit redelivers the batch, and
//! the per-stream checkpoints skip anything already applied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::decode::{DecodedEvent, Poison, PoisonReason};
use event_stream::dead_letter::DeadLetter;
use event_stream::offsets::{next_offsets, EventsConsumer};
use infra::retry::Backoff;
use infra::shutdown::Shutdown;
use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgPool;

use crate::engine::{Engine, EngineError, Outcome};
use crate::fanout::{self, Fanout, Plan};
use crate::projection::Projection;
use crate::projections::core;

/// Counters of the live loop, for tests, logs and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Kafka records received.
    pub records: AtomicU64,
    /// (event, projection) applications, gap repairs included.
    pub applied: AtomicU64,
    /// (event, projection) pairs skipped as already applied.
    pub skipped: AtomicU64,
    /// Events read from the store to fill gaps.
    pub repaired: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Read-model transactions committed.
    pub batches: AtomicU64,
    /// Conversation heads marked projected on Redis (the read fence).
    pub marked: AtomicU64,
    /// Frames published on users' own channels.
    pub published: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub records: u64,
    pub applied: u64,
    pub skipped: u64,
    pub repaired: u64,
    pub dead_lettered: u64,
    pub batches: u64,
    pub marked: u64,
    pub published: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            records: get(&self.records),
            applied: get(&self.applied),
            skipped: get(&self.skipped),
            repaired: get(&self.repaired),
            dead_lettered: get(&self.dead_lettered),
            batches: get(&self.batches),
            marked: get(&self.marked),
            published: get(&self.published),
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// The live projector.
pub struct LiveLoop {
    pub(crate) source: EventsConsumer,
    pub(crate) pool: PgPool,
    pub(crate) engine: Engine,
    pub(crate) projections: Vec<Arc<dyn Projection>>,
    pub(crate) fanout: Fanout,
    pub(crate) prefix: String,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) batch_size: usize,
    pub(crate) stats: Arc<Stats>,
}

impl std::fmt::Debug for LiveLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveLoop")
            .field("projections", &self.projections)
            .field("prefix", &self.prefix)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

/// Whether a step finished or was interrupted by shutdown.
enum Step<T> {
    Done(T),
    Stopped,
}

impl LiveLoop {
    /// Consumes until `shutdown` turns true; the batch in progress finishes
    /// (or, while it is retrying, is abandoned uncommitted).
    pub async fn run(self, shutdown: Shutdown) {
        // The leader connection is held until the loop ends: a standby
        // waits on it.
        let Some(_leader) = self.source.start(&self.pool, &shutdown).await else {
            return;
        };
        let mut batches = self.source.batches(self.batch_size);
        while let Some(batch) = batches.next(&shutdown).await {
            match self.process(&batch, &shutdown).await {
                Step::Done(()) => {}
                Step::Stopped => break,
            }
        }
        drop(batches);
        self.dead_letter.flush();
        tracing::info!(stats = ?self.stats.snapshot(), "live projector stopped");
    }

    #[tracing::instrument(level = "debug", skip_all, fields(records = batch.len()))]
    async fn process(&self, batch: &[OwnedMessage], shutdown: &Shutdown) -> Step<()> {
        Stats::add(&self.stats.records, batch.len() as u64);
        let mut events: Vec<DecodedEvent> = Vec::with_capacity(batch.len());
        let mut origin: Vec<usize> = Vec::with_capacity(batch.len());
        let mut poison: Vec<(usize, Poison)> = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            let decoded = match record.payload() {
                Some(v) => self.engine.decoder().decode_bytes(v),
                None => Err(Poison::new(
                    PoisonReason::Undecodable,
                    "record has no value",
                )),
            };
            match decoded {
                Ok(e) => {
                    events.push(e);
                    origin.push(i);
                }
                Err(p) => poison.push((i, p)),
            }
        }
        if let Step::Stopped = self.dead_letter_all(batch, &poison, shutdown).await {
            return Step::Stopped;
        }
        let offsets = next_offsets(batch);
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
        let (outcome, plan) = loop {
            match self.apply(&events, &offsets).await {
                Ok(done) => break done,
                Err(EngineError::Unrepairable { index, detail }) => {
                    events.remove(index);
                    let record = origin.remove(index);
                    let p = vec![(record, Poison::new(PoisonReason::UnrepairableGap, detail))];
                    if let Step::Stopped = self.dead_letter_all(batch, &p, shutdown).await {
                        return Step::Stopped;
                    }
                }
                Err(e) => {
                    if e.is_transient() {
                        tracing::warn!(error = %e, "read-model transaction failed; retrying");
                    } else {
                        tracing::error!(error = ?e, "read-model transaction failed; retrying");
                    }
                    if shutdown.sleep(backoff.next_delay()).await {
                        return Step::Stopped;
                    }
                }
            }
        };
        Stats::add(&self.stats.applied, outcome.applied);
        Stats::add(&self.stats.skipped, outcome.skipped);
        Stats::add(&self.stats.repaired, outcome.repaired);
        Stats::add(&self.stats.batches, 1);
        match self.fanout.execute(&plan).await {
            Ok(()) => {
                Stats::add(&self.stats.marked, plan.heads.len() as u64);
                Stats::add(&self.stats.published, plan.messages.len() as u64);
            }
            Err(e) => tracing::error!(
                error = %e,
                heads = plan.heads.len(),
                frames = plan.messages.len(),
                generations = plan.generations.len(),
                "redis fan-out abandoned after retries; caches heal by TTL, clients by resuming"
            ),
        }
        Step::Done(())
    }

    /// One batch without Kafka: apply, commit, fan out.
    pub(crate) async fn project(&self, events: &[DecodedEvent]) -> anyhow::Result<Outcome> {
        let (outcome, plan) = self.apply(events, &[]).await?;
        self.fanout.execute(&plan).await?;
        Ok(outcome)
    }

    async fn apply(
        &self,
        events: &[DecodedEvent],
        offsets: &[(i32, i64)],
    ) -> Result<(Outcome, Plan), EngineError> {
        let mut tx = self.pool.begin().await?;
        let outcome = self
            .engine
            .apply(&mut tx, &self.projections, events, Some(core::NAME))
            .await?;
        self.source.offsets().save(&mut tx, offsets).await?;
        tx.commit().await?;
        let plan = fanout::plan(&self.prefix, &outcome.fanout);
        Ok((outcome, plan))
    }

    async fn dead_letter_all(
        &self,
        batch: &[OwnedMessage],
        poison: &[(usize, Poison)],
        shutdown: &Shutdown,
    ) -> Step<()> {
        if poison.is_empty() {
            return Step::Done(());
        }
        let records: Vec<(&OwnedMessage, &str, &str)> = poison
            .iter()
            .map(|(i, p)| (&batch[*i], p.reason.as_str(), p.detail.as_str()))
            .collect();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
        loop {
            match self.dead_letter.send(&records).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, "producing to the dead-letter topic failed; retrying");
                    if shutdown.sleep(backoff.next_delay()).await {
                        return Step::Stopped;
                    }
                }
            }
        }
        for (record, reason, detail) in records {
            tracing::warn!(
                reason,
                detail,
                topic = record.topic(),
                partition = record.partition(),
                offset = record.offset(),
                "poison record dead-lettered"
            );
        }
        Stats::add(&self.stats.dead_lettered, poison.len() as u64);
        Step::Done(())
    }
}
