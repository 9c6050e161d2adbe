//! The push worker: sends queued `push_deliveries` to push services.
//!
//! Each round, per push-service origin with room (fewer than
//! `push_per_origin` requests in flight, and room under
//! `push_concurrency` overall), it claims due rows in one statement
//! (`FOR UPDATE SKIP LOCKED`, state `sending`, `attempts + 1`, a lease) and
//! sends each in its own task with a timeout. So a slow or dead push service
//! holds at most `push_per_origin` requests and never delays the others.
//!
//! # Order: one lane, one request at a time
//!
//! The `Topic` of a push is its conversation, and a push service keeps only
//! the last push it received per topic: an older message arriving after a
//! newer one would replace it on the lock screen. So the pushes of one
//! conversation to one subscription, a *lane* (`subscription_id`,
//! `conversation_id`), leave in the conversation's order (`seq`, then
//! `message_id`), one at a time: a row is claimed only when no earlier row
//! of its lane is `pending` or `sending`. Different lanes still go in
//! parallel. The price: a lane's next push waits for the previous answer,
//! and a lane whose first row backs off (429, 5xx, timeout) waits with it
//! until it is sent or, after `push_max_attempts`, failed and
//! dead-lettered; a 404/410 closes every row of the subscription. (A
//! deferred first row parks the rest of its lane until its next attempt,
//! so a long backoff does not make every claim wade through the lane.)
//! Recording an answer is fenced on its claim (`sending` with the claim's
//! `attempts`): an answer to a claim whose lease ended and whose row was
//! claimed again records nothing, so it cannot open the lane while the
//! row's newer claim is in flight. The lease must outlast the request
//! timeout (the notifier raises it to the timeout plus a second): a request
//! still in flight when its lease ends would race its own repeat.
//!
//! Full rounds (every origin with due rows) run when the consumer queues
//! work and every poll interval. Between them, answers free room only for
//! their own origin, which is refilled once a quarter of its share is free
//! (one claim per several answers, not two queries per answer), or at once
//! when an answer let a lane with a waiting row move on (recording tells:
//! the statement returns whether a later row of the lane is open), so a
//! lane's next row never waits for the poll interval. 2xx answers, the
//! common case, are recorded together: one `UPDATE ... FROM UNNEST` per
//! batch of answers, before their room is reused.
//!
//! Outcomes (RFC 8030 / API.md):
//!
//! - 2xx: `sent` (the payload is cleared);
//! - 404, 410: the subscription is deleted, its queued rows become `gone`;
//! - 429, 5xx, timeouts, connection errors: back to `pending` after an
//!   exponential backoff with jitter, at least the `Retry-After`, until
//!   `push_max_attempts`; then `failed` and dead-lettered;
//! - other 4xx (a request the service will never accept): `failed` and
//!   dead-lettered at once.
//!
//! A row claimed by an instance that dies is claimed again when its lease
//! ends: the HTTP hop is at-least-once, the only place a duplicate can come
//! from (see the crate docs and ADR 0004). A 2xx waiting for its batch is
//! still `sending`, so it counts as in flight (and holds its lane); a
//! graceful stop records the last batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use infra::shutdown::Shutdown;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::StatusCode;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::consumer::Stats;
use crate::webpush::{self, UaKeys, VapidKey};
use event_stream::dead_letter::DeadLetter;

/// SQL: whether a later row of `d`'s lane is still open (waiting for `d`).
macro_rules! lane_continues {
    () => {
        "EXISTS (SELECT 1 FROM push_deliveries n \
           WHERE n.subscription_id = d.subscription_id AND n.conversation_id = d.conversation_id \
             AND n.state IN ('pending', 'sending') AND (n.seq, n.message_id) > (d.seq, d.message_id))"
    };
}

/// Lifetime of a VAPID JWT (RFC 8292 allows up to 24 h).
const JWT_LIFETIME_SECS: i64 = 12 * 3600;

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct PushSettings {
    pub ttl_secs: u32,
    pub timeout: Duration,
    pub per_origin: usize,
    pub concurrency: usize,
    pub max_attempts: i32,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub lease: Duration,
    pub poll: Duration,
    pub subject: String,
}

