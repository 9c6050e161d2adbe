//! Subscriptions, settings and mutes: what the gRPC service reads and
//! writes, as typed operations over the notifier's tables.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::endpoint::EndpointPolicy;
use crate::webpush::{self, UaKeys};

/// Longest accepted `email_delay_seconds` (a week).
pub const MAX_EMAIL_DELAY: u32 = 604_800;
/// Longest accepted endpoint URL.
const MAX_ENDPOINT: usize = 2048;

/// Why a preferences call failed. Each variant names its gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum PrefsError {
    /// INVALID_ARGUMENT `validation_failed`, with the field.
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// NOT_FOUND `subscription_not_found`.
    #[error("subscription not found")]
    SubscriptionNotFound,
    /// NOT_FOUND `conversation_not_found`: unknown, or the caller is no member.
    #[error("conversation not found")]
    ConversationNotFound,
    /// INTERNAL; logged where mapped, never detailed to the caller.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A user's channel switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub push: bool,
    pub email: bool,
    pub email_delay_seconds: u32,
}

/// A subscription as listed (no keys: they are write-only).
#[derive(Debug, Clone)]
pub struct SubscriptionView {
    pub subscription_id: Uuid,
    pub endpoint: String,
    pub created_at: DateTime<Utc>,
}

/// Preference storage.
#[derive(Debug, Clone)]
pub struct Prefs {
    pool: PgPool,
    default_delay: u32,
    policy: Arc<EndpointPolicy>,
    max_subscriptions: u32,
}

impl Prefs {
    pub fn new(
        pool: PgPool,
        default_delay: u32,
        policy: Arc<EndpointPolicy>,
        max_subscriptions: u32,
    ) -> Self {
        Self {
            pool,
            default_delay: default_delay.min(MAX_EMAIL_DELAY),
            policy,
            max_subscriptions: max_subscriptions.max(1),
        }
    }

    /// Validates and stores a subscription; the same (user, endpoint) again
    /// replaces the keys and keeps the id. Returns (id, created).
    pub async fn create_subscription(
        &self,
        user: Uuid,
        endpoint: &str,
        p256dh: &str,
        auth: &str,
    ) -> Result<(Uuid, bool), PrefsError> {
        if endpoint.len() > MAX_ENDPOINT || webpush::origin(endpoint).is_none() {
            return Err(PrefsError::Invalid {
                field: "endpoint",
                reason: "must be an absolute https URL",
            });
        }
        self.policy
            .check_registration(endpoint)
            .await
            .map_err(|reason| PrefsError::Invalid {
                field: "endpoint",
                reason,
            })?;
        UaKeys::parse(p256dh, auth).map_err(|e| match e {
            webpush::KeyError::BadAuth => PrefsError::Invalid {
                field: "keys.auth",
                reason: "must be a base64url 16-byte secret",
            },
            _ => PrefsError::Invalid {
                field: "keys.p256dh",
                reason: "must be a base64url uncompressed P-256 point",
            },
        })?;
        // One statement: the upsert, then (serialised per user by an
        // advisory lock, so two registrations cannot both stay under the
        // cap) the user's oldest subscriptions beyond the cap go. Their
        // queued pushes then close as gone, as after a 410.
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('push_subscriptions:' || $1::text, 0))",
        )
        .bind(user)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "INSERT INTO push_subscriptions (subscription_id, user_id, endpoint, p256dh, auth) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (user_id, endpoint) DO UPDATE SET p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth \
             RETURNING subscription_id, (xmax = 0) AS created",
        )
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(endpoint)
        .bind(p256dh.trim_end_matches('='))
        .bind(auth.trim_end_matches('='))
        .fetch_one(&mut *tx)
        .await?;
        let id: Uuid = row.try_get(0)?;
        sqlx::query(
            "DELETE FROM push_subscriptions WHERE user_id = $1 AND subscription_id <> $2 \
               AND subscription_id NOT IN (SELECT subscription_id FROM push_subscriptions \
                 WHERE user_id = $1 AND subscription_id <> $2 \
                 ORDER BY created_at DESC, subscription_id DESC LIMIT $3)",
        )
        .bind(user)
        .bind(id)
        .bind(i64::from(self.max_subscriptions) - 1)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((id, row.try_get(1)?))
    }

    pub async fn list_subscriptions(
        &self,
        user: Uuid,
    ) -> Result<Vec<SubscriptionView>, PrefsError> {
        let rows = sqlx::query(
            "SELECT subscription_id, endpoint, created_at FROM push_subscriptions \
             WHERE user_id = $1 ORDER BY created_at, subscription_id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(SubscriptionView {
                    subscription_id: r.try_get(0)?,
                    endpoint: r.try_get(1)?,
                    created_at: r.try_get(2)?,
                })
            })
            .collect()
    }

    pub async fn delete_subscription(&self, user: Uuid, id: Uuid) -> Result<(), PrefsError> {
        let done = sqlx::query(
            "DELETE FROM push_subscriptions WHERE subscription_id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(PrefsError::SubscriptionNotFound);
        }
        Ok(())
    }

    pub async fn settings(&self, user: Uuid) -> Result<Settings, PrefsError> {
        let row = sqlx::query(
            "SELECT push, email, email_delay_seconds FROM notification_settings WHERE user_id = $1",
        )
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Settings {
                push: r.try_get(0)?,
                email: r.try_get(1)?,
                email_delay_seconds: u32::try_from(r.try_get::<i32, _>(2)?).unwrap_or(0),
            },
            None => self.defaults(),
        })
    }

    /// The settings of a user who never chose.
    pub fn defaults(&self) -> Settings {
        Settings {
            push: true,
            email: true,
            email_delay_seconds: self.default_delay,
        }
    }

    pub async fn put_settings(&self, user: Uuid, s: Settings) -> Result<(), PrefsError> {
        if s.email_delay_seconds > MAX_EMAIL_DELAY {
            return Err(PrefsError::Invalid {
                field: "email_delay_seconds",
                reason: "must be between 0 and 604800",
            });
        }
        sqlx::query(
            "INSERT INTO notification_settings (user_id, push, email, email_delay_seconds, updated_at) \
             VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (user_id) DO UPDATE SET push = EXCLUDED.push, email = EXCLUDED.email, \
               email_delay_seconds = EXCLUDED.email_delay_seconds, updated_at = now()",
        )
        .bind(user)
        .bind(s.push)
        .bind(s.email)
        .bind(s.email_delay_seconds as i32)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Mutes (until `until`, or until unmuted when `None`) or unmutes a
    /// conversation the caller is a member of (per the read model).
    pub async fn set_mute(
        &self,
        user: Uuid,
        conversation: Uuid,
        muted: bool,
        until: Option<DateTime<Utc>>,
    ) -> Result<(), PrefsError> {
        let member: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM rm_members WHERE conversation_id = $1 AND user_id = $2)",
        )
        .bind(conversation)
        .bind(user)
        .fetch_one(&self.pool)
        .await?;
        if !member {
            return Err(PrefsError::ConversationNotFound);
        }
        if muted {
            sqlx::query(
                "INSERT INTO conversation_mutes (user_id, conversation_id, muted_until) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, conversation_id) DO UPDATE SET muted_until = EXCLUDED.muted_until",
            )
            .bind(user)
            .bind(conversation)
            .bind(until)
            .execute(&self.pool)
            .await?;
        } else {
            sqlx::query(
                "DELETE FROM conversation_mutes WHERE user_id = $1 AND conversation_id = $2",
            )
            .bind(user)
            .bind(conversation)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}
