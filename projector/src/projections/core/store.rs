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
//! - `rm_user_conversations`: one row per current member, ordered by
//!   `last_activity_at` (creation, the member's own join, then every
//!   message). `unread_count` is always "messages by others with
//!   `seq > greatest(read_seq, joined_seq)`, not deleted, as far as
//!   projected": `MessageSent` increments it for every member but the
//!   sender whose `read_seq` is below the message, `MessageDeleted`
//!   decrements it where the message counted, `ReadMarkerMoved` recounts it.
//!   Read markers are a stream of their own, so live they may be projected
//!   before the messages they cover (another partition); every rule above
//!   gives the same result in either order, which is what lets a rebuild
//!   (global order) reproduce the live table exactly.
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
//! table and kind of change. Unread counts of members whose marker moved
//! are recounted by one statement at the end (the definition above holds
//! after every event, so counting over the batch's final state equals
//! counting at the marker and then applying the later events). A batch of
//! thousands of events thus costs about twenty statements.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::conversation::{ConversationEvent, ConversationKind};
use domain::read_marker::ReadMarkerEvent;
use domain::user::UserEvent;
use sqlx::{PgConnection, Row};
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
        self.apply_batch(conn, &[event]).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&ProjectedEvent],
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

type Time = DateTime<Utc>;

#[derive(Debug, Clone)]
struct UserRow {
    username: String,
    display_name: String,
    email: String,
    roles: Vec<String>,
    created_at: Time,
}

#[derive(Debug, Clone)]
struct ConvRow {
    kind: String,
    title: Option<String>,
    created_by: Uuid,
    created_at: Time,
    last_seq: i64,
    last_message_seq: Option<i64>,
    last_activity_at: Time,
}

#[derive(Debug, Clone)]
struct MemberRow {
    role: String,
    joined_seq: i64,
    joined_at: Time,
}

#[derive(Debug, Clone)]
struct MessageRow {
    seq: i64,
    sender_id: Uuid,
    client_msg_id: String,
    body: Option<String>,
    sent_at: Time,
    edited_at: Option<Time>,
    deleted: bool,
    /// Written by this batch (inserted) rather than loaded (updated).
    new: bool,
}

#[derive(Debug, Clone)]
struct ListRow {
    last_activity_at: Time,
    read_seq: i64,
    unread_count: i64,
}

/// Rows of one table as loaded (`None`: known to be absent), changed in
/// memory; `dirty` keys are written back (upserted, or deleted if `None`).
#[derive(Debug)]
struct Rows<K, V> {
    rows: HashMap<K, Option<V>>,
    dirty: BTreeSet<K>,
}

