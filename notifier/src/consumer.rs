//! The consumer: Kafka records to queued notifications.
//!
//! One round takes what the consumer has ready (up to `batch_size`):
//!
//! - poison (not decodable by the [`Decoder`]) → dead-letter topic, logged
//!   once with its reason;
//! - `MessageSent`s → wait until the projector has projected each
//!   conversation up to its last message of the round (membership comes
//!   from `rm_member_periods`, exact *as of each message's sequence*
//!   whatever the projector did since), then queue one `push_deliveries`
//!   row per subscription of every push recipient (with the message's
//!   `seq`: the order of its lane, see [`crate::push`]), `ON CONFLICT DO
//!   NOTHING`: the dedupe records. Recipients, presence, subscriptions and
//!   titles are looked up once for the round, not per message, and only
//!   users with a subscription are looked up in Redis;
//! - anything else → nothing.
//!
//! For email, the round upserts one `digest_pending` row per conversation
//! with a message in it, whatever the number of recipients: the digest
//! worker computes who gets what at digest time ([`crate::digest`]).
//!
//! The round's rows are committed in one transaction, the workers are
//! woken, and only then are the consumer offsets stored (in PostgreSQL, not
//! the broker: [`event_stream::offsets`], ADR 0005). A crash before that
//! redelivers the round; its rows already exist, so nothing is queued
//! twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::conversation::ConversationEvent;
use domain::decode::{AnyEvent, DecodedEvent, Decoder, Poison, PoisonReason};
use event_stream::dead_letter::DeadLetter;
use event_stream::offsets::{next_offsets, EventsConsumer};
use fred::prelude::{Client as Redis, KeysInterface};
use infra::retry::Backoff;
use infra::shutdown::Shutdown;
use rdkafka::message::{Message, OwnedMessage};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::webpush;

/// Most characters of a message body in a push payload (API.md: "the body
/// may be truncated"); the whole JSON also stays below one record.
const PUSH_BODY_CHARS: usize = 512;

/// Counters, for tests, logs and the benchmark.
#[derive(Debug, Default)]
pub struct Stats {
    pub records: AtomicU64,
    pub messages: AtomicU64,
    pub push_queued: AtomicU64,
    /// Conversations marked pending for the digest worker (one per
    /// conversation and batch, not per recipient).
    pub digest_pending: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub pushes_sent: AtomicU64,
    pub pushes_retried: AtomicU64,
    pub pushes_gone: AtomicU64,
    pub pushes_failed: AtomicU64,
    pub digests_sent: AtomicU64,
}

impl Stats {
    pub fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
    pub(crate) fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the consumer needs besides Kafka.
pub struct Consumer {
    pub(crate) source: EventsConsumer,
    pub(crate) pool: PgPool,
    pub(crate) redis: Redis,
    pub(crate) prefix: String,
    pub(crate) decoder: Decoder,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) batch_size: usize,
    pub(crate) projection_wait: Duration,
    pub(crate) push_when_online: bool,
    pub(crate) wake_push: Arc<Notify>,
    pub(crate) wake_digest: Arc<Notify>,
    pub(crate) stats: Arc<Stats>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("prefix", &self.prefix)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

/// Why a record was not handled; transient ones are retried.
#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("conversation not projected up to the message within the wait")]
    NotProjected,
}

impl Consumer {
    pub async fn run(self, shutdown: Shutdown) {
        // The leader connection is held until the loop ends: a standby
        // waits on it.
        let Some(_leader) = self.source.start(&self.pool, &shutdown).await else {
            return;
        };
        let mut batches = self.source.batches(self.batch_size);
        while let Some(batch) = batches.next(&shutdown).await {
            if !self.process(&batch, &shutdown).await {
                break;
            }
            if !self.store_offsets(&next_offsets(&batch), &shutdown).await {
                break;
            }
        }
        drop(batches);
        self.dead_letter.flush();
    }

