//! What projections receive: the envelope of `schemas/` with its payload
//! upcast to the current version and decoded into the domain's event type.
//!
//! Decoding is where a record turns out to be poison: not an envelope at
//! all, an event type this build does not know, or a version newer than it
//! knows (a newer producer; we never guess at its meaning). Those come back
//! as [`Poison`] with a stable [`PoisonReason`] for the dead-letter topic.
//! Older versions are brought forward by [`Upcaster`]s registered in the
//! [`Decoder`], one step (N to N+1) at a time, before the typed decode.

use std::collections::HashMap;
use std::fmt;

use crate::conversation::ConversationEvent;
use crate::envelope::Envelope;
use crate::event::{DecodeError, EventTypes, CURRENT_VERSION};
use crate::read_marker::ReadMarkerEvent;
use crate::user::UserEvent;
use serde_json::Value;
use uuid::Uuid;

/// A domain event of any aggregate.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyEvent {
    User(UserEvent),
    Conversation(ConversationEvent),
    ReadMarker(ReadMarkerEvent),
}

/// One event as projections see it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    /// The envelope; `payload` and `event_version` are already upcast to the
    /// current version, `position` is the global position (always present
    /// on Kafka and for positioned rows of the store).
    pub envelope: Envelope<Value>,
    /// `envelope.aggregate_id` parsed (every stream id is a UUID).
    pub stream_id: Uuid,
    /// The payload as a typed domain event.
    pub event: AnyEvent,
}

impl DecodedEvent {
    /// `(aggregate_type, aggregate_id)`: the stream, the unit of ordering
    /// and of deduplication.
    pub fn stream(&self) -> (&str, &str) {
        (&self.envelope.aggregate_type, &self.envelope.aggregate_id)
    }

    /// Sequence of the event in its stream.
    pub fn sequence(&self) -> i64 {
        self.envelope.sequence
    }

    /// The conversation this event belongs to, if any: the stream itself for
    /// conversation events, the marked conversation for read markers.
    pub fn conversation_id(&self) -> Option<Uuid> {
        match &self.event {
            AnyEvent::Conversation(_) => Some(self.stream_id),
            AnyEvent::ReadMarker(ReadMarkerEvent::ReadMarkerMoved {
                conversation_id, ..
            }) => Some(conversation_id.0),
            AnyEvent::User(_) => None,
        }
    }
}

/// Why a record cannot be projected. The string forms are the values of the
/// dead-letter header `dlq_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoisonReason {
    /// Not a JSON envelope (bad JSON, missing fields, no value at all).
    Undecodable,
    /// An aggregate or event type this build does not know.
    UnknownEventType,
    /// A version newer than this build knows: a newer producer.
    NewerVersion,
    /// An older version with no upcaster to bring it forward.
    NoUpcaster,
    /// The payload does not match its event type's shape.
    BadPayload,
    /// A sequence gap that the event store cannot fill: the record does not
    /// belong to this platform's log.
    UnrepairableGap,
}

impl PoisonReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::UnknownEventType => "unknown_event_type",
            Self::NewerVersion => "newer_version",
            Self::NoUpcaster => "no_upcaster",
            Self::BadPayload => "bad_payload",
            Self::UnrepairableGap => "unrepairable_gap",
        }
    }
}

impl fmt::Display for PoisonReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record that cannot be projected, with a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Poison {
    pub reason: PoisonReason,
    pub detail: String,
}

