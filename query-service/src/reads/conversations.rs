//! The conversation list, conversation details and read markers.
//!
//! Only *current* members (a row in `rm_members`) see a conversation's
//! details, its entry in their list and their read marker; everybody else
//! gets NOT_FOUND. (Former members keep read access to the history of their
//! periods: see [`super::messages`].)
//!
//! Caching:
//! - the first page of a user's list, per page size, as
//!   `conversations:{limit}` in scope `user`, stored with the `conv`
//!   generation of every conversation the user belongs to
//!   ([`Cache::put_dependent`](crate::cache::Cache::put_dependent)): the
//!   projector bumps a user's generation when their membership or read
//!   marker changes, and a conversation's on each of its events (activity,
//!   title, last message, the others' unread counts), so a message costs
//!   one `INCR` however many members will see it;
//! - `details` (conversation row and members) in scope `conv`. A cache hit
//!   is authorized against the cached member list itself, which is exactly
//!   as fresh as the rest of the value.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use super::{page_limit, parse_id, MessageView, QueryError, Reads};
use crate::cache::Scope;
use crate::cursor::ListCursor;

/// Default and largest page of the conversation list.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// One entry of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub conversation_id: Uuid,
    /// `direct` or `group`.
    pub kind: String,
    pub title: Option<String>,
    /// The newest message, when it is one the user may see.
    pub last_message: Option<MessageView>,
    pub unread_count: i64,
    pub last_seq: i64,
    pub last_activity_at: DateTime<Utc>,
}

/// A page of the conversation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationPage {
    pub conversations: Vec<ConversationSummary>,
    /// Opaque cursor of the next page, when there is one.
    pub next_cursor: Option<String>,
}

/// A member as shown in conversation details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Member {
    pub user_id: Uuid,
    /// `owner`, `admin` or `member`.
    pub role: String,
    pub joined_at: DateTime<Utc>,
    pub joined_seq: i64,
}

/// Conversation details with members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationDetails {
    pub conversation_id: Uuid,
    pub kind: String,
    pub title: Option<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seq: i64,
    /// Ordered by joining, then id.
    pub members: Vec<Member>,
}

/// The caller's read position in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadMarkerView {
    pub conversation_id: Uuid,
    /// 0 when nothing was marked read.
    pub seq: i64,
    pub unread_count: i64,
}

fn summary(row: &sqlx::postgres::PgRow) -> Result<ConversationSummary, sqlx::Error> {
    let last_message = match row.try_get::<Option<Uuid>, _>("message_id")? {
        Some(message_id) => Some(MessageView {
            message_id,
            conversation_id: row.try_get("conversation_id")?,
            seq: row.try_get("message_seq")?,
            sender_id: row.try_get("sender_id")?,
            body: row.try_get("body")?,
            sent_at: row.try_get("sent_at")?,
            edited_at: row.try_get("edited_at")?,
            deleted: row.try_get("deleted")?,
        }),
        None => None,
    };
    Ok(ConversationSummary {
        conversation_id: row.try_get("conversation_id")?,
        kind: row.try_get("kind")?,
        title: row.try_get("title")?,
        last_message,
        unread_count: row.try_get("unread_count")?,
        last_seq: row.try_get("last_seq")?,
        last_activity_at: row.try_get("last_activity_at")?,
    })
}

impl Reads {
    /// `user`'s conversations, most recently active first.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn list_conversations(
        &self,
        user: Uuid,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<ConversationPage, QueryError> {
        let limit = page_limit(limit, DEFAULT_LIMIT, MAX_LIMIT)?;
        let cursor = match cursor.filter(|c| !c.is_empty()) {
            Some(c) => Some(
                ListCursor::decode(c)
                    .ok_or_else(|| QueryError::invalid("cursor", "not a cursor of this list"))?,
            ),
            None => None,
        };
        if cursor.is_some() {
            return self.conversations_from_db(user, limit, cursor).await;
        }
        let generation = self
            .cache
            .generation(Scope::User, &user.to_string())
            .await?;
        let what = format!("conversations:{limit}");
        if let Some(page) = self.cache.get_dependent(generation.as_ref(), &what).await {
            return Ok(page);
        }
        // The generations of every conversation of the user, read before
        // the page: a message in any of them may reorder the list.
        let conversations: Vec<Uuid> =
            sqlx::query_scalar("SELECT conversation_id FROM rm_members WHERE user_id = $1")
                .bind(user)
                .fetch_all(&self.pool)
                .await?;
        let generations = match generation {
            Some(_) => self.cache.conversation_generations(&conversations).await,
            None => None,
        };
        let page = self.conversations_from_db(user, limit, None).await?;
        if let Some(generations) = generations {
            self.cache
                .put_dependent(generation.as_ref(), &what, generations, &page)
                .await;
        }
        Ok(page)
    }

