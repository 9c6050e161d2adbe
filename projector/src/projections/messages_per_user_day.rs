//! `messages_per_user_day`: how many messages each user sent per UTC day
//! (table `rm_messages_per_user_day`, migration
//! `20261124000004_projector.sql`).
//!
//! The worked example of docs/projections.md: one event type of interest,
//! one idempotent-looking upsert (the engine already guarantees each event
//! is applied once, the upsert simply keeps the code short), the day taken
//! from the event's own `sent_at` so a rebuild gives the same rows.

use async_trait::async_trait;
use domain::conversation::ConversationEvent;
use sqlx::PgConnection;

use crate::event::{Event, ProjectedEvent};
use crate::projection::{Projection, ProjectionError};

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
        event: &ProjectedEvent,
    ) -> Result<(), ProjectionError> {
        let Event::Conversation(ConversationEvent::MessageSent {
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
}
