//! The `Conversation` aggregate: groups and direct chats, membership, roles
//! and messages. Messages are events of their conversation's stream.
//!
//! The state holds members and roles only, never bodies, so loading and
//! snapshotting cost the same whatever the history's length. Facts about
//! individual past messages (who wrote message X, was `client_msg_id` Y
//! already used) come from the [`ConversationLookup`] port, which
//! command-service answers from an index written in the same transaction as
//! the events.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::event::{EventTypes, CURRENT_VERSION};
use crate::values::{ClientMsgId, ConversationId, MessageBody, MessageId, Role, Title, UserId};
use crate::Limits;

/// `direct` (exactly two members, no roles) or `group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    Direct,
    Group,
}

/// What kind of conversation to create.
#[derive(Debug, Clone, PartialEq)]
pub enum NewConversation {
    /// A group owned by its creator; `members` are added as `member`.
    Group { title: Title, members: Vec<UserId> },
    /// The direct chat with `peer`; the conversation id must be
    /// [`ConversationId::direct`] of the pair.
    Direct { peer: UserId },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConversationCommand {
    Create {
        conversation_id: ConversationId,
        creator: UserId,
        new: NewConversation,
    },
    AddMember {
        actor: UserId,
        user_id: UserId,
        role: Role,
    },
    /// Removing oneself is leaving.
    RemoveMember {
        actor: UserId,
        user_id: UserId,
    },
    /// Owner only. Giving `Owner` transfers ownership (the old owner becomes admin).
    ChangeRole {
        actor: UserId,
        user_id: UserId,
        role: Role,
    },
    Rename {
        actor: UserId,
        title: Title,
    },
    SendMessage {
        sender: UserId,
        message_id: MessageId,
        client_msg_id: ClientMsgId,
        body: MessageBody,
        sent_at: DateTime<Utc>,
    },
    EditMessage {
        actor: UserId,
        message_id: MessageId,
        body: MessageBody,
        edited_at: DateTime<Utc>,
    },
    DeleteMessage {
        actor: UserId,
        message_id: MessageId,
    },
}

/// A member as listed in `ConversationCreated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    pub user_id: UserId,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConversationEvent {
    ConversationCreated {
        conversation_id: ConversationId,
        kind: ConversationKind,
        title: Option<Title>,
        created_by: UserId,
        members: Vec<MemberEntry>,
    },
    MemberAdded {
        user_id: UserId,
        role: Role,
        added_by: UserId,
    },
    MemberRemoved {
        user_id: UserId,
        removed_by: UserId,
    },
    MemberRoleChanged {
        user_id: UserId,
        role: Role,
        changed_by: UserId,
    },
    ConversationRenamed {
        title: Title,
        renamed_by: UserId,
    },
    MessageSent {
        message_id: MessageId,
        sender_id: UserId,
        body: MessageBody,
        client_msg_id: ClientMsgId,
        sent_at: DateTime<Utc>,
    },
    MessageEdited {
        message_id: MessageId,
        body: MessageBody,
        edited_at: DateTime<Utc>,
    },
    MessageDeleted {
        message_id: MessageId,
        deleted_by: UserId,
    },
}

impl EventTypes for ConversationEvent {
    const TYPES: &'static [&'static str] = &[
        "ConversationCreated",
        "MemberAdded",
        "MemberRemoved",
        "MemberRoleChanged",
        "ConversationRenamed",
        "MessageSent",
        "MessageEdited",
        "MessageDeleted",
    ];
}

impl DomainEvent for ConversationEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ConversationCreated { .. } => "ConversationCreated",
            Self::MemberAdded { .. } => "MemberAdded",
            Self::MemberRemoved { .. } => "MemberRemoved",
            Self::MemberRoleChanged { .. } => "MemberRoleChanged",
            Self::ConversationRenamed { .. } => "ConversationRenamed",
            Self::MessageSent { .. } => "MessageSent",
            Self::MessageEdited { .. } => "MessageEdited",
            Self::MessageDeleted { .. } => "MessageDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        CURRENT_VERSION.to_string()
    }
}

