//! Sessions in Redis: one per login, holding the refresh token's hash.
//!
//! A session is what makes its access tokens valid ([`is_active`] runs on
//! every authenticated request), so deleting it revokes the session at
//! once, whatever the remaining lifetime of its access tokens.
//!
//! # Key layout (prefix `{p}` = `MESSENGER_REDIS_PREFIX`)
//!
//! - `{p}:session:{session_id}`: hash with
//!   - `user_id`: owner (UUID);
//!   - `created_at`, `last_seen_at`: RFC 3339 UTC; `last_seen_at` moves at
//!     login and at each refresh (so with a granularity of the access-token
//!     lifetime, and without a write per request);
//!   - `user_agent`: the `User-Agent` of the login, at most 256 bytes;
//!   - `refresh`: SHA-256 (hex) of the current refresh token;
//!   - `prev`: SHA-256 (hex) of the last [`PREVIOUS_KEPT`] rotated refresh
//!     tokens, newest first, comma-separated, to detect reuse.
//!
//!   It expires after the refresh lifetime (`GATEWAY_REFRESH_TTL_SECS`),
//!   renewed at each refresh: an idle session ends by itself.
//! - `{p}:user-sessions:{user_id}`: set of the user's session ids (members
//!   whose hash has expired are dropped when the set is listed); expires
//!   with the user's most recently renewed session.
//! - `{p}:sessions-cut:{user_id}`: Unix time (ms, gateway clock) of the
//!   user's last "revoke all (but one)" (password change or reset), kept an
//!   hour. A login whose password check started before it creates no
//!   session ([`create`] answers `None`): otherwise a login with the old
//!   password racing a reset could outlive the reset.
//! - channel `{p}:revoked:{user_id}`: see below.
//!
//! # Refresh tokens
//!
//! `{session_id}.{secret}`, where `secret` is 256 random bits in base64url
//! without padding (43 characters). The session id makes the lookup O(1);
//! the secret is never stored, only the SHA-256 of the whole token. Each
//! refresh replaces it ([`rotate`], one Lua script, so two concurrent
//! refreshes with the same token cannot both win). Presenting a rotated
//! token (one of the last [`PREVIOUS_KEPT`]) means it was copied: the whole
//! session is revoked, so both the thief's and the owner's tokens stop
//! working. An older or unknown token is simply refused.
//!
//! # Revocation channel (for the WebSocket fan-out)
//!
//! Every revocation — logout, `DELETE /v1/auth/sessions/{id}`, refresh-token
//! reuse, password change (every other session) and password reset (every
//! session) — publishes on `{p}:revoked:{user_id}` one message per revoked
//! session whose payload is exactly that session id as a hyphenated
//! lower-case UUID (`0191…-…`), nothing else. Revoking several sessions
//! publishes several messages, each after the session's key is gone, so a
//! subscriber that re-checks [`is_active`] on a message sees it inactive.
//! (`*` is reserved for "every session of the user" but never published.)
//! Sessions that merely expire publish nothing: their access tokens stop
//! verifying by themselves within the access-token lifetime.
//!
//! Scripts name keys they build from the prefix (the user's sessions), so
//! they assume a single Redis (not a cluster), as does the rest of the
//! platform.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use fred::interfaces::PubsubInterface;
use fred::prelude::{HashesInterface, KeysInterface, LuaInterface, Pool, SetsInterface};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How many rotated refresh-token hashes a session keeps for reuse
/// detection (65 bytes each).
pub const PREVIOUS_KEPT: usize = 32;

/// Longest stored `User-Agent`, bytes.
const USER_AGENT_MAX: usize = 256;

/// Key of a session's hash.
pub fn session_key(prefix: &str, session_id: Uuid) -> String {
    format!("{prefix}:session:{session_id}")
}

/// Key of the set of a user's sessions.
pub fn user_sessions_key(prefix: &str, user_id: Uuid) -> String {
    format!("{prefix}:user-sessions:{user_id}")
}

