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
//! - [`open`]: both, for one consumer group, from the shared Kafka settings
//!   and the service's own ([`GroupSettings`]).
//!
//! Decoding a record into a typed event is the domain's
//! ([`domain::decode`]); this crate only moves bytes and positions.

pub mod dead_letter;
pub mod offsets;

use anyhow::Context;
use infra::cli::KafkaArgs;

use crate::dead_letter::DeadLetter;
use crate::offsets::EventsConsumer;

/// What a consumer group of the events topic needs, as its service
/// configures it (the env names carry the service's prefix).
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings<'a> {
    /// The consumer group (the key of its stored offsets).
    pub group_id: &'a str,
    /// Consumer `fetch.wait.max.ms`.
    pub fetch_wait_ms: u32,
    /// Where records the service cannot handle go.
    pub dead_letter_topic: &'a str,
    /// Extra librdkafka properties (`key=value`), for both ends.
    pub kafka_options: &'a [String],
}

/// A consumer group's two ends of the events topic: the consumer (offsets
/// in PostgreSQL, every partition assigned, ADR 0005) and the dead-letter
/// producer, with the same extra options. A malformed option is refused.
pub fn open(
    kafka: &KafkaArgs,
    group: GroupSettings<'_>,
) -> anyhow::Result<(EventsConsumer, DeadLetter)> {
    let options = infra::cli::kafka_options(group.kafka_options).map_err(anyhow::Error::msg)?;
    let consumer = EventsConsumer::new(
        &kafka.kafka_brokers,
        group.group_id,
        &kafka.events_topic,
        group.fetch_wait_ms,
        &options,
    )
    .context("creating the Kafka consumer")?;
    let dead_letter = DeadLetter::new(&kafka.kafka_brokers, group.dead_letter_topic, &options)
        .context("creating the dead-letter producer")?;
    Ok((consumer, dead_letter))
}
