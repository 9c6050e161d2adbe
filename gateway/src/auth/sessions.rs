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
//!     tokens, newest first, comma-separated, to detect reuse;
//!   - `created_ms`, `rotated_ms`: Unix ms of the login and of the last
//!     rotation (absolute lifetime, refresh grace).
//!
//!   It expires after the refresh lifetime (`GATEWAY_REFRESH_TTL_SECS`),
//!   renewed at each refresh but never beyond the absolute lifetime
//!   (`GATEWAY_SESSION_MAX_SECS`): an idle session ends by itself, and a
//!   busy one ends too. A user has at most `GATEWAY_MAX_SESSIONS_PER_USER`
//!   sessions: a login beyond revokes the oldest.
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
//! `{session_id}.{secret}`, where `secret` is 256 bits in base64url
//! without padding (43 characters): random at login, and at each refresh
//! an HMAC of the presented token under a key derived from the token key,
//! so the successor of a token is the same on every gateway. The session
//! id makes the lookup O(1); the secret is never stored, only the SHA-256
//! of the whole token. Each refresh replaces it ([`rotate`], one Lua
//! script). Presenting a rotated token (one of the last [`PREVIOUS_KEPT`])
//! means it was copied: the whole session is revoked, so both the thief's
//! and the owner's tokens stop working, except that the token rotated
//! last, presented again within `GATEWAY_REFRESH_GRACE_SECS` while its
//! successor is still current, gets that same successor: a request
//! retried after a lost answer, or two tabs refreshing at once, do not log
//! the user out. An older or unknown token is simply refused.
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

    /// The successor of `presented` (same session): a keyed hash of it, so
    /// every gateway derives the same one, and a retried (or concurrent)
    /// refresh with the same token can be answered with the same successor
    /// instead of looking like a stolen token's reuse. Without the key it
    /// is as unpredictable as a random one.
    fn successor(key: &[u8; 32], session_id: Uuid, presented: &str) -> (Self, String) {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(presented.as_bytes());
        let secret = mac.finalize().into_bytes();
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

/// KEYS: session, user set, cut. ARGV: user, now, agent, hash, ttl (the
/// idle lifetime, capped by the absolute one), sid, when the password check
/// started (ms), now (ms), most sessions per user, session key prefix
/// (`{p}:session:`). Returns {0} when cut, else {1, evicted ids...}: the
/// user's oldest sessions beyond the cap (UUIDv7 ids sort by creation)
/// after dropping members whose hash expired.
const CREATE: &str = r"
local cut = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if cut >= tonumber(ARGV[7]) then return {0} end
redis.call('HSET', KEYS[1], 'user_id', ARGV[1], 'created_at', ARGV[2], 'last_seen_at', ARGV[2],
  'user_agent', ARGV[3], 'refresh', ARGV[4], 'prev', '', 'created_ms', ARGV[8])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[6])
local result = {1}
local max = tonumber(ARGV[9])
if redis.call('SCARD', KEYS[2]) > max then
  local live = {}
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if redis.call('EXISTS', ARGV[10] .. id) == 1 then
      table.insert(live, id)
    else
      redis.call('SREM', KEYS[2], id)
    end
  end
  table.sort(live)
  for i = 1, #live - max do
    redis.call('DEL', ARGV[10] .. live[i])
    redis.call('SREM', KEYS[2], live[i])
    table.insert(result, live[i])
  end
end
local ttl = redis.call('TTL', KEYS[2])
if ttl < tonumber(ARGV[5]) then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
return result
";

/// Key of the time of the user's last revoke-all.
fn cut_key(prefix: &str, user_id: Uuid) -> String {
    format!("{prefix}:sessions-cut:{user_id}")
}

/// Unix time in milliseconds (for [`create`]'s `checked_at`).
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default()
}

/// How long sessions live and how many a user may have.
#[derive(Clone)]
pub struct SessionPolicy {
    /// Idle lifetime: renewed by each refresh (`GATEWAY_REFRESH_TTL_SECS`).
    pub idle: Duration,
    /// Absolute lifetime from login, whatever the refreshes
    /// (`GATEWAY_SESSION_MAX_SECS`).
    pub max_age: Duration,
    /// Most sessions per user; a login beyond evicts the oldest
    /// (`GATEWAY_MAX_SESSIONS_PER_USER`).
    pub max_per_user: u32,
    /// How long after a rotation the rotated token still gets the same
    /// successor (a retried or concurrent refresh), not a revocation.
    pub grace: Duration,
    /// Key of [`RefreshToken::successor`] (derived from the token key, so
    /// every gateway shares it).
    pub successor_key: [u8; 32],
}

impl std::fmt::Debug for SessionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPolicy")
            .field("idle", &self.idle)
            .field("max_age", &self.max_age)
            .field("max_per_user", &self.max_per_user)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl SessionPolicy {
    /// The key's lifetime at creation: the idle one, capped by the
    /// absolute one.
    fn first_ttl(&self) -> String {
        self.idle.min(self.max_age).as_secs().max(1).to_string()
    }
}

