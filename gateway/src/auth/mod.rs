//! Authentication: PASETO access tokens ([`tokens`]), sessions in Redis
//! ([`sessions`]), and the [`AuthUser`] extractor every protected route
//! takes.

pub mod sessions;
pub mod tokens;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller: a valid, unexpired access token whose session
/// still exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// When the access token expires (Unix seconds).
    pub expires_at: i64,
}

impl AuthUser {
    /// gRPC metadata value of the caller, for the services.
    pub fn id(&self) -> String {
        self.user_id.to_string()
    }
}

/// Verifies an access token and its session.
pub async fn authenticate(state: &AppState, token: &str) -> Result<AuthUser, ApiError> {
    let claims = state.tokens.verify(token).map_err(|e| match e {
        tokens::TokenError::Expired => {
            ApiError::unauthenticated("token_expired", "the access token has expired")
        }
        tokens::TokenError::Invalid => {
            ApiError::unauthenticated("invalid_token", "the access token is not valid")
        }
    })?;
    let active = sessions::is_active(
        &state.redis,
        &state.config.redis.redis_prefix,
        claims.session_id,
        claims.user_id,
    )
    .await
    .map_err(|e| ApiError::Unavailable(format!("session store: {e}")))?;
    if !active {
        return Err(ApiError::unauthenticated(
            "session_revoked",
            "the session has ended; log in again",
        ));
    }
    Ok(AuthUser {
        user_id: claims.user_id,
        session_id: claims.session_id,
        expires_at: claims.expires_at,
    })
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::unauthenticated(
                "unauthenticated",
                "an Authorization: Bearer token is required",
            )
        })?;
        authenticate(state, token).await
    }
}
