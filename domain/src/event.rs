//! Event naming and payload encoding shared by every aggregate.
//!
//! Events are Rust enums; in the store and on Kafka an event is the pair
//! (`event_type` = the variant name, `payload` = the variant's fields) so the
//! payload carries no enum wrapper and each type has its own JSON Schema.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// The current version of every event type. Bump per type when its payload
/// changes incompatibly, and add an upcaster for the old one.
pub const CURRENT_VERSION: u32 = 1;

/// Why a stored event could not be turned back into a domain event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0}")]
    UnknownType(String),
    #[error("event {event_type} has version {version}, newer than {known} known here")]
    NewerVersion {
        event_type: String,
        version: u32,
        known: u32,
    },
    #[error("payload of {event_type} does not match its type: {source}")]
    Payload {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Splits an externally tagged enum value into (variant name, fields).
pub fn encode<E: Serialize>(event: &E) -> Result<(String, Value), serde_json::Error> {
    match serde_json::to_value(event)? {
        Value::Object(map) if map.len() == 1 => {
            let (k, v) = map.into_iter().next().unwrap_or_default();
            Ok((k, v))
        }
        // Unit variants serialise as a bare string.
        Value::String(name) => Ok((name, Value::Object(Default::default()))),
        other => Err(serde::ser::Error::custom(format!(
            "event did not serialise as a tagged enum: {other}"
        ))),
    }
}

/// Rebuilds an event from (type, version, payload); `known_types` lists the
/// variants so an unknown type is reported as such rather than as a payload
/// error. Versions older than current would be upcast here.
pub fn decode<E: DeserializeOwned>(
    known_types: &[&str],
    event_type: &str,
    version: u32,
    payload: Value,
) -> Result<E, DecodeError> {
    if !known_types.contains(&event_type) {
        return Err(DecodeError::UnknownType(event_type.to_owned()));
    }
    if version > CURRENT_VERSION {
        return Err(DecodeError::NewerVersion {
            event_type: event_type.to_owned(),
            version,
            known: CURRENT_VERSION,
        });
    }
    let mut map = serde_json::Map::with_capacity(1);
    map.insert(event_type.to_owned(), payload);
    serde_json::from_value(Value::Object(map)).map_err(|source| DecodeError::Payload {
        event_type: event_type.to_owned(),
        source,
    })
}

/// An aggregate event type that knows all its variant names (for decoding,
/// schema coverage tests and documentation).
pub trait EventTypes: Serialize + DeserializeOwned {
    /// Every variant name, i.e. every `event_type` this enum can produce.
    const TYPES: &'static [&'static str];

    fn decode(event_type: &str, version: u32, payload: Value) -> Result<Self, DecodeError> {
        decode(Self::TYPES, event_type, version, payload)
    }
}
