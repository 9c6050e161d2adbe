//! JSON Schemas (draft 2020-12) of the Kafka envelope and of every event type
//! and version Messenger has ever published.
//!
//! The schemas are the contract between the command side, which writes
//! events, and every consumer (projector, notifier, gateway, auditors, and
//! anything outside this repository). They are plain JSON files, so tools in
//! any language can use them; this crate embeds them with `include_str!` so
//! Rust code and tests can reach them without touching the file system.
//!
//! # Layout
//!
//! ```text
//! schemas/
//!   envelope.v1.schema.json                         the Kafka envelope
//!   events/<aggregate_type>/<EventType>.v<N>.schema.json
//!                                                   one payload, one version
//!   ws/event-frame.v1.schema.json                   the WebSocket event frame
//!   tests/events_match_schemas.rs                   the domain agrees with them
//! ```
//!
//! - `<aggregate_type>` is the envelope's `aggregate_type` (`user`,
//!   `conversation`, `read_marker`), `<EventType>` its `event_type` (the
//!   variant name of the domain's event enum) and `<N>` its `event_version`.
//! - A payload schema describes the variant's fields only, without the enum
//!   wrapper (see `domain::event::encode`), and refuses unknown properties.
//! - Each file's `$id` is
//!   `https://messenger.example/schemas/<path of the file>`, and its
//!   `description` says what the event means.
//!
//! # Versioning rules
//!
//! 1. A published schema file is never edited (typos in a `description`
//!    aside). Anything a consumer could notice, such as a new required field,
//!    a renamed or retyped field or a narrowed enum, is a new version: a new
//!    file `<EventType>.v<N+1>.schema.json`, a new entry in [`ALL`], and the
//!    event's `event_version` bumped in the domain.
//! 2. Old files stay, because old events stay in the log and on Kafka forever.
//! 3. Consumers accept every version they may meet by *upcasting*: an old
//!    payload is transformed into the current shape before it is decoded
//!    (`domain::event::decode` is where upcasters hook in). A consumer that
//!    meets a version newer than it knows stops and reports, it never guesses.
//! 4. A new event type starts at `v1`, with its schema added in the same
//!    change as the variant; the test `tests/events_match_schemas.rs` fails
//!    if a variant has no schema or a schema has no variant.
//!
//! The envelope follows the same rules; it is at version 1.

/// A schema entry: (`aggregate_type`, `event_type`, `event_version`, schema JSON).
pub type SchemaEntry = (&'static str, &'static str, u32, &'static str);

/// Builds one [`SchemaEntry`] from its coordinates, embedding the file they name.
macro_rules! event_schema {
    ($aggregate:literal, $event:literal, $version:literal) => {
        (
            $aggregate,
            $event,
            $version,
            include_str!(concat!(
                "../events/",
                $aggregate,
                "/",
                $event,
                ".v",
                $version,
                ".schema.json"
            )),
        )
    };
}

/// Every event schema, one entry per (aggregate type, event type, version).
/// Grouped by aggregate, in the order of the domain's `EventTypes::TYPES`.
pub const ALL: &[SchemaEntry] = &[
    // user
    event_schema!("user", "UserRegistered", 1),
    event_schema!("user", "PasswordChanged", 1),
    event_schema!("user", "PasswordResetRequested", 1),
    event_schema!("user", "DisplayNameChanged", 1),
    event_schema!("user", "RoleGranted", 1),
    event_schema!("user", "RoleRevoked", 1),
    // conversation
    event_schema!("conversation", "ConversationCreated", 1),
    event_schema!("conversation", "MemberAdded", 1),
    event_schema!("conversation", "MemberRemoved", 1),
    event_schema!("conversation", "MemberRoleChanged", 1),
    event_schema!("conversation", "ConversationRenamed", 1),
    event_schema!("conversation", "MessageSent", 1),
    event_schema!("conversation", "MessageEdited", 1),
    event_schema!("conversation", "MessageDeleted", 1),
    // read_marker
    event_schema!("read_marker", "ReadMarkerMoved", 1),
];

/// The current version of the envelope schema.
pub const ENVELOPE_VERSION: u32 = 1;

const ENVELOPE_V1: &str = include_str!("../envelope.v1.schema.json");

/// The JSON Schema of the Kafka envelope (version [`ENVELOPE_VERSION`]).
pub fn envelope_schema() -> &'static str {
    ENVELOPE_V1
}

const EVENT_FRAME_V1: &str = include_str!("../ws/event-frame.v1.schema.json");

/// The JSON Schema of API.md's WebSocket `event` frame
/// (`domain::frame::EventFrame`).
pub fn event_frame_schema() -> &'static str {
    EVENT_FRAME_V1
}

/// The JSON Schema of one event payload, or `None` if that aggregate type,
/// event type and version was never defined.
pub fn event_schema(aggregate_type: &str, event_type: &str, version: u32) -> Option<&'static str> {
    ALL.iter()
        .find(|(a, e, v, _)| *a == aggregate_type && *e == event_type && *v == version)
        .map(|(_, _, _, schema)| *schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_known_schemas_only() {
        assert!(event_schema("conversation", "MessageSent", 1).is_some());
        assert!(event_schema("conversation", "MessageSent", 2).is_none());
        assert!(event_schema("user", "MessageSent", 1).is_none());
        assert!(event_schema("conversation", "Nope", 1).is_none());
    }

    #[test]
    fn every_schema_is_json_naming_its_own_path() {
        for (aggregate, event, version, schema) in ALL {
            let value: serde_json::Value = match serde_json::from_str(schema) {
                Ok(v) => v,
                Err(e) => panic!("{aggregate}/{event} v{version} is not JSON: {e}"),
            };
            let id = format!(
                "https://messenger.example/schemas/events/{aggregate}/{event}.v{version}.schema.json"
            );
            assert_eq!(value["$id"], serde_json::Value::String(id));
        }
        let envelope: serde_json::Value =
            serde_json::from_str(envelope_schema()).unwrap_or_default();
        assert_eq!(
            envelope["$id"],
            "https://messenger.example/schemas/envelope.v1.schema.json"
        );
    }

    #[test]
    fn entries_are_unique() {
        for (i, (a, e, v, _)) in ALL.iter().enumerate() {
            assert!(
                !ALL[i + 1..]
                    .iter()
                    .any(|(a2, e2, v2, _)| a == a2 && e == e2 && v == v2),
                "{a}/{e} v{v} is listed twice"
            );
        }
    }
}