/// The push worker.
#[derive(Debug)]
pub struct PushWorker {
    pub(crate) pool: PgPool,
    pub(crate) http: reqwest::Client,
    /// Checked again before every request: the policy may have changed
    /// since registration, and IP-literal hosts skip the client's resolver.
    pub(crate) policy: Arc<crate::endpoint::EndpointPolicy>,
    pub(crate) vapid: VapidKey,
    pub(crate) settings: PushSettings,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) wake: Arc<Notify>,
    pub(crate) stats: Arc<Stats>,
    /// Signed VAPID headers per origin, with their `exp`.
    pub(crate) jwt_cache: std::sync::Mutex<HashMap<String, (String, i64)>>,
}

/// A finished attempt, as the run loop learns of it.
#[derive(Debug)]
enum Done {
    /// A 2xx, recorded by the loop with the next batch.
    Sent {
        message_id: Uuid,
        subscription_id: Uuid,
        /// The claim's `attempts`: recording is fenced on it.
        attempts: i32,
        origin: String,
        status: u16,
    },
    /// Any other outcome, already recorded by its task. `lane_moved`: it
    /// closed its row (failed) and a later row of its lane is waiting.
    Recorded { origin: String, lane_moved: bool },
}

impl Done {
    fn origin(&self) -> &str {
        match self {
            Self::Sent { origin, .. } | Self::Recorded { origin, .. } => origin,
        }
    }
}

/// One claimed delivery.
#[derive(Debug)]
struct Claimed {
    message_id: Uuid,
    subscription_id: Uuid,
    user_id: Uuid,
    conversation_id: Uuid,
    origin: String,
    payload: Option<serde_json::Value>,
    attempts: i32,
    /// (endpoint, p256dh, auth); `None` when the subscription is gone.
    target: Option<(String, String, String)>,
}

/// How one attempt ended.
#[derive(Debug)]
enum Outcome {
    Sent(u16),
    Gone(u16),
    Retry {
        status: Option<u16>,
        retry_after: Option<Duration>,
        detail: String,
    },
    Fail {
        status: Option<u16>,
        detail: String,
    },
}

