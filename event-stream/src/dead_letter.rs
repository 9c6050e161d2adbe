//! The dead-letter topic: records the projector cannot project, kept with
//! their original key, value and headers plus why (`dlq_reason`, one of
//! [`PoisonReason`](domain::decode::PoisonReason)'s strings, and
//! `dlq_detail`) and where they came from (`dlq_source_topic`,
//! `dlq_partition`, `dlq_offset`). An operator can inspect, fix and replay
//! them; the live loop commits past them and carries on.

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
    /// A producer to `topic`; `options` are extra librdkafka properties.
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
        let producer: FutureProducer = config.create()?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Produces every `(record, reason, detail)` and waits until Kafka has
    /// them all. Headers of an earlier dead-lettering (`dlq_*`) are
    /// replaced, not repeated, when a replayed record fails again.
    pub async fn send(&self, records: &[(&OwnedMessage, &str, &str)]) -> Result<(), KafkaError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for (record, reason, detail) in records {
            let partition = record.partition().to_string();
            let offset = record.offset().to_string();
            let mut headers = OwnedHeaders::new();
            if let Some(original) = record.headers() {
                for h in original.iter() {
                    if !h.key.starts_with("dlq_") {
                        headers = headers.insert(h);
                    }
                }
            }
            let headers = headers
                .insert(Header {
                    key: "dlq_reason",
                    value: Some(*reason),
                })
                .insert(Header {
                    key: "dlq_detail",
                    value: Some(*detail),
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
            let mut out: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = record.key() {
                out = out.key(key);
            }
            if let Some(value) = record.payload() {
                out = out.payload(value);
            }
            match self.producer.send_result(out) {
                Ok(d) => deliveries.push(d),
                Err((e, _)) => return Err(e),
            }
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e),
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
        Ok(())
    }

    /// Dead-letters a failure of the service's own work: `key` names its
    /// subject (e.g. the user id), `reason` and `detail` go in the headers,
    /// `value` is the JSON body. Waits for the broker's ack.
    pub async fn failure(
        &self,
        key: &str,
        reason: &str,
        detail: &str,
        value: &serde_json::Value,
    ) -> Result<(), KafkaError> {
        let body = value.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dlq_reason",
                value: Some(reason),
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
