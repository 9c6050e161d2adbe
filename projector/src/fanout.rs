//! After a batch commits: invalidate caches, then publish the projected
//! events for the gateways (layout in `infra::keys`).
//!
//! # Order
//!
//! The plan is computed inside the batch's transaction (it needs the
//! members of each touched conversation) and executed after the commit as
//! one Redis pipeline: first every `INCR` of a generation, then every
//! `PUBLISH`. Redis runs a connection's commands in order, so by the time a
//! client receives an event frame, the read model has it (committed) *and*
//! no cache filed under the old generation can be served: a client that
//! queries upon receipt reads its own write.
//!
//! # What goes where
//!
//! - Every conversation event: `{p}:conv:{conversation_id}`.
//! - `ConversationCreated`: also `{p}:user:{u}` for every initial member;
//!   `MemberAdded` / `MemberRemoved`: also the channel of the user concerned
//!   (so a gateway can (un)subscribe that user's sockets first).
//! - `ReadMarkerMoved`: `{p}:user:{u}` of the reader only (their other
//!   devices update unread badges). Its frame's `conversation_id` is the
//!   marked conversation, but `seq` is the read-marker stream's sequence,
//!   not part of the conversation's contiguous sequence: clients route it
//!   by `event_type` and leave it out of gap detection.
//! - User events are not published (no client-visible frame in API.md).
//!
//! Generations (`{p}:gen:{scope}:{id}`): scope `conv` of every conversation
//! with an event in the batch; scope `user` of every current member of
//! those conversations (their list shows `last_seq`, the last message, the
//! title, unread counts), of every user removed, of every reader whose
//! marker moved, and of every user whose own stream changed (profile).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use domain::conversation::ConversationEvent;
use domain::decode::{AnyEvent, DecodedEvent};
use domain::frame::EventFrame;
use domain::read_marker::ReadMarkerEvent;
use fred::prelude::{Client, ClientLike, KeysInterface, PubsubInterface};
use sqlx::PgConnection;
use uuid::Uuid;

use infra::retry::Backoff;

/// The API.md WebSocket frame of an event ([`EventFrame`]), or `None` for
/// events without one (user events, and events without a global position).
pub fn frame(event: &DecodedEvent) -> Option<String> {
    let conversation_id = event.conversation_id()?.to_string();
    let e = &event.envelope;
    EventFrame::of(e, &conversation_id, &e.payload).map(|f| f.to_json())
}

/// The Redis work of one committed batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Generation keys to `INCR` (each once).
    pub generations: BTreeSet<String>,
    /// `(channel, frame)` to `PUBLISH`, in application order.
    pub messages: Vec<(String, String)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.generations.is_empty() && self.messages.is_empty()
    }
}

/// Computes the plan for `events` (applied by the fan-out projection) on
/// the batch's connection, before commit.
pub async fn plan(
    conn: &mut PgConnection,
    prefix: &str,
    events: &[DecodedEvent],
) -> Result<Plan, sqlx::Error> {
    use infra::keys::{conv_channel, generation, user_channel};
    let mut plan = Plan::default();
    let mut conversations: BTreeSet<Uuid> = BTreeSet::new();
    let mut users: BTreeSet<Uuid> = BTreeSet::new();
    for event in events {
        let frame = frame(event);
        match &event.event {
            AnyEvent::Conversation(e) => {
                let conv = event.stream_id;
                conversations.insert(conv);
                if let Some(frame) = &frame {
                    plan.messages
                        .push((conv_channel(prefix, &conv.to_string()), frame.clone()));
                }
                let concerned: Vec<Uuid> = match e {
                    ConversationEvent::ConversationCreated { members, .. } => {
                        members.iter().map(|m| m.user_id.0).collect()
                    }
                    ConversationEvent::MemberAdded { user_id, .. }
                    | ConversationEvent::MemberRemoved { user_id, .. } => vec![user_id.0],
                    _ => Vec::new(),
                };
                for u in concerned {
                    users.insert(u);
                    if let Some(frame) = &frame {
                        plan.messages
                            .push((user_channel(prefix, &u.to_string()), frame.clone()));
                    }
                }
            }
            AnyEvent::ReadMarker(ReadMarkerEvent::ReadMarkerMoved { user_id, .. }) => {
                users.insert(user_id.0);
                if let Some(frame) = frame {
                    plan.messages
                        .push((user_channel(prefix, &user_id.to_string()), frame));
                }
            }
            AnyEvent::User(_) => {
                users.insert(event.stream_id);
            }
        }
    }
    if !conversations.is_empty() {
        let ids: Vec<Uuid> = conversations.iter().copied().collect();
        let members: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT user_id FROM rm_members WHERE conversation_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        users.extend(members);
    }
    for c in &conversations {
        plan.generations
            .insert(generation(prefix, "conv", &c.to_string()));
    }
    for u in &users {
        plan.generations
            .insert(generation(prefix, "user", &u.to_string()));
    }
    Ok(plan)
}

