//! API.md's WebSocket `event` frame, the one definition of its shape:
//! written live over Redis pub/sub (routed by [`LiveRoute`]: conversation
//! channels by command-service's relay, users' own channels by the
//! projector) and by query-service (replay), read by the gateway, and
//! described by `schemas/ws/event-frame.v1.schema.json`.
//!
//! ```json
//! {"type":"event","cursor":"<global position>","event":{"event_id":…,
//!  "event_type":…,"event_version":…,"conversation_id":…,"seq":…,
//!  "occurred_at":…,"actor":…,"data":{…}}}
//! ```
//!
//! The strings borrow where they can, so the gateway reads a frame without
//! copying, and `data` is generic: writers put the payload in, the gateway
//! reads only the field it routes by.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Envelope;

/// The frame's `type`: always `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventTag {
    /// `"event"`.
    Event,
}

/// `{"type":"event","cursor":…,"event":…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame<'a, D> {
    /// Always [`EventTag::Event`].
    #[serde(rename = "type")]
    pub kind: EventTag,
    /// The event's global position, as a decimal string (a resume cursor).
    pub cursor: String,
    /// The event.
    #[serde(borrow)]
    pub event: FrameEvent<'a, D>,
}

/// The `event` object of an [`EventFrame`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameEvent<'a, D> {
    pub event_id: Uuid,
    #[serde(borrow)]
    pub event_type: Cow<'a, str>,
    pub event_version: u32,
    /// The conversation the event belongs to (its stream, or the
    /// conversation of a read marker).
    #[serde(borrow)]
    pub conversation_id: Cow<'a, str>,
    /// The event's sequence in its stream.
    pub seq: i64,
    pub occurred_at: DateTime<Utc>,
    #[serde(borrow)]
    pub actor: Cow<'a, str>,
    /// The payload.
    pub data: D,
}

impl<'a, D> EventFrame<'a, D> {
    /// The frame of `envelope` (which must carry its global `position`) in
    /// `conversation_id`, with `data` as the payload; `None` without a
    /// position.
    pub fn of<P>(envelope: &'a Envelope<P>, conversation_id: &'a str, data: D) -> Option<Self> {
        Some(Self {
            kind: EventTag::Event,
            cursor: envelope.position?.to_string(),
            event: FrameEvent {
                event_id: envelope.event_id,
                event_type: Cow::Borrowed(&envelope.event_type),
                event_version: envelope.event_version,
                conversation_id: Cow::Borrowed(conversation_id),
                seq: envelope.sequence,
                occurred_at: envelope.occurred_at,
                actor: Cow::Borrowed(&envelope.actor),
                data,
            },
        })
    }

    /// The cursor as a position; `None` if it is not a number.
    pub fn position(&self) -> Option<i64> {
        self.cursor.parse().ok()
    }
}

impl<D: Serialize> EventFrame<'_, D> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serialising plain data (strings, numbers, a JSON payload) into a
        // String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where the live frame of an event goes (Redis channels, `infra::keys`),
/// and the frame itself: the one routing rule of the live path.
///
/// - Every conversation event: the conversation's channel.
/// - `ConversationCreated`: also the channel of every initial member;
///   `MemberAdded` / `MemberRemoved`: also the channel of the user concerned
///   (so a gateway can (un)subscribe that user's sockets first).
/// - `ReadMarkerMoved`: the reader's own channel only (their other devices
///   update unread badges). Its `seq` is the read-marker stream's, not the
///   conversation's: clients route it by `event_type` and leave it out of
///   gap detection.
/// - User events: nothing (no client-visible frame in API.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRoute {
    /// The frame as JSON text.
    pub frame: String,
    /// The conversation of the event.
    pub conversation_id: Uuid,
    /// Whether the frame goes to the conversation's channel.
    pub to_conversation: bool,
    /// The users whose own channel gets the frame, in this order.
    pub to_users: Vec<Uuid>,
}

impl LiveRoute {
    /// The route of `event`, or `None` for events without a live frame
    /// (user events, and events without a global position).
    pub fn of(event: &crate::decode::DecodedEvent) -> Option<Self> {
        use crate::conversation::ConversationEvent;
        use crate::decode::AnyEvent;
        let conversation_id = event.conversation_id()?;
        let conv = conversation_id.to_string();
        let e = &event.envelope;
        let frame = EventFrame::of(e, &conv, &e.payload)?.to_json();
        let (to_conversation, to_users) = match &event.event {
            AnyEvent::Conversation(c) => (
                true,
                match c {
                    ConversationEvent::ConversationCreated { members, .. } => {
                        members.iter().map(|m| m.user_id.0).collect()
                    }
                    ConversationEvent::MemberAdded { user_id, .. }
                    | ConversationEvent::MemberRemoved { user_id, .. } => vec![user_id.0],
                    _ => Vec::new(),
                },
            ),
            AnyEvent::ReadMarker(crate::read_marker::ReadMarkerEvent::ReadMarkerMoved {
                user_id,
                ..
            }) => (false, vec![user_id.0]),
            AnyEvent::User(_) => return None,
        };
        Some(Self {
            frame,
            conversation_id,
            to_conversation,
            to_users,
        })
    }

