//! The dead-letter topic, for two kinds of record:
//!
//! - poison events: the original key, value and headers, plus `dlq_reason`
//!   (the projector's poison classes, or `not_projected`), `dlq_detail`,
//!   `dlq_source_topic`, `dlq_partition`, `dlq_offset` — the projector's
//!   layout, so one tool reads both;
//! - pushes that failed for good (retries exhausted, or a 4xx other than
//!   404/410): `dlq_reason = push_failed` and a JSON value naming the
//!   message, user, subscription id, push-service origin, last status and
//!   attempts. Never the endpoint URL or the subscription keys.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// A producer to the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetter {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetter {
    pub fn new(brokers: &str, topic: &str, options: &[(&str, &str)]) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            // As the relay (command-service/src/relay.rs): one request in
            // flight keeps order; broker-side idempotence wedges tansu 0.6
            // on an epoch bump. A retry may duplicate a dead letter.
            .set("enable.idempotence", "false")
            .set("max.in.flight.requests.per.connection", "1")
            .set("acks", "all")
            .set("message.timeout.ms", "30000");
        for (k, v) in options {
            config.set(*k, *v);
        }
        Ok(Self {
            producer: config.create()?,
            topic: topic.to_owned(),
        })
    }

    /// Dead-letters one consumed record, waiting for the broker's ack.
    pub async fn record(
        &self,
        record: &OwnedMessage,
        reason: &str,
        detail: &str,
    ) -> Result<(), KafkaError> {
        let partition = record.partition().to_string();
        let offset = record.offset().to_string();
        let mut headers = OwnedHeaders::new();
        if let Some(original) = record.headers() {
            for h in original.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let headers = headers
            .insert(Header {
                key: "dlq_reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "dlq_detail",
                value: Some(detail),
            })
            .insert(Header {
                key: "dlq_source_topic",
                value: Some(record.topic()),
            })
            .insert(Header {
                key: "dlq_partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "dlq_offset",
                value: Some(offset.as_str()),
            });
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = record.key() {
            out = out.key(key);
        }
        if let Some(value) = record.payload() {
            out = out.payload(value);
        }
        self.producer
            .send(out, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    /// Dead-letters a push that failed for good; `key` is the user id.
    pub async fn push_failure(
        &self,
        key: &str,
        detail: &str,
        value: &serde_json::Value,
    ) -> Result<(), KafkaError> {
        let body = value.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dlq_reason",
                value: Some("push_failed"),
            })
            .insert(Header {
                key: "dlq_detail",
                value: Some(detail),
            });
        let out = FutureRecord::to(&self.topic)
            .key(key)
            .payload(&body)
            .headers(headers);
        self.producer
            .send(out, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    /// Waits for in-flight records (at shutdown).
    pub fn flush(&self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
