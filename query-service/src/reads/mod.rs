//! The reads themselves, transport-free: parse the request's values, check
//! what the caller may see, go through the cache or PostgreSQL.
//!
//! - [`conversations`]: the conversation list, details, read markers.
//! - [`messages`]: history pages and the membership periods that bound them.
//! - [`users`]: profiles and username search.
//! - [`audit`]: the event log for auditors and the WebSocket replay, read
//!   from the event store (`events`), not from read models.
//!
//! Every view type here is `serde` so that it can be cached as JSON.

pub mod audit;
pub mod conversations;
pub mod messages;
pub mod users;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cache::Cache;

/// Why a read failed. The gRPC layer maps each variant to one status.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// INVALID_ARGUMENT `validation_failed`: malformed id, cursor or bounds.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// OUT_OF_RANGE `cursor_ahead`: a replay cursor beyond the head of the
    /// log. No position a client was ever given lies there, so it is
    /// refused rather than waited for (a hostile cursor must not become
    /// anyone's starting point).
    #[error("the cursor is beyond the head of the event log")]
    CursorAhead,
    /// NOT_FOUND `conversation_not_found`: unknown, or not visible to the caller.
    #[error("conversation not found")]
    ConversationNotFound,
    /// NOT_FOUND `user_not_found`.
    #[error("user not found")]
    UserNotFound,
    /// PERMISSION_DENIED `forbidden`: the audit log needs the `auditor` role.
    #[error("the auditor role is required")]
    NotAuditor,
    /// INTERNAL: the database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// INTERNAL: a stored row does not have the shape it must have.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// UNAVAILABLE `projection_behind`: the read models have not reached
    /// what was already sent live (the read fence timed out); retry.
    #[error(transparent)]
    Behind(#[from] crate::cache::ProjectionBehind),
}

impl QueryError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Parses a UUID given by a client.
pub(crate) fn parse_id(field: &'static str, s: &str) -> Result<Uuid, QueryError> {
    Uuid::parse_str(s).map_err(|_| QueryError::invalid(field, "must be a UUID"))
}

/// A page size: `default` when absent, at most `max` (larger asks are
/// clamped), never 0.
pub(crate) fn page_limit(
    requested: Option<u32>,
    default: u32,
    max: u32,
) -> Result<i64, QueryError> {
    match requested {
        None => Ok(i64::from(default)),
        Some(0) => Err(QueryError::invalid("limit", "must be at least 1")),
        Some(n) => Ok(i64::from(n.min(max))),
    }
}

/// One message as API.md shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct MessageView {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub seq: i64,
    pub sender_id: Uuid,
    /// `None` once deleted.
    pub body: Option<String>,
    pub sent_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted: bool,
}

/// The read side: PostgreSQL read models and event store, Redis in front.
#[derive(Debug, Clone)]
pub struct Reads {
    pool: PgPool,
    cache: Arc<Cache>,
}

impl Reads {
    pub fn new(pool: PgPool, cache: Arc<Cache>) -> Self {
        Self { pool, cache }
    }

    /// The cache, for its counters.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The pool, for readiness checks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