impl PushWorker {
    /// Runs until shutdown; dropping the future aborts every request in
    /// flight (their rows stay claimed until the lease ends), and forgets
    /// answered rows not yet recorded (the same: `sending` until the lease
    /// ends, then sent again).
    pub async fn run(self, shutdown: Shutdown) {
        let this = Arc::new(self);
        let mut in_flight: HashMap<String, usize> = HashMap::new();
        let mut total = 0usize;
        let mut tasks = JoinSet::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        // Refill an origin once this much of its share is free.
        let refill = (this.settings.per_origin / 4).max(1);
        let mut poll = tokio::time::interval(this.settings.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What the next claim covers: every origin, or those freed.
        let mut full_round = true;
        let mut freed: Vec<String> = Vec::new();
        loop {
            while tasks.try_join_next().is_some() {}
            if total < this.settings.concurrency && (full_round || !freed.is_empty()) {
                let origins = if full_round {
                    None
                } else {
                    Some(std::mem::take(&mut freed))
                };
                match this.claim_round(origins, &in_flight, total).await {
                    Ok(claimed) => {
                        for c in claimed {
                            *in_flight.entry(c.origin.clone()).or_insert(0) += 1;
                            total += 1;
                            let worker = this.clone();
                            let done = done_tx.clone();
                            tasks.spawn(async move {
                                let _ = done.send(worker.deliver(c).await);
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming pushes failed; retrying"),
                }
                full_round = false;
                freed.clear();
            }
            let first = tokio::select! {
                () = shutdown.triggered() => break,
                () = this.wake.notified() => None,
                _ = poll.tick() => None,
                Some(first) = done_rx.recv() => Some(first),
            };
            let Some(first) = first else {
                full_round = true;
                continue;
            };
            let mut batch = vec![first];
            while let Ok(d) = done_rx.try_recv() {
                batch.push(d);
            }
            // Origins where an answer let a waiting lane move on.
            let mut moved = this.record_sent(&batch).await;
            for d in &batch {
                if let Done::Recorded {
                    origin,
                    lane_moved: true,
                } = d
                {
                    moved.insert(origin.clone());
                }
            }
            for d in &batch {
                let origin = d.origin();
                release(&mut in_flight, &mut total, origin);
                let busy = in_flight.get(origin).copied().unwrap_or(0);
                if refills(
                    this.settings.per_origin,
                    busy,
                    refill,
                    moved.contains(origin),
                ) && !freed.iter().any(|o| o == origin)
                {
                    freed.push(origin.to_owned());
                }
            }
        }
        // Let the requests in flight finish (bounded by their timeout), then
        // record the last answers.
        while tasks.join_next().await.is_some() {}
        drop(done_tx);
        let mut batch = Vec::new();
        while let Some(d) = done_rx.recv().await {
            batch.push(d);
        }
        this.record_sent(&batch).await;
    }

    /// Records the 2xx answers of `batch` in one statement; returns the
    /// origins where a later row of a recorded row's lane is waiting (to be
    /// claimed now, not at the next poll). On error the rows stay `sending`
    /// and are sent again when their lease ends.
    ///
    /// Fenced on the claim (`state = 'sending'` and the claim's `attempts`):
    /// an answer to a claim that lost its row (the lease ended and the row
    /// was claimed again, or a 404/410 of the subscription made it `gone`)
    /// changes nothing, so it can never release the lane while the row's
    /// current claim is still in flight.
    async fn record_sent(&self, batch: &[Done]) -> HashSet<String> {
        let mut message_ids = Vec::new();
        let mut subscription_ids = Vec::new();
        let mut attempts = Vec::new();
        let mut statuses = Vec::new();
        for d in batch {
            if let Done::Sent {
                message_id,
                subscription_id,
                attempts: a,
                status,
                ..
            } = d
            {
                message_ids.push(*message_id);
                subscription_ids.push(*subscription_id);
                attempts.push(*a);
                statuses.push(i32::from(*status));
            }
        }
        let mut moved = HashSet::new();
        if message_ids.is_empty() {
            return moved;
        }
        let n = message_ids.len() as u64;
        let result = sqlx::query(concat!(
            "UPDATE push_deliveries d SET state = 'sent', sent_at = now(), payload = NULL, \
               last_status = u.status, lease_until = NULL \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::int4[]) \
               AS u(message_id, subscription_id, attempts, status) \
             WHERE d.message_id = u.message_id AND d.subscription_id = u.subscription_id \
               AND d.state = 'sending' AND d.attempts = u.attempts \
             RETURNING d.origin, ",
            lane_continues!()
        ))
        .bind(message_ids)
        .bind(subscription_ids)
        .bind(attempts)
        .bind(statuses)
        .fetch_all(&self.pool)
        .await;
        match result {
            Ok(rows) => {
                Stats::add(&self.stats.pushes_sent, rows.len() as u64);
                if (rows.len() as u64) < n {
                    tracing::info!(
                        answers = n,
                        recorded = rows.len(),
                        "2xx answers to claims that had lost their row; not recorded"
                    );
                }
                for r in rows {
                    match (r.try_get::<String, _>(0), r.try_get::<bool, _>(1)) {
                        (Ok(origin), Ok(true)) => {
                            moved.insert(origin);
                        }
                        (Ok(_), Ok(false)) => {}
                        (Err(e), _) | (_, Err(e)) => {
                            tracing::warn!(error = %e, "reading a recorded push");
                        }
                    }
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                pushes = n,
                "recording sent pushes failed; their leases will retry them"
            ),
        }
        moved
    }

    /// Claims due rows for `origins` (`None`: every origin with due rows)
    /// as far as they have room.
    async fn claim_round(
        &self,
        origins: Option<Vec<String>>,
        in_flight: &HashMap<String, usize>,
        total: usize,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        let origins: Vec<String> = match origins {
            Some(o) => o,
            None => {
                sqlx::query_scalar(
                    "SELECT DISTINCT origin FROM push_deliveries \
                     WHERE state IN ('pending', 'sending') AND next_attempt_at <= now() \
                       AND (state = 'pending' OR lease_until < now())",
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        let mut room_total = self.settings.concurrency.saturating_sub(total);
        let mut out = Vec::new();
        for origin in origins {
            let busy = in_flight.get(&origin).copied().unwrap_or(0);
            let room = self
                .settings
                .per_origin
                .saturating_sub(busy)
                .min(room_total);
            if room == 0 {
                continue;
            }
            let claimed = self.claim(&origin, room).await?;
            room_total -= claimed.len().min(room_total);
            out.extend(claimed);
        }
        Ok(out)
    }

    async fn claim(&self, origin: &str, limit: usize) -> Result<Vec<Claimed>, sqlx::Error> {
        let rows = sqlx::query(
            "WITH c AS ( \
               SELECT d.message_id, d.subscription_id FROM push_deliveries d \
               WHERE d.origin = $1 AND d.state IN ('pending', 'sending') \
                 AND d.next_attempt_at <= now() \
                 AND (d.state = 'pending' OR d.lease_until < now()) \
                 AND NOT EXISTS (SELECT 1 FROM push_deliveries e \
                   WHERE e.subscription_id = d.subscription_id \
                     AND e.conversation_id = d.conversation_id \
                     AND e.state IN ('pending', 'sending') \
                     AND (e.seq, e.message_id) < (d.seq, d.message_id)) \
               ORDER BY d.next_attempt_at LIMIT $2 FOR UPDATE OF d SKIP LOCKED) \
             UPDATE push_deliveries d SET state = 'sending', attempts = d.attempts + 1, \
               lease_until = now() + make_interval(secs => $3) \
             FROM c LEFT JOIN push_subscriptions s ON s.subscription_id = c.subscription_id \
             WHERE d.message_id = c.message_id AND d.subscription_id = c.subscription_id \
             RETURNING d.message_id, d.subscription_id, d.user_id, d.conversation_id, d.origin, \
               d.payload, d.attempts, s.endpoint, s.p256dh, s.auth",
        )
        .bind(origin)
        .bind(limit as i64)
        .bind(self.settings.lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let endpoint: Option<String> = r.try_get(7)?;
                let p256dh: Option<String> = r.try_get(8)?;
                let auth: Option<String> = r.try_get(9)?;
                Ok(Claimed {
                    message_id: r.try_get(0)?,
                    subscription_id: r.try_get(1)?,
                    user_id: r.try_get(2)?,
                    conversation_id: r.try_get(3)?,
                    origin: r.try_get(4)?,
                    payload: r.try_get(5)?,
                    attempts: r.try_get(6)?,
                    target: match (endpoint, p256dh, auth) {
                        (Some(e), Some(p), Some(a)) => Some((e, p, a)),
                        _ => None,
                    },
                })
            })
            .collect()
    }

    /// One attempt and its bookkeeping: a 2xx goes back to the loop to be
    /// recorded with its batch, anything else is recorded here. Errors of
    /// the bookkeeping are logged; the lease then brings the row back.
    #[tracing::instrument(skip_all, fields(message_id = %c.message_id, subscription_id = %c.subscription_id, origin = %c.origin, attempt = c.attempts))]
    async fn deliver(&self, c: Claimed) -> Done {
        let outcome = match &c.target {
            None => Outcome::Gone(0),
            Some((endpoint, p256dh, auth)) => self.send(&c, endpoint, p256dh, auth).await,
        };
        if let Outcome::Sent(status) = outcome {
            return Done::Sent {
                message_id: c.message_id,
                subscription_id: c.subscription_id,
                attempts: c.attempts,
                origin: c.origin,
                status,
            };
        }
        let lane_moved = match self.record(&c, outcome).await {
            Ok(moved) => moved,
            Err(e) => {
                tracing::error!(error = %e, "recording a push outcome failed; the lease will retry it");
                false
            }
        };
        Done::Recorded {
            origin: c.origin,
            lane_moved,
        }
    }

    async fn send(&self, c: &Claimed, endpoint: &str, p256dh: &str, auth: &str) -> Outcome {
        if let Err(why) = self.policy.check(endpoint) {
            return Outcome::Fail {
                status: None,
                detail: format!("endpoint refused: it {why}"),
            };
        }
        let Some(payload) = &c.payload else {
            return Outcome::Fail {
                status: None,
                detail: "no payload".into(),
            };
        };
        let keys = match UaKeys::parse(p256dh, auth) {
            Ok(k) => k,
            Err(e) => {
                return Outcome::Fail {
                    status: None,
                    detail: format!("subscription keys: {e}"),
                }
            }
        };
        let body = match webpush::encrypt(&keys, payload.to_string().as_bytes()) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Fail {
                    status: None,
                    detail: format!("encryption: {e}"),
                }
            }
        };
        let authorization = self.authorization(&c.origin);
        let mut headers = HeaderMap::new();
        headers.insert("TTL", HeaderValue::from(self.settings.ttl_secs));
        headers.insert("Urgency", HeaderValue::from_static("normal"));
        // One topic per conversation (32 hex characters, within RFC 8030's
        // base64url alphabet and length): a burst collapses to the latest.
        if let Ok(v) = HeaderValue::from_str(&c.conversation_id.simple().to_string()) {
            headers.insert("Topic", v);
        }
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("aes128gcm"));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        match HeaderValue::from_str(&authorization) {
            Ok(v) => headers.insert(AUTHORIZATION, v),
            Err(_) => {
                return Outcome::Fail {
                    status: None,
                    detail: "authorization header".into(),
                }
            }
        };
        let response = self
            .http
            .post(endpoint)
            .headers(headers)
            .body(body)
            .timeout(self.settings.timeout)
            .send()
            .await;
        match response {
            Err(e) => Outcome::Retry {
                status: None,
                retry_after: None,
                detail: if e.is_timeout() {
                    "timeout".into()
                } else {
                    "connection error".into()
                },
            },
            Ok(r) => {
                let status = r.status();
                let retry_after = retry_after(r.headers());
                classify(status, retry_after)
            }
        }
    }

    /// Records a non-2xx outcome; `true` when it closed the row and a later
    /// row of its lane is waiting. Retries and failures are fenced on the
    /// claim like [`Self::record_sent`]; a gone subscription closes all its
    /// rows whatever their claims.
    async fn record(&self, c: &Claimed, outcome: Outcome) -> Result<bool, anyhow::Error> {
        match outcome {
            // Recorded in batches by the run loop (`record_sent`).
            Outcome::Sent(_) => Ok(false),
            Outcome::Gone(status) => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM push_subscriptions WHERE subscription_id = $1")
                    .bind(c.subscription_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE push_deliveries SET state = 'gone', payload = NULL, last_status = $2, lease_until = NULL \
                     WHERE subscription_id = $1 AND state IN ('pending', 'sending')",
                )
                .bind(c.subscription_id)
                .bind(i32::from(status))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tracing::info!(status, "push subscription gone; deleted");
                Stats::add(&self.stats.pushes_gone, 1);
                Ok(false)
            }
            Outcome::Retry {
                status,
                retry_after,
                detail,
            } if c.attempts < self.settings.max_attempts => {
                // The row stays first in its lane: the lane waits for it.
                // Its later rows are parked until then too (they could not
                // go before it anyway), so that claims and full rounds
                // during a long backoff skip them by the due index instead
                // of finding each one blocked.
                let delay = self.backoff(c.attempts, retry_after);
                sqlx::query(
                    "WITH h AS ( \
                       UPDATE push_deliveries SET state = 'pending', lease_until = NULL, last_status = $3, \
                         next_attempt_at = now() + make_interval(secs => $4) \
                       WHERE message_id = $1 AND subscription_id = $2 \
                         AND state = 'sending' AND attempts = $5 \
                       RETURNING subscription_id, conversation_id, seq, message_id, next_attempt_at) \
                     UPDATE push_deliveries n SET next_attempt_at = h.next_attempt_at FROM h \
                     WHERE n.subscription_id = h.subscription_id AND n.conversation_id = h.conversation_id \
                       AND n.state = 'pending' AND (n.seq, n.message_id) > (h.seq, h.message_id) \
                       AND n.next_attempt_at < h.next_attempt_at",
                )
                .bind(c.message_id)
                .bind(c.subscription_id)
                .bind(status.map(i32::from))
                .bind(delay.as_secs_f64())
                .bind(c.attempts)
                .execute(&self.pool)
                .await?;
                tracing::info!(?status, %detail, delay_ms = delay.as_millis() as u64, "push deferred; will retry");
                Stats::add(&self.stats.pushes_retried, 1);
                Ok(false)
            }
            Outcome::Retry { status, detail, .. } | Outcome::Fail { status, detail } => {
                let value = serde_json::json!({
                    "message_id": c.message_id,
                    "subscription_id": c.subscription_id,
                    "user_id": c.user_id,
                    "conversation_id": c.conversation_id,
                    "origin": c.origin,
                    "status": status,
                    "attempts": c.attempts,
                });
                self.dead_letter
                    .failure(&c.user_id.to_string(), "push_failed", &detail, &value)
                    .await?;
                // The lane moves on past it.
                let moved: Option<bool> = sqlx::query_scalar(concat!(
                    "UPDATE push_deliveries d SET state = 'failed', payload = NULL, lease_until = NULL, \
                       last_status = $3 \
                     WHERE d.message_id = $1 AND d.subscription_id = $2 \
                       AND d.state = 'sending' AND d.attempts = $4 \
                     RETURNING ",
                    lane_continues!()
                ))
                .bind(c.message_id)
                .bind(c.subscription_id)
                .bind(status.map(i32::from))
                .bind(c.attempts)
                .fetch_optional(&self.pool)
                .await?;
                tracing::warn!(?status, %detail, "push failed for good; dead-lettered");
                Stats::add(&self.stats.pushes_failed, 1);
                Ok(moved.unwrap_or(false))
            }
        }
    }

    /// The VAPID header for `origin`, signed once per origin and reused
    /// until it has less than half its lifetime left.
    fn authorization(&self, origin: &str) -> String {
        let now = Utc::now().timestamp();
        let mut cache = self
            .jwt_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((header, exp)) = cache.get(origin) {
            if *exp - now > JWT_LIFETIME_SECS / 2 {
                return header.clone();
            }
        }
        let exp = now + JWT_LIFETIME_SECS;
        let header = self
            .vapid
            .authorization(origin, &self.settings.subject, exp);
        cache.insert(origin.to_owned(), (header.clone(), exp));
        header
    }

    /// Exponential backoff with jitter (between half and all of
    /// `backoff * 2^(attempt-1)`), at least `retry_after`, at most the cap.
    fn backoff(&self, attempt: i32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .settings
            .backoff
            .saturating_mul(1u32 << attempt.clamp(1, 20).saturating_sub(1));
        let cap = self.settings.backoff_max;
        let exp = exp.min(cap);
        let jittered = exp.mul_f64(rand::rng().random_range(0.5..=1.0));
        jittered.max(retry_after.unwrap_or_default()).min(cap)
    }
}

/// Whether an origin is claimed for again after an answer: once `refill`
/// of its share is free (one claim per several answers), or at once when
/// the answer let a lane with a waiting row move on (that row would
/// otherwise wait for other answers or the poll interval). Either way at
/// most one claim per origin and batch of answers.
fn refills(per_origin: usize, busy: usize, refill: usize, lane_moved: bool) -> bool {
    let free = per_origin.saturating_sub(busy);
    free >= refill || (lane_moved && free > 0)
}

fn release(in_flight: &mut HashMap<String, usize>, total: &mut usize, origin: &str) {
    if let Some(n) = in_flight.get_mut(origin) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            in_flight.remove(origin);
        }
    }
    *total = total.saturating_sub(1);
}

fn classify(status: StatusCode, retry_after: Option<Duration>) -> Outcome {
    let code = status.as_u16();
    if status.is_success() {
        Outcome::Sent(code)
    } else if code == 404 || code == 410 {
        Outcome::Gone(code)
    } else if code == 429 || status.is_server_error() {
        Outcome::Retry {
            status: Some(code),
            retry_after,
            detail: format!("push service answered {code}"),
        }
    } else {
        Outcome::Fail {
            status: Some(code),
            detail: format!("push service refused the request with {code}"),
        }
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (at.with_timezone(&Utc) - Utc::now()).to_std().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(
            classify(StatusCode::CREATED, None),
            Outcome::Sent(201)
        ));
        assert!(matches!(
            classify(StatusCode::GONE, None),
            Outcome::Gone(410)
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, None),
            Outcome::Gone(404)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, None),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, None),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, None),
            Outcome::Fail { .. }
        ));
    }

    #[test]
    fn origins_refill_per_quarter_or_when_a_lane_moves_on() {
        // 16 per origin, refill at 4 free.
        assert!(!refills(16, 13, 4, false), "3 free: wait for more answers");
        assert!(refills(16, 12, 4, false), "a quarter free");
        assert!(refills(16, 15, 4, true), "a lane's next row goes at once");
        assert!(!refills(16, 16, 4, true), "no room, no claim");
        assert!(refills(1, 0, 1, false));
    }

    #[test]
    fn retry_after_parses_both_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None, "a past date means no wait");
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