impl Poison {
    pub fn new(reason: PoisonReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Brings a payload from version N to N+1 of its event type.
pub type Upcaster = fn(Value) -> Value;

/// The version of `event_type` this build understands. Every type is at v1
/// today (`domain::event::CURRENT_VERSION`); a type whose payload changes
/// gets its own number here together with an upcaster from the previous one.
pub fn current_version(_event_type: &str) -> u32 {
    CURRENT_VERSION
}

/// Turns envelopes into [`DecodedEvent`]s: upcasting, then typed decoding.
#[derive(Clone, Default)]
pub struct Decoder {
    upcasters: HashMap<(String, u32), Upcaster>,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut steps: Vec<_> = self.upcasters.keys().collect();
        steps.sort();
        f.debug_struct("Decoder")
            .field("upcasters", &steps)
            .finish()
    }
}

impl Decoder {
    /// The decoder of this build with every upcaster it ships. There are
    /// none yet: only v1 exists. Register them here as
    /// `.with_upcaster("MessageSent", 1, message_sent_v1_to_v2)`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the step from `from_version` to `from_version + 1` of `event_type`.
    pub fn with_upcaster(mut self, event_type: &str, from_version: u32, step: Upcaster) -> Self {
        self.upcasters
            .insert((event_type.to_owned(), from_version), step);
        self
    }

    /// Decodes a Kafka record value.
    pub fn decode_bytes(&self, value: &[u8]) -> Result<DecodedEvent, Poison> {
        let envelope: Envelope<Value> = serde_json::from_slice(value)
            .map_err(|e| Poison::new(PoisonReason::Undecodable, e.to_string()))?;
        self.decode(envelope)
    }

    /// Upcasts and decodes an envelope.
    pub fn decode(&self, mut envelope: Envelope<Value>) -> Result<DecodedEvent, Poison> {
        let stream_id = Uuid::parse_str(&envelope.aggregate_id).map_err(|_| {
            Poison::new(
                PoisonReason::Undecodable,
                format!("aggregate_id {:?} is not a UUID", envelope.aggregate_id),
            )
        })?;
        let known = match envelope.aggregate_type.as_str() {
            "user" => UserEvent::TYPES,
            "conversation" => ConversationEvent::TYPES,
            "read_marker" => ReadMarkerEvent::TYPES,
            other => {
                return Err(Poison::new(
                    PoisonReason::UnknownEventType,
                    format!("unknown aggregate type {other:?}"),
                ))
            }
        };
        let event_type = envelope.event_type.clone();
        if !known.contains(&event_type.as_str()) {
            return Err(Poison::new(
                PoisonReason::UnknownEventType,
                format!(
                    "unknown event type {event_type:?} of {}",
                    envelope.aggregate_type
                ),
            ));
        }
        let current = current_version(&event_type);
        if envelope.event_version > current {
            return Err(Poison::new(
                PoisonReason::NewerVersion,
                format!(
                    "{event_type} v{} is newer than v{current} known here",
                    envelope.event_version
                ),
            ));
        }
        while envelope.event_version < current {
            let Some(step) = self
                .upcasters
                .get(&(event_type.clone(), envelope.event_version))
            else {
                return Err(Poison::new(
                    PoisonReason::NoUpcaster,
                    format!("no upcaster from {event_type} v{}", envelope.event_version),
                ));
            };
            envelope.payload = step(std::mem::take(&mut envelope.payload));
            envelope.event_version += 1;
        }
        let payload = envelope.payload.clone();
        let version = envelope.event_version;
        let event = match envelope.aggregate_type.as_str() {
            "user" => UserEvent::decode(&event_type, version, payload).map(AnyEvent::User),
            "conversation" => {
                ConversationEvent::decode(&event_type, version, payload).map(AnyEvent::Conversation)
            }
            _ => ReadMarkerEvent::decode(&event_type, version, payload).map(AnyEvent::ReadMarker),
        }
        .map_err(|e| match e {
            DecodeError::UnknownType(_) => {
                Poison::new(PoisonReason::UnknownEventType, e.to_string())
            }
            DecodeError::NewerVersion { .. } => {
                Poison::new(PoisonReason::NewerVersion, e.to_string())
            }
            DecodeError::Payload { .. } => Poison::new(PoisonReason::BadPayload, e.to_string()),
        })?;
        Ok(DecodedEvent {
            envelope,
            stream_id,
            event,
        })
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_pass_by_value
)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(aggregate_type: &str, event_type: &str, version: u32, payload: Value) -> Value {
        json!({
            "event_id": Uuid::now_v7(),
            "aggregate_type": aggregate_type,
            "aggregate_id": Uuid::now_v7(),
            "sequence": 2,
            "event_type": event_type,
            "event_version": version,
            "occurred_at": "2026-11-24T10:00:00Z",
            "actor": Uuid::now_v7(),
            "correlation_id": Uuid::now_v7(),
            "causation_id": null,
            "position": 7,
            "payload": payload,
        })
    }

