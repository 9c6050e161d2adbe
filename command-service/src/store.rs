//! The event store: append with optimistic concurrency, load through
//! snapshots, and an in-process aggregate cache.
//!
//! Why not cqrs-es's `PersistedEventStore`/postgres-es as they are: their
//! snapshot mode applies each new event twice before writing the snapshot,
//! the plain mode replays a stream's whole history on every command, and
//! neither lets a command write its side tables (credentials, message index)
//! in the same transaction as its events. This store keeps postgres-es's
//! table layout and cqrs-es's `Aggregate` contract and fixes those three.
//!
//! Cost of a command, whatever the stream's length:
//! - warm: the aggregate is in the cache, guarded by a per-stream async
//!   mutex, so commands on one stream in one process queue up instead of
//!   colliding; one transaction appends the events (one `INSERT ... UNNEST`).
//! - cold: the snapshot (written every `snapshot_every` events, in the same
//!   transaction as the event that crosses the boundary) plus at most
//!   `snapshot_every - 1` events.
//! - across processes the primary key `(aggregate_type, aggregate_id,
//!   sequence)` is the optimistic lock: a collision drops the cached state,
//!   reloads and retries, a bounded number of times.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use domain::envelope::EventMetadata;
use domain::event::{encode, DecodeError, EventTypes};
use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::relay::RelayWake;

/// Who and what caused a command; becomes the events' envelope metadata.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    /// The user id that caused it, or `system`.
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

impl CommandMeta {
    pub fn new(actor: impl Into<String>, correlation_id: Option<Uuid>) -> Self {
        Self {
            actor: actor.into(),
            correlation_id: correlation_id.unwrap_or_else(Uuid::now_v7),
            causation_id: None,
            occurred_at: Utc::now(),
        }
    }
}

/// An event as appended, with its stream sequence.
#[derive(Debug, Clone)]
pub struct Appended<E> {
    pub sequence: i64,
    pub event_id: Uuid,
    pub event: E,
}

/// Storage failures. Database detail stays here; clients see `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream first.
    #[error("concurrent append to the same stream")]
    Conflict,
    /// A unique index of a side table refused the write.
    #[error("unique constraint {0} violated")]
    Unique(String),
    /// A side write found its precondition false (e.g. a token already spent).
    #[error("precondition failed: {0}")]
    Precondition(&'static str),
    #[error("stored event cannot be decoded: {0}")]
    Decode(#[from] DecodeError),
    #[error("stored state cannot be (de)serialised: {0}")]
    Serde(#[from] serde_json::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if db.code().as_deref() == Some("23505") {
                return match db.constraint() {
                    Some("events_pkey") | None => StoreError::Conflict,
                    Some(c) => StoreError::Unique(c.to_owned()),
                };
            }
        }
        StoreError::Database(e)
    }
}

/// What executing a command can end in.
#[derive(Debug, thiserror::Error)]
pub enum ExecError<E> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Domain(E),
    /// Still conflicting after the configured number of attempts.
    #[error("gave up after {0} concurrent-append conflicts")]
    Exhausted(u32),
    #[error(transparent)]
    Store(StoreError),
}

/// Writes a command's side tables inside the events' transaction.
pub type SideWrite<'a, E> = Box<
    dyn for<'c> FnMut(
            &'c mut PgConnection,
            &'c [Appended<E>],
        ) -> BoxFuture<'c, Result<(), StoreError>>
        + Send
        + 'a,
>;

/// The outcome of a command: the events it appended (none when the command
/// was a no-op, e.g. an idempotent retry) and the stream's version after it.
#[derive(Debug)]
pub struct Executed<E> {
    pub events: Vec<Appended<E>>,
    pub version: i64,
}

struct Cached<A> {
    state: A,
    version: i64,
}

type Slot<A> = Arc<Mutex<Option<Cached<A>>>>;

/// Per-aggregate-type cache of loaded states, one async mutex per stream.
struct Cache<A> {
    slots: std::sync::Mutex<HashMap<String, Slot<A>>>,
    capacity: usize,
}