/// What the lookup knows about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFacts {
    pub message_id: MessageId,
    pub sender_id: UserId,
    /// Stream sequence of its `MessageSent`.
    pub seq: i64,
    pub sent_at: DateTime<Utc>,
    pub deleted: bool,
}

/// The lookup could not answer (storage down); carries no detail for clients.
#[derive(Debug, thiserror::Error)]
#[error("lookup failed: {0}")]
pub struct LookupError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Port: facts the aggregate needs but must not keep in its state.
#[async_trait]
pub trait ConversationLookup: Send + Sync {
    /// The ids among `ids` that are not registered users.
    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, LookupError>;
    async fn message(
        &self,
        conversation: ConversationId,
        message_id: MessageId,
    ) -> Result<Option<MessageFacts>, LookupError>;
    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<MessageFacts>, LookupError>;
}

/// What `handle` is given besides the command.
#[derive(Clone)]
pub struct ConversationServices {
    pub lookup: Arc<dyn ConversationLookup>,
    pub limits: Limits,
}

impl std::fmt::Debug for ConversationServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationServices")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Why a conversation command was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("conversation not found")]
    NotFound,
    #[error("conversation already exists")]
    AlreadyExists,
    #[error("the caller is not a member of this conversation")]
    NotAMember,
    #[error("the caller's role does not allow this")]
    Forbidden,
    #[error("unknown users: {0:?}")]
    UnknownUsers(Vec<UserId>),
    #[error("user {0} is already a member")]
    AlreadyMember(UserId),
    #[error("user {0} is not a member")]
    NotMember(UserId),
    #[error("a group holds at most {0} members")]
    GroupFull(usize),
    #[error("direct conversations have fixed members, no roles and no title")]
    DirectConversation,
    #[error("a direct conversation needs another user")]
    DirectWithSelf,
    #[error("the direct conversation id does not match its members")]
    DirectIdMismatch,
    #[error("message not found")]
    MessageNotFound,
    #[error("message was deleted")]
    MessageDeleted,
    #[error("only the author may do this")]
    NotAuthor,
    #[error("the owner must transfer ownership before leaving")]
    OwnerCannotLeave,
    #[error("role {0:?} cannot be given this way")]
    InvalidRole(Role),
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

// Equality for given/when/then tests; lookup failures never compare equal.
impl PartialEq for ConversationError {
    fn eq(&self, other: &Self) -> bool {
        use ConversationError as E;
        match (self, other) {
            (E::UnknownUsers(a), E::UnknownUsers(b)) => a == b,
            (E::AlreadyMember(a), E::AlreadyMember(b)) => a == b,
            (E::NotMember(a), E::NotMember(b)) => a == b,
            (E::GroupFull(a), E::GroupFull(b)) => a == b,
            (E::InvalidRole(a), E::InvalidRole(b)) => a == b,
            (E::Lookup(_), _) | (_, E::Lookup(_)) => false,
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

/// One member's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub role: Role,
    /// Stream sequence of the event that made them a member.
    pub joined_seq: i64,
}

/// A conversation's decision state: small and bounded by the member limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: Option<ConversationId>,
    pub kind: Option<ConversationKind>,
    pub members: BTreeMap<UserId, MemberState>,
    /// Number of events applied = the stream's last sequence.
    pub version: i64,
}

impl Conversation {
    fn created(&self) -> Result<ConversationId, ConversationError> {
        self.id.ok_or(ConversationError::NotFound)
    }

    fn role_of(&self, user: UserId) -> Result<Role, ConversationError> {
        self.members
            .get(&user)
            .map(|m| m.role)
            .ok_or(ConversationError::NotAMember)
    }

    fn group_manager(&self, actor: UserId) -> Result<Role, ConversationError> {
        self.created()?;
        let role = self.role_of(actor)?;
        if self.kind == Some(ConversationKind::Direct) {
            return Err(ConversationError::DirectConversation);
        }
        if !role.can_manage() {
            return Err(ConversationError::Forbidden);
        }
        Ok(role)
    }

