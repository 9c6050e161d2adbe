//! The consuming side of the events topic, shared by every consumer
//! service (projector, notifier) so that none imports another.
//!
//! # Layout
//!
//! - [`offsets`]: [`offsets::EventsConsumer`], a consumer of every
//!   partition whose positions live in PostgreSQL (ADR 0005), its
//!   [`offsets::Batches`] and the leader lock of a consumer group.
//! - [`dead_letter`]: [`dead_letter::DeadLetter`], the producer of the
//!   dead-letter topic: consumed records that cannot be handled (with the
//!   reason in `dlq_*` headers) and other failures a service records there.
//!
//! Decoding a record into a typed event is the domain's
//! ([`domain::decode`]); this crate only moves bytes and positions.

pub mod dead_letter;
pub mod offsets;
