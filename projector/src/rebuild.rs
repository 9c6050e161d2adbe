//! Rebuilding projections from the first event.
//!
//! # Source: the event store, by global position
//!
//! A rebuild replays `events` in `position` order, not the Kafka topic
//! from offset 0:
//!
//! - the store is the source of truth: every event ever appended is there,
//!   forever, while a topic's retention (time or size) may already have
//!   dropped the oldest records, and compaction or a re-created topic would
//!   silently lose history;
//! - `position` is one global order across all streams (assigned in commit
//!   order by the relay, without holes; ADR 0002), whereas a topic is only
//!   ordered per partition; replaying in global order makes a rebuild
//!   deterministic and easy to reason about;
//! - positions give an exact hand-over point: the rebuild reads until no
//!   event follows the last position it applied, and everything later
//!   reaches the live consumer through Kafka anyway;
//! - it needs no consumer group, no offset reset and no coordination with
//!   the running live projector, and reads sequentially from one index.
//!
//! # Hand-over without loss or duplicates
//!
//! The rebuild writes through the same [`Engine`] as the live loop, with
//! the same per-(projection, stream) checkpoints and row locks. So the live
//! projector can keep running during a rebuild:
//!
//! - an event the live loop applies first (after the reset) is a sequence
//!   gap for that fresh stream; the live loop fills it from the store, and
//!   the rebuild then skips those events as already applied;
//! - an event the rebuild applies first is skipped by the live loop when
//!   Kafka delivers it;
//! - events appended after the rebuild's last batch are applied by the live
//!   loop (they come after everything the rebuild saw in their streams).
//!
//! Each event is thus applied exactly once per projection, whoever gets
//! there first. While `core` is rebuilt its tables are briefly empty and
//! then fill up: readers see a partial read model until it finishes. A
//! rebuild of another projection does not touch `core` at all.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sqlx::PgPool;

use crate::engine::{is_transient, Engine, EngineError};
use crate::projection::Projection;
use crate::store::{self, StoreError};
use domain::decode::DecodedEvent;

/// How to rebuild.
#[derive(Debug, Clone, Copy)]
pub struct RebuildOptions {
    /// Events per transaction.
    pub batch_size: i64,
    /// Draw a progress bar on stderr (only if it is a terminal).
    pub progress: bool,
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    /// The projections rebuilt.
    pub projections: Vec<&'static str>,
    /// Events replayed from the store.
    pub events: u64,
    /// The last position replayed (the hand-over point).
    pub last_position: i64,
    pub elapsed: Duration,
}

impl RebuildReport {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why a rebuild stopped.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl RebuildError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) | Self::Store(StoreError::Database(e)) => is_transient(e),
            Self::Engine(e) => e.is_transient(),
            Self::Store(_) => false,
        }
    }
}

/// Attempts per batch on transient errors (deadlocks with the live loop).
const ATTEMPTS: u32 = 10;

/// Empties the projections' tables, checkpoints and positions, in one
/// transaction.
pub async fn reset(pool: &PgPool, projections: &[Arc<dyn Projection>]) -> Result<(), sqlx::Error> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let tables: Vec<String> = projections
        .iter()
        .flat_map(|p| p.tables().iter())
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let mut tx = pool.begin().await?;
            // Every table first, in one statement: this waits for the live
            // loop's transaction in flight and holds off the next until the
            // reset commits. Without it a live batch that started between
            // the DELETE and the TRUNCATE below kept its new checkpoints
            // while TRUNCATE wiped its rows, and the replay then skipped
            // those events as applied (found by the rebuild-during-live
            // test in CI).
            let mut all = vec!["rm_checkpoints".to_owned(), "rm_positions".to_owned()];
            all.extend(tables.iter().cloned());
            sqlx::query(&format!(
                "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                all.join(", ")
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM rm_checkpoints WHERE projection = ANY($1)")
                .bind(&names)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM rm_positions WHERE projection = ANY($1)")
                .bind(&names)
                .execute(&mut *tx)
                .await?;
            if !tables.is_empty() {
                sqlx::query(&format!("TRUNCATE {}", tables.join(", ")))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await;
        match result {
            Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

fn progress_bar(total: u64, show: bool) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events, {per_sec}, ETA {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Resets `projections` and replays the event store into them.
pub async fn rebuild(
    pool: &PgPool,
    engine: &Engine,
    projections: &[Arc<dyn Projection>],
    options: RebuildOptions,
) -> Result<RebuildReport, RebuildError> {
    let started = Instant::now();
    let names: Vec<&'static str> = projections.iter().map(|p| p.name()).collect();
    reset(pool, projections).await?;
    let head = store::head_position(&mut *pool.acquire().await?).await?;
    tracing::info!(projections = ?names, head, "rebuild: tables reset, replaying the event store");
    let bar = progress_bar(head.max(0) as u64, options.progress);
    bar.set_message(format!("rebuilding {}", names.join(", ")));
    let mut position = 0_i64;
    let mut events = 0_u64;
    let mut last_log = Instant::now();
    loop {
        let mut attempt = 0;
        let replayed = loop {
            attempt += 1;
            match batch(pool, engine, projections, position, options.batch_size).await {
                Err(e) if attempt < ATTEMPTS && e.is_transient() => {
                    tracing::warn!(error = %e, "rebuild batch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                other => break other?,
            }
        };
        let Some((n, last)) = replayed else {
            break;
        };
        events += n;
        position = last;
        if position as u64 > bar.length().unwrap_or(0) {
            bar.set_length(position as u64);
        }
        bar.set_position(position as u64);
        if last_log.elapsed() > Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(
                position,
                events,
                rate = events as f64 / started.elapsed().as_secs_f64(),
                "rebuild progress"
            );
        }
    }
    bar.finish_with_message(format!("rebuilt {}", names.join(", ")));
    let report = RebuildReport {
        projections: names,
        events,
        last_position: position,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        projections = ?report.projections,
        events = report.events,
        last_position = report.last_position,
        elapsed_ms = report.elapsed.as_millis() as u64,
        rate = report.rate(),
        "rebuild done; live consumption continues from here"
    );
    Ok(report)
}

/// Replays one batch after `position`; `None` when the log has no more.
async fn batch(
    pool: &PgPool,
    engine: &Engine,
    projections: &[Arc<dyn Projection>],
    position: i64,
    limit: i64,
) -> Result<Option<(u64, i64)>, RebuildError> {
    let mut tx = pool.begin().await?;
    let envelopes = store::after_position(&mut tx, position, limit.max(1)).await?;
    let Some(last) = envelopes.last().and_then(|e| e.position) else {
        return Ok(None);
    };
    let mut events: Vec<DecodedEvent> = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        let (t, i, s) = (
            envelope.aggregate_type.clone(),
            envelope.aggregate_id.clone(),
            envelope.sequence,
        );
        let e = engine
            .decoder()
            .decode(envelope)
            .map_err(|poison| StoreError::Row {
                aggregate_type: t,
                aggregate_id: i,
                sequence: s,
                poison,
            })?;
        events.push(e);
    }
    engine.apply(&mut tx, projections, &events, None).await?;
    tx.commit().await?;
    Ok(Some((events.len() as u64, last)))
}
