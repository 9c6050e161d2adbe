//! Given/when/then tests of the `Conversation` aggregate.
//!
//! Every test starts from a history of events (`given`), handles one command
//! (`when`) and checks the events it emits or the error it returns (`then`).
//! Facts about past messages come from [`FakeLookup`], an in-memory stand-in
//! for the index command-service keeps next to the event store.

#![allow(clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::test::{AggregateResultValidator, TestFramework};
use cqrs_es::{Aggregate, DomainEvent};

use super::{
    Conversation, ConversationCommand, ConversationError, ConversationEvent, ConversationKind,
    ConversationLookup, ConversationServices, LookupError, MemberEntry, MemberState, MessageFacts,
    NewConversation,
};
use crate::event::{encode, EventTypes};
use crate::values::{
    ClientMsgId, ConversationId, MessageBody, MessageId, Role, Title, UserId, ValidationError,
    ValidationKind,
};
use crate::Limits;

use ConversationCommand as C;
use ConversationError as Error;
use ConversationEvent as E;

// ---------------------------------------------------------------------------
// Fake lookup
// ---------------------------------------------------------------------------

/// One message the fake index knows about.
#[derive(Debug, Clone)]
struct StoredMessage {
    conversation: ConversationId,
    client_msg_id: ClientMsgId,
    facts: MessageFacts,
}

/// In-memory [`ConversationLookup`]: a set of registered users and the
/// messages already sent, keyed like the real index (per conversation).
#[derive(Debug, Default, Clone)]
struct FakeLookup {
    users: BTreeSet<UserId>,
    messages: BTreeMap<MessageId, StoredMessage>,
}

impl FakeLookup {
    fn with_users(users: impl IntoIterator<Item = UserId>) -> Self {
        Self {
            users: users.into_iter().collect(),
            messages: BTreeMap::new(),
        }
    }

    fn with_message(
        mut self,
        conversation: ConversationId,
        message_id: MessageId,
        sender_id: UserId,
        client_msg_id: &str,
        deleted: bool,
    ) -> Self {
        self.messages.insert(
            message_id,
            StoredMessage {
                conversation,
                client_msg_id: cmid(client_msg_id),
                facts: MessageFacts {
                    message_id,
                    sender_id,
                    seq: i64::try_from(self.messages.len()).unwrap_or(i64::MAX) + 2,
                    sent_at: now(),
                    deleted,
                },
            },
        );
        self
    }
}

#[async_trait]
impl ConversationLookup for FakeLookup {
    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, LookupError> {
        Ok(ids
            .iter()
            .filter(|id| !self.users.contains(id))
            .copied()
            .collect())
    }

    async fn message(
        &self,
        conversation: ConversationId,
        message_id: MessageId,
    ) -> Result<Option<MessageFacts>, LookupError> {
        Ok(self
            .messages
            .get(&message_id)
            .filter(|m| m.conversation == conversation)
            .map(|m| m.facts.clone()))
    }

    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<MessageFacts>, LookupError> {
        Ok(self
            .messages
            .values()
            .find(|m| {
                m.conversation == conversation
                    && m.facts.sender_id == sender
                    && &m.client_msg_id == client_msg_id
            })
            .map(|m| m.facts.clone()))
    }
}

/// A lookup whose storage is down.
#[derive(Debug)]
struct BrokenLookup;

#[async_trait]
impl ConversationLookup for BrokenLookup {
    async fn missing_users(&self, _: &[UserId]) -> Result<Vec<UserId>, LookupError> {
        Err(LookupError("database unavailable".into()))
    }

    async fn message(
        &self,
        _: ConversationId,
        _: MessageId,
    ) -> Result<Option<MessageFacts>, LookupError> {
        Err(LookupError("database unavailable".into()))
    }

    async fn message_by_client_id(
        &self,
        _: ConversationId,
        _: UserId,
        _: &ClientMsgId,
    ) -> Result<Option<MessageFacts>, LookupError> {
        Err(LookupError("database unavailable".into()))
    }
}

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn title(s: &str) -> Title {
    Title::parse(s, &Limits::default()).expect("valid title")
}

fn body(s: &str) -> MessageBody {
    MessageBody::parse(s, &Limits::default()).expect("valid body")
}

fn cmid(s: &str) -> ClientMsgId {
    ClientMsgId::parse(s, &Limits::default()).expect("valid client_msg_id")
}

/// A cast of users around one group and one direct conversation.
///
/// The group's history ([`Cast::group`]) is: created by `owner` with
/// `member` and `member2`, then `admin` and `admin2` added as admins.
/// `outsider` is registered but in no conversation; `stranger` is not a
/// registered user at all.
#[derive(Debug, Clone)]
struct Cast {
    owner: UserId,
    admin: UserId,
    admin2: UserId,
    member: UserId,
    member2: UserId,
    outsider: UserId,
    stranger: UserId,
    group_id: ConversationId,
    /// A message `member` sent to the group.
    msg: MessageId,
    /// A message `member` sent to the group and later deleted.
    deleted_msg: MessageId,
    /// A message `member2` sent to the group.
    other_msg: MessageId,
}

impl Cast {
    fn new() -> Self {
        Self {
            owner: UserId::new_v7(),
            admin: UserId::new_v7(),
            admin2: UserId::new_v7(),
            member: UserId::new_v7(),
            member2: UserId::new_v7(),
            outsider: UserId::new_v7(),
            stranger: UserId::new_v7(),
            group_id: ConversationId::new_v7(),
            msg: MessageId::new_v7(),
            deleted_msg: MessageId::new_v7(),
            other_msg: MessageId::new_v7(),
        }
    }