    pub fn is_member(&self, user: UserId) -> bool {
        self.members.contains_key(&user)
    }
}

impl Aggregate for Conversation {
    const TYPE: &'static str = "conversation";
    type Command = ConversationCommand;
    type Event = ConversationEvent;
    type Error = ConversationError;
    type Services = ConversationServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        use ConversationCommand as C;
        use ConversationEvent as E;
        let max = services.limits.group_max_members;
        let events = match command {
            C::Create {
                conversation_id,
                creator,
                new,
            } => match new {
                NewConversation::Direct { peer } => {
                    if peer == creator {
                        return Err(ConversationError::DirectWithSelf);
                    }
                    if conversation_id != ConversationId::direct(creator, peer) {
                        return Err(ConversationError::DirectIdMismatch);
                    }
                    if self.id.is_some() {
                        // Opening an existing direct chat is not an error:
                        // nothing to append, the caller gets the same id.
                        return Ok(());
                    }
                    let missing = services.lookup.missing_users(&[creator, peer]).await?;
                    if !missing.is_empty() {
                        return Err(ConversationError::UnknownUsers(missing));
                    }
                    let mut pair = [creator, peer];
                    pair.sort();
                    vec![E::ConversationCreated {
                        conversation_id,
                        kind: ConversationKind::Direct,
                        title: None,
                        created_by: creator,
                        members: pair
                            .into_iter()
                            .map(|user_id| MemberEntry {
                                user_id,
                                role: Role::Member,
                            })
                            .collect(),
                    }]
                }
                NewConversation::Group { title, members } => {
                    if self.id.is_some() {
                        return Err(ConversationError::AlreadyExists);
                    }
                    let others: BTreeSet<UserId> =
                        members.into_iter().filter(|u| *u != creator).collect();
                    if others.len() + 1 > max {
                        return Err(ConversationError::GroupFull(max));
                    }
                    let mut all: Vec<UserId> = vec![creator];
                    all.extend(others.iter().copied());
                    let missing = services.lookup.missing_users(&all).await?;
                    if !missing.is_empty() {
                        return Err(ConversationError::UnknownUsers(missing));
                    }
                    let mut entries = vec![MemberEntry {
                        user_id: creator,
                        role: Role::Owner,
                    }];
                    entries.extend(others.into_iter().map(|user_id| MemberEntry {
                        user_id,
                        role: Role::Member,
                    }));
                    vec![E::ConversationCreated {
                        conversation_id,
                        kind: ConversationKind::Group,
                        title: Some(title),
                        created_by: creator,
                        members: entries,
                    }]
                }
            },
            C::AddMember {
                actor,
                user_id,
                role,
            } => {
                let actor_role = self.group_manager(actor)?;
                match role {
                    Role::Owner => return Err(ConversationError::InvalidRole(role)),
                    Role::Admin if actor_role != Role::Owner => {
                        return Err(ConversationError::Forbidden)
                    }
                    _ => {}
                }
                if self.members.contains_key(&user_id) {
                    return Err(ConversationError::AlreadyMember(user_id));
                }
                if self.members.len() + 1 > max {
                    return Err(ConversationError::GroupFull(max));
                }
                let missing = services.lookup.missing_users(&[user_id]).await?;
                if !missing.is_empty() {
                    return Err(ConversationError::UnknownUsers(missing));
                }
                vec![E::MemberAdded {
                    user_id,
                    role,
                    added_by: actor,
                }]
            }
            C::RemoveMember { actor, user_id } => {
                self.created()?;
                let actor_role = self.role_of(actor)?;
                if self.kind == Some(ConversationKind::Direct) {
                    return Err(ConversationError::DirectConversation);
                }
                let target = self
                    .members
                    .get(&user_id)
                    .ok_or(ConversationError::NotMember(user_id))?
                    .role;
                if actor == user_id {
                    if actor_role == Role::Owner {
                        return Err(ConversationError::OwnerCannotLeave);
                    }
                } else {
                    let allowed = match actor_role {
                        Role::Owner => true,
                        Role::Admin => target == Role::Member,
                        Role::Member => false,
                    };
                    if !allowed {
                        return Err(ConversationError::Forbidden);
                    }
                }
                vec![E::MemberRemoved {
                    user_id,
                    removed_by: actor,
                }]
            }
            C::ChangeRole {
                actor,
                user_id,
                role,
            } => {
                let actor_role = self.group_manager(actor)?;
                if actor_role != Role::Owner {
                    return Err(ConversationError::Forbidden);
                }
                let current = self
                    .members
                    .get(&user_id)
                    .ok_or(ConversationError::NotMember(user_id))?
                    .role;
                if user_id == actor {
                    return Err(ConversationError::InvalidRole(role));
                }
                if current == role {
                    return Ok(());
                }
                let mut events = vec![E::MemberRoleChanged {
                    user_id,
                    role,
                    changed_by: actor,
                }];
                if role == Role::Owner {
                    events.push(E::MemberRoleChanged {
                        user_id: actor,
                        role: Role::Admin,
                        changed_by: actor,
                    });
                }
                events
            }
            C::Rename { actor, title } => {
                self.group_manager(actor)?;
                vec![E::ConversationRenamed {
                    title,
                    renamed_by: actor,
                }]
            }
            C::SendMessage {
                sender,
                message_id,
                client_msg_id,
                body,
                sent_at,
            } => {
                let id = self.created()?;
                self.role_of(sender)?;
                if services
                    .lookup
                    .message_by_client_id(id, sender, &client_msg_id)
                    .await?
                    .is_some()
                {
                    // Idempotent retry: the first send stands, nothing new.
                    return Ok(());
                }
                vec![E::MessageSent {
                    message_id,
                    sender_id: sender,
                    body,
                    client_msg_id,
                    sent_at,
                }]
            }
            C::EditMessage {
                actor,
                message_id,
                body,
                edited_at,
            } => {
                let id = self.created()?;
                self.role_of(actor)?;
                let msg = services
                    .lookup
                    .message(id, message_id)
                    .await?
                    .ok_or(ConversationError::MessageNotFound)?;
                if msg.deleted {
                    return Err(ConversationError::MessageDeleted);
                }
                if msg.sender_id != actor {
                    return Err(ConversationError::NotAuthor);
                }
                vec![E::MessageEdited {
                    message_id,
                    body,
                    edited_at,
                }]
            }
            C::DeleteMessage { actor, message_id } => {
                let id = self.created()?;
                let role = self.role_of(actor)?;
                let msg = services
                    .lookup
                    .message(id, message_id)
                    .await?
                    .ok_or(ConversationError::MessageNotFound)?;
                if msg.deleted {
                    // Deleting twice changes nothing.
                    return Ok(());
                }
                if msg.sender_id != actor && !role.can_manage() {
                    return Err(ConversationError::Forbidden);
                }
                vec![E::MessageDeleted {
                    message_id,
                    deleted_by: actor,
                }]
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        use ConversationEvent as E;
        self.version += 1;
        let seq = self.version;
        match event {
            E::ConversationCreated {
                conversation_id,
                kind,
                members,
                ..
            } => {
                self.id = Some(conversation_id);
                self.kind = Some(kind);
                self.members = members
                    .into_iter()
                    .map(|m| {
                        (
                            m.user_id,
                            MemberState {
                                role: m.role,
                                joined_seq: seq,
                            },
                        )
                    })
                    .collect();
            }
            E::MemberAdded { user_id, role, .. } => {
                self.members.insert(
                    user_id,
                    MemberState {
                        role,
                        joined_seq: seq,
                    },
                );
            }
            E::MemberRemoved { user_id, .. } => {
                self.members.remove(&user_id);
            }
            E::MemberRoleChanged { user_id, role, .. } => {
                if let Some(m) = self.members.get_mut(&user_id) {
                    m.role = role;
                }
            }
            E::ConversationRenamed { .. }
            | E::MessageSent { .. }
            | E::MessageEdited { .. }
            | E::MessageDeleted { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests;
