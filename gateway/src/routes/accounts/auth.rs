//! API.md's accounts endpoints: registration, login and sessions, password
//! change and recovery, the caller's profile and the user directory.
//!
//! - Passwords are hashed (argon2id) and checked by command-service; the
//!   gateway only refuses, before any hashing work, passwords longer than
//!   API.md's 128 characters. Shape rules (username, email, password
//!   length) are command-service's, answered as 422 with the field.
//! - Sessions and refresh tokens: [`crate::auth::sessions`]. Access tokens:
//!   [`crate::auth::tokens`].
//! - Register, login and forgot are rate limited per IP and per account
//!   ([`crate::ratelimit`]); so is password change, per user.
//! - `POST /v1/auth/password/forgot` answers 202 before anything depends
//!   on whether the email is known: the reset request to command-service
//!   and the mail are sent by a spawned task, so the response time is the
//!   same for known and unknown addresses.
//! - Choices where API.md is silent: a wrong `current_password` on
//!   password change is 403 `invalid_credentials` (the session itself is
//!   fine, so not 401); a bad, used or expired reset token is 422 with
//!   `errors.token`; a reused refresh token is 401 `session_revoked`, an
//!   unknown one 401 `invalid_token`; after a password change every other
//!   session is revoked, after a reset every session.
//! - No secret (password, access, refresh or reset token) reaches a log
//!   line: bodies that carry one have a redacted `Debug`, and handlers log
//!   ids only.
//! - Profiles come from the read models (query-service), so `GET /v1/me`
//!   right after registering may answer 404 for the few milliseconds until
//!   the registration is projected.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::USER_AGENT;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use proto::command::v1 as cmd;
use proto::query::v1 as qry;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::sessions::{self, Rotation};
use crate::auth::AuthUser;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::mail;
use crate::ratelimit::{self, Action, ClientIp};
use crate::state::{as_user, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/sessions", get(list_sessions))
        .route("/v1/auth/sessions/{session_id}", delete(delete_session))
        .route("/v1/auth/password/forgot", post(forgot_password))
        .route("/v1/auth/password/reset", post(reset_password))
        .route("/v1/auth/password/change", post(change_password))
        .route("/v1/me", get(me))
        .route("/v1/users", get(search_users))
        .route("/v1/users/{user_id}", get(get_user))
}

/// Implements a `Debug` that names the type only (bodies with secrets).
macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), " { <redacted> }"))
            }
        }
    )*};
}

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

/// `POST /v1/auth/password/forgot`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgotBody {
    /// An email address (trimmed and lower-cased; at most 254 bytes).
    #[schema(format = "email", max_length = 254)]
    pub email: String,
}

/// `POST /v1/auth/password/reset`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    /// The token of the reset mail (`reset-token: ...`).
    pub token: String,
    /// 8–128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
}

/// `POST /v1/auth/password/change`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordBody {
    pub current_password: String,
    /// 8–128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
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

redacted_debug!(
    RegisterBody,
    LoginBody,
    RefreshBody,
    ResetBody,
    ChangePasswordBody,
    TokenResponse
);

/// `POST /v1/auth/register` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserIdResponse {
    #[schema(format = Uuid)]
    pub user_id: String,
}

/// One of the caller's sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    #[schema(format = Uuid)]
    pub session_id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Moves at login and at each refresh.
    #[schema(format = DateTime)]
    pub last_seen_at: String,
    pub user_agent: String,
    /// The session of the token making this request.
    pub current: bool,
}

/// `GET /v1/auth/sessions` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// `GET /v1/me` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    #[schema(format = Uuid)]
    pub user_id: String,
    pub email: String,
    pub username: String,
    pub display_name: String,
    /// e.g. `auditor`.
    pub roles: Vec<String>,
}

/// A user's public profile.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    #[schema(format = Uuid)]
    pub user_id: String,
    pub username: String,
    pub display_name: String,
}

/// `GET /v1/users` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
}

/// `GET /v1/users` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchUsersQuery {
    /// 1–32 characters after trimming, matched case-insensitively.
    #[param(
        min_length = 1,
        max_length = 32,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub username_prefix: String,
    /// Page size: default 20, at most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// Longest password accepted before any hashing work (API.md: 8–128
/// characters; command-service enforces its configured limits).
fn too_long(password: &str) -> bool {
    password.chars().count() > domain::Limits::default().password_max
}

fn password_too_long(field: &str) -> ApiError {
    ApiError::invalid(
        field,
        format!(
            "must be at most {} characters",
            domain::Limits::default().password_max
        ),
    )
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthenticated("invalid_credentials", "wrong login or password")
}

