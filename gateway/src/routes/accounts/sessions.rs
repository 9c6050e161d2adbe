//! `/v1/auth/sessions`: the caller's sessions.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::session_store;
use crate::auth::sessions;
use crate::auth::AuthUser;
use crate::error::{ApiError, Problem};
use crate::extract::ApiPath;
use crate::state::AppState;

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
    let list = sessions::list(&state.redis, &state.config.redis.redis_prefix, user.user_id)
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
        &state.config.redis.redis_prefix,
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