impl<A> Cache<A> {
    fn slot(&self, id: &str) -> Slot<A> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(id) {
            return s.clone();
        }
        if slots.len() >= self.capacity {
            // Drop every idle entry: amortised O(1), and in-use ones stay
            // so their waiters keep serialising on the same mutex.
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let s: Slot<A> = Arc::new(Mutex::new(None));
        slots.insert(id.to_owned(), s.clone());
        s
    }
}

/// Counters exposed for tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadStats {
    /// Events read from `events` (not from a snapshot) by the last cold load.
    pub replayed: usize,
    /// Whether the last cold load started from a snapshot.
    pub from_snapshot: bool,
}

/// Typed access to one aggregate type's streams.
pub struct Repository<A: Aggregate> {
    pool: PgPool,
    wake: Arc<RelayWake>,
    cache: Cache<A>,
    snapshot_every: i64,
    max_attempts: u32,
    last_load: std::sync::Mutex<LoadStats>,
}

impl<A: Aggregate> fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate_type", &A::TYPE)
            .field("snapshot_every", &self.snapshot_every)
            .finish_non_exhaustive()
    }
}

/// Tuning of a repository.
#[derive(Debug, Clone, Copy)]
pub struct StoreTuning {
    /// Write a snapshot each time a stream's version crosses a multiple of this.
    pub snapshot_every: i64,
    /// Streams kept in memory per aggregate type.
    pub cache_capacity: usize,
    /// Attempts on optimistic-concurrency conflicts before `Exhausted`.
    pub max_attempts: u32,
}

impl Default for StoreTuning {
    fn default() -> Self {
        Self {
            snapshot_every: 100,
            cache_capacity: 100_000,
            max_attempts: 5,
        }
    }
}