    fn sent(body_field: &str) -> Value {
        json!({
            "message_id": Uuid::now_v7(),
            "sender_id": Uuid::now_v7(),
            body_field: "hello",
            "client_msg_id": "c1",
            "sent_at": "2026-11-24T10:00:00Z",
        })
    }

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    #[test]
    fn current_events_decode() {
        let e = Decoder::new()
            .decode_bytes(&bytes(&envelope(
                "conversation",
                "MessageSent",
                1,
                sent("body"),
            )))
            .unwrap();
        assert_eq!(e.envelope.position, Some(7));
        assert!(matches!(
            e.event,
            AnyEvent::Conversation(ConversationEvent::MessageSent { .. })
        ));
        assert_eq!(e.conversation_id(), Some(e.stream_id));
    }

    #[test]
    fn poison_is_classified() {
        let d = Decoder::new();
        let reason = |v: &[u8]| d.decode_bytes(v).unwrap_err().reason;
        assert_eq!(reason(b"{not json"), PoisonReason::Undecodable);
        assert_eq!(reason(b"{\"event_id\":1}"), PoisonReason::Undecodable);
        assert_eq!(
            reason(&bytes(&envelope(
                "conversation",
                "Teleported",
                1,
                json!({})
            ))),
            PoisonReason::UnknownEventType
        );
        assert_eq!(
            reason(&bytes(&envelope(
                "spaceship",
                "MessageSent",
                1,
                sent("body")
            ))),
            PoisonReason::UnknownEventType
        );
        assert_eq!(
            reason(&bytes(&envelope(
                "conversation",
                "MessageSent",
                99,
                sent("body")
            ))),
            PoisonReason::NewerVersion
        );
        assert_eq!(
            reason(&bytes(&envelope(
                "conversation",
                "MessageSent",
                1,
                json!({"x": 1})
            ))),
            PoisonReason::BadPayload
        );
        assert_eq!(
            reason(&bytes(&envelope(
                "conversation",
                "MessageSent",
                0,
                sent("text")
            ))),
            PoisonReason::NoUpcaster
        );
    }

    /// The upcasting hook: a (hypothetical) v0 of MessageSent called the
    /// body `text`; an upcaster renames it and the event decodes as v1.
    #[test]
    fn older_versions_are_upcast_before_decoding() {
        fn v0_to_v1(mut payload: Value) -> Value {
            if let Some(map) = payload.as_object_mut() {
                if let Some(text) = map.remove("text") {
                    map.insert("body".into(), text);
                }
            }
            payload
        }
        let d = Decoder::new().with_upcaster("MessageSent", 0, v0_to_v1);
        let e = d
            .decode_bytes(&bytes(&envelope(
                "conversation",
                "MessageSent",
                0,
                sent("text"),
            )))
            .unwrap();
        assert_eq!(e.envelope.event_version, 1);
        assert_eq!(e.envelope.payload["body"], "hello");
        let AnyEvent::Conversation(ConversationEvent::MessageSent { body, .. }) = e.event else {
            panic!("not a MessageSent: {:?}", e.event);
        };
        assert_eq!(body.as_str(), "hello");
        // The hook does not touch other types or current versions.
        assert!(d
            .decode_bytes(&bytes(&envelope(
                "conversation",
                "MessageSent",
                1,
                sent("body")
            )))
            .is_ok());
    }
}
