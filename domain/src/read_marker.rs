//! `ReadMarker`: how far one member has read one conversation. A stream of
//! its own per (conversation, member), so marking read never contends with
//! the conversation's message sends.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::event::{EventTypes, CURRENT_VERSION};
use crate::values::{ConversationId, UserId};

/// Facts about the conversation at the time of the command, read by the
/// service from the conversation aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationFacts {
    pub exists: bool,
    pub is_member: bool,
    /// The conversation stream's last sequence.
    pub last_seq: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReadMarkerCommand {
    /// Move the marker to `seq`; markers only move forward.
    Move {
        conversation_id: ConversationId,
        user_id: UserId,
        seq: i64,
        facts: ConversationFacts,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReadMarkerEvent {
    ReadMarkerMoved {
        conversation_id: ConversationId,
        user_id: UserId,
        seq: i64,
    },
}

impl EventTypes for ReadMarkerEvent {
    const TYPES: &'static [&'static str] = &["ReadMarkerMoved"];
}

impl DomainEvent for ReadMarkerEvent {
    fn event_type(&self) -> String {
        "ReadMarkerMoved".to_owned()
    }

    fn event_version(&self) -> String {
        CURRENT_VERSION.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadMarkerError {
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("the caller is not a member of this conversation")]
    NotAMember,
    #[error("sequence {seq} is outside 1..={last}")]
    SeqOutOfRange { seq: i64, last: i64 },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadMarker {
    pub seq: i64,
}

impl Aggregate for ReadMarker {
    const TYPE: &'static str = "read_marker";
    type Command = ReadMarkerCommand;
    type Event = ReadMarkerEvent;
    type Error = ReadMarkerError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let ReadMarkerCommand::Move {
            conversation_id,
            user_id,
            seq,
            facts,
        } = command;
        if !facts.exists {
            return Err(ReadMarkerError::ConversationNotFound);
        }
        if !facts.is_member {
            return Err(ReadMarkerError::NotAMember);
        }
        if seq < 1 || seq > facts.last_seq {
            return Err(ReadMarkerError::SeqOutOfRange {
                seq,
                last: facts.last_seq,
            });
        }
        if seq <= self.seq {
            return Ok(());
        }
        sink.write(
            ReadMarkerEvent::ReadMarkerMoved {
                conversation_id,
                user_id,
                seq,
            },
            self,
        )
        .await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let ReadMarkerEvent::ReadMarkerMoved { seq, .. } = event;
        self.seq = seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn cmd(seq: i64, facts: ConversationFacts) -> (ReadMarkerCommand, ReadMarkerEvent) {
        let c = ConversationId::new_v7();
        let u = UserId::new_v7();
        (
            ReadMarkerCommand::Move {
                conversation_id: c,
                user_id: u,
                seq,
                facts,
            },
            ReadMarkerEvent::ReadMarkerMoved {
                conversation_id: c,
                user_id: u,
                seq,
            },
        )
    }

    const MEMBER: ConversationFacts = ConversationFacts {
        exists: true,
        is_member: true,
        last_seq: 10,
    };

    #[test]
    fn moves_forward() {
        let (c, e) = cmd(5, MEMBER);
        TestFramework::<ReadMarker>::with(())
            .given_no_previous_events()
            .when(c)
            .then_expect_events(vec![e]);
    }

    #[test]
    fn never_moves_back() {
        let (c, _) = cmd(3, MEMBER);
        let (_, earlier) = cmd(5, MEMBER);
        TestFramework::<ReadMarker>::with(())
            .given(vec![earlier])
            .when(c)
            .then_expect_events(vec![]);
    }

    #[test]
    fn refuses_non_members_unknown_conversations_and_bad_seqs() {
        let (c, _) = cmd(
            5,
            ConversationFacts {
                is_member: false,
                ..MEMBER
            },
        );
        TestFramework::<ReadMarker>::with(())
            .given_no_previous_events()
            .when(c)
            .then_expect_error(ReadMarkerError::NotAMember);
        let (c, _) = cmd(
            5,
            ConversationFacts {
                exists: false,
                is_member: false,
                last_seq: 0,
            },
        );
        TestFramework::<ReadMarker>::with(())
            .given_no_previous_events()
            .when(c)
            .then_expect_error(ReadMarkerError::ConversationNotFound);
        let (c, _) = cmd(11, MEMBER);
        TestFramework::<ReadMarker>::with(())
            .given_no_previous_events()
            .when(c)
            .then_expect_error(ReadMarkerError::SeqOutOfRange { seq: 11, last: 10 });
        let (c, _) = cmd(0, MEMBER);
        TestFramework::<ReadMarker>::with(())
            .given_no_previous_events()
            .when(c)
            .then_expect_error(ReadMarkerError::SeqOutOfRange { seq: 0, last: 10 });
    }
}
