//! The projection framework: one trait to implement, one registry to list
//! it in. docs/projections.md walks an analyst through adding one.
//!
//! A projection only says how one event changes its tables. The
//! [`engine`](crate::engine) around it gives it, for free:
//!
//! - exactly-once application per projection and stream: a checkpoint row
//!   in `rm_checkpoints` (projection, aggregate type, aggregate id, last
//!   sequence) is read and advanced in the same transaction as the
//!   projection's writes, so redeliveries are skipped and a sequence gap is
//!   repaired from the event store first;
//! - events of one stream in sequence order (events of different streams
//!   may interleave differently live than in a rebuild, so a projection's
//!   result must not depend on cross-stream order);
//! - batching: many events share one transaction, and
//!   [`Projection::apply_batch`] may apply them set-based;
//! - rebuild: `projector rebuild --projection NAME` truncates
//!   [`Projection::tables`] and that projection's checkpoints and replays
//!   the event store in global order.
//!
//! So `apply` must be deterministic: derive everything from the event
//! (`occurred_at`, payload times), never from `now()` or random values, or
//! a rebuild would not reproduce the live tables.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgConnection;

use domain::decode::DecodedEvent;

/// Why a projection could not apply an event. The batch's transaction is
/// rolled back and retried; nothing is skipped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A read model derived from the event log.
#[async_trait]
pub trait Projection: Send + Sync + std::fmt::Debug {
    /// Stable name: the key of its checkpoints and the `--projection` value.
    fn name(&self) -> &'static str;

    /// The tables it owns and nobody else writes; `rebuild` truncates them.
    fn tables(&self) -> &'static [&'static str];

    /// Applies one event inside the batch's transaction. Called once per
    /// event per stream in sequence order; ignore the events you do not need.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &DecodedEvent,
    ) -> Result<(), ProjectionError>;

    /// Applies the events of one batch, in order (already deduplicated and
    /// gap-repaired). The default calls [`Self::apply`] for each; override it
    /// to apply a batch with a few set-based statements (see `core`), with
    /// the same result as one by one.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&DecodedEvent],
    ) -> Result<(), ProjectionError> {
        for event in events {
            self.apply(conn, event).await?;
        }
        Ok(())
    }
}

/// Tables the engine itself keeps; no projection may claim them.
pub const BOOKKEEPING_TABLES: &[&str] = &["rm_checkpoints", "rm_positions"];

/// Why a registration or a selection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("a projection named {0:?} is already registered")]
    DuplicateName(String),
    #[error("table {table} is already owned by projection {owner}")]
    TableTaken { table: String, owner: String },
    #[error("table {0} belongs to the engine")]
    ReservedTable(String),
    #[error("no projection named {0:?} (known: {1})")]
    Unknown(String, String),
}

/// The projections this process maintains, in registration order (the
/// order in which each event is applied to them).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    projections: Vec<Arc<dyn Projection>>,
}

impl Registry {
    /// No projection at all (for tests of the framework).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Adds a projection; names and tables must be unique.
    pub fn register<P: Projection + 'static>(
        &mut self,
        projection: P,
    ) -> Result<(), RegistryError> {
        let name = projection.name();
        if self.projections.iter().any(|p| p.name() == name) {
            return Err(RegistryError::DuplicateName(name.to_owned()));
        }
        let owners: HashMap<&str, &str> = self
            .projections
            .iter()
            .flat_map(|p| p.tables().iter().map(move |t| (*t, p.name())))
            .collect();
        for table in projection.tables() {
            if BOOKKEEPING_TABLES.contains(table) {
                return Err(RegistryError::ReservedTable((*table).to_owned()));
            }
            if let Some(owner) = owners.get(table) {
                return Err(RegistryError::TableTaken {
                    table: (*table).to_owned(),
                    owner: (*owner).to_owned(),
                });
            }
        }
        self.projections.push(Arc::new(projection));
        Ok(())
    }

    /// Every registered projection.
    pub fn all(&self) -> &[Arc<dyn Projection>] {
        &self.projections
    }

    /// The named projection, or all of them for `None`.
    pub fn select(&self, name: Option<&str>) -> Result<Vec<Arc<dyn Projection>>, RegistryError> {
        match name {
            None => Ok(self.projections.clone()),
            Some(name) => self
                .projections
                .iter()
                .find(|p| p.name() == name)
                .map(|p| vec![p.clone()])
                .ok_or_else(|| {
                    RegistryError::Unknown(
                        name.to_owned(),
                        self.projections
                            .iter()
                            .map(|p| p.name())
                            .collect::<Vec<_>>()
                            .join(", "),
                    )
                }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fake(&'static str, &'static [&'static str]);

    #[async_trait]
    impl Projection for Fake {
        fn name(&self) -> &'static str {
            self.0
        }
        fn tables(&self) -> &'static [&'static str] {
            self.1
        }
        async fn apply(
            &self,
            _conn: &mut PgConnection,
            _event: &DecodedEvent,
        ) -> Result<(), ProjectionError> {
            Ok(())
        }
    }

    #[test]
    fn names_and_tables_are_unique() {
        let mut r = Registry::empty();
        r.register(Fake("a", &["rm_a"])).unwrap();
        assert_eq!(
            r.register(Fake("a", &["rm_b"])),
            Err(RegistryError::DuplicateName("a".into()))
        );
        assert!(matches!(
            r.register(Fake("b", &["rm_a"])),
            Err(RegistryError::TableTaken { .. })
        ));
        assert!(matches!(
            r.register(Fake("c", &["rm_checkpoints"])),
            Err(RegistryError::ReservedTable(_))
        ));
        r.register(Fake("b", &["rm_b"])).unwrap();
        assert_eq!(r.select(None).unwrap().len(), 2);
        assert_eq!(r.select(Some("b")).unwrap()[0].name(), "b");
        assert!(matches!(
            r.select(Some("zzz")),
            Err(RegistryError::Unknown(..))
        ));
    }
}
