//! The live path (ADR 0006): right after the relay has positioned a round
//! of events (durable, in position order), their frames go to Redis
//! pub/sub for the gateways, before the round is produced to Kafka.
//!
//! One pipeline per round, in this order:
//!
//! 1. `SET {p}:live:conv:{c} <seq> EX 86400` for each conversation of the
//!    round, at the highest sequence published for it (the read fence:
//!    query-service makes a read of the conversation wait until the
//!    projector's `{p}:projected:conv:{c}` reaches it, so a client that
//!    received a frame and then reads history sees the event);
//! 2. `PUBLISH` of every frame, in position order, to its conversation's
//!    channel.
//!
//! Only conversation channels: the frames [`LiveRoute`] sends to users'
//! own channels (membership changes concerning them, their read markers)
//! stay with the projector, after its commit. They change what the
//! conversation list shows, and a gateway lists a socket's conversations
//! right after subscribing to the user's channel: published after the
//! projection, a membership change is either in that list or arrives on
//! the channel, never neither.
//!
//! Redis runs a connection's commands in order, so no frame is out before
//! its fence. A failed pipeline is retried for `retry_for`; after that the
//! round goes on to Kafka without live frames (logged): gateways repair a
//! gap when the conversation's next frame arrives, and clients on resume.
//! A relay that crashes after the assign republishes its pending round
//! here too: duplicates, which sockets drop by `seq`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use domain::decode::Decoder;
use domain::frame::LiveRoute;
use fred::prelude::{Client, Expiration, KeysInterface, PubsubInterface};
use infra::keys::{conv_channel, live_head, HEAD_TTL_SECS};
use infra::retry::Backoff;

use crate::relay::OutboxEvent;

/// Publishes positioned events' frames (see the module docs).
#[derive(Clone)]
pub struct LivePublisher {
    redis: Client,
    prefix: String,
    decoder: Decoder,
    retry_for: Duration,
}

impl std::fmt::Debug for LivePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivePublisher")
            .field("prefix", &self.prefix)
            .field("retry_for", &self.retry_for)
            .finish_non_exhaustive()
    }
}

/// The Redis work of one round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LivePlan {
    /// `(fence key, sequence)`, one per conversation.
    pub heads: BTreeMap<String, i64>,
    /// `(conversation channel, frame)`, in position order.
    pub messages: Vec<(String, String)>,
}

impl LivePlan {
    /// The plan of `events` (positioned, in position order). Events the
    /// decoder refuses get no frame: consumers dead-letter them.
    pub fn of(prefix: &str, decoder: &Decoder, events: &[OutboxEvent]) -> Self {
        let mut plan = Self::default();
        for e in events {
            let decoded = match decoder.decode_bytes(e.value.as_bytes()) {
                Ok(d) => d,
                Err(p) => {
                    tracing::debug!(position = e.position, reason = %p.reason, "no live frame");
                    continue;
                }
            };
            let Some(route) = LiveRoute::of(&decoded) else {
                continue;
            };
            let Some(seq) = route.conversation_seq(&decoded) else {
                continue;
            };
            let conversation = route.conversation_id.to_string();
            let head = plan
                .heads
                .entry(live_head(prefix, &conversation))
                .or_insert(seq);
            *head = (*head).max(seq);
            plan.messages
                .push((conv_channel(prefix, &conversation), route.frame));
        }
        plan
    }
}

impl LivePublisher {
    pub fn new(redis: Client, prefix: String, retry_for: Duration) -> Self {
        Self {
            redis,
            prefix,
            decoder: Decoder::new(),
            retry_for,
        }
    }

    /// Publishes the frames of `events`; `false` if Redis refused for the
    /// whole retry time (the round then goes on without them).
    pub async fn publish(&self, events: &[OutboxEvent]) -> bool {
        let plan = LivePlan::of(&self.prefix, &self.decoder, events);
        if plan.messages.is_empty() {
            return true;
        }
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            match self.pipeline(&plan).await {
                Ok(()) => return true,
                Err(e) => {
                    let delay = backoff.next_delay();
                    if Instant::now() + delay >= deadline {
                        tracing::warn!(error = %e, frames = plan.messages.len(),
                            "live frames not published; clients repair the gap from history");
                        return false;
                    }
                    tracing::debug!(error = %e, "live publish failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn pipeline(&self, plan: &LivePlan) -> Result<(), fred::error::Error> {
        let pipeline = self.redis.pipeline();
        for (key, seq) in &plan.heads {
            let () = pipeline
                .set(
                    key.as_str(),
                    *seq,
                    Some(Expiration::EX(HEAD_TTL_SECS)),
                    None,
                    false,
                )
                .await?;
        }
        for (channel, frame) in &plan.messages {
            let () = pipeline.publish(channel.as_str(), frame.as_str()).await?;
        }
        for result in pipeline.try_all::<fred::types::Value>().await {
            result?;
        }
        Ok(())
    }

    /// Closes the connection.
    pub async fn quit(&self) {
        let _ = fred::prelude::ClientLike::quit(&self.redis).await;
    }
}