/// Channel announcing revoked sessions of a user (payload: one session id).
pub fn revoked_channel(prefix: &str, user_id: Uuid) -> String {
    format!("{prefix}:revoked:{user_id}")
}

/// A refresh token in clear: handed to the client once, never stored or
/// logged (`Debug` is redacted).
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(<redacted>)")
    }
}

impl RefreshToken {
    /// A fresh token for `session_id` and the hash to store.
    fn generate(session_id: Uuid) -> (Self, String) {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!(
            "{session_id}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let hash = token_hash(&token);
        (Self(token), hash)
    }

    /// The token, to put in a response body.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// SHA-256 (hex) of a presented refresh token, as stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The session id a refresh token names, if it has the token's shape.
pub fn parse_refresh_token(token: &str) -> Option<Uuid> {
    let (sid, secret) = token.split_once('.')?;
    let ok = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| Uuid::try_parse(sid).ok()).flatten()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// KEYS: session, user set, cut. ARGV: user, now, agent, hash, ttl, sid,
/// when the password check started (ms).
const CREATE: &str = r"
local cut = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if cut >= tonumber(ARGV[7]) then return 0 end
redis.call('HSET', KEYS[1], 'user_id', ARGV[1], 'created_at', ARGV[2], 'last_seen_at', ARGV[2],
  'user_agent', ARGV[3], 'refresh', ARGV[4], 'prev', '')
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
";

/// Key of the time of the user's last revoke-all.
fn cut_key(prefix: &str, user_id: Uuid) -> String {
    format!("{prefix}:sessions-cut:{user_id}")
}

/// Unix time in milliseconds (for [`create`]'s `checked_at`).
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default()
}

/// Creates a session for `user_id` whose password was checked from
/// `checked_at` ([`now_ms`] before the check); returns its id and refresh
/// token, or `None` when the user's sessions were all revoked since (the
/// password changed meanwhile).
pub async fn create(
    redis: &Pool,
    prefix: &str,
    user_id: Uuid,
    user_agent: &str,
    ttl: Duration,
    checked_at: u64,
) -> Result<Option<(Uuid, RefreshToken)>, fred::error::Error> {
    let session_id = Uuid::now_v7();
    let (token, hash) = RefreshToken::generate(session_id);
    let created: i64 = redis
        .eval(
            CREATE,
            vec![
                session_key(prefix, session_id),
                user_sessions_key(prefix, user_id),
                cut_key(prefix, user_id),
            ],
            vec![
                user_id.to_string(),
                now(),
                truncate_utf8(user_agent, USER_AGENT_MAX).to_owned(),
                hash,
                ttl.as_secs().max(1).to_string(),
                session_id.to_string(),
                checked_at.to_string(),
            ],
        )
        .await?;
    Ok((created == 1).then_some((session_id, token)))
}

/// What [`rotate`] found.
#[derive(Debug)]
pub enum Rotation {
    /// The token was current: here is its successor.
    Rotated {
        user_id: Uuid,
        session_id: Uuid,
        refresh_token: RefreshToken,
    },
    /// A rotated token was presented again: the session is now revoked.
    Reused { user_id: Uuid, session_id: Uuid },
    /// Unknown session, or a token that never belonged to it.
    Invalid,
}

/// KEYS[1] session; ARGV: presented hash, new hash, now, ttl, max prev
/// length (chars). Returns {status, user_id}.
const ROTATE: &str = r"
local current = redis.call('HGET', KEYS[1], 'refresh')
if not current then return {'invalid', ''} end
local user = redis.call('HGET', KEYS[1], 'user_id') or ''
local prev = redis.call('HGET', KEYS[1], 'prev') or ''
if current == ARGV[1] then
  if prev == '' then prev = ARGV[1] else prev = ARGV[1] .. ',' .. prev end
  prev = string.sub(prev, 1, tonumber(ARGV[5]))
  redis.call('HSET', KEYS[1], 'refresh', ARGV[2], 'prev', prev, 'last_seen_at', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {'rotated', user}
end
if string.find(prev, ARGV[1], 1, true) then
  redis.call('DEL', KEYS[1])
  return {'reused', user}
end
return {'invalid', user}
";

/// Exchanges a refresh token for a new one (renewing the session's
/// lifetime and `last_seen_at`), or detects reuse and revokes the session.
pub async fn rotate(
    redis: &Pool,
    prefix: &str,
    presented: &str,
    ttl: Duration,
) -> Result<Rotation, fred::error::Error> {
    let Some(session_id) = parse_refresh_token(presented) else {
        return Ok(Rotation::Invalid);
    };
    let (next, next_hash) = RefreshToken::generate(session_id);
    // 64 hex characters per hash, joined by commas.
    let prev_max = PREVIOUS_KEPT * 65 - 1;
    let reply: Vec<String> = redis
        .eval(
            ROTATE,
            vec![session_key(prefix, session_id)],
            vec![
                token_hash(presented),
                next_hash,
                now(),
                ttl.as_secs().max(1).to_string(),
                prev_max.to_string(),
            ],
        )
        .await?;
    let status = reply.first().map(String::as_str).unwrap_or_default();
    let user_id = reply.get(1).and_then(|u| Uuid::try_parse(u).ok());
    Ok(match (status, user_id) {
        ("rotated", Some(user_id)) => {
            let _: i64 = redis
                .expire(user_sessions_key(prefix, user_id), ttl_secs(ttl), None)
                .await?;
            Rotation::Rotated {
                user_id,
                session_id,
                refresh_token: next,
            }
        }
        ("reused", Some(user_id)) => {
            let _: i64 = redis
                .srem(user_sessions_key(prefix, user_id), session_id.to_string())
                .await?;
            publish_revoked(redis, prefix, user_id, &[session_id]).await;
            Rotation::Reused {
                user_id,
                session_id,
            }
        }
        _ => Rotation::Invalid,
    })
}

fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1)
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

/// A session as listed to its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub session_id: Uuid,
    pub created_at: String,
    pub last_seen_at: String,
    pub user_agent: String,
}

