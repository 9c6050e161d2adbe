//! Postgres adapter of the domain's `ConversationLookup` port, and the side
//! writes that keep its `message_index` in step with the events.

use async_trait::async_trait;
use domain::conversation::{ConversationEvent, ConversationLookup, LookupError, MessageFacts};
use domain::values::{ClientMsgId, ConversationId, MessageId, UserId};
use std::sync::Arc;

use futures::FutureExt;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::store::{Appended, SideWrite};

/// Answers the Conversation aggregate's questions from command-side tables.
#[derive(Debug, Clone)]
pub struct PgLookup {
    pool: PgPool,
}

impl PgLookup {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn lookup_err(e: sqlx::Error) -> LookupError {
    LookupError(Box::new(e))
}

fn facts(row: &sqlx::postgres::PgRow) -> Result<MessageFacts, sqlx::Error> {
    Ok(MessageFacts {
        message_id: MessageId(row.try_get("message_id")?),
        sender_id: UserId(row.try_get("sender_id")?),
        seq: row.try_get("seq")?,
        sent_at: row.try_get("sent_at")?,
        deleted: row.try_get("deleted")?,
    })
}

#[async_trait]
impl ConversationLookup for PgLookup {
    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, LookupError> {
        let ids: Vec<Uuid> = ids.iter().map(|u| u.0).collect();
        let rows = sqlx::query(
            "SELECT u FROM UNNEST($1::uuid[]) AS u \
             WHERE NOT EXISTS (SELECT 1 FROM user_identities i WHERE i.user_id = u)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(lookup_err)?;
        rows.iter()
            .map(|r| r.try_get::<Uuid, _>(0).map(UserId))
            .collect::<Result<_, _>>()
            .map_err(lookup_err)
    }

    async fn message(
        &self,
        conversation: ConversationId,
        message_id: MessageId,
    ) -> Result<Option<MessageFacts>, LookupError> {
        sqlx::query(
            "SELECT message_id, sender_id, seq, sent_at, deleted FROM message_index \
             WHERE conversation_id = $1 AND message_id = $2",
        )
        .bind(conversation.0)
        .bind(message_id.0)
        .fetch_optional(&self.pool)
        .await
        .and_then(|r| r.as_ref().map(facts).transpose())
        .map_err(lookup_err)
    }

    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<MessageFacts>, LookupError> {
        sqlx::query(
            "SELECT message_id, sender_id, seq, sent_at, deleted FROM message_index \
             WHERE conversation_id = $1 AND sender_id = $2 AND client_msg_id = $3",
        )
        .bind(conversation.0)
        .bind(sender.0)
        .bind(client_msg_id.as_str())
        .fetch_optional(&self.pool)
        .await
        .and_then(|r| r.as_ref().map(facts).transpose())
        .map_err(lookup_err)
    }
}

/// The lookup of a send's first attempt: it answers the duplicate check
/// ("was this `client_msg_id` used before?") with "no" without asking
/// PostgreSQL, and delegates everything else. The append checks instead:
/// `message_index`'s unique index refuses a duplicate inside the append's
/// transaction (a [`StoreError::Unique`] that is not retried), and the send
/// is then handled again with [`PgLookup`], which finds the first send. A
/// fresh message thus costs no lookup round trip; a duplicate costs one
/// failed append more.
#[derive(Debug, Clone)]
pub struct OptimisticLookup(pub Arc<PgLookup>);

#[async_trait]
impl ConversationLookup for OptimisticLookup {
    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, LookupError> {
        self.0.missing_users(ids).await
    }

    async fn message(
        &self,
        conversation: ConversationId,
        message_id: MessageId,
    ) -> Result<Option<MessageFacts>, LookupError> {
        self.0.message(conversation, message_id).await
    }

    async fn message_by_client_id(
        &self,
        _conversation: ConversationId,
        _sender: UserId,
        _client_msg_id: &ClientMsgId,
    ) -> Result<Option<MessageFacts>, LookupError> {
        Ok(None)
    }
}

/// Keeps `message_index` in the same transaction as the conversation's events.
/// A duplicate `client_msg_id` (a send after [`OptimisticLookup`], or a
/// concurrent one from another instance) trips the unique index: the append
/// fails with [`StoreError::Unique`] and the send is handled again with
/// [`PgLookup`], which then finds the first send (a unique violation is
/// raised only once the other transaction has committed).
pub fn message_index_writer(conversation: ConversationId) -> SideWrite<'static, ConversationEvent> {
    Box::new(
        move |conn: &mut PgConnection, events: &[Appended<ConversationEvent>]| {
            async move {
            for e in events {
                match &e.event {
                    ConversationEvent::MessageSent {
                        message_id,
                        sender_id,
                        client_msg_id,
                        sent_at,
                        ..
                    } => {
                        sqlx::query(
                            "INSERT INTO message_index (conversation_id, message_id, sender_id, client_msg_id, seq, sent_at) \
                             VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(conversation.0)
                        .bind(message_id.0)
                        .bind(sender_id.0)
                        .bind(client_msg_id.as_str())
                        .bind(e.sequence)
                        .bind(sent_at)
                        .execute(&mut *conn)
                        .await?;
                    }
                    ConversationEvent::MessageDeleted { message_id, .. } => {
                        sqlx::query(
                            "UPDATE message_index SET deleted = true WHERE conversation_id = $1 AND message_id = $2",
                        )
                        .bind(conversation.0)
                        .bind(message_id.0)
                        .execute(&mut *conn)
                        .await?;
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        .boxed()
        },
    )
}
