//! Email digests: one mail per user per window, never one per message.
//!
//! Computed at digest time from the read models (migration
//! `20261203000004`), so a message costs the email channel no row per
//! recipient. The consumer only upserts one `digest_pending` row per
//! conversation and batch. A user's *candidates* in a pending conversation
//! are the messages by others, not deleted, after the greatest of their
//! read marker, their last mailed sequence (`digest_marks`), their join and
//! the pending row's `since_seq`, while they are a member with email on and
//! the conversation is not muted (settings and mutes as they are at digest
//! time).
//!
//! Each round this worker picks users whose first candidate in some
//! conversation is older than their delay and whose previous digest is at
//! least their delay old, and per user, in one transaction:
//!
//! 1. takes the user's advisory lock (two instances never mail one user at
//!    once) and checks the window again;
//! 2. mails every candidate, due or not, so a burst becomes one mail,
//!    grouped by conversation with counts and previews;
//! 3. raises the user's `digest_marks` to what was mailed and records the
//!    digest, then commits.
//!
//! Then it deletes the pending rows of conversations where no member has
//! a candidate left, unless the consumer queued a message meanwhile
//! (`last_seq` moved).
//!
//! The mail goes out before the commit: a crash between the SMTP server's
//! acceptance and the commit mails the digest again (at-least-once), while
//! a failed send rolls back and the user is retried 30 s later.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use infra::shutdown::Shutdown;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::{PgPool, Row};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::consumer::Stats;

/// Previews per conversation in one digest.
const PREVIEWS: usize = 3;
/// Most characters of a digest preview.
const PREVIEW_CHARS: i32 = 140;
/// How long a user whose digest failed is left alone.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Least time between two rounds woken by the consumer: the consumer wakes
/// the worker per batch, and a digest has a resolution of seconds.
const MIN_ROUND_GAP: Duration = Duration::from_secs(1);

/// The lower bound (exclusive) of a member's candidates in a pending
/// conversation, over `p` (digest_pending), `mb` (rm_members), `r`
/// (rm_read_markers, left-joined) and `dm` (digest_marks, left-joined).
const AFTER: &str =
    "GREATEST(COALESCE(r.seq, 0), COALESCE(dm.mailed_seq, 0), mb.joined_seq, p.since_seq - 1)";

/// The joins of a member to their read marker, mark and settings.
const MEMBER_JOINS: &str = "\
    LEFT JOIN notification_settings s ON s.user_id = mb.user_id \
    LEFT JOIN rm_read_markers r ON r.conversation_id = mb.conversation_id AND r.user_id = mb.user_id \
    LEFT JOIN digest_marks dm ON dm.conversation_id = mb.conversation_id AND dm.user_id = mb.user_id";

/// A member who may be mailed about the conversation now.
const MAILABLE: &str = "COALESCE(s.email, true) \
    AND NOT EXISTS (SELECT 1 FROM conversation_mutes mu \
        WHERE mu.user_id = mb.user_id AND mu.conversation_id = mb.conversation_id \
          AND (mu.muted_until IS NULL OR mu.muted_until > now()))";

/// The digest worker.
pub struct DigestWorker {
    pub(crate) pool: PgPool,
    pub(crate) mailer: AsyncSmtpTransport<Tokio1Executor>,
    pub(crate) from: Mailbox,
    pub(crate) default_delay: u32,
    pub(crate) poll: Duration,
    pub(crate) wake: Arc<Notify>,
    pub(crate) stats: Arc<Stats>,
    /// Users whose last digest failed, and when to try again.
    pub(crate) backoff: Mutex<HashMap<Uuid, Instant>>,
}

impl std::fmt::Debug for DigestWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestWorker")
            .field("from", &self.from.to_string())
            .field("default_delay", &self.default_delay)
            .finish_non_exhaustive()
    }
}

/// One message of a digest.
#[derive(Debug)]
struct Item {
    conversation_id: Uuid,
    title: String,
    sender: String,
    preview: String,
    sent_at: DateTime<Utc>,
    seq: i64,
}

