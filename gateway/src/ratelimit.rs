//! Fixed-window rate limits in Redis for the unauthenticated account
//! endpoints (register, login, password forgot), per client IP and per
//! account, and for password change per user.
//!
//! # Keys
//!
//! `{p}:rl:{action}:{scope}:{subject}`: a counter, `INCR`ed by a Lua script
//! that sets its expiry (`GATEWAY_RATE_LIMIT_WINDOW_SECS`) on the first hit,
//! so a window starts at the first request of a burst (not at a clock
//! boundary, which would let a burst straddling it pass twice the limit)
//! and a counter never outlives its window. `scope` is `ip` (subject = the
//! peer address) or `acct` (subject = the first 32 hex digits of SHA-256
//! of the lower-cased, trimmed login name or email, so no address sits in
//! Redis in clear).
//!
//! A request over a limit answers 429 with `Retry-After` = the seconds
//! left in the window (the counter's TTL).
//!
//! # What counts
//!
//! - Per IP (`GATEWAY_RATE_LIMIT_PER_IP`): every request, successful or
//!   not, separately for each action.
//! - Per account (`GATEWAY_RATE_LIMIT_PER_ACCOUNT`): for register and
//!   forgot, every request; for login, only failed attempts: the counter is
//!   incremented before the password is checked (so a burst of parallel
//!   guesses cannot slip past the limit) and given back on success, so a
//!   user logging in on several devices is never limited. Once the limit is
//!   reached the account's logins answer 429 until the window ends, even
//!   with the right password: that is the point (it bounds guessing), at
//!   the price that someone can keep an account's logins blocked; the
//!   per-IP limit bounds how cheaply.
//! - Password change (authenticated): per user on the account limit,
//!   wrong current passwords only, as for login.
//!
//! The peer address is the TCP peer: behind a proxy every client shares
//! the proxy's address (no `X-Forwarded-For` is trusted).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use fred::prelude::{LuaInterface, Pool};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The rate-limited actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Register,
    Login,
    Forgot,
    PasswordChange,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Login => "login",
            Self::Forgot => "forgot",
            Self::PasswordChange => "password-change",
        }
    }
}

/// The client's IP address (the TCP peer). Never fails: without connection
/// info (a router served without it) every request shares one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

impl ClientIp {
    fn subject(self) -> String {
        self.0
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_canonical().to_string())
    }
}

/// INCR with expiry on first use; returns {count, ttl}.
const HIT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return {n, redis.call('TTL', KEYS[1])}
";

/// DECR only when the counter still exists (a window that ended meanwhile
/// must not leave a negative counter without expiry behind).
const GIVE_BACK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return 0
";

/// A counted hit on an account bucket, which a successful login gives back.
#[derive(Debug)]
pub struct AccountHit {
    key: String,
}

fn window_secs(state: &AppState) -> u64 {
    state.config.rate_limit_window_secs.max(1)
}

fn key(state: &AppState, action: Action, scope: &str, subject: &str) -> String {
    format!(
        "{}:rl:{}:{scope}:{subject}",
        state.config.redis.redis_prefix,
        action.as_str()
    )
}

async fn hit(redis: &Pool, key: &str, window: u64, limit: u32) -> Result<(), ApiError> {
    let reply: Vec<i64> = redis
        .eval(HIT, vec![key.to_owned()], vec![window.to_string()])
        .await
        .map_err(|e| ApiError::Unavailable(format!("rate limiter: {e}")))?;
    let count = reply.first().copied().unwrap_or_default();
    if count > i64::from(limit) {
        let ttl = reply.get(1).copied().unwrap_or(1).max(1).unsigned_abs();
        return Err(ApiError::RateLimited {
            retry_after: Duration::from_secs(ttl.min(window)),
        });
    }
    Ok(())
}

/// Counts a request from `ip`; 429 beyond the per-IP limit.
pub async fn check_ip(state: &AppState, action: Action, ip: ClientIp) -> Result<(), ApiError> {
    let key = key(state, action, "ip", &ip.subject());
    hit(
        &state.redis,
        &key,
        window_secs(state),
        state.config.rate_limit_per_ip,
    )
    .await
}

/// The bucket subject of an account name: lower-cased and trimmed, hashed.
fn account_subject(account: &str) -> String {
    let digest = Sha256::digest(account.trim().to_lowercase().as_bytes());
    hex::encode(&digest[..16])
}

/// Counts a request for `account` (login name or email); 429 beyond the
/// per-account limit. The returned hit may be [`give_back`]-ed.
pub async fn check_account(
    state: &AppState,
    action: Action,
    account: &str,
) -> Result<AccountHit, ApiError> {
    let key = key(state, action, "acct", &account_subject(account));
    hit(
        &state.redis,
        &key,
        window_secs(state),
        state.config.rate_limit_per_account,
    )
    .await?;
    Ok(AccountHit { key })
}

/// Un-counts a hit (a successful login). Best effort: a failure only
/// leaves the hit counted.
pub async fn give_back(state: &AppState, hit: AccountHit) {
    let r: Result<i64, _> = state
        .redis
        .eval(GIVE_BACK, vec![hit.key], Vec::<String>::new())
        .await;
    if let Err(error) = r {
        tracing::warn!(%error, "could not give back a rate-limit hit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_subjects_ignore_case_and_spaces() {
        assert_eq!(
            account_subject(" Alice@Example.test "),
            account_subject("alice@example.test")
        );
        assert_ne!(account_subject("alice"), account_subject("bob"));
        assert_eq!(account_subject("alice").len(), 32);
    }
}
