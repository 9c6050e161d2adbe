//! Sessions in Redis.
//!
//! # Key layout (prefix `{p}` = `MESSENGER_REDIS_PREFIX`)
//!
//! - `{p}:session:{session_id}`: hash `user_id`, `created_at`,
//!   `last_seen_at`, `user_agent`, `refresh` (SHA-256 hex of the current
//!   refresh token), expiring after the refresh lifetime; its existence is
//!   what makes the session's access tokens valid.
//! - `{p}:user-sessions:{user_id}`: set of the user's session ids.
//! - channel `{p}:revoked:{user_id}`: a revoked session's id is published
//!   here (`*` = every session of the user) so gateways close its sockets.

use fred::prelude::{HashesInterface, KeysInterface, Pool};
use uuid::Uuid;

/// Key of a session's hash.
pub fn session_key(prefix: &str, session_id: Uuid) -> String {
    format!("{prefix}:session:{session_id}")
}

/// Key of the set of a user's sessions.
pub fn user_sessions_key(prefix: &str, user_id: Uuid) -> String {
    format!("{prefix}:user-sessions:{user_id}")
}

/// Channel announcing revoked sessions of a user.
pub fn revoked_channel(prefix: &str, user_id: Uuid) -> String {
    format!("{prefix}:revoked:{user_id}")
}

/// Whether `session_id` exists and belongs to `user_id`.
pub async fn is_active(
    redis: &Pool,
    prefix: &str,
    session_id: Uuid,
    user_id: Uuid,
) -> Result<bool, fred::error::Error> {
    let owner: Option<String> = redis
        .hget(session_key(prefix, session_id), "user_id")
        .await?;
    Ok(owner.is_some_and(|o| o == user_id.to_string()))
}

/// Whether the key exists at all (cheap probe used by readiness).
pub async fn ping(redis: &Pool, prefix: &str) -> Result<(), fred::error::Error> {
    let _: i64 = redis.exists(format!("{prefix}:readyz")).await?;
    Ok(())
}