    /// Every registered user (all but `stranger`).
    fn registered(&self) -> [UserId; 6] {
        [
            self.owner,
            self.admin,
            self.admin2,
            self.member,
            self.member2,
            self.outsider,
        ]
    }

    fn lookup(&self) -> FakeLookup {
        FakeLookup::with_users(self.registered())
            .with_message(self.group_id, self.msg, self.member, "m-1", false)
            .with_message(self.group_id, self.deleted_msg, self.member, "m-2", true)
            .with_message(self.group_id, self.other_msg, self.member2, "m-3", false)
    }

    fn services(&self) -> ConversationServices {
        self.services_with(Limits::default())
    }

    fn services_with(&self, limits: Limits) -> ConversationServices {
        ConversationServices {
            lookup: Arc::new(self.lookup()),
            limits,
        }
    }

    fn group_created(&self) -> ConversationEvent {
        E::ConversationCreated {
            conversation_id: self.group_id,
            kind: ConversationKind::Group,
            title: Some(title("Team")),
            created_by: self.owner,
            members: vec![
                MemberEntry {
                    user_id: self.owner,
                    role: Role::Owner,
                },
                MemberEntry {
                    user_id: self.member,
                    role: Role::Member,
                },
                MemberEntry {
                    user_id: self.member2,
                    role: Role::Member,
                },
            ],
        }
    }

    /// The group with five members: owner, two admins, two members.
    fn group(&self) -> Vec<ConversationEvent> {
        vec![
            self.group_created(),
            E::MemberAdded {
                user_id: self.admin,
                role: Role::Admin,
                added_by: self.owner,
            },
            E::MemberAdded {
                user_id: self.admin2,
                role: Role::Admin,
                added_by: self.owner,
            },
        ]
    }

    /// The direct conversation between `member` and `member2`.
    fn direct_id(&self) -> ConversationId {
        ConversationId::direct(self.member, self.member2)
    }

    fn direct_created(&self) -> ConversationEvent {
        let mut pair = [self.member, self.member2];
        pair.sort();
        E::ConversationCreated {
            conversation_id: self.direct_id(),
            kind: ConversationKind::Direct,
            title: None,
            created_by: self.member,
            members: pair
                .into_iter()
                .map(|user_id| MemberEntry {
                    user_id,
                    role: Role::Member,
                })
                .collect(),
        }
    }

    fn direct(&self) -> Vec<ConversationEvent> {
        vec![self.direct_created()]
    }

    fn send(&self, sender: UserId, message_id: MessageId, client_msg_id: &str) -> C {
        C::SendMessage {
            sender,
            message_id,
            client_msg_id: cmid(client_msg_id),
            body: body("hello"),
            sent_at: now(),
        }
    }
}

/// Runs `cmd` against the aggregate rebuilt from `given`.
async fn run(
    services: ConversationServices,
    given: Vec<ConversationEvent>,
    cmd: ConversationCommand,
) -> AggregateResultValidator<Conversation> {
    TestFramework::<Conversation>::with(services)
        .given(given)
        .when_async(cmd)
        .await
}

/// The aggregate state after `events`.
fn state(events: Vec<ConversationEvent>) -> Conversation {
    let mut c = Conversation::default();
    for e in events {
        c.apply(e);
    }
    c
}

// ---------------------------------------------------------------------------
// Create a group
// ---------------------------------------------------------------------------

#[tokio::test]
async fn create_group_makes_creator_owner_and_dedups_members() {
    let c = Cast::new();
    // Duplicates and the creator herself in the list are dropped.
    let listed = vec![c.member2, c.member, c.member2, c.owner, c.member];
    let mut others = vec![c.member, c.member2];
    others.sort();
    let mut members = vec![MemberEntry {
        user_id: c.owner,
        role: Role::Owner,
    }];
    members.extend(others.into_iter().map(|user_id| MemberEntry {
        user_id,
        role: Role::Member,
    }));
    run(
        c.services(),
        vec![],
        C::Create {
            conversation_id: c.group_id,
            creator: c.owner,
            new: NewConversation::Group {
                title: title("Team"),
                members: listed,
            },
        },
    )
    .await
    .then_expect_events(vec![E::ConversationCreated {
        conversation_id: c.group_id,
        kind: ConversationKind::Group,
        title: Some(title("Team")),
        created_by: c.owner,
        members,
    }]);
}

#[tokio::test]
async fn create_group_with_only_the_creator() {
    let c = Cast::new();
    run(
        c.services(),
        vec![],
        C::Create {
            conversation_id: c.group_id,
            creator: c.owner,
            new: NewConversation::Group {
                title: title("Notes to self"),
                members: vec![c.owner],
            },
        },
    )
    .await
    .then_expect_events(vec![E::ConversationCreated {
        conversation_id: c.group_id,
        kind: ConversationKind::Group,
        title: Some(title("Notes to self")),
        created_by: c.owner,
        members: vec![MemberEntry {
            user_id: c.owner,
            role: Role::Owner,
        }],
    }]);
}

#[tokio::test]
async fn create_group_with_unknown_users_is_refused() {
    let c = Cast::new();
    run(
        c.services(),
        vec![],
        C::Create {
            conversation_id: c.group_id,
            creator: c.owner,
            new: NewConversation::Group {
                title: title("Team"),
                members: vec![c.member, c.stranger],
            },
        },
    )
    .await
    .then_expect_error(Error::UnknownUsers(vec![c.stranger]));
}