impl<A> Repository<A>
where
    A: Aggregate + Clone + 'static,
    A::Event: EventTypes + Clone,
    A::Command: Clone,
{
    pub fn new(pool: PgPool, tuning: StoreTuning, wake: Arc<RelayWake>) -> Self {
        Self {
            pool,
            wake,
            cache: Cache {
                slots: std::sync::Mutex::new(HashMap::new()),
                capacity: tuning.cache_capacity.max(1),
            },
            snapshot_every: tuning.snapshot_every.max(1),
            max_attempts: tuning.max_attempts.max(1),
            last_load: std::sync::Mutex::new(LoadStats::default()),
        }
    }

    /// Stats of the most recent cold load (for tests and benchmarks).
    pub fn last_load(&self) -> LoadStats {
        *self.last_load.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets every cached state (the next command loads from storage).
    pub fn clear_cache(&self) {
        self.cache
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Loads a stream from its snapshot and the events after it.
    #[tracing::instrument(skip(self), fields(aggregate_type = A::TYPE))]
    pub async fn load(&self, id: &str) -> Result<(A, i64), StoreError> {
        let snapshot = sqlx::query(
            "SELECT last_sequence, payload FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(A::TYPE)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let (mut state, mut version, from_snapshot) = match snapshot {
            Some(row) => {
                let payload: Value = row.try_get("payload")?;
                (
                    serde_json::from_value::<A>(payload)?,
                    row.try_get::<i64, _>("last_sequence")?,
                    true,
                )
            }
            None => (A::default(), 0, false),
        };
        let rows = sqlx::query(
            "SELECT sequence, event_type, event_version, payload FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 ORDER BY sequence",
        )
        .bind(A::TYPE)
        .bind(id)
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        let replayed = rows.len();
        for row in rows {
            let event_type: String = row.try_get("event_type")?;
            let event_version: String = row.try_get("event_version")?;
            let payload: Value = row.try_get("payload")?;
            let v = event_version.parse::<u32>().unwrap_or(u32::MAX);
            state.apply(A::Event::decode(&event_type, v, payload)?);
            version = row.try_get("sequence")?;
        }
        *self.last_load.lock().unwrap_or_else(|p| p.into_inner()) = LoadStats {
            replayed,
            from_snapshot,
        };
        Ok((state, version))
    }

    /// Reads the current state (through the cache) without changing it.
    pub async fn read<T>(&self, id: &str, f: impl FnOnce(&A, i64) -> T) -> Result<T, StoreError> {
        let slot = self.cache.slot(id);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            let (state, version) = self.load(id).await?;
            *guard = Some(Cached { state, version });
        }
        let cached = guard.as_ref().ok_or(StoreError::Conflict)?;
        Ok(f(&cached.state, cached.version))
    }

    /// Handles `command` on stream `id` and appends its events, retrying on
    /// optimistic-concurrency conflicts. `side` writes side tables inside the
    /// same transaction.
    #[tracing::instrument(level = "debug", skip_all, fields(aggregate_type = A::TYPE, aggregate_id = id))]
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        meta: &CommandMeta,
        mut side: Option<SideWrite<'_, A::Event>>,
    ) -> Result<Executed<A::Event>, ExecError<A::Error>> {
        let slot = self.cache.slot(id);
        let mut guard = slot.lock().await;
        for _attempt in 0..self.max_attempts {
            if guard.is_none() {
                let (state, version) = self.load(id).await.map_err(ExecError::Store)?;
                *guard = Some(Cached { state, version });
            }
            let Some(cached) = guard.as_mut() else {
                continue;
            };
            // Handle on a copy: a failed append must leave the cache as it was.
            let mut state = cached.state.clone();
            let sink = EventSink::<A>::default();
            let handled = state.handle(command.clone(), services, &sink).await;
            let events = sink.collect().await;
            handled.map_err(ExecError::Domain)?;
            if events.is_empty() {
                return Ok(Executed {
                    events: Vec::new(),
                    version: cached.version,
                });
            }
            let base = cached.version;
            let appended: Vec<Appended<A::Event>> = events
                .into_iter()
                .enumerate()
                .map(|(i, event)| Appended {
                    sequence: base + 1 + i as i64,
                    event_id: Uuid::now_v7(),
                    event,
                })
                .collect();
            match self
                .append(id, base, &appended, &state, meta, side.as_mut())
                .await
            {
                Ok(()) => {
                    let version = base + appended.len() as i64;
                    *cached = Cached { state, version };
                    return Ok(Executed {
                        events: appended,
                        version,
                    });
                }
                Err(StoreError::Conflict) => {
                    tracing::debug!("append conflict, reloading");
                    *guard = None;
                }
                Err(e) => {
                    *guard = None;
                    return Err(ExecError::Store(e));
                }
            }
        }
        Err(ExecError::Exhausted(self.max_attempts))
    }

    async fn append(
        &self,
        id: &str,
        base: i64,
        events: &[Appended<A::Event>],
        new_state: &A,
        meta: &CommandMeta,
        side: Option<&mut SideWrite<'_, A::Event>>,
    ) -> Result<(), StoreError> {
        let n = events.len();
        let mut seqs = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let mut metas = Vec::with_capacity(n);
        for e in events {
            let (event_type, payload) = encode(&e.event)?;
            seqs.push(e.sequence);
            types.push(event_type);
            versions.push(e.event.event_version());
            payloads.push(payload);
            metas.push(serde_json::to_value(EventMetadata {
                event_id: e.event_id,
                actor: meta.actor.clone(),
                correlation_id: meta.correlation_id,
                causation_id: meta.causation_id,
                occurred_at: meta.occurred_at,
            })?);
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             SELECT $1, $2, s, t, v, p, m FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::json[], $7::json[]) AS u(s, t, v, p, m)",
        )
        .bind(A::TYPE)
        .bind(id)
        .bind(&seqs)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metas)
        .execute(&mut *tx)
        .await?;
        if let Some(side) = side {
            side(&mut tx, events).await?;
        }
        let new_version = base + n as i64;
        if new_version / self.snapshot_every != base / self.snapshot_every {
            sqlx::query(
                "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
                   last_sequence = EXCLUDED.last_sequence, current_snapshot = EXCLUDED.current_snapshot, \
                   payload = EXCLUDED.payload, timestamp = now() \
                 WHERE snapshots.last_sequence < EXCLUDED.last_sequence",
            )
            .bind(A::TYPE)
            .bind(id)
            .bind(new_version)
            .bind(new_version / self.snapshot_every)
            .bind(serde_json::to_value(new_state)?)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.wake.appended(&self.pool).await;
        Ok(())
    }
}