impl DigestWorker {
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            match self.round().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "digest round failed; retrying"),
            }
            tokio::select! {
                () = shutdown.triggered() => break,
                () = self.wake.notified() => {
                    if shutdown.sleep(MIN_ROUND_GAP).await {
                        break;
                    }
                }
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// Mails every user whose digest is due, then drops the pending rows
    /// nobody needs any more; returns how many users were mailed.
    async fn round(&self) -> Result<usize, sqlx::Error> {
        let users: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT mb.user_id \
             FROM digest_pending p \
             JOIN rm_members mb ON mb.conversation_id = p.conversation_id \
             {MEMBER_JOINS} \
             CROSS JOIN LATERAL ( \
               SELECT m.sent_at FROM rm_messages m \
               WHERE m.conversation_id = p.conversation_id AND m.seq > {AFTER} \
                 AND m.sender_id <> mb.user_id AND NOT m.deleted \
               ORDER BY m.seq LIMIT 1) first \
             WHERE {MAILABLE} \
               AND first.sent_at + make_interval(secs => COALESCE(s.email_delay_seconds, $1)) <= now() \
               AND NOT EXISTS (SELECT 1 FROM digests_sent d WHERE d.user_id = mb.user_id \
                   AND d.sent_at + make_interval(secs => COALESCE(s.email_delay_seconds, $1)) > now()) \
             LIMIT 100"
        ))
        .bind(f64::from(self.default_delay))
        .fetch_all(&self.pool)
        .await?;
        let mut handled = 0;
        for user in users {
            if self.backing_off(user) {
                continue;
            }
            match self.digest(user).await {
                Ok(true) => handled += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, %user, "digest not sent; retrying in 30 s");
                    if let Ok(mut b) = self.backoff.lock() {
                        b.insert(user, Instant::now() + RETRY_AFTER);
                    }
                }
            }
        }
        self.drop_finished().await?;
        Ok(handled)
    }

    /// Whether `user`'s last failure is recent (forgets old ones).
    fn backing_off(&self, user: Uuid) -> bool {
        let Ok(mut b) = self.backoff.lock() else {
            return false;
        };
        let now = Instant::now();
        b.retain(|_, until| *until > now);
        b.contains_key(&user)
    }

    /// Deletes the pending rows of conversations where no mailable member
    /// has a candidate left, unless a message was queued since (`last_seq`
    /// re-checked by the DELETE itself).
    async fn drop_finished(&self) -> Result<(), sqlx::Error> {
        // The LIMIT keeps the candidate lookup a probe of rm_messages'
        // primary key per member: as a plain EXISTS the planner turned it
        // into an anti-join over every message (56 ms a round in the
        // benchmark).
        let finished: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
            "SELECT p.conversation_id, p.last_seq FROM digest_pending p \
             WHERE NOT EXISTS ( \
               SELECT 1 FROM rm_members mb {MEMBER_JOINS} \
               CROSS JOIN LATERAL ( \
                 SELECT 1 FROM rm_messages m \
                 WHERE m.conversation_id = p.conversation_id AND m.seq > {AFTER} \
                   AND m.sender_id <> mb.user_id AND NOT m.deleted \
                 ORDER BY m.seq LIMIT 1) first \
               WHERE mb.conversation_id = p.conversation_id AND {MAILABLE})"
        ))
        .fetch_all(&self.pool)
        .await?;
        if finished.is_empty() {
            return Ok(());
        }
        let (convs, lasts): (Vec<Uuid>, Vec<i64>) = finished.into_iter().unzip();
        sqlx::query(
            "DELETE FROM digest_pending p USING UNNEST($1::uuid[], $2::bigint[]) AS x(c, l) \
             WHERE p.conversation_id = x.c AND p.last_seq = x.l",
        )
        .bind(&convs)
        .bind(&lasts)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One user's digest; `Ok(false)` when another instance holds the user
    /// or mailed them within their window.
    #[tracing::instrument(skip(self))]
    async fn digest(&self, user: Uuid) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let free: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtextextended('digest:' || $1::text, 0)) \
               AND NOT EXISTS (SELECT 1 FROM digests_sent d \
                   LEFT JOIN notification_settings s ON s.user_id = d.user_id \
                   WHERE d.user_id = $1 \
                     AND d.sent_at + make_interval(secs => COALESCE(s.email_delay_seconds, $2)) > now())",
        )
        .bind(user)
        .bind(f64::from(self.default_delay))
        .fetch_one(&mut *tx)
        .await?;
        if !free {
            return Ok(false);
        }
        let rows = sqlx::query(&format!(
            "SELECT m.conversation_id, COALESCE(c.title, su.display_name, 'a conversation'), \
                    COALESCE(su.display_name, 'someone'), left(m.body, $2), m.sent_at, m.seq \
             FROM digest_pending p \
             JOIN rm_members mb ON mb.conversation_id = p.conversation_id AND mb.user_id = $1 \
             {MEMBER_JOINS} \
             JOIN rm_messages m ON m.conversation_id = p.conversation_id AND m.seq > {AFTER} \
                  AND m.sender_id <> $1 AND NOT m.deleted \
             LEFT JOIN rm_conversations c ON c.conversation_id = m.conversation_id \
             LEFT JOIN rm_users su ON su.user_id = m.sender_id \
             WHERE {MAILABLE} \
             ORDER BY m.conversation_id, m.seq"
        ))
        .bind(user)
        .bind(PREVIEW_CHARS)
        .fetch_all(&mut *tx)
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            items.push(Item {
                conversation_id: r.try_get(0)?,
                title: r.try_get(1)?,
                sender: r.try_get(2)?,
                preview: r.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                sent_at: r.try_get(4)?,
                seq: r.try_get(5)?,
            });
        }
        if items.is_empty() {
            // Read (or muted) since the round looked: nothing to mail.
            return Ok(false);
        }
        // The watermark: everything listed here is mailed once.
        let mut mailed: BTreeMap<Uuid, i64> = BTreeMap::new();
        for i in &items {
            let seq = mailed.entry(i.conversation_id).or_insert(i.seq);
            *seq = (*seq).max(i.seq);
        }
        let (convs, seqs): (Vec<Uuid>, Vec<i64>) = mailed.into_iter().unzip();
        sqlx::query(
            "INSERT INTO digest_marks (user_id, conversation_id, mailed_seq) \
             SELECT $1, x.c, x.s FROM UNNEST($2::uuid[], $3::bigint[]) AS x(c, s) \
             ON CONFLICT (user_id, conversation_id) DO UPDATE \
             SET mailed_seq = GREATEST(digest_marks.mailed_seq, EXCLUDED.mailed_seq)",
        )
        .bind(user)
        .bind(&convs)
        .bind(&seqs)
        .execute(&mut *tx)
        .await?;
        let to: Option<(String, String)> =
            sqlx::query_as("SELECT email, display_name FROM rm_users WHERE user_id = $1")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        let conversations = group(&items);
        let Some((email, name)) = to else {
            tracing::warn!("no email address known for the user; digest dropped");
            tx.commit().await?;
            return Ok(true);
        };
        let to = Mailbox::new(Some(name.clone()), email.parse()?);
        let mail = compose(&self.from, to, &name, &conversations, items.len())?;
        sqlx::query(
            "INSERT INTO digests_sent (digest_id, user_id, conversations, messages) VALUES ($1, $2, $3, $4)",
        )
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(conversations.len() as i32)
        .bind(items.len() as i32)
        .execute(&mut *tx)
        .await?;
        self.mailer.send(mail).await?;
        tx.commit().await?;
        Stats::add(&self.stats.digests_sent, 1);
        tracing::info!(
            conversations = conversations.len(),
            messages = items.len(),
            "digest mailed"
        );
        Ok(true)
    }
}

