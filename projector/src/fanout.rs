//! After a batch commits: invalidate caches, mark how far each
//! conversation is projected, then publish the frames that go to users'
//! own channels (layout in `infra::keys`, routes in
//! `domain::frame::LiveRoute`).
//!
//! Conversation frames are published by command-service's relay as soon
//! as events are positioned (ADR 0006), not here: a client may get one
//! before this projector has applied it. What keeps "a history read after
//! a frame sees it" true is the read fence: the relay sets
//! `{p}:live:conv:{c}` before publishing, this module sets
//! `{p}:projected:conv:{c}` after the commit, and query-service makes a
//! read of the conversation wait until the second reaches the first.
//!
//! The user-channel frames (`ConversationCreated` to every initial member,
//! `MemberAdded`/`MemberRemoved` to the user concerned, `ReadMarkerMoved`
//! to the reader) stay here, after the commit: they change the
//! conversation list, and a gateway lists a socket's conversations right
//! after subscribing to the user's channel, so a change must be either in
//! that list or still to come on the channel.
//!
//! # Order
//!
//! The plan is computed from the batch's events alone and executed after
//! the commit as one Redis pipeline: first every `INCR` of a generation, then every
//! projected head, then the user-channel frames. Redis runs a connection's
//! commands in order, so once a reader sees the projected head or a frame
//! it also sees the new generations: no cache filed under an old
//! generation can be served to it.
//!
//! Generations (`{p}:gen:{scope}:{id}`): scope `conv` of every conversation
//! with an event in the batch; scope `user` of every user who joined or
//! was removed, of every reader whose marker moved, and of every user
//! whose own stream changed (profile). Not of every member of a
//! conversation with a new message: a cached conversation list carries the
//! `conv` generations of the user's conversations and is checked against
//! them (query-service), so a message costs one `INCR` whatever the size
//! of its audience.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use domain::conversation::ConversationEvent;
use domain::decode::{AnyEvent, DecodedEvent};
use domain::frame::LiveRoute;
use domain::read_marker::ReadMarkerEvent;
use fred::prelude::{Client, ClientLike, Expiration, KeysInterface, PubsubInterface};
use uuid::Uuid;

use infra::retry::Backoff;

/// The Redis work of one committed batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Generation keys to `INCR` (each once).
    pub generations: BTreeSet<String>,
    /// `(projected head key, sequence)`: the highest sequence of each
    /// conversation in the batch, now in the read models.
    pub heads: BTreeMap<String, i64>,
    /// `(user channel, frame)` to `PUBLISH`, in application order.
    pub messages: Vec<(String, String)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.generations.is_empty() && self.heads.is_empty() && self.messages.is_empty()
    }
}

/// Computes the plan for `events` (applied by the fan-out projection).
pub fn plan(prefix: &str, events: &[DecodedEvent]) -> Plan {
    use infra::keys::{generation, projected_head, user_channel};
    let mut plan = Plan::default();
    let mut conversations: BTreeSet<Uuid> = BTreeSet::new();
    let mut users: BTreeSet<Uuid> = BTreeSet::new();
    for event in events {
        if let Some(route) = LiveRoute::of(event) {
            for u in &route.to_users {
                plan.messages
                    .push((user_channel(prefix, &u.to_string()), route.frame.clone()));
            }
        }
        match &event.event {
            AnyEvent::Conversation(e) => {
                let conv = event.stream_id;
                conversations.insert(conv);
                let head = plan
                    .heads
                    .entry(projected_head(prefix, &conv.to_string()))
                    .or_insert(event.sequence());
                *head = (*head).max(event.sequence());
                match e {
                    ConversationEvent::ConversationCreated { members, .. } => {
                        users.extend(members.iter().map(|m| m.user_id.0));
                    }
                    ConversationEvent::MemberAdded { user_id, .. }
                    | ConversationEvent::MemberRemoved { user_id, .. } => {
                        users.insert(user_id.0);
                    }
                    _ => {}
                }
            }
            AnyEvent::ReadMarker(ReadMarkerEvent::ReadMarkerMoved { user_id, .. }) => {
                users.insert(user_id.0);
            }
            AnyEvent::User(_) => {
                users.insert(event.stream_id);
            }
        }
    }
    for c in &conversations {
        plan.generations
            .insert(generation(prefix, "conv", &c.to_string()));
    }
    for u in &users {
        plan.generations
            .insert(generation(prefix, "user", &u.to_string()));
    }
    plan
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

    /// Runs the plan (generations first, then projected heads, then
    /// publishes), retrying the whole pipeline for up to the configured
    /// time. Re-running is safe: an extra `INCR` only invalidates once
    /// more, a head is set to the same value, an extra frame is a
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
        for (key, seq) in &plan.heads {
            let () = pipeline
                .set(
                    key.as_str(),
                    *seq,
                    Some(Expiration::EX(infra::keys::HEAD_TTL_SECS)),
                    None,
                    false,
                )
                .await?;
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
                ..Plan::default()
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