#[tokio::test]
async fn create_group_by_unknown_creator_is_refused() {
    let c = Cast::new();
    run(
        c.services(),
        vec![],
        C::Create {
            conversation_id: c.group_id,
            creator: c.stranger,
            new: NewConversation::Group {
                title: title("Team"),
                members: vec![c.member],
            },
        },
    )
    .await
    .then_expect_error(Error::UnknownUsers(vec![c.stranger]));
}

#[tokio::test]
async fn create_group_counts_the_creator_against_the_limit() {
    let c = Cast::new();
    let limits = Limits {
        group_max_members: 3,
        ..Limits::default()
    };
    let create = |members: Vec<UserId>| C::Create {
        conversation_id: c.group_id,
        creator: c.owner,
        new: NewConversation::Group {
            title: title("Team"),
            members,
        },
    };
    // Creator + 3 others = 4 > 3.
    run(
        c.services_with(limits),
        vec![],
        create(vec![c.member, c.member2, c.admin]),
    )
    .await
    .then_expect_error(Error::GroupFull(3));
    // Creator + 2 others (the creator and duplicates listed do not count) = 3.
    let result = run(
        c.services_with(limits),
        vec![],
        create(vec![c.member, c.owner, c.member2, c.member]),
    )
    .await
    .inspect_result()
    .expect("a group of exactly the limit is allowed");
    assert_eq!(result.len(), 1);
}

#[tokio::test]
async fn create_group_that_exists_is_refused() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        C::Create {
            conversation_id: c.group_id,
            creator: c.owner,
            new: NewConversation::Group {
                title: title("Team"),
                members: vec![],
            },
        },
    )
    .await
    .then_expect_error(Error::AlreadyExists);
}

#[tokio::test]
async fn create_group_over_an_existing_direct_conversation_is_refused() {
    let c = Cast::new();
    run(
        c.services(),
        c.direct(),
        C::Create {
            conversation_id: c.direct_id(),
            creator: c.member,
            new: NewConversation::Group {
                title: title("Team"),
                members: vec![c.member2],
            },
        },
    )
    .await
    .then_expect_error(Error::AlreadyExists);
}

// ---------------------------------------------------------------------------
// Open a direct conversation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn open_direct_creates_it_with_both_users_as_members() {
    let c = Cast::new();
    run(
        c.services(),
        vec![],
        C::Create {
            conversation_id: c.direct_id(),
            creator: c.member,
            new: NewConversation::Direct { peer: c.member2 },
        },
    )
    .await
    .then_expect_events(c.direct());
}

#[tokio::test]
async fn open_direct_member_order_does_not_depend_on_who_opens() {
    let c = Cast::new();
    let events = run(
        c.services(),
        vec![],
        C::Create {
            conversation_id: c.direct_id(),
            creator: c.member2,
            new: NewConversation::Direct { peer: c.member },
        },
    )
    .await
    .inspect_result()
    .expect("opened");
    let [E::ConversationCreated {
        conversation_id,
        members,
        created_by,
        title,
        kind,
    }] = events.as_slice()
    else {
        panic!("expected one ConversationCreated, got {events:?}");
    };
    let E::ConversationCreated {
        members: expected, ..
    } = c.direct_created()
    else {
        unreachable!()
    };
    assert_eq!(*conversation_id, c.direct_id());
    assert_eq!(*created_by, c.member2);
    assert_eq!(*title, None);
    assert_eq!(*kind, ConversationKind::Direct);
    assert_eq!(*members, expected);
}

#[tokio::test]
async fn open_direct_with_self_is_refused() {
    let c = Cast::new();
    run(
        c.services(),
        vec![],
        C::Create {
            conversation_id: ConversationId::direct(c.member, c.member),
            creator: c.member,
            new: NewConversation::Direct { peer: c.member },
        },
    )
    .await
    .then_expect_error(Error::DirectWithSelf);
}

#[tokio::test]
async fn open_direct_with_a_mismatched_id_is_refused() {
    let c = Cast::new();
    for wrong in [
        ConversationId::new_v7(),
        ConversationId::direct(c.member, c.outsider),
    ] {
        run(
            c.services(),
            vec![],
            C::Create {
                conversation_id: wrong,
                creator: c.member,
                new: NewConversation::Direct { peer: c.member2 },
            },
        )
        .await
        .then_expect_error(Error::DirectIdMismatch);
    }
}

#[tokio::test]
async fn open_existing_direct_is_idempotent_from_either_side() {
    let c = Cast::new();
    for (creator, peer) in [(c.member, c.member2), (c.member2, c.member)] {
        run(
            c.services(),
            c.direct(),
            C::Create {
                conversation_id: c.direct_id(),
                creator,
                new: NewConversation::Direct { peer },
            },
        )
        .await
        .then_expect_events(vec![]);
    }
}

#[tokio::test]
async fn open_direct_with_unknown_peer_is_refused() {
    let c = Cast::new();
    run(
        c.services(),
        vec![],
        C::Create {
            conversation_id: ConversationId::direct(c.member, c.stranger),
            creator: c.member,
            new: NewConversation::Direct { peer: c.stranger },
        },
    )
    .await
    .then_expect_error(Error::UnknownUsers(vec![c.stranger]));
}

// ---------------------------------------------------------------------------
// Add a member
// ---------------------------------------------------------------------------

fn add(actor: UserId, user_id: UserId, role: Role) -> C {
    C::AddMember {
        actor,
        user_id,
        role,
    }
}