    async fn conversations_from_db(
        &self,
        user: Uuid,
        limit: i64,
        after: Option<ListCursor>,
    ) -> Result<ConversationPage, QueryError> {
        // The list is derived here (migration 20261203000003): current
        // members only; activity is the conversation's or the member's own
        // join, whichever is later; the page is cut before the unread
        // counts are taken (each a range of rm_messages' key, O(unread));
        // the last message shows only when it falls in the current
        // membership (a late joiner does not see older ones).
        let rows = sqlx::query(
            "SELECT p.conversation_id, p.kind, p.title, u.unread_count, p.last_seq, p.last_activity_at, \
                    m.message_id, m.seq AS message_seq, m.sender_id, \
                    CASE WHEN m.deleted THEN NULL ELSE m.body END AS body, \
                    m.sent_at, m.edited_at, m.deleted \
             FROM ( \
               SELECT mb.conversation_id, mb.joined_seq, c.kind, c.title, c.last_seq, c.last_message_seq, \
                      GREATEST(c.last_activity_at, mb.joined_at) AS last_activity_at \
               FROM rm_members mb \
               JOIN rm_conversations c ON c.conversation_id = mb.conversation_id \
               WHERE mb.user_id = $1 \
                 AND ($2::timestamptz IS NULL \
                      OR (GREATEST(c.last_activity_at, mb.joined_at), mb.conversation_id) < ($2, $3)) \
               ORDER BY last_activity_at DESC, conversation_id DESC \
               LIMIT $4 \
             ) p \
             LEFT JOIN rm_read_markers rm ON rm.conversation_id = p.conversation_id AND rm.user_id = $1 \
             CROSS JOIN LATERAL ( \
               SELECT count(*) AS unread_count FROM rm_messages x \
               WHERE x.conversation_id = p.conversation_id \
                 AND x.seq > GREATEST(COALESCE(rm.seq, 0), p.joined_seq) \
                 AND x.sender_id <> $1 AND NOT x.deleted \
             ) u \
             LEFT JOIN rm_messages m ON m.conversation_id = p.conversation_id \
                  AND m.seq = p.last_message_seq AND m.seq >= p.joined_seq \
             ORDER BY p.last_activity_at DESC, p.conversation_id DESC",
        )
        .bind(user)
        .bind(after.map(|c| c.last_activity_at))
        .bind(after.map(|c| c.conversation_id))
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut conversations = rows.iter().map(summary).collect::<Result<Vec<_>, _>>()?;
        let more = conversations.len() as i64 > limit;
        conversations.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_cursor = more.then(|| conversations.last()).flatten().map(|last| {
            ListCursor {
                last_activity_at: last.last_activity_at,
                conversation_id: last.conversation_id,
            }
            .encode()
        });
        Ok(ConversationPage {
            conversations,
            next_cursor,
        })
    }

    /// Details and members of `conversation`, for a current member.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn get_conversation(
        &self,
        user: Uuid,
        conversation: &str,
    ) -> Result<ConversationDetails, QueryError> {
        let conversation = parse_id("conversation_id", conversation)?;
        let details = self.details(conversation).await?;
        match details {
            Some(d) if d.members.iter().any(|m| m.user_id == user) => Ok(d),
            _ => Err(QueryError::ConversationNotFound),
        }
    }

    /// Details through the cache (scope `conv`, `details`).
    async fn details(&self, conversation: Uuid) -> Result<Option<ConversationDetails>, QueryError> {
        let generation = self
            .cache
            .generation(Scope::Conv, &conversation.to_string())
            .await?;
        let pool = &self.pool;
        self.cache
            .read_through(generation.as_ref(), "details", || async move {
                let Some(row) = sqlx::query(
                    "SELECT conversation_id, kind, title, created_by, created_at, last_seq \
                     FROM rm_conversations WHERE conversation_id = $1",
                )
                .bind(conversation)
                .fetch_optional(pool)
                .await?
                else {
                    return Ok(None);
                };
                let members: Vec<Member> = sqlx::query_as(
                    "SELECT user_id, role, joined_at, joined_seq FROM rm_members \
                     WHERE conversation_id = $1 ORDER BY joined_seq, user_id",
                )
                .bind(conversation)
                .fetch_all(pool)
                .await?;
                Ok::<_, QueryError>(Some(ConversationDetails {
                    conversation_id: row.try_get("conversation_id")?,
                    kind: row.try_get("kind")?,
                    title: row.try_get("title")?,
                    created_by: row.try_get("created_by")?,
                    created_at: row.try_get("created_at")?,
                    last_seq: row.try_get("last_seq")?,
                    members,
                }))
            })
            .await
    }

    /// The caller's read marker and unread count, for a current member.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn read_marker(
        &self,
        user: Uuid,
        conversation: &str,
    ) -> Result<ReadMarkerView, QueryError> {
        let conversation = parse_id("conversation_id", conversation)?;
        let row = sqlx::query(
            "SELECT read_seq AS seq, unread_count FROM rm_user_conversations \
             WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(conversation)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(QueryError::ConversationNotFound)?;
        Ok(ReadMarkerView {
            conversation_id: conversation,
            seq: row.try_get("seq")?,
            unread_count: row.try_get("unread_count")?,
        })
    }
}
