//! `/v1/auth/{register,login,refresh,logout}`: accounts and the sessions
//! they open.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::USER_AGENT;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use proto::command::v1 as cmd;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{parse_user_id, password_too_long, session_store, too_long};
use crate::auth::sessions::{self, Rotation};
use crate::auth::AuthUser;
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::ratelimit::{self, Action, ClientIp};
use crate::state::AppState;

/// `POST /v1/auth/register`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// An email address (trimmed and lower-cased; at most 254 bytes).
    #[schema(format = "email", max_length = 254)]
    pub email: String,
    /// 3–32 of `[A-Za-z0-9_]`, stored lower-case: unique
    /// case-insensitively.
    #[schema(min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9_]+$")]
    pub username: String,
    /// 8–128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// 1–64 characters after trimming, no control characters; the username
    /// when absent.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub display_name: Option<String>,
}

/// `POST /v1/auth/login`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// Email or username.
    pub login: String,
    pub password: String,
}

/// `POST /v1/auth/refresh`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    pub refresh_token: String,
}

/// Login and refresh response.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// PASETO v4.public; send as `Authorization: Bearer ...`.
    pub access_token: String,
    /// Opaque; exchange it at `/v1/auth/refresh` (once).
    pub refresh_token: String,
    /// Lifetime of the access token, seconds.
    pub expires_in: u64,
    #[schema(format = Uuid)]
    pub session_id: String,
    #[schema(format = Uuid)]
    pub user_id: String,
}

redacted_debug!(RegisterBody, LoginBody, RefreshBody, TokenResponse);

/// `POST /v1/auth/register` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserIdResponse {
    #[schema(format = Uuid)]
    pub user_id: String,
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthenticated("invalid_credentials", "wrong login or password")
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// Access token plus the response body for a session.
fn tokens_for(
    state: &AppState,
    user_id: Uuid,
    session_id: Uuid,
    refresh_token: &sessions::RefreshToken,
) -> Result<Json<TokenResponse>, ApiError> {
    let access_token = state.tokens.issue(user_id, session_id)?;
    Ok(Json(TokenResponse {
        access_token,
        refresh_token: refresh_token.expose().to_owned(),
        expires_in: state.tokens.ttl().as_secs(),
        session_id: session_id.to_string(),
        user_id: user_id.to_string(),
    }))
}

fn session_policy(state: &AppState) -> sessions::SessionPolicy {
    let c = &state.config;
    sessions::SessionPolicy {
        idle: Duration::from_secs(c.refresh_ttl_secs.max(1)),
        max_age: Duration::from_secs(c.session_max_secs.max(1)),
        max_per_user: c.max_sessions_per_user.max(1),
        grace: Duration::from_secs(c.refresh_grace_secs),
        successor_key: state.tokens.successor_key(),
    }
}

/// Creates an account.
#[utoipa::path(
    post, path = "/v1/auth/register", tag = "accounts",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "Registered", body = UserIdResponse),
        (status = 409, description = "`email_taken` or `username_taken`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid email, username, password or display name", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    ip: ClientIp,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<Response, ApiError> {
    ratelimit::check_ip(&state, Action::Register, ip).await?;
    ratelimit::check_account(&state, Action::Register, &body.email).await?;
    if too_long(&body.password) {
        return Err(password_too_long("password"));
    }
    let reply = state
        .commands
        .clone()
        .register_user(tonic::Request::new(cmd::RegisterUserRequest {
            email: body.email,
            username: body.username,
            password: body.password,
            display_name: body.display_name,
        }))
        .await?
        .into_inner();
    let user_id = parse_user_id(&reply.user_id)?;
    tracing::info!(%user_id, "registered");
    Ok((
        StatusCode::CREATED,
        Json(UserIdResponse {
            user_id: user_id.to_string(),
        }),
    )
        .into_response())
}

/// Logs in with an email or username and a password; opens a session.
#[utoipa::path(
    post, path = "/v1/auth/login", tag = "accounts",
    request_body = LoginBody,
    responses(
        (status = 200, description = "A new session", body = TokenResponse),
        (status = 401, description = "`invalid_credentials`, whatever is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<TokenResponse>, ApiError> {
    ratelimit::check_ip(&state, Action::Login, ip).await?;
    let hit = ratelimit::check_account(&state, Action::Login, &body.login).await?;
    if body.login.trim().is_empty() || body.login.len() > 320 || too_long(&body.password) {
        return Err(invalid_credentials());
    }
    let checked_at = sessions::now_ms();
    let reply = state
        .commands
        .clone()
        .verify_password(tonic::Request::new(cmd::VerifyPasswordRequest {
            login: body.login,
            password: body.password,
        }))
        .await;
    let user_id = match reply {
        Ok(r) => parse_user_id(&r.into_inner().user_id)?,
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
            ) =>
        {
            return Err(invalid_credentials());
        }
        Err(s) => return Err(s.into()),
    };
    ratelimit::give_back(&state, hit).await;
    let created = sessions::create(
        &state.redis,
        &state.config.redis.redis_prefix,
        user_id,
        &user_agent(&headers),
        &session_policy(&state),
        checked_at,
    )
    .await
    .map_err(|e| session_store(&e))?;
    // The password changed while it was being checked.
    let Some((session_id, refresh_token)) = created else {
        return Err(invalid_credentials());
    };
    tracing::info!(%user_id, %session_id, "logged in");
    tokens_for(&state, user_id, session_id, &refresh_token)
}

/// Exchanges a refresh token for new tokens; the old refresh token stops
/// working, and presenting it again revokes the session.
#[utoipa::path(
    post, path = "/v1/auth/refresh", tag = "accounts",
    request_body = RefreshBody,
    responses(
        (status = 200, description = "New tokens for the same session", body = TokenResponse),
        (status = 401, description = "`invalid_token`, `session_revoked` when a rotated token was reused, or `session_expired` past the absolute session lifetime", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<TokenResponse>, ApiError> {
    let rotation = sessions::rotate(
        &state.redis,
        &state.config.redis.redis_prefix,
        &body.refresh_token,
        &session_policy(&state),
    )
    .await
    .map_err(|e| session_store(&e))?;
    match rotation {
        Rotation::Rotated {
            user_id,
            session_id,
            refresh_token,
        } => tokens_for(&state, user_id, session_id, &refresh_token),
        Rotation::Reused {
            user_id,
            session_id,
        } => {
            tracing::warn!(%user_id, %session_id, "a rotated refresh token was reused; session revoked");
            Err(ApiError::unauthenticated(
                "session_revoked",
                "this refresh token was already used; the session has been revoked",
            ))
        }
        Rotation::Expired {
            user_id,
            session_id,
        } => {
            tracing::info!(%user_id, %session_id, "session reached its absolute lifetime");
            Err(ApiError::unauthenticated(
                "session_expired",
                "the session has reached its maximum lifetime; log in again",
            ))
        }
        Rotation::Invalid => Err(ApiError::unauthenticated(
            "invalid_token",
            "the refresh token is not valid",
        )),
    }
}

/// Ends the caller's session.
#[utoipa::path(
    post, path = "/v1/auth/logout", tag = "accounts",
    responses(
        (status = 204, description = "The session's tokens stop working"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn logout(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    sessions::revoke(
        &state.redis,
        &state.config.redis.redis_prefix,
        user.user_id,
        user.session_id,
    )
    .await
    .map_err(|e| session_store(&e))?;
    Ok(StatusCode::NO_CONTENT)
}
