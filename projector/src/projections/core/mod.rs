//! `core`: the read model of query-service (tables in
//! `migrations/20261124000003_read_models.sql`).
//!
//! # Rules
//!
//! - `rm_users`: registered users; display name and platform roles (sorted,
//!   distinct) follow their events. Password events change nothing here.
//! - `rm_conversations`: `last_seq` follows every event of the stream;
//!   `last_message_seq` and `last_activity_at` follow `MessageSent`.
//! - `rm_members` / `rm_member_periods`: current members, and every period
//!   `[joined_seq, left_seq)` of membership.
//! - `rm_messages`: an edit replaces the body and sets `edited_at`; a
//!   delete keeps the row with `body` NULL and `deleted` true.
//! - `rm_user_conversations` is a view, not a table (migration
//!   `20261203000003`): a user's list order and unread counts are derived
//!   at read time from `rm_conversations`, `rm_members`, `rm_read_markers`
//!   and `rm_messages`, so a message writes the same rows whatever the
//!   size of its audience. Read markers are a stream of their own, so live
//!   they may be projected before the messages they cover (another
//!   partition); counting at read time gives the same result in either
//!   order, which is what lets a rebuild (global order) reproduce the live
//!   state exactly.
//! - `rm_read_markers`: the highest marker per (conversation, user), kept
//!   after the user leaves (a returning member keeps their marker).
//!
//! Times come from the events (`occurred_at`, `sent_at`, `edited_at`),
//! never from the clock, so a rebuild is identical row for row.
//!
//! # How a batch is applied: load, fold, store
//!
//! One statement per event would cost a round trip per event. Instead
//! [`Core::apply_batch`] loads every row the batch can touch (a handful of
//! `= ANY($1)` queries), folds the events into those rows in memory, in
//! order, and writes the changed rows back with one `UNNEST` statement per
//! table and kind of change. A batch of thousands of events thus costs
//! about a dozen statements, and a message's rows do not depend on how
//! many members its conversation has.
//!
//! # Layout
//!
//! - `rows`: the row types, `Rows<K, V>` (one table's rows as
//!   loaded and changed) and `State` (every table a batch touches);
//! - `load`: `State::load`, the `= ANY($1)` queries;
//! - `fold`: `State::apply`, the rules above, event by event;
//! - `store`: `State::store`, the `UNNEST` writes.

mod fold;
mod load;
mod rows;
mod store;

use async_trait::async_trait;
use sqlx::PgConnection;

use self::rows::State;
use crate::projection::{Projection, ProjectionError};
use domain::decode::DecodedEvent;

/// The core read model.
#[derive(Debug, Clone, Copy, Default)]
pub struct Core;

/// Its name; the live loop fans out what this projection applies.
pub const NAME: &str = "core";

const TABLES: &[&str] = &[
    "rm_users",
    "rm_conversations",
    "rm_members",
    "rm_member_periods",
    "rm_messages",
    "rm_read_markers",
];

#[async_trait]
impl Projection for Core {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        TABLES
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &DecodedEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(conn, &[event]).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&DecodedEvent],
    ) -> Result<(), ProjectionError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut state = State::load(conn, events).await?;
        for event in events {
            state.apply(event);
        }
        state.store(conn).await?;
        Ok(())
    }
}
