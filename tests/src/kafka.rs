//! Kafka helpers for tests and tools: create a topic, read a topic from the
//! beginning with a fresh consumer group.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: HashMap<String, String>,
    /// The envelope.
    pub value: Value,
}

/// Creates `topic` with `partitions` partitions (an existing one is fine).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating the admin client")?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("CreateTopics")?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// A consumer in a fresh group reading `topic` from the beginning.
pub fn consumer(brokers: &str, topic: &str) -> anyhow::Result<StreamConsumer> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("test-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the consumer")?;
    c.subscribe(&[topic]).context("subscribing")?;
    Ok(c)
}

/// Reads records until `done(&records)` holds or `timeout` passes.
pub async fn read_until(
    consumer: &StreamConsumer,
    timeout: Duration,
    mut done: impl FnMut(&[Record]) -> bool,
) -> anyhow::Result<Vec<Record>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!("timed out after {} records", out.len());
        }
        let msg = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(m) => m.context("consuming")?,
            Err(_) => continue,
        };
        let mut headers = HashMap::new();
        if let Some(h) = msg.headers() {
            for hdr in h.iter() {
                if let Some(v) = hdr.value {
                    headers.insert(hdr.key.to_owned(), String::from_utf8_lossy(v).into_owned());
                }
            }
        }
        let key = msg
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let value: Value = serde_json::from_slice(msg.payload().unwrap_or_default())
            .context("record value is not JSON")?;
        out.push(Record {
            partition: msg.partition(),
            offset: msg.offset(),
            key,
            headers,
            value,
        });
    }
    Ok(out)
}