impl<K: Copy + Eq + Hash + Ord, V> Rows<K, V> {
    fn new() -> Self {
        Self {
            rows: HashMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    fn loaded(&mut self, key: K, value: V) {
        self.rows.insert(key, Some(value));
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.rows.get(key).and_then(Option::as_ref)
    }

    /// The row to change, if present (`UPDATE ... WHERE key`).
    fn get_mut(&mut self, key: K) -> Option<&mut V> {
        let row = self.rows.get_mut(&key).and_then(Option::as_mut);
        if row.is_some() {
            self.dirty.insert(key);
        }
        row
    }

    /// `INSERT ... ON CONFLICT DO NOTHING`; true when inserted.
    fn insert(&mut self, key: K, value: V) -> bool {
        if self.get(&key).is_some() {
            return false;
        }
        self.rows.insert(key, Some(value));
        self.dirty.insert(key);
        true
    }

    /// `INSERT ... ON CONFLICT DO UPDATE` with every column.
    fn upsert(&mut self, key: K, value: V) {
        self.rows.insert(key, Some(value));
        self.dirty.insert(key);
    }

    /// `DELETE ... WHERE key`; the removed row.
    fn remove(&mut self, key: K) -> Option<V> {
        let old = self.rows.insert(key, None).flatten();
        self.dirty.insert(key);
        old
    }

    /// `(key, Some(row))` to upsert and `(key, None)` to delete.
    fn changes(&self) -> impl Iterator<Item = (&K, Option<&V>)> {
        self.dirty
            .iter()
            .map(|k| (k, self.rows.get(k).and_then(Option::as_ref)))
    }
}

/// Everything a batch can touch.
#[derive(Debug)]
struct State {
    users: Rows<Uuid, UserRow>,
    convs: Rows<Uuid, ConvRow>,
    /// (conversation, user)
    members: Rows<(Uuid, Uuid), MemberRow>,
    /// (conversation, user, joined_seq) -> left_seq, periods opened or
    /// closed by the batch.
    periods: BTreeMap<(Uuid, Uuid, i64), Option<i64>>,
    /// (conversation, message_id)
    messages: Rows<(Uuid, Uuid), MessageRow>,
    /// (user, conversation)
    lists: Rows<(Uuid, Uuid), ListRow>,
    /// Users with a list row, per conversation (an index into `lists`).
    listed: HashMap<Uuid, BTreeSet<Uuid>>,
    /// (conversation, user) -> seq
    markers: Rows<(Uuid, Uuid), i64>,
    /// (user, conversation) rows whose unread count is recounted at the end.
    recount: BTreeSet<(Uuid, Uuid)>,
}

fn kind(k: ConversationKind) -> &'static str {
    match k {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

impl State {
    /// Loads every row the events can read or change.
    async fn load(conn: &mut PgConnection, events: &[&ProjectedEvent]) -> sqlx::Result<Self> {
        let mut users = BTreeSet::new();
        let mut convs = BTreeSet::new();
        // Conversations whose members are read (joined_seq, role), and
        // whose read markers are (a joining member's read_seq).
        let mut member_convs = BTreeSet::new();
        let mut marker_convs = BTreeSet::new();
        let mut listed_convs = BTreeSet::new();
        let mut sent = BTreeSet::new();
        let mut referenced = BTreeSet::new();
        for e in events {
            match &e.event {
                Event::User(_) => {
                    users.insert(e.stream_id);
                }
                Event::Conversation(c) => {
                    convs.insert(e.stream_id);
                    listed_convs.insert(e.stream_id);
                    match c {
                        ConversationEvent::MessageSent { message_id, .. } => {
                            sent.insert((e.stream_id, message_id.0));
                        }
                        ConversationEvent::MessageEdited { message_id, .. } => {
                            referenced.insert((e.stream_id, message_id.0));
                        }
                        ConversationEvent::MessageDeleted { message_id, .. } => {
                            referenced.insert((e.stream_id, message_id.0));
                            member_convs.insert(e.stream_id);
                        }
                        ConversationEvent::MemberRemoved { .. }
                        | ConversationEvent::MemberRoleChanged { .. } => {
                            member_convs.insert(e.stream_id);
                        }
                        ConversationEvent::ConversationCreated { .. }
                        | ConversationEvent::MemberAdded { .. } => {
                            marker_convs.insert(e.stream_id);
                        }
                        ConversationEvent::ConversationRenamed { .. } => {}
                    }
                }
                Event::ReadMarker(ReadMarkerEvent::ReadMarkerMoved {
                    conversation_id, ..
                }) => {
                    listed_convs.insert(conversation_id.0);
                }
            }
        }
        let users: Vec<Uuid> = users.into_iter().collect();
        let convs: Vec<Uuid> = convs.into_iter().collect();
        let listed_convs: Vec<Uuid> = listed_convs.into_iter().collect();
        let member_convs: Vec<Uuid> = member_convs.into_iter().collect();
        let marker_convs: Vec<Uuid> = marker_convs.into_iter().collect();
        let mut state = State {
            users: Rows::new(),
            convs: Rows::new(),
            members: Rows::new(),
            periods: BTreeMap::new(),
            messages: Rows::new(),
            lists: Rows::new(),
            listed: HashMap::new(),
            markers: Rows::new(),
            recount: BTreeSet::new(),
        };
        if !users.is_empty() {
            for r in sqlx::query(
                "SELECT user_id, username, display_name, email, roles, created_at \
                 FROM rm_users WHERE user_id = ANY($1)",
            )
            .bind(&users)
            .fetch_all(&mut *conn)
            .await?
            {
                state.users.loaded(
                    r.try_get("user_id")?,
                    UserRow {
                        username: r.try_get("username")?,
                        display_name: r.try_get("display_name")?,
                        email: r.try_get("email")?,
                        roles: r.try_get("roles")?,
                        created_at: r.try_get("created_at")?,
                    },
                );
            }
        }
        if !convs.is_empty() {
            for r in sqlx::query(
                "SELECT conversation_id, kind, title, created_by, created_at, last_seq, \
                        last_message_seq, last_activity_at \
                 FROM rm_conversations WHERE conversation_id = ANY($1)",
            )
            .bind(&convs)
            .fetch_all(&mut *conn)
            .await?
            {
                state.convs.loaded(
                    r.try_get("conversation_id")?,
                    ConvRow {
                        kind: r.try_get("kind")?,
                        title: r.try_get("title")?,
                        created_by: r.try_get("created_by")?,
                        created_at: r.try_get("created_at")?,
                        last_seq: r.try_get("last_seq")?,
                        last_message_seq: r.try_get("last_message_seq")?,
                        last_activity_at: r.try_get("last_activity_at")?,
                    },
                );
            }
        }
        if !member_convs.is_empty() {
            for r in sqlx::query(
                "SELECT conversation_id, user_id, role, joined_seq, joined_at \
                 FROM rm_members WHERE conversation_id = ANY($1)",
            )
            .bind(&member_convs)
            .fetch_all(&mut *conn)
            .await?
            {
                state.members.loaded(
                    (r.try_get("conversation_id")?, r.try_get("user_id")?),
                    MemberRow {
                        role: r.try_get("role")?,
                        joined_seq: r.try_get("joined_seq")?,
                        joined_at: r.try_get("joined_at")?,
                    },
                );
            }
        }
        if !listed_convs.is_empty() {
            for r in sqlx::query(
                "SELECT user_id, conversation_id, last_activity_at, read_seq, unread_count \
                 FROM rm_user_conversations WHERE conversation_id = ANY($1)",
            )
            .bind(&listed_convs)
            .fetch_all(&mut *conn)
            .await?
            {
                let (user, conv): (Uuid, Uuid) =
                    (r.try_get("user_id")?, r.try_get("conversation_id")?);
                state.lists.loaded(
                    (user, conv),
                    ListRow {
                        last_activity_at: r.try_get("last_activity_at")?,
                        read_seq: r.try_get("read_seq")?,
                        unread_count: r.try_get("unread_count")?,
                    },
                );
                state.listed.entry(conv).or_default().insert(user);
            }
        }
        if !marker_convs.is_empty() {
            // A marker moved by this batch without being loaded is written
            // with GREATEST, so only joins need the stored ones.
            for r in sqlx::query(
                "SELECT conversation_id, user_id, seq FROM rm_read_markers \
                 WHERE conversation_id = ANY($1)",
            )
            .bind(&marker_convs)
            .fetch_all(&mut *conn)
            .await?
            {
                state.markers.loaded(
                    (r.try_get("conversation_id")?, r.try_get("user_id")?),
                    r.try_get("seq")?,
                );
            }
        }
        let older: Vec<(Uuid, Uuid)> = referenced.difference(&sent).copied().collect();
        if !older.is_empty() {
            let (cs, ms): (Vec<Uuid>, Vec<Uuid>) = older.into_iter().unzip();
            for r in sqlx::query(
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
                state.messages.loaded(
                    (r.try_get("conversation_id")?, r.try_get("message_id")?),
                    MessageRow {
                        seq: r.try_get("seq")?,
                        sender_id: r.try_get("sender_id")?,
                        client_msg_id: r.try_get("client_msg_id")?,
                        body: r.try_get("body")?,
                        sent_at: r.try_get("sent_at")?,
                        edited_at: r.try_get("edited_at")?,
                        deleted: r.try_get("deleted")?,
                        new: false,
                    },
                );
            }
        }
        Ok(state)
    }

    fn apply(&mut self, e: &ProjectedEvent) {
        match &e.event {
            Event::User(u) => self.user(e, u),
            Event::Conversation(c) => self.conversation(e, c),
            Event::ReadMarker(ReadMarkerEvent::ReadMarkerMoved {
                conversation_id,
                user_id,
                seq,
            }) => {
                let key = (conversation_id.0, user_id.0);
                match self.markers.get_mut(key) {
                    Some(m) => *m = (*m).max(*seq),
                    None => self.markers.upsert(key, *seq),
                }
                let list_key = (user_id.0, conversation_id.0);
                if let Some(row) = self.lists.get_mut(list_key) {
                    row.read_seq = row.read_seq.max(*seq);
                    self.recount.insert(list_key);
                }
            }
        }
    }

    fn user(&mut self, e: &ProjectedEvent, u: &UserEvent) {
        let id = e.stream_id;
        match u {
            UserEvent::UserRegistered {
                user_id,
                email,
                username,
                display_name,
            } => {
                self.users.insert(
                    user_id.0,
                    UserRow {
                        username: username.as_str().to_owned(),
                        display_name: display_name.as_str().to_owned(),
                        email: email.as_str().to_owned(),
                        roles: Vec::new(),
                        created_at: e.envelope.occurred_at,
                    },
                );
            }
            UserEvent::DisplayNameChanged { display_name } => {
                if let Some(row) = self.users.get_mut(id) {
                    display_name.as_str().clone_into(&mut row.display_name);
                }
            }
            UserEvent::RoleGranted { role } => {
                if let Some(row) = self.users.get_mut(id) {
                    row.roles.push(role.as_str().to_owned());
                    row.roles.sort();
                    row.roles.dedup();
                }
            }
            UserEvent::RoleRevoked { role } => {
                if let Some(row) = self.users.get_mut(id) {
                    row.roles.retain(|r| r != role.as_str());
                }
            }
            UserEvent::PasswordChanged { .. } | UserEvent::PasswordResetRequested { .. } => {}
        }
    }

    /// A member joins: member row, open period, list row.
    fn join(&mut self, conv: Uuid, user: Uuid, role: &str, seq: i64, at: Time, upsert: bool) {
        let member = MemberRow {
            role: role.to_owned(),
            joined_seq: seq,
            joined_at: at,
        };
        if upsert {
            self.members.upsert((conv, user), member);
        } else {
            self.members.insert((conv, user), member);
        }
        self.periods.entry((conv, user, seq)).or_insert(None);
        let read_seq = self.markers.get(&(conv, user)).copied().unwrap_or(0);
        let inserted = self.lists.insert(
            (user, conv),
            ListRow {
                last_activity_at: at,
                read_seq,
                unread_count: 0,
            },
        );
        if inserted {
            self.listed.entry(conv).or_default().insert(user);
        }
    }

    fn conversation(&mut self, e: &ProjectedEvent, c: &ConversationEvent) {
        let conv = e.stream_id;
        let seq = e.sequence();
        let at = e.envelope.occurred_at;
        if let ConversationEvent::ConversationCreated {
            kind: k,
            title,
            created_by,
            members,
            ..
        } = c
        {
            self.convs.insert(
                conv,
                ConvRow {
                    kind: kind(*k).to_owned(),
                    title: title.as_ref().map(|t| t.as_str().to_owned()),
                    created_by: created_by.0,
                    created_at: at,
                    last_seq: seq,
                    last_message_seq: None,
                    last_activity_at: at,
                },
            );
            for m in members {
                self.join(conv, m.user_id.0, m.role.as_str(), seq, at, false);
            }
            return;
        }
        if let Some(row) = self.convs.get_mut(conv) {
            row.last_seq = row.last_seq.max(seq);
        }
        match c {
            ConversationEvent::ConversationCreated { .. } => {}
            ConversationEvent::MemberAdded { user_id, role, .. } => {
                self.join(conv, user_id.0, role.as_str(), seq, at, true);
            }
            ConversationEvent::MemberRemoved { user_id, .. } => {
                if let Some(m) = self.members.remove((conv, user_id.0)) {
                    self.periods
                        .insert((conv, user_id.0, m.joined_seq), Some(seq));
                }
                self.lists.remove((user_id.0, conv));
                if let Some(users) = self.listed.get_mut(&conv) {
                    users.remove(&user_id.0);
                }
            }
            ConversationEvent::MemberRoleChanged { user_id, role, .. } => {
                if let Some(m) = self.members.get_mut((conv, user_id.0)) {
                    role.as_str().clone_into(&mut m.role);
                }
            }
            ConversationEvent::ConversationRenamed { title, .. } => {
                if let Some(row) = self.convs.get_mut(conv) {
                    row.title = Some(title.as_str().to_owned());
                }
            }
            ConversationEvent::MessageSent {
                message_id,
                sender_id,
                body,
                client_msg_id,
                sent_at,
            } => {
                self.messages.insert(
                    (conv, message_id.0),
                    MessageRow {
                        seq,
                        sender_id: sender_id.0,
                        client_msg_id: client_msg_id.as_str().to_owned(),
                        body: Some(body.as_str().to_owned()),
                        sent_at: *sent_at,
                        edited_at: None,
                        deleted: false,
                        new: true,
                    },
                );
                if let Some(row) = self.convs.get_mut(conv) {
                    row.last_message_seq = Some(row.last_message_seq.unwrap_or(0).max(seq));
                    row.last_activity_at = row.last_activity_at.max(*sent_at);
                }
                let users: Vec<Uuid> = self
                    .listed
                    .get(&conv)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                for user in users {
                    if let Some(row) = self.lists.get_mut((user, conv)) {
                        row.last_activity_at = row.last_activity_at.max(*sent_at);
                        if user != sender_id.0 && row.read_seq < seq {
                            row.unread_count += 1;
                        }
                    }
                }
            }
            ConversationEvent::MessageEdited {
                message_id,
                body,
                edited_at,
            } => {
                if let Some(m) = self.messages.get_mut((conv, message_id.0)) {
                    if !m.deleted {
                        m.body = Some(body.as_str().to_owned());
                        m.edited_at = Some(*edited_at);
                    }
                }
            }
            ConversationEvent::MessageDeleted { message_id, .. } => {
                let Some(m) = self.messages.get_mut((conv, message_id.0)) else {
                    return;
                };
                if m.deleted {
                    return;
                }
                m.body = None;
                m.deleted = true;
                let (mseq, sender) = (m.seq, m.sender_id);
                let users: Vec<Uuid> = self
                    .listed
                    .get(&conv)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                for user in users {
                    let joined = self.members.get(&(conv, user)).map(|m| m.joined_seq);
                    if user == sender || joined.is_none_or(|j| j >= mseq) {
                        continue;
                    }
                    if let Some(row) = self.lists.get_mut((user, conv)) {
                        if row.read_seq < mseq {
                            row.unread_count -= 1;
                        }
                    }
                }
            }
        }
    }

    /// Writes every changed row back, then recounts moved markers' rows.
    async fn store(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        self.store_users(conn).await?;
        self.store_convs(conn).await?;
        self.store_members(conn).await?;
        self.store_periods(conn).await?;
        self.store_messages(conn).await?;
        self.store_lists(conn).await?;
        self.store_markers(conn).await?;
        self.store_recount(conn).await
    }

    async fn store_users(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let (mut ids, mut names, mut displays, mut emails, mut roles, mut created) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (id, row) in self.users.changes() {
            let Some(u) = row else { continue };
            ids.push(*id);
            names.push(u.username.as_str());
            displays.push(u.display_name.as_str());
            emails.push(u.email.as_str());
            roles.push(u.roles.join(","));
            created.push(u.created_at);
        }
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_users (user_id, username, display_name, email, roles, created_at) \
             SELECT x.id, x.n, x.d, x.e, string_to_array(x.r, ','), x.c \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) \
               AS x(id, n, d, e, r, c) \
             ON CONFLICT (user_id) DO UPDATE SET username = EXCLUDED.username, \
               display_name = EXCLUDED.display_name, email = EXCLUDED.email, \
               roles = EXCLUDED.roles, created_at = EXCLUDED.created_at",
        )
        .bind(&ids)
        .bind(&names)
        .bind(&displays)
        .bind(&emails)
        .bind(&roles)
        .bind(&created)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn store_convs(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let mut ids = vec![];
        let (mut kinds, mut titles, mut by, mut created) = (vec![], vec![], vec![], vec![]);
        let (mut last, mut last_msg, mut active) = (vec![], vec![], vec![]);
        for (id, row) in self.convs.changes() {
            let Some(c) = row else { continue };
            ids.push(*id);
            kinds.push(c.kind.as_str());
            titles.push(c.title.as_deref());
            by.push(c.created_by);
            created.push(c.created_at);
            last.push(c.last_seq);
            last_msg.push(c.last_message_seq);
            active.push(c.last_activity_at);
        }
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_conversations (conversation_id, kind, title, created_by, created_at, \
                                           last_seq, last_message_seq, last_activity_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], \
                                  $5::timestamptz[], $6::bigint[], $7::bigint[], $8::timestamptz[]) \
             ON CONFLICT (conversation_id) DO UPDATE SET kind = EXCLUDED.kind, \
               title = EXCLUDED.title, created_by = EXCLUDED.created_by, \
               created_at = EXCLUDED.created_at, last_seq = EXCLUDED.last_seq, \
               last_message_seq = EXCLUDED.last_message_seq, \
               last_activity_at = EXCLUDED.last_activity_at",
        )
        .bind(&ids)
        .bind(&kinds)
        .bind(&titles)
        .bind(&by)
        .bind(&created)
        .bind(&last)
        .bind(&last_msg)
        .bind(&active)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn store_members(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let (mut del_c, mut del_u) = (vec![], vec![]);
        let (mut cs, mut us, mut roles, mut seqs, mut ats) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((c, u), row) in self.members.changes() {
            match row {
                None => {
                    del_c.push(*c);
                    del_u.push(*u);
                }
                Some(m) => {
                    cs.push(*c);
                    us.push(*u);
                    roles.push(m.role.as_str());
                    seqs.push(m.joined_seq);
                    ats.push(m.joined_at);
                }
            }
        }
        if !del_c.is_empty() {
            sqlx::query(
                "DELETE FROM rm_members m USING UNNEST($1::uuid[], $2::uuid[]) AS x(c, u) \
                 WHERE m.conversation_id = x.c AND m.user_id = x.u",
            )
            .bind(&del_c)
            .bind(&del_u)
            .execute(&mut *conn)
            .await?;
        }
        if !cs.is_empty() {
            sqlx::query(
                "INSERT INTO rm_members (conversation_id, user_id, role, joined_seq, joined_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::timestamptz[]) \
                 ON CONFLICT (conversation_id, user_id) DO UPDATE SET role = EXCLUDED.role, \
                   joined_seq = EXCLUDED.joined_seq, joined_at = EXCLUDED.joined_at",
            )
            .bind(&cs)
            .bind(&us)
            .bind(&roles)
            .bind(&seqs)
            .bind(&ats)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn store_periods(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        if self.periods.is_empty() {
            return Ok(());
        }
        let (mut cs, mut us, mut joined, mut left) = (vec![], vec![], vec![], vec![]);
        for ((c, u, j), l) in &self.periods {
            cs.push(*c);
            us.push(*u);
            joined.push(*j);
            left.push(*l);
        }
        sqlx::query(
            "INSERT INTO rm_member_periods (conversation_id, user_id, joined_seq, left_seq) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[]) \
             ON CONFLICT (conversation_id, user_id, joined_seq) DO UPDATE \
             SET left_seq = COALESCE(EXCLUDED.left_seq, rm_member_periods.left_seq)",
        )
        .bind(&cs)
        .bind(&us)
        .bind(&joined)
        .bind(&left)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn store_messages(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let mut new = (
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        );
        let mut old = (vec![], vec![], vec![], vec![], vec![]);
        for ((c, id), row) in self.messages.changes() {
            let Some(m) = row else { continue };
            if m.new {
                new.0.push(*c);
                new.1.push(m.seq);
                new.2.push(*id);
                new.3.push(m.sender_id);
                new.4.push(m.client_msg_id.as_str());
                new.5.push(m.body.as_deref());
                new.6.push(m.sent_at);
                new.7.push(m.edited_at);
                new.8.push(m.deleted);
            } else {
                old.0.push(*c);
                old.1.push(*id);
                old.2.push(m.body.as_deref());
                old.3.push(m.edited_at);
                old.4.push(m.deleted);
            }
        }
        if !new.0.is_empty() {
            sqlx::query(
                "INSERT INTO rm_messages (conversation_id, seq, message_id, sender_id, client_msg_id, \
                                          body, sent_at, edited_at, deleted) \
                 SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[], $5::text[], \
                                      $6::text[], $7::timestamptz[], $8::timestamptz[], $9::bool[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&new.0)
            .bind(&new.1)
            .bind(&new.2)
            .bind(&new.3)
            .bind(&new.4)
            .bind(&new.5)
            .bind(&new.6)
            .bind(&new.7)
            .bind(&new.8)
            .execute(&mut *conn)
            .await?;
        }
        if !old.0.is_empty() {
            sqlx::query(
                "UPDATE rm_messages m SET body = x.b, edited_at = x.e, deleted = x.d \
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::bool[]) \
                   AS x(c, id, b, e, d) \
                 WHERE m.conversation_id = x.c AND m.message_id = x.id",
            )
            .bind(&old.0)
            .bind(&old.1)
            .bind(&old.2)
            .bind(&old.3)
            .bind(&old.4)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn store_lists(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let (mut del_u, mut del_c) = (vec![], vec![]);
        let (mut us, mut cs, mut active, mut read, mut unread) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((u, c), row) in self.lists.changes() {
            match row {
                None => {
                    del_u.push(*u);
                    del_c.push(*c);
                }
                Some(l) => {
                    us.push(*u);
                    cs.push(*c);
                    active.push(l.last_activity_at);
                    read.push(l.read_seq);
                    unread.push(l.unread_count);
                }
            }
        }
        if !del_u.is_empty() {
            sqlx::query(
                "DELETE FROM rm_user_conversations l USING UNNEST($1::uuid[], $2::uuid[]) AS x(u, c) \
                 WHERE l.user_id = x.u AND l.conversation_id = x.c",
            )
            .bind(&del_u)
            .bind(&del_c)
            .execute(&mut *conn)
            .await?;
        }
        if !us.is_empty() {
            sqlx::query(
                "INSERT INTO rm_user_conversations (user_id, conversation_id, last_activity_at, \
                                                    read_seq, unread_count) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bigint[], $5::bigint[]) \
                 ON CONFLICT (user_id, conversation_id) DO UPDATE SET \
                   last_activity_at = EXCLUDED.last_activity_at, read_seq = EXCLUDED.read_seq, \
                   unread_count = EXCLUDED.unread_count",
            )
            .bind(&us)
            .bind(&cs)
            .bind(&active)
            .bind(&read)
            .bind(&unread)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn store_markers(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let (mut cs, mut us, mut seqs) = (vec![], vec![], vec![]);
        for ((c, u), seq) in self.markers.changes() {
            let Some(seq) = seq else { continue };
            cs.push(*c);
            us.push(*u);
            seqs.push(*seq);
        }
        if cs.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_read_markers (conversation_id, user_id, seq) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[]) \
             ON CONFLICT (conversation_id, user_id) DO UPDATE \
             SET seq = GREATEST(rm_read_markers.seq, EXCLUDED.seq)",
        )
        .bind(&cs)
        .bind(&us)
        .bind(&seqs)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn store_recount(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let (us, cs): (Vec<Uuid>, Vec<Uuid>) = self
            .recount
            .iter()
            .filter(|k| self.lists.get(k).is_some())
            .copied()
            .unzip();
        if us.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE rm_user_conversations uc SET unread_count = ( \
               SELECT count(*) FROM rm_messages m \
               JOIN rm_members mb ON mb.conversation_id = m.conversation_id AND mb.user_id = uc.user_id \
               WHERE m.conversation_id = uc.conversation_id \
                 AND m.seq > GREATEST(uc.read_seq, mb.joined_seq) \
                 AND m.sender_id <> uc.user_id AND NOT m.deleted) \
             FROM UNNEST($1::uuid[], $2::uuid[]) AS x(u, c) \
             WHERE uc.user_id = x.u AND uc.conversation_id = x.c",
        )
        .bind(&us)
        .bind(&cs)
        .execute(conn)
        .await?;
        Ok(())
    }
}
