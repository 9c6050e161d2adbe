//! `core`: the read model of query-service (tables in
//! `migrations/20261124000003_read_models.sql`).
//!
//! Each event is one SQL statement (data-modifying CTEs when it touches
//! several tables), so a batch costs one round trip per event.
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
//! - `rm_user_conversations`: one row per current member, ordered by
//!   `last_activity_at` (creation, the member's own join, then every
//!   message). `unread_count` is always "messages by others with
//!   `seq > greatest(read_seq, joined_seq)`, not deleted, as far as
//!   projected": `MessageSent` increments it for every member but the
//!   sender whose `read_seq` is below the message, `MessageDeleted`
//!   decrements where the message counted, `ReadMarkerMoved` recomputes it.
//!   Read markers are a stream of their own, so live they may be projected
//!   before the messages they cover (another partition); every rule above
//!   gives the same result in either order, which is what lets a rebuild
//!   (global order) reproduce the live table exactly.
//! - `rm_read_markers`: the highest marker per (conversation, user), kept
//!   after the user leaves (a returning member keeps their marker).
//!
//! Times come from the events (`occurred_at`, `sent_at`, `edited_at`),
//! never from the clock, so a rebuild is identical row for row.

use async_trait::async_trait;
use domain::conversation::{ConversationEvent, ConversationKind};
use domain::read_marker::ReadMarkerEvent;
use domain::user::UserEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::event::{Event, ProjectedEvent};
use crate::projection::{Projection, ProjectionError};

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
    "rm_user_conversations",
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
        event: &ProjectedEvent,
    ) -> Result<(), ProjectionError> {
        match &event.event {
            Event::User(e) => user(conn, event, e).await,
            Event::Conversation(e) => conversation(conn, event, e).await,
            Event::ReadMarker(e) => read_marker(conn, e).await,
        }
        .map_err(ProjectionError::from)
    }
}