#[tokio::test]
async fn owner_adds_members_and_admins() {
    let c = Cast::new();
    for role in [Role::Member, Role::Admin] {
        run(c.services(), c.group(), add(c.owner, c.outsider, role))
            .await
            .then_expect_events(vec![E::MemberAdded {
                user_id: c.outsider,
                role,
                added_by: c.owner,
            }]);
    }
}

#[tokio::test]
async fn admin_adds_members_but_not_admins() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        add(c.admin, c.outsider, Role::Member),
    )
    .await
    .then_expect_events(vec![E::MemberAdded {
        user_id: c.outsider,
        role: Role::Member,
        added_by: c.admin,
    }]);
    run(
        c.services(),
        c.group(),
        add(c.admin, c.outsider, Role::Admin),
    )
    .await
    .then_expect_error(Error::Forbidden);
}

#[tokio::test]
async fn member_cannot_add() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        add(c.member, c.outsider, Role::Member),
    )
    .await
    .then_expect_error(Error::Forbidden);
}

#[tokio::test]
async fn non_member_cannot_add() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        add(c.outsider, c.outsider, Role::Member),
    )
    .await
    .then_expect_error(Error::NotAMember);
}

#[tokio::test]
async fn adding_an_existing_member_is_refused() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        add(c.owner, c.member, Role::Member),
    )
    .await
    .then_expect_error(Error::AlreadyMember(c.member));
}

#[tokio::test]
async fn adding_to_a_full_group_is_refused() {
    let c = Cast::new();
    // The group has five members.
    let full = Limits {
        group_max_members: 5,
        ..Limits::default()
    };
    run(
        c.services_with(full),
        c.group(),
        add(c.owner, c.outsider, Role::Member),
    )
    .await
    .then_expect_error(Error::GroupFull(5));
    let room_for_one = Limits {
        group_max_members: 6,
        ..Limits::default()
    };
    run(
        c.services_with(room_for_one),
        c.group(),
        add(c.owner, c.outsider, Role::Member),
    )
    .await
    .then_expect_events(vec![E::MemberAdded {
        user_id: c.outsider,
        role: Role::Member,
        added_by: c.owner,
    }]);
}

#[tokio::test]
async fn owner_role_cannot_be_given_by_adding() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        add(c.owner, c.outsider, Role::Owner),
    )
    .await
    .then_expect_error(Error::InvalidRole(Role::Owner));
}

#[tokio::test]
async fn adding_to_a_direct_conversation_is_refused() {
    let c = Cast::new();
    run(
        c.services(),
        c.direct(),
        add(c.member, c.outsider, Role::Member),
    )
    .await
    .then_expect_error(Error::DirectConversation);
}

#[tokio::test]
async fn adding_to_an_unknown_conversation_is_refused() {
    let c = Cast::new();
    run(c.services(), vec![], add(c.owner, c.outsider, Role::Member))
        .await
        .then_expect_error(Error::NotFound);
}

#[tokio::test]
async fn adding_an_unknown_user_is_refused() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        add(c.owner, c.stranger, Role::Member),
    )
    .await
    .then_expect_error(Error::UnknownUsers(vec![c.stranger]));
}

#[tokio::test]
async fn a_member_who_left_can_be_added_again() {
    let c = Cast::new();
    let mut given = c.group();
    given.push(E::MemberRemoved {
        user_id: c.member,
        removed_by: c.member,
    });
    run(c.services(), given, add(c.admin, c.member, Role::Member))
        .await
        .then_expect_events(vec![E::MemberAdded {
            user_id: c.member,
            role: Role::Member,
            added_by: c.admin,
        }]);
}

// ---------------------------------------------------------------------------
// Remove a member
// ---------------------------------------------------------------------------

fn remove(actor: UserId, user_id: UserId) -> C {
    C::RemoveMember { actor, user_id }
}

fn removed(user_id: UserId, removed_by: UserId) -> ConversationEvent {
    E::MemberRemoved {
        user_id,
        removed_by,
    }
}

#[tokio::test]
async fn members_and_admins_may_leave() {
    let c = Cast::new();
    for who in [c.member, c.admin] {
        run(c.services(), c.group(), remove(who, who))
            .await
            .then_expect_events(vec![removed(who, who)]);
    }
}

#[tokio::test]
async fn owner_cannot_leave() {
    let c = Cast::new();
    run(c.services(), c.group(), remove(c.owner, c.owner))
        .await
        .then_expect_error(Error::OwnerCannotLeave);
}

#[tokio::test]
async fn owner_removes_admins_and_members() {
    let c = Cast::new();
    for target in [c.admin, c.member] {
        run(c.services(), c.group(), remove(c.owner, target))
            .await
            .then_expect_events(vec![removed(target, c.owner)]);
    }
}

#[tokio::test]
async fn admin_removes_members_but_not_admins_or_the_owner() {
    let c = Cast::new();
    run(c.services(), c.group(), remove(c.admin, c.member))
        .await
        .then_expect_events(vec![removed(c.member, c.admin)]);
    for target in [c.admin2, c.owner] {
        run(c.services(), c.group(), remove(c.admin, target))
            .await
            .then_expect_error(Error::Forbidden);
    }
}

#[tokio::test]
async fn member_cannot_remove_anyone_else() {
    let c = Cast::new();
    for target in [c.member2, c.admin, c.owner] {
        run(c.services(), c.group(), remove(c.member, target))
            .await
            .then_expect_error(Error::Forbidden);
    }
}

#[tokio::test]
async fn removing_a_non_member_is_refused() {
    let c = Cast::new();
    run(c.services(), c.group(), remove(c.owner, c.outsider))
        .await
        .then_expect_error(Error::NotMember(c.outsider));
}

