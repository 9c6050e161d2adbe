//! Applies a batch of events to a set of projections inside one
//! transaction, exactly once per (projection, stream, sequence).
//!
//! For every projection and every stream in the batch the engine locks the
//! stream's row in `rm_checkpoints` (created at 0 if missing; rows are
//! locked in sorted order so that two appliers, e.g. the live consumer and
//! a rebuild, wait for each other instead of applying an event twice), then
//! walks the events in order:
//!
//! - `sequence <= last`: a redelivery, skipped;
//! - `sequence == last + 1`: applied;
//! - `sequence > last + 1`: a gap (a record lost to retention, a consumer
//!   started mid-topic, a projection new to this stream). The missing
//!   events are read from `events` in the same transaction and applied
//!   first. If the store cannot fill the gap, the record is not ours:
//!   [`EngineError::Unrepairable`] names it so the caller can dead-letter it.
//!
//! Each projection then receives its list (repairs included, in order) in
//! one [`Projection::apply_batch`] call; projections own disjoint tables, so
//! applying one projection's list after another's is the same as
//! interleaving them event by event.
//!
//! The advanced checkpoints and the highest global position applied per
//! projection (`rm_positions`) are written before the caller commits, so
//! read models and progress can never disagree.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sqlx::{PgConnection, Row};

use crate::projection::{Projection, ProjectionError};
use crate::store::{self, StoreError};
use domain::decode::{DecodedEvent, Decoder};

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// (event, projection) applications, gap repairs included.
    pub applied: u64,
    /// (event, projection) pairs skipped as already applied.
    pub skipped: u64,
    /// Events read from the store to fill gaps (per projection).
    pub repaired: u64,
    /// Events newly applied by the fan-out projection, in application order
    /// (repaired ones included): what the live loop publishes.
    pub fanout: Vec<DecodedEvent>,
}

/// Why a batch could not be applied; its transaction must be rolled back.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("projection {projection} failed on a batch of {count} events from {first}: {source}")]
    Projection {
        projection: &'static str,
        /// The batch's first event, `type/id#seq (EventType)`.
        first: String,
        count: usize,
        #[source]
        source: ProjectionError,
    },
    /// The batch's event at `index` follows a gap the store cannot fill.
    #[error("event {index} of the batch follows a gap the event store cannot fill: {detail}")]
    Unrepairable { index: usize, detail: String },
}

impl EngineError {
    /// Whether retrying the same batch may succeed (lock conflicts,
    /// connection trouble) rather than fail the same way.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) | Self::Store(StoreError::Database(e)) => is_transient(e),
            Self::Projection {
                source: ProjectionError::Database(e),
                ..
            } => is_transient(e),
            _ => false,
        }
    }
}

/// Whether a database error is worth retrying: serialization failures,
/// deadlocks (e.g. a rebuild racing the live loop), lost connections.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(
            d.code().as_deref(),
            Some("40001" | "40P01" | "55P03" | "57014" | "57P01" | "08006" | "08003")
        ),
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        _ => false,
    }
}

/// The batch applier.
#[derive(Debug, Clone)]
pub struct Engine {
    decoder: Decoder,
}

type Key<'a> = (usize, &'a str, &'a str);