async fn user(conn: &mut PgConnection, ev: &ProjectedEvent, e: &UserEvent) -> sqlx::Result<()> {
    let id = ev.stream_id;
    let q = match e {
        UserEvent::UserRegistered {
            user_id,
            email,
            username,
            display_name,
        } => sqlx::query(
            "INSERT INTO rm_users (user_id, username, display_name, email, roles, created_at) \
             VALUES ($1, $2, $3, $4, '{}', $5) ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id.0)
        .bind(username.as_str())
        .bind(display_name.as_str())
        .bind(email.as_str())
        .bind(ev.envelope.occurred_at),
        UserEvent::DisplayNameChanged { display_name } => {
            sqlx::query("UPDATE rm_users SET display_name = $2 WHERE user_id = $1")
                .bind(id)
                .bind(display_name.as_str())
        }
        UserEvent::RoleGranted { role } => sqlx::query(
            "UPDATE rm_users SET roles = ARRAY(SELECT DISTINCT r FROM unnest(array_append(roles, $2::text)) AS r ORDER BY r) \
             WHERE user_id = $1",
        )
        .bind(id)
        .bind(role.as_str()),
        UserEvent::RoleRevoked { role } => {
            sqlx::query("UPDATE rm_users SET roles = array_remove(roles, $2::text) WHERE user_id = $1")
                .bind(id)
                .bind(role.as_str())
        }
        UserEvent::PasswordChanged { .. } | UserEvent::PasswordResetRequested { .. } => {
            return Ok(())
        }
    };
    q.execute(conn).await?;
    Ok(())
}

fn kind(k: ConversationKind) -> &'static str {
    match k {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

async fn conversation(
    conn: &mut PgConnection,
    ev: &ProjectedEvent,
    e: &ConversationEvent,
) -> sqlx::Result<()> {
    let conv = ev.stream_id;
    let seq = ev.sequence();
    let at = ev.envelope.occurred_at;
    let q = match e {
        ConversationEvent::ConversationCreated {
            kind: k,
            title,
            created_by,
            members,
            ..
        } => {
            let ids: Vec<Uuid> = members.iter().map(|m| m.user_id.0).collect();
            let roles: Vec<&str> = members.iter().map(|m| m.role.as_str()).collect();
            sqlx::query(
                "WITH c AS ( \
                   INSERT INTO rm_conversations (conversation_id, kind, title, created_by, created_at, \
                                                 last_seq, last_message_seq, last_activity_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, NULL, $5) ON CONFLICT (conversation_id) DO NOTHING \
                 ), m AS ( \
                   INSERT INTO rm_members (conversation_id, user_id, role, joined_seq, joined_at) \
                   SELECT $1, x.u, x.r, $6, $5 FROM UNNEST($7::uuid[], $8::text[]) AS x(u, r) \
                   ON CONFLICT (conversation_id, user_id) DO NOTHING \
                 ), p AS ( \
                   INSERT INTO rm_member_periods (conversation_id, user_id, joined_seq) \
                   SELECT $1, x.u, $6 FROM UNNEST($7::uuid[]) AS x(u) ON CONFLICT DO NOTHING \
                 ) \
                 INSERT INTO rm_user_conversations (user_id, conversation_id, last_activity_at, read_seq, unread_count) \
                 SELECT x.u, $1, $5, COALESCE(rm.seq, 0), 0 FROM UNNEST($7::uuid[]) AS x(u) \
                 LEFT JOIN rm_read_markers rm ON rm.conversation_id = $1 AND rm.user_id = x.u \
                 ON CONFLICT (user_id, conversation_id) DO NOTHING",
            )
            .bind(conv)
            .bind(kind(*k))
            .bind(title.as_ref().map(|t| t.as_str()))
            .bind(created_by.0)
            .bind(at)
            .bind(seq)
            .bind(ids)
            .bind(roles)
        }
        ConversationEvent::MemberAdded { user_id, role, .. } => sqlx::query(
            "WITH c AS ( \
               UPDATE rm_conversations SET last_seq = GREATEST(last_seq, $4) WHERE conversation_id = $1 \
             ), m AS ( \
               INSERT INTO rm_members (conversation_id, user_id, role, joined_seq, joined_at) \
               VALUES ($1, $2, $3, $4, $5) \
               ON CONFLICT (conversation_id, user_id) DO UPDATE \
               SET role = EXCLUDED.role, joined_seq = EXCLUDED.joined_seq, joined_at = EXCLUDED.joined_at \
             ), p AS ( \
               INSERT INTO rm_member_periods (conversation_id, user_id, joined_seq) VALUES ($1, $2, $4) \
               ON CONFLICT DO NOTHING \
             ) \
             INSERT INTO rm_user_conversations (user_id, conversation_id, last_activity_at, read_seq, unread_count) \
             VALUES ($2, $1, $5, COALESCE((SELECT seq FROM rm_read_markers \
                                            WHERE conversation_id = $1 AND user_id = $2), 0), 0) \
             ON CONFLICT (user_id, conversation_id) DO NOTHING",
        )
        .bind(conv)
        .bind(user_id.0)
        .bind(role.as_str())
        .bind(seq)
        .bind(at),
        ConversationEvent::MemberRemoved { user_id, .. } => sqlx::query(
            "WITH c AS ( \
               UPDATE rm_conversations SET last_seq = GREATEST(last_seq, $3) WHERE conversation_id = $1 \
             ), m AS ( \
               DELETE FROM rm_members WHERE conversation_id = $1 AND user_id = $2 \
             ), p AS ( \
               UPDATE rm_member_periods SET left_seq = $3 \
               WHERE conversation_id = $1 AND user_id = $2 AND left_seq IS NULL \
             ) \
             DELETE FROM rm_user_conversations WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(conv)
        .bind(user_id.0)
        .bind(seq),
        ConversationEvent::MemberRoleChanged { user_id, role, .. } => sqlx::query(
            "WITH c AS ( \
               UPDATE rm_conversations SET last_seq = GREATEST(last_seq, $4) WHERE conversation_id = $1 \
             ) \
             UPDATE rm_members SET role = $3 WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(conv)
        .bind(user_id.0)
        .bind(role.as_str())
        .bind(seq),
        ConversationEvent::ConversationRenamed { title, .. } => sqlx::query(
            "UPDATE rm_conversations SET title = $2, last_seq = GREATEST(last_seq, $3) \
             WHERE conversation_id = $1",
        )
        .bind(conv)
        .bind(title.as_str())
        .bind(seq),
        ConversationEvent::MessageSent {
            message_id,
            sender_id,
            body,
            client_msg_id,
            sent_at,
        } => sqlx::query(
            "WITH m AS ( \
               INSERT INTO rm_messages (conversation_id, seq, message_id, sender_id, client_msg_id, body, sent_at) \
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING \
             ), c AS ( \
               UPDATE rm_conversations SET last_seq = GREATEST(last_seq, $2), \
                 last_message_seq = GREATEST(COALESCE(last_message_seq, 0), $2), \
                 last_activity_at = GREATEST(last_activity_at, $7) \
               WHERE conversation_id = $1 \
             ) \
             UPDATE rm_user_conversations SET last_activity_at = GREATEST(last_activity_at, $7), \
               unread_count = unread_count + CASE WHEN user_id <> $4 AND read_seq < $2 THEN 1 ELSE 0 END \
             WHERE conversation_id = $1",
        )
        .bind(conv)
        .bind(seq)
        .bind(message_id.0)
        .bind(sender_id.0)
        .bind(client_msg_id.as_str())
        .bind(body.as_str())
        .bind(sent_at),
        ConversationEvent::MessageEdited {
            message_id,
            body,
            edited_at,
        } => sqlx::query(
            "WITH c AS ( \
               UPDATE rm_conversations SET last_seq = GREATEST(last_seq, $5) WHERE conversation_id = $1 \
             ) \
             UPDATE rm_messages SET body = $3, edited_at = $4 \
             WHERE conversation_id = $1 AND message_id = $2 AND NOT deleted",
        )
        .bind(conv)
        .bind(message_id.0)
        .bind(body.as_str())
        .bind(edited_at)
        .bind(seq),
        ConversationEvent::MessageDeleted { message_id, .. } => sqlx::query(
            "WITH c AS ( \
               UPDATE rm_conversations SET last_seq = GREATEST(last_seq, $3) WHERE conversation_id = $1 \
             ), d AS ( \
               UPDATE rm_messages SET body = NULL, deleted = true \
               WHERE conversation_id = $1 AND message_id = $2 AND NOT deleted \
               RETURNING seq, sender_id \
             ) \
             UPDATE rm_user_conversations uc SET unread_count = uc.unread_count - 1 \
             FROM d, rm_members mb \
             WHERE uc.conversation_id = $1 AND uc.user_id <> d.sender_id AND uc.read_seq < d.seq \
               AND mb.conversation_id = $1 AND mb.user_id = uc.user_id AND mb.joined_seq < d.seq",
        )
        .bind(conv)
        .bind(message_id.0)
        .bind(seq),
    };
    q.execute(conn).await?;
    Ok(())
}

async fn read_marker(conn: &mut PgConnection, e: &ReadMarkerEvent) -> sqlx::Result<()> {
    let ReadMarkerEvent::ReadMarkerMoved {
        conversation_id,
        user_id,
        seq,
    } = e;
    sqlx::query(
        "WITH r AS ( \
           INSERT INTO rm_read_markers (conversation_id, user_id, seq) VALUES ($1, $2, $3) \
           ON CONFLICT (conversation_id, user_id) DO UPDATE \
           SET seq = GREATEST(rm_read_markers.seq, EXCLUDED.seq) \
         ) \
         UPDATE rm_user_conversations uc SET read_seq = GREATEST(uc.read_seq, $3), \
           unread_count = ( \
             SELECT count(*) FROM rm_messages m \
             JOIN rm_members mb ON mb.conversation_id = m.conversation_id AND mb.user_id = $2 \
             WHERE m.conversation_id = $1 AND m.seq > GREATEST(uc.read_seq, $3, mb.joined_seq) \
               AND m.sender_id <> $2 AND NOT m.deleted) \
         WHERE uc.conversation_id = $1 AND uc.user_id = $2",
    )
    .bind(conversation_id.0)
    .bind(user_id.0)
    .bind(*seq)
    .execute(conn)
    .await?;
    Ok(())
}