#[tokio::test]
async fn non_member_cannot_remove() {
    let c = Cast::new();
    run(c.services(), c.group(), remove(c.outsider, c.member))
        .await
        .then_expect_error(Error::NotAMember);
}

#[tokio::test]
async fn removing_from_a_direct_conversation_is_refused() {
    let c = Cast::new();
    for (actor, target) in [(c.member, c.member), (c.member, c.member2)] {
        run(c.services(), c.direct(), remove(actor, target))
            .await
            .then_expect_error(Error::DirectConversation);
    }
}

#[tokio::test]
async fn removing_from_an_unknown_conversation_is_refused() {
    let c = Cast::new();
    run(c.services(), vec![], remove(c.owner, c.member))
        .await
        .then_expect_error(Error::NotFound);
}

#[tokio::test]
async fn a_removed_member_can_no_longer_act() {
    let c = Cast::new();
    let mut given = c.group();
    given.push(removed(c.member, c.owner));
    run(
        c.services(),
        given.clone(),
        c.send(c.member, MessageId::new_v7(), "after-kick"),
    )
    .await
    .then_expect_error(Error::NotAMember);
    run(c.services(), given.clone(), remove(c.member, c.member))
        .await
        .then_expect_error(Error::NotAMember);
    run(
        c.services(),
        given,
        C::EditMessage {
            actor: c.member,
            message_id: c.msg,
            body: body("edited"),
            edited_at: now(),
        },
    )
    .await
    .then_expect_error(Error::NotAMember);
}

// ---------------------------------------------------------------------------
// Change a role
// ---------------------------------------------------------------------------

fn change(actor: UserId, user_id: UserId, role: Role) -> C {
    C::ChangeRole {
        actor,
        user_id,
        role,
    }
}

fn role_changed(user_id: UserId, role: Role, changed_by: UserId) -> ConversationEvent {
    E::MemberRoleChanged {
        user_id,
        role,
        changed_by,
    }
}

#[tokio::test]
async fn owner_promotes_and_demotes() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        change(c.owner, c.member, Role::Admin),
    )
    .await
    .then_expect_events(vec![role_changed(c.member, Role::Admin, c.owner)]);
    run(
        c.services(),
        c.group(),
        change(c.owner, c.admin, Role::Member),
    )
    .await
    .then_expect_events(vec![role_changed(c.admin, Role::Member, c.owner)]);
}

#[tokio::test]
async fn giving_owner_transfers_ownership() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        change(c.owner, c.member, Role::Owner),
    )
    .await
    .then_expect_events(vec![
        role_changed(c.member, Role::Owner, c.owner),
        role_changed(c.owner, Role::Admin, c.owner),
    ]);
}

#[tokio::test]
async fn after_a_transfer_the_old_owner_may_leave_and_the_new_one_may_not() {
    let c = Cast::new();
    let mut given = c.group();
    given.push(role_changed(c.member, Role::Owner, c.owner));
    given.push(role_changed(c.owner, Role::Admin, c.owner));
    let s = state(given.clone());
    assert_eq!(s.members[&c.member].role, Role::Owner);
    assert_eq!(s.members[&c.owner].role, Role::Admin);
    run(c.services(), given.clone(), remove(c.owner, c.owner))
        .await
        .then_expect_events(vec![removed(c.owner, c.owner)]);
    run(c.services(), given.clone(), remove(c.member, c.member))
        .await
        .then_expect_error(Error::OwnerCannotLeave);
    // The old owner, now an admin, can no longer change roles.
    run(c.services(), given, change(c.owner, c.member2, Role::Admin))
        .await
        .then_expect_error(Error::Forbidden);
}

#[tokio::test]
async fn only_the_owner_changes_roles() {
    let c = Cast::new();
    for actor in [c.admin, c.member] {
        run(
            c.services(),
            c.group(),
            change(actor, c.member2, Role::Admin),
        )
        .await
        .then_expect_error(Error::Forbidden);
    }
    run(
        c.services(),
        c.group(),
        change(c.outsider, c.member2, Role::Admin),
    )
    .await
    .then_expect_error(Error::NotAMember);
}

#[tokio::test]
async fn owner_cannot_change_own_role() {
    let c = Cast::new();
    for role in [Role::Admin, Role::Member, Role::Owner] {
        run(c.services(), c.group(), change(c.owner, c.owner, role))
            .await
            .then_expect_error(Error::InvalidRole(role));
    }
}

#[tokio::test]
async fn changing_to_the_same_role_emits_nothing() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        change(c.owner, c.admin, Role::Admin),
    )
    .await
    .then_expect_events(vec![]);
    run(
        c.services(),
        c.group(),
        change(c.owner, c.member, Role::Member),
    )
    .await
    .then_expect_events(vec![]);
}

#[tokio::test]
async fn changing_the_role_of_a_non_member_is_refused() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        change(c.owner, c.outsider, Role::Admin),
    )
    .await
    .then_expect_error(Error::NotMember(c.outsider));
}

#[tokio::test]
async fn roles_do_not_exist_in_direct_conversations() {
    let c = Cast::new();
    run(
        c.services(),
        c.direct(),
        change(c.member, c.member2, Role::Admin),
    )
    .await
    .then_expect_error(Error::DirectConversation);
}

#[tokio::test]
async fn changing_roles_in_an_unknown_conversation_is_refused() {
    let c = Cast::new();
    run(c.services(), vec![], change(c.owner, c.member, Role::Admin))
        .await
        .then_expect_error(Error::NotFound);
}

