//! API.md's WebSocket `event` frame, the one definition of its shape:
//! written by the projector (live, over Redis pub/sub) and by query-service
//! (replay), read by the gateway, and described by
//! `schemas/ws/event-frame.v1.schema.json`.
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
}
