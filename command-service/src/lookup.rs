//! Postgres adapter of the domain's `ConversationLookup` port, and the side
//! writes that keep its `message_index` in step with the events.

use async_trait::async_trait;
use domain::conversation::{ConversationEvent, ConversationLookup, LookupError, MessageFacts};
use domain::values::{ClientMsgId, ConversationId, MessageId, UserId};
use futures::FutureExt;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::store::{Appended, SideWrite, StoreError};

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

/// Keeps `message_index` in the same transaction as the conversation's events.
/// A concurrent duplicate `client_msg_id` from another instance trips the
/// unique index and is reported as a conflict, so the command is retried and
/// then finds the first send.
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
                        .await
                        .map_err(|err| match StoreError::from(err) {
                            StoreError::Unique(_) => StoreError::Conflict,
                            other => other,
                        })?;
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