// ---------------------------------------------------------------------------
// Rename
// ---------------------------------------------------------------------------

fn rename(actor: UserId, t: &str) -> C {
    C::Rename {
        actor,
        title: title(t),
    }
}

#[tokio::test]
async fn owner_and_admins_rename() {
    let c = Cast::new();
    for actor in [c.owner, c.admin] {
        run(c.services(), c.group(), rename(actor, "New name"))
            .await
            .then_expect_events(vec![E::ConversationRenamed {
                title: title("New name"),
                renamed_by: actor,
            }]);
    }
}

#[tokio::test]
async fn members_and_outsiders_cannot_rename() {
    let c = Cast::new();
    run(c.services(), c.group(), rename(c.member, "Mine now"))
        .await
        .then_expect_error(Error::Forbidden);
    run(c.services(), c.group(), rename(c.outsider, "Mine now"))
        .await
        .then_expect_error(Error::NotAMember);
}

#[tokio::test]
async fn direct_conversations_have_no_title() {
    let c = Cast::new();
    run(c.services(), c.direct(), rename(c.member, "Us"))
        .await
        .then_expect_error(Error::DirectConversation);
}

#[tokio::test]
async fn renaming_an_unknown_conversation_is_refused() {
    let c = Cast::new();
    run(c.services(), vec![], rename(c.owner, "Ghost"))
        .await
        .then_expect_error(Error::NotFound);
}

// ---------------------------------------------------------------------------
// Send
// ---------------------------------------------------------------------------

fn sent(sender_id: UserId, message_id: MessageId, cmd: &C) -> ConversationEvent {
    let C::SendMessage {
        client_msg_id,
        body,
        sent_at,
        ..
    } = cmd.clone()
    else {
        unreachable!("sent() is given a SendMessage")
    };
    E::MessageSent {
        message_id,
        sender_id,
        body,
        client_msg_id,
        sent_at,
    }
}

#[tokio::test]
async fn every_member_of_a_group_may_send() {
    let c = Cast::new();
    for sender in [c.owner, c.admin, c.member] {
        let id = MessageId::new_v7();
        let cmd = c.send(sender, id, "fresh");
        let expected = sent(sender, id, &cmd);
        run(c.services(), c.group(), cmd)
            .await
            .then_expect_events(vec![expected]);
    }
}

#[tokio::test]
async fn both_members_of_a_direct_conversation_may_send() {
    let c = Cast::new();
    for sender in [c.member, c.member2] {
        let id = MessageId::new_v7();
        let cmd = c.send(sender, id, "fresh");
        let expected = sent(sender, id, &cmd);
        run(c.services(), c.direct(), cmd)
            .await
            .then_expect_events(vec![expected]);
    }
    run(
        c.services(),
        c.direct(),
        c.send(c.outsider, MessageId::new_v7(), "x"),
    )
    .await
    .then_expect_error(Error::NotAMember);
}

#[tokio::test]
async fn non_member_cannot_send() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        c.send(c.outsider, MessageId::new_v7(), "x"),
    )
    .await
    .then_expect_error(Error::NotAMember);
}

#[tokio::test]
async fn sending_to_an_unknown_conversation_is_refused() {
    let c = Cast::new();
    run(
        c.services(),
        vec![],
        c.send(c.member, MessageId::new_v7(), "x"),
    )
    .await
    .then_expect_error(Error::NotFound);
}

#[tokio::test]
async fn a_retried_send_emits_nothing() {
    let c = Cast::new();
    // "m-1" was already used by `member` in this group.
    run(
        c.services(),
        c.group(),
        c.send(c.member, MessageId::new_v7(), "m-1"),
    )
    .await
    .then_expect_events(vec![]);
}

#[tokio::test]
async fn client_msg_ids_are_scoped_to_the_sender() {
    let c = Cast::new();
    // "m-1" belongs to `member`; `member2` may use it too.
    let id = MessageId::new_v7();
    let cmd = c.send(c.member2, id, "m-1");
    let expected = sent(c.member2, id, &cmd);
    run(c.services(), c.group(), cmd)
        .await
        .then_expect_events(vec![expected]);
}

// ---------------------------------------------------------------------------
// Edit
// ---------------------------------------------------------------------------

fn edit(actor: UserId, message_id: MessageId, at: DateTime<Utc>) -> C {
    C::EditMessage {
        actor,
        message_id,
        body: body("  edited  "),
        edited_at: at,
    }
}

#[tokio::test]
async fn author_edits() {
    let c = Cast::new();
    let at = now();
    run(c.services(), c.group(), edit(c.member, c.msg, at))
        .await
        .then_expect_events(vec![E::MessageEdited {
            message_id: c.msg,
            body: body("edited"),
            edited_at: at,
        }]);
}

#[tokio::test]
async fn only_the_author_edits_whatever_their_role() {
    let c = Cast::new();
    for actor in [c.owner, c.admin, c.member2] {
        run(c.services(), c.group(), edit(actor, c.msg, now()))
            .await
            .then_expect_error(Error::NotAuthor);
    }
}

#[tokio::test]
async fn deleted_messages_cannot_be_edited() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        edit(c.member, c.deleted_msg, now()),
    )
    .await
    .then_expect_error(Error::MessageDeleted);
}

#[tokio::test]
async fn editing_an_unknown_message_is_refused() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        edit(c.member, MessageId::new_v7(), now()),
    )
    .await
    .then_expect_error(Error::MessageNotFound);
}

