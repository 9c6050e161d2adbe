//! `messages_per_user_day`: how many messages each user sent per UTC day
//! (table `rm_messages_per_user_day`, migration
//! `20261124000004_projector.sql`).
//!
//! The worked example of docs/projections.md: one event type of interest,
//! one upsert per event (the engine guarantees each event is applied once,
//! so `count + 1` is safe), the day taken from the event's own `sent_at` so
//! a rebuild gives the same rows. `apply_batch` shows the optional
//! speed-up: the same counts, summed in memory, written with one statement.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::NaiveDate;
use domain::conversation::ConversationEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::{Projection, ProjectionError};
use domain::decode::{AnyEvent, DecodedEvent};

/// Messages per user per day.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagesPerUserDay;

#[async_trait]
impl Projection for MessagesPerUserDay {
    fn name(&self) -> &'static str {
        "messages_per_user_day"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_messages_per_user_day"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &DecodedEvent,
    ) -> Result<(), ProjectionError> {
        let AnyEvent::Conversation(ConversationEvent::MessageSent {
            sender_id, sent_at, ..
        }) = &event.event
        else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO rm_messages_per_user_day (user_id, day, count) VALUES ($1, $2, 1) \
             ON CONFLICT (user_id, day) DO UPDATE SET count = rm_messages_per_user_day.count + 1",
        )
        .bind(sender_id.0)
        .bind(sent_at.date_naive())
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Optional speed-up: counts the batch in memory, then one upsert. The
    /// result is the same as `apply` event by event (additions commute).
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&DecodedEvent],
    ) -> Result<(), ProjectionError> {
        let mut counts: BTreeMap<(Uuid, NaiveDate), i64> = BTreeMap::new();
        for event in events {
            if let AnyEvent::Conversation(ConversationEvent::MessageSent {
                sender_id,
                sent_at,
                ..
            }) = &event.event
            {
                *counts
                    .entry((sender_id.0, sent_at.date_naive()))
                    .or_default() += 1;
            }
        }
        if counts.is_empty() {
            return Ok(());
        }
        let mut users = Vec::with_capacity(counts.len());
        let mut days = Vec::with_capacity(counts.len());
        let mut ns = Vec::with_capacity(counts.len());
        for ((user, day), n) in counts {
            users.push(user);
            days.push(day);
            ns.push(n);
        }
        sqlx::query(
            "INSERT INTO rm_messages_per_user_day (user_id, day, count) \
             SELECT * FROM UNNEST($1::uuid[], $2::date[], $3::bigint[]) \
             ON CONFLICT (user_id, day) DO UPDATE \
             SET count = rm_messages_per_user_day.count + EXCLUDED.count",
        )
        .bind(&users)
        .bind(&days)
        .bind(&ns)
        .execute(conn)
        .await?;
        Ok(())
    }
}
