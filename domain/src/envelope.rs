//! The envelope every event travels in on Kafka and in the audit API.
//! Documented by `schemas/envelope.v1.schema.json`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One event as published. `P` is the payload: `serde_json::Value`, a raw
/// JSON slice (to forward without re-encoding), or a typed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P> {
    /// Unique id of this event (UUIDv7), stable across redeliveries.
    pub event_id: Uuid,
    /// `user`, `conversation` or `read_marker`.
    pub aggregate_type: String,
    /// The stream within the aggregate type (a UUID).
    pub aggregate_id: String,
    /// Position in the stream, from 1, no gaps.
    pub sequence: i64,
    /// The event's name, e.g. `MessageSent`.
    pub event_type: String,
    /// Version of the payload's schema.
    pub event_version: u32,
    /// When the command that produced it was handled (UTC).
    pub occurred_at: DateTime<Utc>,
    /// The user id that caused it, or `system`.
    pub actor: String,
    /// Shared by every event caused by one client request.
    pub correlation_id: Uuid,
    /// The event or request that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// Global position in the event store, in commit order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    /// The event's fields, as described by its schema.
    pub payload: P,
}

/// The `events.metadata` column of the event store: the envelope fields
/// that are not columns of their own. Written by command-service's append,
/// read back by every reader of `events` (through one row mapping,
/// `infra::postgres::EventRow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub event_id: Uuid,
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

/// `actor` for events no user caused (operator commands, migrations).
pub const SYSTEM_ACTOR: &str = "system";