/// The user's live sessions, most recently created first. Ids whose hash
/// has expired are removed from the user's set on the way.
pub async fn list(
    redis: &Pool,
    prefix: &str,
    user_id: Uuid,
) -> Result<Vec<SessionInfo>, fred::error::Error> {
    let set = user_sessions_key(prefix, user_id);
    let ids: Vec<String> = redis.smembers(&set).await?;
    let mut sessions = Vec::with_capacity(ids.len());
    let mut stale = Vec::new();
    for id in ids {
        let Ok(session_id) = Uuid::try_parse(&id) else {
            stale.push(id);
            continue;
        };
        let mut h: HashMap<String, String> = redis.hgetall(session_key(prefix, session_id)).await?;
        if h.get("user_id").map(String::as_str) != Some(user_id.to_string().as_str()) {
            stale.push(id);
            continue;
        }
        let mut take = |k: &str| h.remove(k).unwrap_or_default();
        sessions.push(SessionInfo {
            session_id,
            created_at: take("created_at"),
            last_seen_at: take("last_seen_at"),
            user_agent: take("user_agent"),
        });
    }
    if !stale.is_empty() {
        let _: i64 = redis.srem(&set, stale).await?;
    }
    // UUIDv7 ids sort by creation time.
    sessions.sort_by_key(|s| std::cmp::Reverse(s.session_id));
    Ok(sessions)
}

/// KEYS[1] session, KEYS[2] user set; ARGV[1] user id, ARGV[2] session id.
const REVOKE_ONE: &str = r"
if redis.call('HGET', KEYS[1], 'user_id') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
";