/// Items per conversation, most recent conversation first.
fn group(items: &[Item]) -> Vec<(&str, Vec<&Item>)> {
    let mut by: BTreeMap<Uuid, Vec<&Item>> = BTreeMap::new();
    for i in items {
        by.entry(i.conversation_id).or_default().push(i);
    }
    let mut out: Vec<(&str, Vec<&Item>)> = by
        .into_values()
        .filter_map(|v| v.first().map(|f| (f.title.as_str(), v.clone())))
        .collect();
    out.sort_by_key(|(_, v)| std::cmp::Reverse(v.iter().map(|i| i.sent_at).max()));
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The digest: subject with totals, a plain-text and an HTML part listing
/// each conversation with its count and the latest previews.
fn compose(
    from: &Mailbox,
    to: Mailbox,
    name: &str,
    conversations: &[(&str, Vec<&Item>)],
    total: usize,
) -> anyhow::Result<Message> {
    let subject = format!(
        "{total} unread message{} in {} conversation{}",
        if total == 1 { "" } else { "s" },
        conversations.len(),
        if conversations.len() == 1 { "" } else { "s" },
    );
    let mut text = format!("Hello {name},\n\nyou have {subject}:\n");
    let mut html = format!(
        "<p>Hello {},</p><p>you have {}:</p><ul>",
        escape(name),
        escape(&subject)
    );
    for (title, items) in conversations {
        text.push_str(&format!("\n* {title}: {} new\n", items.len()));
        html.push_str(&format!(
            "<li><strong>{}</strong>: {} new<ul>",
            escape(title),
            items.len()
        ));
        for i in items.iter().rev().take(PREVIEWS) {
            text.push_str(&format!("    {}: {}\n", i.sender, i.preview));
            html.push_str(&format!(
                "<li>{}: {}</li>",
                escape(&i.sender),
                escape(&i.preview)
            ));
        }
        html.push_str("</ul></li>");
    }
    html.push_str("</ul>");
    text.push_str("\nOpen Messenger to read them.\n");
    Ok(Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .multipart(MultiPart::alternative_plain_html(text, html))?)
}