fn session_store(e: &fred::error::Error) -> ApiError {
    ApiError::Unavailable(format!("session store: {e}"))
}

fn parse_user_id(s: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(s)
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("a service returned a malformed user id")))
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

fn refresh_ttl(state: &AppState) -> Duration {
    Duration::from_secs(state.config.refresh_ttl_secs)
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
        &state.config.redis_prefix,
        user_id,
        &user_agent(&headers),
        refresh_ttl(&state),
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
        (status = 401, description = "`invalid_token`, or `session_revoked` when a rotated token was reused", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<TokenResponse>, ApiError> {
    let rotation = sessions::rotate(
        &state.redis,
        &state.config.redis_prefix,
        &body.refresh_token,
        refresh_ttl(&state),
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
        &state.config.redis_prefix,
        user.user_id,
        user.session_id,
    )
    .await
    .map_err(|e| session_store(&e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's sessions, most recent first.
#[utoipa::path(
    get, path = "/v1/auth/sessions", tag = "accounts",
    responses(
        (status = 200, description = "Live sessions", body = SessionList),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_sessions(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<SessionList>, ApiError> {
    let list = sessions::list(&state.redis, &state.config.redis_prefix, user.user_id)
        .await
        .map_err(|e| session_store(&e))?;
    Ok(Json(SessionList {
        sessions: list
            .into_iter()
            .map(|s| SessionView {
                current: s.session_id == user.session_id,
                session_id: s.session_id.to_string(),
                created_at: s.created_at,
                last_seen_at: s.last_seen_at,
                user_agent: s.user_agent,
            })
            .collect(),
    }))
}

/// Ends one of the caller's sessions (possibly the current one).
#[utoipa::path(
    delete, path = "/v1/auth/sessions/{session_id}", tag = "accounts",
    params(("session_id" = Uuid, Path, description = "A session of the caller")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "`session_not_found`: unknown, or another user's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_session(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(session_id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let revoked = sessions::revoke(
        &state.redis,
        &state.config.redis_prefix,
        user.user_id,
        session_id,
    )
    .await
    .map_err(|e| session_store(&e))?;
    if revoked {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("session_not_found", "no such session"))
    }
}

/// Starts password recovery: a known email receives a reset token.
#[utoipa::path(
    post, path = "/v1/auth/password/forgot", tag = "accounts",
    request_body = ForgotBody,
    responses(
        (status = 202, description = "Accepted, whether or not the email is known"),
        (status = 422, description = "Not an email address", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn forgot_password(
    State(state): State<AppState>,
    ip: ClientIp,
    ApiJson(body): ApiJson<ForgotBody>,
) -> Result<StatusCode, ApiError> {
    // The same shape rule command-service applies, checked here because
    // the answer must not wait for command-service (see the module docs).
    let email = domain::values::Email::parse(&body.email)
        .map_err(|e| ApiError::invalid(e.field, e.kind.to_string()))?;
    ratelimit::check_ip(&state, Action::Forgot, ip).await?;
    ratelimit::check_account(&state, Action::Forgot, email.as_str()).await?;
    tokio::spawn(send_reset_mail(state, email.as_str().to_owned()));
    Ok(StatusCode::ACCEPTED)
}

/// Asks command-service for a reset token and mails it when the email is
/// known. Runs detached from the request; failures are logged (without the
/// address or token).
async fn send_reset_mail(state: AppState, email: String) {
    let reply = state
        .commands
        .clone()
        .request_password_reset(tonic::Request::new(cmd::RequestPasswordResetRequest {
            email: email.clone(),
        }))
        .await;
    let reply = match reply {
        Ok(r) => r.into_inner(),
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "password reset request failed");
            return;
        }
    };
    let (Some(token), user_id) = (reply.token, reply.user_id) else {
        return; // unknown email: nothing to send
    };
    let user_id = user_id.unwrap_or_default();
    let expires_at = reply.expires_at.unwrap_or_default();
    let mail = mail::ResetMail {
        to: &email,
        token: &token,
        expires_at: &expires_at,
    };
    match mail::send_reset(&state.config, &mail).await {
        Ok(()) => tracing::info!(%user_id, "password reset mail sent"),
        Err(e) => {
            tracing::warn!(%user_id, error = format!("{e:#}"), "could not send the password reset mail");
        }
    }
}

/// Completes password recovery with the mailed token; every session of the
/// user is revoked.
#[utoipa::path(
    post, path = "/v1/auth/password/reset", tag = "accounts",
    request_body = ResetBody,
    responses(
        (status = 204, description = "Password changed; all sessions revoked"),
        (status = 409, description = "`conflict`: concurrent changes to the account; retry", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid new password, or a bad, used or expired token (`errors.token`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn reset_password(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ResetBody>,
) -> Result<StatusCode, ApiError> {
    if too_long(&body.new_password) {
        return Err(password_too_long("new_password"));
    }
    let reply = state
        .commands
        .clone()
        .complete_password_reset(tonic::Request::new(cmd::CompletePasswordResetRequest {
            token: body.token,
            new_password: body.new_password,
        }))
        .await;
    let user_id = match reply {
        Ok(r) => parse_user_id(&r.into_inner().user_id)?,
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            return Err(ApiError::invalid(
                "token",
                "the reset token is invalid, expired or already used",
            ));
        }
        Err(s) => return Err(s.into()),
    };
    let revoked = sessions::revoke_all(&state.redis, &state.config.redis_prefix, user_id, None)
        .await
        .map_err(|e| session_store(&e))?;
    tracing::info!(%user_id, revoked, "password reset; sessions revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Changes the caller's password; every other session is revoked.
#[utoipa::path(
    post, path = "/v1/auth/password/change", tag = "accounts",
    request_body = ChangePasswordBody,
    responses(
        (status = 204, description = "Changed; the other sessions are revoked"),
        (status = 403, description = "`invalid_credentials`: wrong current password", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: concurrent changes to the account; retry", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid new password", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong current passwords", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn change_password(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<ChangePasswordBody>,
) -> Result<StatusCode, ApiError> {
    let wrong_current = || ApiError::Forbidden {
        code: "invalid_credentials".into(),
        detail: "the current password is wrong".into(),
    };
    let hit = ratelimit::check_account(&state, Action::PasswordChange, &user.id()).await?;
    if too_long(&body.new_password) {
        return Err(password_too_long("new_password"));
    }
    if too_long(&body.current_password) {
        return Err(wrong_current());
    }
    let reply = state
        .commands
        .clone()
        .change_password(as_user(
            &user.id(),
            cmd::ChangePasswordRequest {
                current_password: body.current_password,
                new_password: body.new_password,
            },
        ))
        .await;
    match reply {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::Unauthenticated => {
            let code = s
                .metadata()
                .get("x-error-code")
                .and_then(|v| v.to_str().ok());
            if code == Some("invalid_credentials") {
                return Err(wrong_current());
            }
            return Err(s.into());
        }
        Err(s) => return Err(s.into()),
    }
    ratelimit::give_back(&state, hit).await;
    let revoked = sessions::revoke_all(
        &state.redis,
        &state.config.redis_prefix,
        user.user_id,
        Some(user.session_id),
    )
    .await
    .map_err(|e| session_store(&e))?;
    tracing::info!(user_id = %user.user_id, revoked, "password changed; other sessions revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's own profile.
#[utoipa::path(
    get, path = "/v1/me", tag = "accounts",
    responses(
        (status = 200, description = "The caller", body = MeView),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`user_not_found`: not yet projected (right after registering)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<MeView>, ApiError> {
    let me = state
        .queries
        .clone()
        .get_me(as_user(&user.id(), qry::GetMeRequest {}))
        .await?
        .into_inner();
    Ok(Json(MeView {
        user_id: me.user_id,
        email: me.email,
        username: me.username,
        display_name: me.display_name,
        roles: me.roles,
    }))
}

fn user_view(u: qry::User) -> UserView {
    UserView {
        user_id: u.user_id,
        username: u.username,
        display_name: u.display_name,
    }
}

/// A user's public profile.
#[utoipa::path(
    get, path = "/v1/users/{user_id}", tag = "accounts",
    params(("user_id" = Uuid, Path, description = "The user")),
    responses(
        (status = 200, description = "The profile", body = UserView),
        (status = 404, description = "`user_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_user(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Json<UserView>, ApiError> {
    let found = state
        .queries
        .clone()
        .get_user(as_user(
            &user.id(),
            qry::GetUserRequest {
                user_id: user_id.to_string(),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(user_view(found)))
}

/// Users by case-insensitive username prefix.
#[utoipa::path(
    get, path = "/v1/users", tag = "accounts",
    params(SearchUsersQuery),
    responses(
        (status = 200, description = "Matching users", body = UserList),
        (status = 422, description = "Bad prefix or limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn search_users(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<SearchUsersQuery>,
) -> Result<Json<UserList>, ApiError> {
    let found = state
        .queries
        .clone()
        .search_users(as_user(
            &user.id(),
            qry::SearchUsersRequest {
                username_prefix: query.username_prefix,
                limit: query.limit,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(UserList {
        users: found.users.into_iter().map(user_view).collect(),
    }))
}