/// Revokes one session of `user_id`; false when it does not exist or
/// belongs to someone else (nothing is touched then).
pub async fn revoke(
    redis: &Pool,
    prefix: &str,
    user_id: Uuid,
    session_id: Uuid,
) -> Result<bool, fred::error::Error> {
    let done: i64 = redis
        .eval(
            REVOKE_ONE,
            vec![
                session_key(prefix, session_id),
                user_sessions_key(prefix, user_id),
            ],
            vec![user_id.to_string(), session_id.to_string()],
        )
        .await?;
    if done == 1 {
        publish_revoked(redis, prefix, user_id, &[session_id]).await;
    }
    Ok(done == 1)
}

/// KEYS[1] user set, KEYS[2] cut; ARGV[1] session key prefix
/// (`{p}:session:`), ARGV[2] the session to keep (or ''), ARGV[3] now (ms).
/// Returns the revoked ids.
const REVOKE_ALL: &str = r"
local cut = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if cut < tonumber(ARGV[3]) then cut = tonumber(ARGV[3]) end
redis.call('SET', KEYS[2], string.format('%d', cut), 'EX', 3600)
local revoked = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if id ~= ARGV[2] then
    redis.call('DEL', ARGV[1] .. id)
    redis.call('SREM', KEYS[1], id)
    table.insert(revoked, id)
  end
end
return revoked
";

/// Revokes every session of `user_id` but `except`, and refuses sessions
/// for logins whose password check started before now; returns how many
/// were revoked.
pub async fn revoke_all(
    redis: &Pool,
    prefix: &str,
    user_id: Uuid,
    except: Option<Uuid>,
) -> Result<usize, fred::error::Error> {
    let revoked: Vec<String> = redis
        .eval(
            REVOKE_ALL,
            vec![user_sessions_key(prefix, user_id), cut_key(prefix, user_id)],
            vec![
                format!("{prefix}:session:"),
                except.map(|s| s.to_string()).unwrap_or_default(),
                now_ms().to_string(),
            ],
        )
        .await?;
    let ids: Vec<Uuid> = revoked
        .iter()
        .filter_map(|s| Uuid::try_parse(s).ok())
        .collect();
    publish_revoked(redis, prefix, user_id, &ids).await;
    Ok(revoked.len())
}

/// Announces revoked sessions; a failure is logged, not returned: the
/// sessions are already gone (their tokens are refused), only open
/// WebSockets learn of it later (when they next check their session).
async fn publish_revoked(redis: &Pool, prefix: &str, user_id: Uuid, ids: &[Uuid]) {
    let channel = revoked_channel(prefix, user_id);
    for id in ids {
        let sent: Result<i64, _> = redis.next().publish(&channel, id.to_string()).await;
        if let Err(error) = sent {
            tracing::warn!(%user_id, session_id = %id, %error, "could not announce a revoked session");
        }
    }
}

/// Whether the key exists at all (cheap probe used by readiness).
pub async fn ping(redis: &Pool, prefix: &str) -> Result<(), fred::error::Error> {
    let _: i64 = redis.exists(format!("{prefix}:readyz")).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_name_their_session() {
        let sid = Uuid::now_v7();
        let (t, hash) = RefreshToken::generate(sid);
        assert_eq!(parse_refresh_token(t.expose()), Some(sid));
        assert_eq!(hash, token_hash(t.expose()));
        assert_eq!(hash.len(), 64);
        assert!(!format!("{t:?}").contains(t.expose()));
        let (u, _) = RefreshToken::generate(sid);
        assert_ne!(t, u);
        assert_eq!(parse_refresh_token("garbage"), None);
        assert_eq!(parse_refresh_token(&format!("{sid}.short")), None);
        assert_eq!(
            parse_refresh_token(&format!("{sid}.{}", "a".repeat(42) + "=")),
            None
        );
        assert_eq!(
            parse_refresh_token(&format!("not-a-uuid.{}", "a".repeat(43))),
            None
        );
    }

    #[test]
    fn user_agents_are_cut_on_a_char_boundary() {
        let s = "é".repeat(200);
        let t = truncate_utf8(&s, USER_AGENT_MAX);
        assert!(t.len() <= USER_AGENT_MAX);
        assert!(s.starts_with(t));
    }
}
