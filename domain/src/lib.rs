//! The heart of Messenger: aggregates, the commands they accept, the events
//! they emit and the invariants they guard. Nothing here performs I/O; the
//! services wrap these types with storage, transport and clocks.
//!
//! # Layout
//!
//! - [`values`]: parsed newtypes (`Username`, `MessageBody`, ids, ...) built once
//!   at the edge and trusted everywhere inside ("parse, don't validate").
//! - [`limits`]: the configurable limits of API.md (name lengths, body size,
//!   group size) with their documented defaults.
//! - [`user`]: the `User` aggregate (registration, password lifecycle, roles).
//!   Secrets never appear in its events: hashes and reset tokens live in
//!   tables of their own, owned by command-service.
//! - [`conversation`]: the `Conversation` aggregate (groups and direct chats,
//!   membership, roles, messages). Its state stays small: members and roles,
//!   never message bodies. Facts about past messages (author of a message,
//!   idempotency keys) come from the [`conversation::ConversationLookup`] port.
//! - [`read_marker`]: one `ReadMarker` stream per (conversation, member), so
//!   moving a read marker never contends with message sends.
//! - [`envelope`]: the versioned envelope every event travels in on Kafka.
//! - [`frame`]: the WebSocket `event` frame of API.md, one definition for
//!   its writers (projector, query-service) and its reader (gateway).
//! - [`decode`]: envelopes to typed events for consumers (upcasters, and
//!   the poison classes of records that cannot be decoded).
//! - [`event`]: helpers shared by all aggregates (event naming, payload
//!   (de)serialisation without the enum wrapper).

pub mod conversation;
pub mod decode;
pub mod envelope;
pub mod event;
pub mod frame;
pub mod limits;
pub mod read_marker;
pub mod user;
pub mod values;

pub use limits::Limits;