#[tokio::test]
async fn a_message_of_another_conversation_is_not_found() {
    let c = Cast::new();
    // `msg` lives in the group; `member` is also in the direct chat.
    run(c.services(), c.direct(), edit(c.member, c.msg, now()))
        .await
        .then_expect_error(Error::MessageNotFound);
    run(
        c.services(),
        c.direct(),
        C::DeleteMessage {
            actor: c.member,
            message_id: c.msg,
        },
    )
    .await
    .then_expect_error(Error::MessageNotFound);
}

#[tokio::test]
async fn editing_requires_membership_and_a_conversation() {
    let c = Cast::new();
    run(c.services(), c.group(), edit(c.outsider, c.msg, now()))
        .await
        .then_expect_error(Error::NotAMember);
    run(c.services(), vec![], edit(c.member, c.msg, now()))
        .await
        .then_expect_error(Error::NotFound);
}

// ---------------------------------------------------------------------------
// Delete
// ---------------------------------------------------------------------------

fn delete(actor: UserId, message_id: MessageId) -> C {
    C::DeleteMessage { actor, message_id }
}

fn deleted(message_id: MessageId, deleted_by: UserId) -> ConversationEvent {
    E::MessageDeleted {
        message_id,
        deleted_by,
    }
}

#[tokio::test]
async fn author_deletes() {
    let c = Cast::new();
    run(c.services(), c.group(), delete(c.member, c.msg))
        .await
        .then_expect_events(vec![deleted(c.msg, c.member)]);
}

#[tokio::test]
async fn owner_and_admins_delete_other_peoples_messages() {
    let c = Cast::new();
    for actor in [c.owner, c.admin] {
        run(c.services(), c.group(), delete(actor, c.msg))
            .await
            .then_expect_events(vec![deleted(c.msg, actor)]);
    }
}

#[tokio::test]
async fn members_cannot_delete_other_peoples_messages() {
    let c = Cast::new();
    run(c.services(), c.group(), delete(c.member2, c.msg))
        .await
        .then_expect_error(Error::Forbidden);
}

#[tokio::test]
async fn deleting_twice_emits_nothing() {
    let c = Cast::new();
    run(c.services(), c.group(), delete(c.member, c.deleted_msg))
        .await
        .then_expect_events(vec![]);
}

#[tokio::test]
async fn deleting_requires_a_known_message_membership_and_a_conversation() {
    let c = Cast::new();
    run(
        c.services(),
        c.group(),
        delete(c.member, MessageId::new_v7()),
    )
    .await
    .then_expect_error(Error::MessageNotFound);
    run(c.services(), c.group(), delete(c.outsider, c.msg))
        .await
        .then_expect_error(Error::NotAMember);
    run(c.services(), vec![], delete(c.member, c.msg))
        .await
        .then_expect_error(Error::NotFound);
}

// ---------------------------------------------------------------------------
// Lookup failures
// ---------------------------------------------------------------------------

#[tokio::test]
async fn lookup_failures_are_reported_not_swallowed() {
    let c = Cast::new();
    let broken = ConversationServices {
        lookup: Arc::new(BrokenLookup),
        limits: Limits::default(),
    };
    let cases = [
        (vec![], c.group_created_command()),
        (c.group(), add(c.owner, c.outsider, Role::Member)),
        (c.group(), c.send(c.member, MessageId::new_v7(), "x")),
        (c.group(), edit(c.member, c.msg, now())),
        (c.group(), delete(c.member, c.msg)),
    ];
    for (given, cmd) in cases {
        let result = run(broken.clone(), given, cmd.clone())
            .await
            .inspect_result();
        assert!(
            matches!(result, Err(Error::Lookup(_))),
            "{cmd:?} gave {result:?}"
        );
    }
}

impl Cast {
    fn group_created_command(&self) -> C {
        C::Create {
            conversation_id: self.group_id,
            creator: self.owner,
            new: NewConversation::Group {
                title: title("Team"),
                members: vec![self.member],
            },
        }
    }
}

// ---------------------------------------------------------------------------
// State (`apply`)
// ---------------------------------------------------------------------------