    /// Stores the offsets past a handled batch, retrying while PostgreSQL
    /// is away; `false` on shutdown (the batch is then redelivered to the
    /// next run and deduplicated).
    async fn store_offsets(&self, next: &[(i32, i64)], shutdown: &Shutdown) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
        loop {
            let saved = async {
                let mut conn = self.pool.acquire().await?;
                self.source.offsets().save(&mut conn, next).await
            };
            match saved.await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "storing consumer offsets failed; retrying");
                    if shutdown.sleep(backoff.next_delay()).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Handles a batch; `false` when interrupted by shutdown (nothing of
    /// the batch is then committed to Kafka).
    #[tracing::instrument(skip_all, fields(records = batch.len()))]
    async fn process(&self, batch: &[OwnedMessage], shutdown: &Shutdown) -> bool {
        Stats::add(&self.stats.records, batch.len() as u64);
        let mut events = Vec::with_capacity(batch.len());
        for record in batch {
            let decoded = match record.payload() {
                Some(v) => self.decoder.decode_bytes(v),
                None => Err(Poison::new(
                    PoisonReason::Undecodable,
                    "record has no value",
                )),
            };
            match decoded {
                Ok(e) => events.push((record, e)),
                Err(p) => {
                    if !self
                        .dead_letter_record(record, p.reason.as_str(), &p.detail, shutdown)
                        .await
                    {
                        return false;
                    }
                }
            }
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
        loop {
            match self.apply(&events, shutdown).await {
                Ok(Some((push, digest))) => {
                    if push > 0 {
                        self.wake_push.notify_one();
                    }
                    if digest > 0 {
                        self.wake_digest.notify_one();
                    }
                    return true;
                }
                Ok(None) => return false,
                Err((index, HandleError::NotProjected)) => {
                    let (record, _) = events.remove(index);
                    if !self
                        .dead_letter_record(
                            record,
                            "not_projected",
                            "the conversation was not projected up to this message in time",
                            shutdown,
                        )
                        .await
                    {
                        return false;
                    }
                }
                Err((_, e)) => {
                    tracing::warn!(error = %e, "queuing notifications failed; retrying the batch");
                    if shutdown.sleep(backoff.next_delay()).await {
                        return false;
                    }
                }
            }
        }
    }

    /// One transaction for the batch. `Ok(None)` when shut down while
    /// waiting; `Err((index, e))` names the event that failed.
    async fn apply(
        &self,
        events: &[(&OwnedMessage, DecodedEvent)],
        shutdown: &Shutdown,
    ) -> Result<Option<(u64, u64)>, (usize, HandleError)> {
        let sent: Vec<(usize, Sent<'_>)> = events
            .iter()
            .enumerate()
            .filter_map(|(index, (_, event))| match &event.event {
                AnyEvent::Conversation(ConversationEvent::MessageSent {
                    message_id,
                    sender_id,
                    body,
                    ..
                }) => Some((
                    index,
                    Sent {
                        conversation_id: event.stream_id,
                        seq: event.sequence(),
                        message_id: message_id.0,
                        sender_id: sender_id.0,
                        body: body.as_str(),
                    },
                )),
                _ => None,
            })
            .collect();
        if sent.is_empty() {
            return Ok(Some((0, 0)));
        }
        match self.wait_projected(&sent, shutdown).await {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut tx = self.pool.begin().await.map_err(|e| (0, e.into()))?;
        let push = self.queue(&mut tx, &sent).await.map_err(|e| (0, e))?;
        // (conversation, first and last sequence) with a message this round.
        let mut pending: BTreeMap<Uuid, (i64, i64)> = BTreeMap::new();
        for (_, msg) in &sent {
            let range = pending
                .entry(msg.conversation_id)
                .or_insert((msg.seq, msg.seq));
            *range = (range.0.min(msg.seq), range.1.max(msg.seq));
        }
        let digest = pending.len() as u64;
        let mut convs = Vec::with_capacity(pending.len());
        let (mut firsts, mut lasts) = (Vec::new(), Vec::new());
        for (c, (first, last)) in pending {
            convs.push(c);
            firsts.push(first);
            lasts.push(last);
        }
        sqlx::query(
            "INSERT INTO digest_pending (conversation_id, since_seq, last_seq) \
             SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[]) \
             ON CONFLICT (conversation_id) DO UPDATE SET \
               since_seq = LEAST(digest_pending.since_seq, EXCLUDED.since_seq), \
               last_seq = GREATEST(digest_pending.last_seq, EXCLUDED.last_seq)",
        )
        .bind(&convs)
        .bind(&firsts)
        .bind(&lasts)
        .execute(&mut *tx)
        .await
        .map_err(|e| (0, e.into()))?;
        tx.commit().await.map_err(|e| (0, e.into()))?;
        Stats::add(&self.stats.messages, sent.len() as u64);
        Stats::add(&self.stats.push_queued, push);
        Stats::add(&self.stats.digest_pending, digest);
        Ok(Some((push, digest)))
    }

    /// Waits until the projector's checkpoint of every conversation
    /// reaches its last message of the batch (one query per poll, for all
    /// of them); `Ok(false)` on shutdown, and at the deadline the first
    /// message still not projected, as `NotProjected`.
    async fn wait_projected(
        &self,
        sent: &[(usize, Sent<'_>)],
        shutdown: &Shutdown,
    ) -> Result<bool, (usize, HandleError)> {
        let mut need: BTreeMap<String, i64> = BTreeMap::new();
        for (_, msg) in sent {
            let seq = need.entry(msg.conversation_id.to_string()).or_insert(0);
            *seq = (*seq).max(msg.seq);
        }
        let deadline = Instant::now() + self.projection_wait;
        let mut delay = Duration::from_millis(20);
        loop {
            let ids: Vec<&str> = need.keys().map(String::as_str).collect();
            let got: BTreeMap<String, i64> = sqlx::query_as(
                "SELECT aggregate_id, last_sequence FROM rm_checkpoints \
                 WHERE projection = 'core' AND aggregate_type = 'conversation' AND aggregate_id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| (0, e.into()))?
            .into_iter()
            .collect();
            if need
                .iter()
                .all(|(c, seq)| got.get(c).is_some_and(|l| l >= seq))
            {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                let index = sent
                    .iter()
                    .find(|(_, m)| {
                        got.get(&m.conversation_id.to_string())
                            .is_none_or(|l| *l < m.seq)
                    })
                    .map_or(0, |(i, _)| *i);
                return Err((index, HandleError::NotProjected));
            }
            if shutdown.sleep(delay).await {
                return Ok(false);
            }
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Queues the pushes of the batch's messages with a handful of
    /// statements for the whole batch; returns how many rows. Recipients
    /// are members at the message's sequence, not the sender, with push on,
    /// not muted and with a subscription, so presence is asked only about
    /// users who would be pushed.
    async fn queue(
        &self,
        conn: &mut PgConnection,
        sent: &[(usize, Sent<'_>)],
    ) -> Result<u64, HandleError> {
        let convs: Vec<Uuid> = sent.iter().map(|(_, m)| m.conversation_id).collect();
        let seqs: Vec<i64> = sent.iter().map(|(_, m)| m.seq).collect();
        let senders: Vec<Uuid> = sent.iter().map(|(_, m)| m.sender_id).collect();
        let recipients: Vec<(i64, Uuid)> = sqlx::query_as(
            "SELECT x.i, p.user_id \
             FROM UNNEST($1::uuid[], $2::bigint[], $3::uuid[]) WITH ORDINALITY AS x(c, seq, sender, i) \
             JOIN rm_member_periods p ON p.conversation_id = x.c AND p.joined_seq <= x.seq \
                  AND (p.left_seq IS NULL OR p.left_seq > x.seq) AND p.user_id <> x.sender \
             LEFT JOIN notification_settings s ON s.user_id = p.user_id \
             WHERE COALESCE(s.push, true) \
               AND EXISTS (SELECT 1 FROM push_subscriptions ps WHERE ps.user_id = p.user_id) \
               AND NOT EXISTS (SELECT 1 FROM conversation_mutes m \
                   WHERE m.user_id = p.user_id AND m.conversation_id = x.c \
                     AND (m.muted_until IS NULL OR m.muted_until > now()))",
        )
        .bind(&convs)
        .bind(&seqs)
        .bind(&senders)
        .fetch_all(&mut *conn)
        .await?;
        if recipients.is_empty() {
            return Ok(0);
        }
        let mut users: Vec<Uuid> = recipients.iter().map(|(_, u)| *u).collect();
        users.sort_unstable();
        users.dedup();
        if !self.push_when_online {
            users = self.offline(users).await?;
        }
        if users.is_empty() {
            return Ok(0);
        }
        let mut subs: HashMap<Uuid, Vec<(Uuid, String)>> = HashMap::new();
        for (sub, user, endpoint) in sqlx::query_as::<_, (Uuid, Uuid, String)>(
            "SELECT subscription_id, user_id, endpoint FROM push_subscriptions WHERE user_id = ANY($1)",
        )
        .bind(&users)
        .fetch_all(&mut *conn)
        .await?
        {
            if let Some(origin) = webpush::origin(&endpoint) {
                subs.entry(user).or_default().push((sub, origin));
            }
        }
        let titles = Titles::load(conn, sent).await?;
        // One payload per message, built once, shared by its rows.
        let mut payloads: HashMap<usize, serde_json::Value> = HashMap::new();
        let (mut msg_ids, mut sub_ids, mut user_ids, mut conv_ids) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut row_seqs, mut origins, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
        for (ordinal, user) in &recipients {
            let Some(user_subs) = subs.get(user) else {
                continue;
            };
            let Some(at) = usize::try_from(*ordinal - 1)
                .ok()
                .filter(|i| *i < sent.len())
            else {
                continue;
            };
            let msg = &sent[at].1;
            let payload = payloads
                .entry(at)
                .or_insert_with(|| payload(msg, &titles))
                .clone();
            for (sub, origin) in user_subs {
                msg_ids.push(msg.message_id);
                sub_ids.push(*sub);
                user_ids.push(*user);
                conv_ids.push(msg.conversation_id);
                row_seqs.push(msg.seq);
                origins.push(origin.clone());
                bodies.push(payload.clone());
            }
        }
        if msg_ids.is_empty() {
            return Ok(0);
        }
        let pushed = sqlx::query(
            "INSERT INTO push_deliveries (message_id, subscription_id, user_id, conversation_id, seq, origin, payload) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::bigint[], $6::text[], $7::jsonb[]) \
             ON CONFLICT (message_id, subscription_id) DO NOTHING",
        )
        .bind(&msg_ids)
        .bind(&sub_ids)
        .bind(&user_ids)
        .bind(&conv_ids)
        .bind(&row_seqs)
        .bind(&origins)
        .bind(&bodies)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(pushed)
    }

    /// The users of `users` without a presence key (no live WebSocket).
    async fn offline(&self, users: Vec<Uuid>) -> Result<Vec<Uuid>, HandleError> {
        let pipeline = self.redis.pipeline();
        for u in &users {
            let () = pipeline
                .exists(infra::keys::presence(&self.prefix, &u.to_string()))
                .await?;
        }
        let present: Vec<i64> = pipeline.all().await?;
        Ok(users
            .into_iter()
            .zip(present)
            .filter(|(_, p)| *p == 0)
            .map(|(u, _)| u)
            .collect())
    }

    async fn dead_letter_record(
        &self,
        record: &OwnedMessage,
        reason: &str,
        detail: &str,
        shutdown: &Shutdown,
    ) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
        loop {
            match self.dead_letter.send(&[(record, reason, detail)]).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, "producing to the dead-letter topic failed; retrying");
                    if shutdown.sleep(backoff.next_delay()).await {
                        return false;
                    }
                }
            }
        }
        tracing::warn!(
            reason,
            detail,
            topic = record.topic(),
            partition = record.partition(),
            offset = record.offset(),
            "record dead-lettered"
        );
        Stats::add(&self.stats.dead_lettered, 1);
        true
    }
}

/// Sender names and group titles of a batch's messages (two queries).
struct Titles {
    senders: HashMap<Uuid, String>,
    groups: HashMap<Uuid, Option<String>>,
}

impl Titles {
    async fn load(
        conn: &mut PgConnection,
        sent: &[(usize, Sent<'_>)],
    ) -> Result<Self, sqlx::Error> {
        let senders: Vec<Uuid> = sent.iter().map(|(_, m)| m.sender_id).collect();
        let convs: Vec<Uuid> = sent.iter().map(|(_, m)| m.conversation_id).collect();
        let senders = sqlx::query_as::<_, (Uuid, String)>(
            "SELECT user_id, display_name FROM rm_users WHERE user_id = ANY($1)",
        )
        .bind(&senders)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        let groups = sqlx::query_as::<_, (Uuid, Option<String>)>(
            "SELECT conversation_id, title FROM rm_conversations \
             WHERE conversation_id = ANY($1) AND kind = 'group'",
        )
        .bind(&convs)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        Ok(Self { senders, groups })
    }
}

/// API.md's push payload: `{"type":"message","conversation_id",
/// "message_id","seq","sender_id","title","body"}`; the title is the
/// sender's display name, with the group's title for groups.
fn payload(msg: &Sent<'_>, titles: &Titles) -> serde_json::Value {
    let sender = titles
        .senders
        .get(&msg.sender_id)
        .cloned()
        .unwrap_or_else(|| "New message".to_owned());
    let title = match titles.groups.get(&msg.conversation_id) {
        Some(Some(g)) => format!("{sender} in {g}"),
        _ => sender,
    };
    let mut body: String = msg.body.chars().take(PUSH_BODY_CHARS).collect();
    if body.len() < msg.body.len() {
        body.push('…');
    }
    json!({
        "type": "message",
        "conversation_id": msg.conversation_id,
        "message_id": msg.message_id,
        "seq": msg.seq,
        "sender_id": msg.sender_id,
        "title": title.chars().take(256).collect::<String>(),
        "body": body,
    })
}

/// A `MessageSent`, flattened.
struct Sent<'a> {
    conversation_id: Uuid,
    seq: i64,
    message_id: Uuid,
    sender_id: Uuid,
    body: &'a str,
}
