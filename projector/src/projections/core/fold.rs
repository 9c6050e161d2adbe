//! `impl State`, part 2: fold the batch's events, in order, into the rows
//! loaded for it (the rules of the [module doc](super)).

use domain::conversation::{ConversationEvent, ConversationKind};
use domain::read_marker::ReadMarkerEvent;
use domain::user::UserEvent;
use uuid::Uuid;

use super::rows::{ConvRow, MemberRow, MessageRow, State, Time, UserRow};
use domain::decode::{AnyEvent, DecodedEvent};

fn kind(k: ConversationKind) -> &'static str {
    match k {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

impl State {
    pub(super) fn apply(&mut self, e: &DecodedEvent) {
        match &e.event {
            AnyEvent::User(u) => self.user(e, u),
            AnyEvent::Conversation(c) => self.conversation(e, c),
            AnyEvent::ReadMarker(ReadMarkerEvent::ReadMarkerMoved {
                conversation_id,
                user_id,
                seq,
            }) => {
                // Not loaded: stored with GREATEST over the stored one.
                let key = (conversation_id.0, user_id.0);
                match self.markers.get_mut(key) {
                    Some(m) => *m = (*m).max(*seq),
                    None => self.markers.upsert(key, *seq),
                }
            }
        }
    }

    fn user(&mut self, e: &DecodedEvent, u: &UserEvent) {
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

    /// A member joins: member row, open period.
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
    }

    fn conversation(&mut self, e: &DecodedEvent, c: &ConversationEvent) {
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
            }
        }
    }
}