/// Creates a session for `user_id` whose password was checked from
/// `checked_at` ([`now_ms`] before the check); returns its id and refresh
/// token, or `None` when the user's sessions were all revoked since (the
/// password changed meanwhile). Sessions beyond the per-user cap are
/// revoked, oldest first (and announced).
pub async fn create(
    redis: &Pool,
    prefix: &str,
    user_id: Uuid,
    user_agent: &str,
    policy: &SessionPolicy,
    checked_at: u64,
) -> Result<Option<(Uuid, RefreshToken)>, fred::error::Error> {
    let session_id = Uuid::now_v7();
    let (token, hash) = RefreshToken::generate(session_id);
    let reply: Vec<fred::types::Value> = redis
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
                policy.first_ttl(),
                session_id.to_string(),
                checked_at.to_string(),
                now_ms().to_string(),
                policy.max_per_user.max(1).to_string(),
                format!("{prefix}:session:"),
            ],
        )
        .await?;
    if reply.first().and_then(fred::types::Value::as_i64) != Some(1) {
        return Ok(None);
    }
    let evicted: Vec<Uuid> = reply[1..]
        .iter()
        .filter_map(|v| v.as_str().and_then(|s| Uuid::try_parse(&s).ok()))
        .collect();
    if !evicted.is_empty() {
        tracing::info!(%user_id, evicted = evicted.len(), "oldest sessions evicted: over the per-user cap");
        publish_revoked(redis, prefix, user_id, &evicted).await;
    }
    Ok(Some((session_id, token)))
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
    /// The session reached its absolute lifetime: it is now revoked.
    Expired { user_id: Uuid, session_id: Uuid },
    /// Unknown session, or a token that never belonged to it.
    Invalid,
}

/// KEYS[1] session; ARGV: presented hash, successor hash, now, idle ttl
/// (s), max prev length (chars), now (ms), grace (ms), absolute lifetime
/// (ms). Returns {status, user_id}. A session from before `created_ms`
/// was recorded starts its absolute lifetime now.
const ROTATE: &str = r"
local current = redis.call('HGET', KEYS[1], 'refresh')
if not current then return {'invalid', ''} end
local user = redis.call('HGET', KEYS[1], 'user_id') or ''
local prev = redis.call('HGET', KEYS[1], 'prev') or ''
local nowms = tonumber(ARGV[6])
local created = tonumber(redis.call('HGET', KEYS[1], 'created_ms') or '')
if not created then
  created = nowms
  redis.call('HSET', KEYS[1], 'created_ms', ARGV[6])
end
local maxage = tonumber(ARGV[8])
if nowms - created >= maxage then
  redis.call('DEL', KEYS[1])
  return {'expired', user}
end
if current == ARGV[1] then
  if prev == '' then prev = ARGV[1] else prev = ARGV[1] .. ',' .. prev end
  prev = string.sub(prev, 1, tonumber(ARGV[5]))
  redis.call('HSET', KEYS[1], 'refresh', ARGV[2], 'prev', prev, 'last_seen_at', ARGV[3],
    'rotated_ms', ARGV[6])
  local ttl = tonumber(ARGV[4])
  local left = math.floor((created + maxage - nowms) / 1000)
  if left < ttl then ttl = left end
  if ttl < 1 then ttl = 1 end
  redis.call('EXPIRE', KEYS[1], ttl)
  return {'rotated', user}
end
if current == ARGV[2] and string.sub(prev, 1, 64) == ARGV[1] then
  local at = tonumber(redis.call('HGET', KEYS[1], 'rotated_ms') or '0') or 0
  if nowms - at <= tonumber(ARGV[7]) then return {'rotated', user} end
end
if string.find(prev, ARGV[1], 1, true) then
  redis.call('DEL', KEYS[1])
  return {'reused', user}
end
return {'invalid', user}
";

/// Exchanges a refresh token for a new one (renewing the session's idle
/// lifetime, within its absolute one, and `last_seen_at`), or detects
/// reuse and revokes the session. Within the grace after a rotation, the
/// rotated token gets the same successor again while that is still
/// current (a retried or concurrent refresh), not a revocation. A session
/// past its absolute lifetime is revoked instead.
pub async fn rotate(
    redis: &Pool,
    prefix: &str,
    presented: &str,
    policy: &SessionPolicy,
) -> Result<Rotation, fred::error::Error> {
    let Some(session_id) = parse_refresh_token(presented) else {
        return Ok(Rotation::Invalid);
    };
    let ttl = policy.idle;
    let (next, next_hash) = RefreshToken::successor(&policy.successor_key, session_id, presented);
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
                now_ms().to_string(),
                policy.grace.as_millis().to_string(),
                policy.max_age.as_millis().max(1).to_string(),
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
        (status @ ("reused" | "expired"), Some(user_id)) => {
            let _: i64 = redis
                .srem(user_sessions_key(prefix, user_id), session_id.to_string())
                .await?;
            publish_revoked(redis, prefix, user_id, &[session_id]).await;
            if status == "reused" {
                Rotation::Reused {
                    user_id,
                    session_id,
                }
            } else {
                Rotation::Expired {
                    user_id,
                    session_id,
                }
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