#[test]
fn apply_tracks_version_and_joined_seq() {
    let c = Cast::new();
    let history = vec![
        // 1
        c.group_created(),
        // 2
        E::MessageSent {
            message_id: c.msg,
            sender_id: c.member,
            body: body("hi"),
            client_msg_id: cmid("m-1"),
            sent_at: now(),
        },
        // 3
        E::MemberAdded {
            user_id: c.admin,
            role: Role::Admin,
            added_by: c.owner,
        },
        // 4: a role change keeps joined_seq
        role_changed(c.admin, Role::Member, c.owner),
        // 5
        removed(c.member, c.owner),
        // 6
        E::ConversationRenamed {
            title: title("Renamed"),
            renamed_by: c.owner,
        },
        // 7: re-joining starts a new membership
        E::MemberAdded {
            user_id: c.member,
            role: Role::Member,
            added_by: c.owner,
        },
        // 8, 9
        E::MessageEdited {
            message_id: c.msg,
            body: body("hi!"),
            edited_at: now(),
        },
        deleted(c.msg, c.member),
    ];
    let s = state(history);
    assert_eq!(s.version, 9);
    assert_eq!(s.id, Some(c.group_id));
    assert_eq!(s.kind, Some(ConversationKind::Group));
    let expected: BTreeMap<UserId, MemberState> = [
        (
            c.owner,
            MemberState {
                role: Role::Owner,
                joined_seq: 1,
            },
        ),
        (
            c.member2,
            MemberState {
                role: Role::Member,
                joined_seq: 1,
            },
        ),
        (
            c.admin,
            MemberState {
                role: Role::Member,
                joined_seq: 3,
            },
        ),
        (
            c.member,
            MemberState {
                role: Role::Member,
                joined_seq: 7,
            },
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(s.members, expected);
    assert!(s.is_member(c.member));
    assert!(!s.is_member(c.outsider));
}

#[test]
fn a_fresh_aggregate_is_empty() {
    let s = Conversation::default();
    assert_eq!(s.version, 0);
    assert_eq!(s.id, None);
    assert!(s.members.is_empty());
}

#[tokio::test]
async fn handle_applies_what_it_emits() {
    let c = Cast::new();
    let mut s = state(c.group());
    assert_eq!(s.version, 3);
    let sink = EventSink::<Conversation>::default();
    s.handle(change(c.owner, c.member, Role::Owner), &c.services(), &sink)
        .await
        .expect("transfer");
    assert_eq!(sink.collect().await.len(), 2);
    assert_eq!(s.version, 5);
    assert_eq!(s.members[&c.member].role, Role::Owner);
    assert_eq!(s.members[&c.owner].role, Role::Admin);
    // Role changes do not reset how long someone has been a member.
    assert_eq!(s.members[&c.member].joined_seq, 1);
    assert_eq!(s.members[&c.owner].joined_seq, 1);
}

// ---------------------------------------------------------------------------
// Event naming
// ---------------------------------------------------------------------------

#[test]
fn event_type_matches_the_encoded_name_and_types_list() {
    let c = Cast::new();
    let events = vec![
        c.group_created(),
        E::MemberAdded {
            user_id: c.admin,
            role: Role::Admin,
            added_by: c.owner,
        },
        removed(c.member, c.owner),
        role_changed(c.admin, Role::Member, c.owner),
        E::ConversationRenamed {
            title: title("x"),
            renamed_by: c.owner,
        },
        E::MessageSent {
            message_id: c.msg,
            sender_id: c.member,
            body: body("hi"),
            client_msg_id: cmid("m-1"),
            sent_at: now(),
        },
        E::MessageEdited {
            message_id: c.msg,
            body: body("hi!"),
            edited_at: now(),
        },
        deleted(c.msg, c.member),
    ];
    let names: Vec<String> = events.iter().map(DomainEvent::event_type).collect();
    assert_eq!(names, ConversationEvent::TYPES);
    for e in events {
        let (name, payload) = encode(&e).expect("encodes");
        assert_eq!(name, e.event_type());
        assert!(payload.is_object());
        let back = ConversationEvent::decode(&name, 1, payload).expect("decodes");
        assert_eq!(back, e);
    }
}

// ---------------------------------------------------------------------------
// Parsed values used by conversation commands
// ---------------------------------------------------------------------------

fn small_limits() -> Limits {
    Limits {
        body_max: 5,
        title_max: 4,
        ..Limits::default()
    }
}

#[test]
fn message_body_over_the_limit_is_refused() {
    let l = small_limits();
    assert_eq!(
        MessageBody::parse("123456", &l),
        Err(ValidationError::new("body", ValidationKind::TooLong(5)))
    );
    // Measured after trimming, in characters not bytes.
    assert!(MessageBody::parse("  ééééé  ", &l).is_ok());
    assert_eq!(
        MessageBody::parse(" \t\n ", &l),
        Err(ValidationError::new("body", ValidationKind::Empty))
    );
    let default = Limits::default();
    assert!(MessageBody::parse(&"a".repeat(default.body_max), &default).is_ok());
    assert_eq!(
        MessageBody::parse(&"a".repeat(default.body_max + 1), &default),
        Err(ValidationError::new(
            "body",
            ValidationKind::TooLong(default.body_max)
        ))
    );
}

#[test]
fn title_over_the_limit_or_with_control_characters_is_refused() {
    let l = small_limits();
    assert_eq!(
        Title::parse("12345", &l),
        Err(ValidationError::new("title", ValidationKind::TooLong(4)))
    );
    assert_eq!(
        Title::parse(" ab\u{7}c ", &l),
        Err(ValidationError::new(
            "title",
            ValidationKind::InvalidCharacters
        ))
    );
    assert_eq!(
        Title::parse("   ", &l),
        Err(ValidationError::new("title", ValidationKind::Empty))
    );
    assert_eq!(
        Title::parse("  Team  ", &l).map(|t| t.as_str().to_owned()),
        Ok("Team".to_owned())
    );
    let default = Limits::default();
    assert!(Title::parse(&"t".repeat(default.title_max), &default).is_ok());
    assert_eq!(
        Title::parse(&"t".repeat(default.title_max + 1), &default),
        Err(ValidationError::new(
            "title",
            ValidationKind::TooLong(default.title_max)
        ))
    );
}

#[test]
fn client_msg_id_rules() {
    let l = Limits::default();
    assert!(ClientMsgId::parse(&"k".repeat(64), &l).is_ok());
    assert_eq!(
        ClientMsgId::parse(&"k".repeat(65), &l),
        Err(ValidationError::new(
            "client_msg_id",
            ValidationKind::TooLong(64)
        ))
    );
    assert_eq!(
        ClientMsgId::parse("", &l),
        Err(ValidationError::new("client_msg_id", ValidationKind::Empty))
    );
    assert_eq!(
        ClientMsgId::parse("has space", &l),
        Err(ValidationError::new(
            "client_msg_id",
            ValidationKind::InvalidCharacters
        ))
    );
}
