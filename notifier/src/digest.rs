//! Email digests: one mail per user per window, never one per message.
//!
//! The consumer queues a `digest_items` row per (email recipient, message),
//! due `email_delay_seconds` after the message was sent, and deletes rows
//! as `ReadMarkerMoved` events pass. Each round this worker picks users
//! with a due item whose previous digest is at least their delay old, and
//! per user, in one transaction:
//!
//! 1. locks the user's items (`FOR UPDATE SKIP LOCKED`: two instances never
//!    mail the same items);
//! 2. drops those read meanwhile (the projector's `rm_read_markers`, in case
//!    the marker event came before the message on another partition);
//! 3. mails what is left — every pending item, due or not, so a burst
//!    becomes one mail — grouped by conversation with counts and previews;
//! 4. deletes the items and records the digest, then commits.
//!
//! The mail goes out before the commit: a crash between the SMTP server's
//! acceptance and the commit mails the digest again (at-least-once), while
//! a failed send rolls back and is retried 30 s later.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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

/// The digest worker.
pub struct DigestWorker {
    pub(crate) pool: PgPool,
    pub(crate) mailer: AsyncSmtpTransport<Tokio1Executor>,
    pub(crate) from: Mailbox,
    pub(crate) default_delay: u32,
    pub(crate) poll: Duration,
    pub(crate) wake: Arc<Notify>,
    pub(crate) stats: Arc<Stats>,
}

impl std::fmt::Debug for DigestWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestWorker")
            .field("from", &self.from.to_string())
            .field("default_delay", &self.default_delay)
            .finish_non_exhaustive()
    }
}

/// One queued message of a digest.
#[derive(Debug)]
struct Item {
    conversation_id: Uuid,
    title: String,
    sender: String,
    preview: String,
    sent_at: DateTime<Utc>,
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
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// Mails every user whose digest is due; returns how many were handled.
    async fn round(&self) -> Result<usize, sqlx::Error> {
        let users: Vec<Uuid> = sqlx::query_scalar(
            "SELECT i.user_id FROM digest_items i \
             LEFT JOIN notification_settings s ON s.user_id = i.user_id \
             WHERE i.due_at <= now() \
               AND NOT EXISTS (SELECT 1 FROM digests_sent d WHERE d.user_id = i.user_id \
                   AND d.sent_at + make_interval(secs => COALESCE(s.email_delay_seconds, $1)) > now()) \
             GROUP BY i.user_id LIMIT 100",
        )
        .bind(f64::from(self.default_delay))
        .fetch_all(&self.pool)
        .await?;
        let mut handled = 0;
        for user in users {
            match self.digest(user).await {
                Ok(true) => handled += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, %user, "digest not sent; retrying in 30 s");
                    sqlx::query(
                        "UPDATE digest_items SET due_at = now() + interval '30 seconds' \
                         WHERE user_id = $1 AND due_at <= now()",
                    )
                    .bind(user)
                    .execute(&self.pool)
                    .await?;
                }
            }
        }
        Ok(handled)
    }

    /// One user's digest; `Ok(false)` when another instance holds it.
    #[tracing::instrument(skip(self))]
    async fn digest(&self, user: Uuid) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let locked: Vec<Uuid> = sqlx::query_scalar(
            "SELECT message_id FROM digest_items WHERE user_id = $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        if locked.is_empty() {
            return Ok(false);
        }
        sqlx::query(
            "DELETE FROM digest_items i USING rm_read_markers r \
             WHERE i.user_id = $1 AND r.user_id = i.user_id \
               AND r.conversation_id = i.conversation_id AND i.seq <= r.seq",
        )
        .bind(user)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT i.conversation_id, COALESCE(c.title, su.display_name, 'a conversation'), \
                    COALESCE(su.display_name, 'someone'), i.preview, i.sent_at \
             FROM digest_items i \
             LEFT JOIN rm_conversations c ON c.conversation_id = i.conversation_id \
             LEFT JOIN rm_users su ON su.user_id = i.sender_id \
             WHERE i.user_id = $1 ORDER BY i.conversation_id, i.seq",
        )
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            items.push(Item {
                conversation_id: r.try_get(0)?,
                title: r.try_get(1)?,
                sender: r.try_get(2)?,
                preview: r.try_get(3)?,
                sent_at: r.try_get(4)?,
            });
        }
        if items.is_empty() {
            tx.commit().await?;
            return Ok(true);
        }
        let to: Option<(String, String)> =
            sqlx::query_as("SELECT email, display_name FROM rm_users WHERE user_id = $1")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        let conversations = group(&items);
        let delete =
            sqlx::query("DELETE FROM digest_items WHERE user_id = $1 AND message_id = ANY($2)")
                .bind(user)
                .bind(&locked);
        let Some((email, name)) = to else {
            tracing::warn!("no email address known for the user; digest dropped");
            delete.execute(&mut *tx).await?;
            tx.commit().await?;
            return Ok(true);
        };
        let to = Mailbox::new(Some(name.clone()), email.parse()?);
        let mail = compose(&self.from, to, &name, &conversations, items.len())?;
        delete.execute(&mut *tx).await?;
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