impl Engine {
    pub fn new(decoder: Decoder) -> Self {
        Self { decoder }
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Applies `events` (in order) to `projections` on `conn`, which must be
    /// inside a transaction. `fanout` names the projection whose newly
    /// applied events are returned in [`Outcome::fanout`].
    pub async fn apply(
        &self,
        conn: &mut PgConnection,
        projections: &[Arc<dyn Projection>],
        events: &[DecodedEvent],
        fanout: Option<&str>,
    ) -> Result<Outcome, EngineError> {
        let mut out = Outcome::default();
        if events.is_empty() || projections.is_empty() {
            return Ok(out);
        }
        let mut current = lock_checkpoints(conn, projections, events).await?;
        let mut dirty: BTreeSet<Key<'_>> = BTreeSet::new();
        // Per projection, what to apply, in order: an index into `events`,
        // or an event repaired from the store.
        let mut plans: Vec<Vec<Planned>> = vec![Vec::new(); projections.len()];
        for (index, event) in events.iter().enumerate() {
            let (t, i) = event.stream();
            let seq = event.sequence();
            for (pi, p) in projections.iter().enumerate() {
                let key = (pi, t, i);
                let last = current.get(&key).copied().unwrap_or(0);
                if seq <= last {
                    out.skipped += 1;
                    continue;
                }
                if seq > last + 1 {
                    let missing = store::stream_range(conn, t, i, last, seq).await?;
                    if missing.len() as i64 != seq - last - 1 {
                        return Err(EngineError::Unrepairable {
                            index,
                            detail: format!(
                                "{t}/{i}: sequence {seq} after {last}, the store holds {} of the {} between",
                                missing.len(),
                                seq - last - 1
                            ),
                        });
                    }
                    for envelope in missing {
                        let sequence = envelope.sequence;
                        let repaired =
                            self.decoder
                                .decode(envelope)
                                .map_err(|poison| StoreError::Row {
                                    aggregate_type: t.to_owned(),
                                    aggregate_id: i.to_owned(),
                                    sequence,
                                    poison,
                                })?;
                        out.repaired += 1;
                        plans[pi].push(Planned::Repaired(Box::new(repaired)));
                    }
                    tracing::info!(
                        projection = p.name(),
                        stream = %format!("{t}/{i}"),
                        from = last + 1,
                        to = seq - 1,
                        "repairing a sequence gap from the event store"
                    );
                }
                plans[pi].push(Planned::Batch(index));
                current.insert(key, seq);
                dirty.insert(key);
            }
        }
        let mut max_position: Vec<Option<i64>> = vec![None; projections.len()];
        for (pi, p) in projections.iter().enumerate() {
            let list: Vec<&DecodedEvent> = plans[pi]
                .iter()
                .map(|planned| match planned {
                    Planned::Batch(index) => &events[*index],
                    Planned::Repaired(e) => e.as_ref(),
                })
                .collect();
            if list.is_empty() {
                continue;
            }
            p.apply_batch(conn, &list)
                .await
                .map_err(|source| EngineError::Projection {
                    projection: p.name(),
                    first: describe(list[0]),
                    count: list.len(),
                    source,
                })?;
            out.applied += list.len() as u64;
            for e in &list {
                raise(&mut max_position[pi], e.envelope.position);
            }
            if fanout == Some(p.name()) {
                out.fanout = list.into_iter().cloned().collect();
            }
        }
        save_progress(conn, projections, &current, &dirty, &max_position).await?;
        Ok(out)
    }
}

/// One event a projection is to apply.
#[derive(Debug, Clone)]
enum Planned {
    /// The batch's event at this index.
    Batch(usize),
    /// An event read from the store to fill a gap.
    Repaired(Box<DecodedEvent>),
}

fn describe(e: &DecodedEvent) -> String {
    format!(
        "{}/{}#{} ({})",
        e.envelope.aggregate_type,
        e.envelope.aggregate_id,
        e.envelope.sequence,
        e.envelope.event_type
    )
}

fn raise(max: &mut Option<i64>, position: Option<i64>) {
    if let Some(p) = position {
        *max = Some(max.map_or(p, |m| m.max(p)));
    }
}

/// Creates missing checkpoint rows at 0 and locks every row of the batch,
/// in one sorted order; returns the last applied sequences.
async fn lock_checkpoints<'a>(
    conn: &mut PgConnection,
    projections: &[Arc<dyn Projection>],
    events: &'a [DecodedEvent],
) -> Result<HashMap<Key<'a>, i64>, EngineError> {
    let mut keys: BTreeSet<(&str, &str, &str, usize)> = BTreeSet::new();
    for (pi, p) in projections.iter().enumerate() {
        for e in events {
            let (t, i) = e.stream();
            keys.insert((p.name(), t, i, pi));
        }
    }
    let names: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let types: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.2).collect();
    // One statement creates missing rows at 0 and locks every row (an
    // upsert locks the row it conflicts with), in sorted order, and
    // returns the last applied sequences.
    let rows = sqlx::query(
        "INSERT INTO rm_checkpoints AS c (projection, aggregate_type, aggregate_id, last_sequence) \
         SELECT x.p, x.t, x.i, 0 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS x(p, t, i) \
         ORDER BY x.p, x.t, x.i \
         ON CONFLICT (projection, aggregate_type, aggregate_id) \
           DO UPDATE SET last_sequence = c.last_sequence \
         RETURNING c.projection, c.aggregate_type, c.aggregate_id, c.last_sequence",
    )
    .bind(&names)
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut loaded: HashMap<(String, String, String), i64> = HashMap::with_capacity(rows.len());
    for r in rows {
        loaded.insert((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?), r.try_get(3)?);
    }
    let mut out = HashMap::with_capacity(keys.len());
    for (name, t, i, pi) in keys {
        let last = loaded
            .get(&(name.to_owned(), t.to_owned(), i.to_owned()))
            .copied()
            .unwrap_or(0);
        out.insert((pi, t, i), last);
    }
    Ok(out)
}

/// Advances the checkpoints of `dirty` streams and raises each
/// projection's highest applied position, in one statement.
async fn save_progress(
    conn: &mut PgConnection,
    projections: &[Arc<dyn Projection>],
    current: &HashMap<Key<'_>, i64>,
    dirty: &BTreeSet<Key<'_>>,
    max_position: &[Option<i64>],
) -> Result<(), EngineError> {
    let mut names = Vec::with_capacity(dirty.len());
    let mut types = Vec::with_capacity(dirty.len());
    let mut ids = Vec::with_capacity(dirty.len());
    let mut seqs = Vec::with_capacity(dirty.len());
    for key @ (pi, t, i) in dirty {
        names.push(projections[*pi].name());
        types.push(*t);
        ids.push(*i);
        seqs.push(current.get(key).copied().unwrap_or(0));
    }
    let (position_names, positions): (Vec<&str>, Vec<i64>) = projections
        .iter()
        .zip(max_position)
        .filter_map(|(p, m)| m.map(|m| (p.name(), m)))
        .unzip();
    if names.is_empty() && position_names.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH c AS ( \
           UPDATE rm_checkpoints c SET last_sequence = x.s \
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS x(p, t, i, s) \
           WHERE c.projection = x.p AND c.aggregate_type = x.t AND c.aggregate_id = x.i \
         ) \
         INSERT INTO rm_positions (projection, last_position) \
         SELECT * FROM UNNEST($5::text[], $6::bigint[]) \
         ON CONFLICT (projection) DO UPDATE \
         SET last_position = GREATEST(rm_positions.last_position, EXCLUDED.last_position)",
    )
    .bind(&names)
    .bind(&types)
    .bind(&ids)
    .bind(&seqs)
    .bind(&position_names)
    .bind(&positions)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