/// Executes plans against Redis.
#[derive(Clone)]
pub struct Fanout {
    client: Client,
    retry_for: Duration,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("retry_for", &self.retry_for)
            .finish_non_exhaustive()
    }
}

impl Fanout {
    pub fn new(client: Client, retry_for: Duration) -> Self {
        Self { client, retry_for }
    }

    /// The Redis client (shared with the rebuild's cache invalidation).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs the plan (generations first, then publishes), retrying the
    /// whole pipeline for up to the configured time. Re-running is safe: an
    /// extra `INCR` only invalidates once more, an extra frame is a
    /// duplicate clients drop by `seq`.
    pub async fn execute(&self, plan: &Plan) -> Result<(), fred::error::Error> {
        if plan.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(2));
        loop {
            let delay = backoff.next_delay();
            match self.pipeline(plan).await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() + delay < deadline => {
                    tracing::warn!(error = %e, "redis fan-out failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn pipeline(&self, plan: &Plan) -> Result<(), fred::error::Error> {
        let pipeline = self.client.pipeline();
        for key in &plan.generations {
            let () = pipeline.incr(key.as_str()).await?;
        }
        for (channel, message) in &plan.messages {
            let () = pipeline.publish(channel.as_str(), message.as_str()).await?;
        }
        for result in pipeline.try_all::<fred::types::Value>().await {
            result?;
        }
        Ok(())
    }

    /// Increments the generation of every key in `keys` (cache-wide
    /// invalidation after a rebuild), in pipelines of a few thousand.
    pub async fn bump(&self, keys: &[String]) -> Result<(), fred::error::Error> {
        for chunk in keys.chunks(2000) {
            let plan = Plan {
                generations: chunk.iter().cloned().collect(),
                messages: Vec::new(),
            };
            self.execute(&plan).await?;
        }
        Ok(())
    }

    /// Closes the connection.
    pub async fn quit(&self) {
        let _ = self.client.quit().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use domain::decode::Decoder;
    use serde_json::json;
    use serde_json::Value;

    #[test]
    fn message_frame_has_the_api_shape() {
        let conv = Uuid::now_v7();
        let record = json!({
            "event_id": Uuid::now_v7(),
            "aggregate_type": "conversation",
            "aggregate_id": conv,
            "sequence": 5,
            "event_type": "MessageSent",
            "event_version": 1,
            "occurred_at": "2026-11-24T10:00:00Z",
            "actor": Uuid::now_v7(),
            "correlation_id": Uuid::now_v7(),
            "causation_id": null,
            "position": 42,
            "payload": {
                "message_id": Uuid::now_v7(),
                "sender_id": Uuid::now_v7(),
                "body": "hi",
                "client_msg_id": "c1",
                "sent_at": "2026-11-24T10:00:00Z"
            }
        });
        let e = Decoder::new()
            .decode_bytes(record.to_string().as_bytes())
            .unwrap();
        let f: Value = serde_json::from_str(&frame(&e).unwrap()).unwrap();
        assert_eq!(f["type"], "event");
        assert_eq!(f["cursor"], "42");
        assert_eq!(f["event"]["conversation_id"], conv.to_string());
        assert_eq!(f["event"]["seq"], 5);
        assert_eq!(f["event"]["event_type"], "MessageSent");
        assert_eq!(f["event"]["event_version"], 1);
        assert_eq!(f["event"]["actor"], record["actor"]);
        assert_eq!(f["event"]["occurred_at"], record["occurred_at"]);
        assert_eq!(f["event"]["data"], record["payload"]);
        let keys: Vec<&str> = f["event"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys.len(),
            8,
            "event_id, event_type, event_version, conversation_id, seq, occurred_at, actor, data: {keys:?}"
        );
    }
}