    /// The conversation's sequence this frame advances, for the read fence:
    /// the event's own sequence for conversation events, `None` for read
    /// markers (their sequence belongs to another stream).
    pub fn conversation_seq(&self, event: &crate::decode::DecodedEvent) -> Option<i64> {
        self.to_conversation.then_some(event.sequence())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn round_trips_with_borrowed_strings_and_a_partial_payload() {
        let envelope = Envelope {
            event_id: Uuid::now_v7(),
            aggregate_type: "conversation".into(),
            aggregate_id: Uuid::now_v7().to_string(),
            sequence: 7,
            event_type: "MemberAdded".into(),
            event_version: 1,
            occurred_at: Utc::now(),
            actor: "system".into(),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            position: Some(42),
            payload: json!({"user_id": "u1", "role": "member"}),
        };
        let frame = EventFrame::of(&envelope, &envelope.aggregate_id, &envelope.payload).unwrap();
        let text = frame.to_json();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["cursor"], "42");
        assert_eq!(v["event"]["seq"], 7);
        assert_eq!(v["event"]["data"]["role"], "member");

        #[derive(Deserialize)]
        struct Subject {
            user_id: Option<String>,
        }
        let read: EventFrame<'_, Subject> = serde_json::from_str(&text).unwrap();
        assert_eq!(read.position(), Some(42));
        assert!(matches!(
            read.event.event_type,
            Cow::Borrowed("MemberAdded")
        ));
        assert_eq!(read.event.data.user_id.as_deref(), Some("u1"));
        assert!(serde_json::from_str::<EventFrame<'_, Value>>(
            &text.replace("\"type\":\"event\"", "\"type\":\"typing\"")
        )
        .is_err());
        let no_position = Envelope {
            position: None,
            ..envelope.clone()
        };
        assert!(EventFrame::of(&no_position, "c", ()).is_none());
    }

    fn decoded(
        aggregate_type: &str,
        stream: Uuid,
        event_type: &str,
        payload: &Value,
    ) -> crate::decode::DecodedEvent {
        let record = json!({
            "event_id": Uuid::now_v7(),
            "aggregate_type": aggregate_type,
            "aggregate_id": stream,
            "sequence": 5,
            "event_type": event_type,
            "event_version": 1,
            "occurred_at": "2026-11-24T10:00:00Z",
            "actor": Uuid::now_v7(),
            "correlation_id": Uuid::now_v7(),
            "causation_id": null,
            "position": 42,
            "payload": payload,
        });
        crate::decode::Decoder::new()
            .decode_bytes(record.to_string().as_bytes())
            .unwrap()
    }

    #[test]
    fn a_message_goes_to_its_conversation_in_the_api_shape() {
        let conv = Uuid::now_v7();
        let payload = json!({
            "message_id": Uuid::now_v7(),
            "sender_id": Uuid::now_v7(),
            "body": "hi",
            "client_msg_id": "c1",
            "sent_at": "2026-11-24T10:00:00Z"
        });
        let e = decoded("conversation", conv, "MessageSent", &payload);
        let route = LiveRoute::of(&e).unwrap();
        assert_eq!(route.conversation_id, conv);
        assert!(route.to_conversation);
        assert!(route.to_users.is_empty());
        assert_eq!(route.conversation_seq(&e), Some(5));
        let f: Value = serde_json::from_str(&route.frame).unwrap();
        assert_eq!(f["type"], "event");
        assert_eq!(f["cursor"], "42");
        assert_eq!(f["event"]["conversation_id"], conv.to_string());
        assert_eq!(f["event"]["seq"], 5);
        assert_eq!(f["event"]["event_type"], "MessageSent");
        assert_eq!(f["event"]["event_version"], 1);
        assert_eq!(f["event"]["actor"], e.envelope.actor.as_str());
        assert_eq!(f["event"]["occurred_at"], "2026-11-24T10:00:00Z");
        assert_eq!(f["event"]["data"], payload);
        let keys: Vec<&str> = f["event"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys.len(),
            8,
            "event_id, event_type, event_version, conversation_id, seq, occurred_at, actor, data: {keys:?}"
        );
    }

    #[test]
    fn membership_frames_also_reach_the_users_concerned_and_markers_only_the_reader() {
        let conv = Uuid::now_v7();
        let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let created = decoded(
            "conversation",
            conv,
            "ConversationCreated",
            &json!({"conversation_id": conv, "kind": "group", "title": "t", "created_by": ann,
                   "members": [{"user_id": ann, "role": "owner"}, {"user_id": bob, "role": "member"}]}),
        );
        let route = LiveRoute::of(&created).unwrap();
        assert!(route.to_conversation);
        assert_eq!(route.to_users, vec![ann, bob]);
        let added = decoded(
            "conversation",
            conv,
            "MemberAdded",
            &json!({"user_id": bob, "role": "member", "added_by": ann}),
        );
        assert_eq!(LiveRoute::of(&added).unwrap().to_users, vec![bob]);
        let marker = decoded(
            "read_marker",
            Uuid::now_v7(),
            "ReadMarkerMoved",
            &json!({"conversation_id": conv, "user_id": bob, "seq": 3}),
        );
        let route = LiveRoute::of(&marker).unwrap();
        assert_eq!(route.conversation_id, conv);
        assert!(!route.to_conversation);
        assert_eq!(route.to_users, vec![bob]);
        assert_eq!(route.conversation_seq(&marker), None);
    }
}
