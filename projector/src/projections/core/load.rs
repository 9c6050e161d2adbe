//! `impl State`, part 1: load every row a batch can read or change, with
//! a handful of `= ANY($1)` queries.

use std::collections::{BTreeMap, BTreeSet};

use domain::conversation::ConversationEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::rows::{ConvRow, MemberRow, MessageRow, Rows, State, UserRow};
use domain::decode::{AnyEvent, DecodedEvent};

/// An `rm_users` row: key and row.
#[derive(sqlx::FromRow)]
struct UserKeyed {
    user_id: Uuid,
    #[sqlx(flatten)]
    row: UserRow,
}

/// An `rm_conversations` row: key and row.
#[derive(sqlx::FromRow)]
struct ConvKeyed {
    conversation_id: Uuid,
    #[sqlx(flatten)]
    row: ConvRow,
}

/// An `rm_members` row: key and row.
#[derive(sqlx::FromRow)]
struct MemberKeyed {
    conversation_id: Uuid,
    user_id: Uuid,
    #[sqlx(flatten)]
    row: MemberRow,
}

/// An `rm_messages` row: key and row.
#[derive(sqlx::FromRow)]
struct MessageKeyed {
    conversation_id: Uuid,
    message_id: Uuid,
    #[sqlx(flatten)]
    row: MessageRow,
}

impl State {
    /// Loads every row the events can read or change.
    pub(super) async fn load(
        conn: &mut PgConnection,
        events: &[&DecodedEvent],
    ) -> sqlx::Result<Self> {
        let mut users = BTreeSet::new();
        let mut convs = BTreeSet::new();
        // Conversations whose members are read (joined_seq, role).
        let mut member_convs = BTreeSet::new();
        let mut sent = BTreeSet::new();
        let mut referenced = BTreeSet::new();
        for e in events {
            match &e.event {
                AnyEvent::User(_) => {
                    users.insert(e.stream_id);
                }
                AnyEvent::Conversation(c) => {
                    convs.insert(e.stream_id);
                    match c {
                        ConversationEvent::MessageSent { message_id, .. } => {
                            sent.insert((e.stream_id, message_id.0));
                        }
                        ConversationEvent::MessageEdited { message_id, .. } => {
                            referenced.insert((e.stream_id, message_id.0));
                        }
                        ConversationEvent::MessageDeleted { message_id, .. } => {
                            referenced.insert((e.stream_id, message_id.0));
                        }
                        ConversationEvent::MemberRemoved { .. }
                        | ConversationEvent::MemberRoleChanged { .. } => {
                            member_convs.insert(e.stream_id);
                        }
                        ConversationEvent::ConversationCreated { .. }
                        | ConversationEvent::MemberAdded { .. }
                        | ConversationEvent::ConversationRenamed { .. } => {}
                    }
                }
                AnyEvent::ReadMarker(_) => {}
            }
        }
        let users: Vec<Uuid> = users.into_iter().collect();
        let convs: Vec<Uuid> = convs.into_iter().collect();
        let member_convs: Vec<Uuid> = member_convs.into_iter().collect();
        let mut state = State {
            users: Rows::new(),
            convs: Rows::new(),
            members: Rows::new(),
            periods: BTreeMap::new(),
            messages: Rows::new(),
            markers: Rows::new(),
        };
        if !users.is_empty() {
            for r in sqlx::query_as::<_, UserKeyed>(
                "SELECT user_id, username, display_name, email, roles, created_at \
                 FROM rm_users WHERE user_id = ANY($1)",
            )
            .bind(&users)
            .fetch_all(&mut *conn)
            .await?
            {
                state.users.loaded(r.user_id, r.row);
            }
        }
        if !convs.is_empty() {
            for r in sqlx::query_as::<_, ConvKeyed>(
                "SELECT conversation_id, kind, title, created_by, created_at, last_seq, \
                        last_message_seq, last_activity_at \
                 FROM rm_conversations WHERE conversation_id = ANY($1)",
            )
            .bind(&convs)
            .fetch_all(&mut *conn)
            .await?
            {
                state.convs.loaded(r.conversation_id, r.row);
            }
        }
        if !member_convs.is_empty() {
            for r in sqlx::query_as::<_, MemberKeyed>(
                "SELECT conversation_id, user_id, role, joined_seq, joined_at \
                 FROM rm_members WHERE conversation_id = ANY($1)",
            )
            .bind(&member_convs)
            .fetch_all(&mut *conn)
            .await?
            {
                state.members.loaded((r.conversation_id, r.user_id), r.row);
            }
        }
        let older: Vec<(Uuid, Uuid)> = referenced.difference(&sent).copied().collect();
        if !older.is_empty() {
            let (cs, ms): (Vec<Uuid>, Vec<Uuid>) = older.into_iter().unzip();
            for r in sqlx::query_as::<_, MessageKeyed>(
                "SELECT m.conversation_id, m.message_id, m.seq, m.sender_id, m.client_msg_id, \
                        m.body, m.sent_at, m.edited_at, m.deleted \
                 FROM rm_messages m JOIN UNNEST($1::uuid[], $2::uuid[]) AS x(c, id) \
                   ON m.conversation_id = x.c AND m.message_id = x.id",
            )
            .bind(&cs)
            .bind(&ms)
            .fetch_all(&mut *conn)
            .await?
            {
                state
                    .messages
                    .loaded((r.conversation_id, r.message_id), r.row);
            }
        }
        Ok(state)
    }
}
