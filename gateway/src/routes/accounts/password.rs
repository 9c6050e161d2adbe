//! `/v1/auth/password/{forgot,reset,change}` and the reset mail.

use axum::extract::State;
use axum::http::StatusCode;
use proto::command::v1 as cmd;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{parse_user_id, password_too_long, session_store, too_long};
use crate::auth::sessions;
use crate::auth::AuthUser;
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::mail;
use crate::ratelimit::{self, Action, ClientIp};
use crate::state::{as_user, AppState};

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

redacted_debug!(ResetBody, ChangePasswordBody);

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
    let revoked = sessions::revoke_all(
        &state.redis,
        &state.config.redis.redis_prefix,
        user_id,
        None,
    )
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
            if proto::meta::error_code(&s) == Some("invalid_credentials") {
                return Err(wrong_current());
            }
            return Err(s.into());
        }
        Err(s) => return Err(s.into()),
    }
    ratelimit::give_back(&state, hit).await;
    let revoked = sessions::revoke_all(
        &state.redis,
        &state.config.redis.redis_prefix,
        user.user_id,
        Some(user.session_id),
    )
    .await
    .map_err(|e| session_store(&e))?;
    tracing::info!(user_id = %user.user_id, revoked, "password changed; other sessions revoked");
    Ok(StatusCode::NO_CONTENT)
}
