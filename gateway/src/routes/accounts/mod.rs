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
//!
//! # Layout
//!
//! - [`auth`]: register, login, refresh, logout;
//! - [`sessions`]: the caller's sessions;
//! - [`password`]: forgot, reset and change, with the reset mail;
//! - [`users`]: the caller's profile and the user directory.
//!
//! The handlers and bodies are re-exported here, so
//! `routes::accounts::register` and the like name them as before.

use axum::routing::{delete, get, post};
use axum::Router;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

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

pub mod auth;
pub mod password;
pub mod sessions;
pub mod users;

pub use self::auth::*;
pub use self::password::*;
pub use self::sessions::*;
pub use self::users::*;

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

fn session_store(e: &fred::error::Error) -> ApiError {
    ApiError::Unavailable(format!("session store: {e}"))
}

fn parse_user_id(s: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(s)
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("a service returned a malformed user id")))
}
