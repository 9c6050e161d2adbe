//! The OpenAPI 3.1 document at `GET /v1/openapi.json`, generated from the
//! handlers' annotations (utoipa).
//!
//! The accounts, chat, audit and notifications handlers carry their own
//! `#[utoipa::path]`. The health and WebSocket endpoints are described here
//! by annotated stand-ins ([`described`]); `tests/tests/gateway_rest.rs` checks that every
//! `METHOD /path` of API.md is in it.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::Problem;
use crate::routes::accounts;
use crate::routes::chat::{audit, conversations, messages};
use crate::routes::notifications;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/openapi.json", get(document))
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The document (also for tools: `ApiDoc::openapi().to_pretty_json()`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Messenger",
        version = "1",
        description = "Messenger's public API (contract v1, API.md). Errors are RFC 9457 problem documents (`application/problem+json`) with a stable `code`."
    ),
    paths(
        document,
        described::healthz,
        described::readyz,
        described::metrics,
        accounts::register,
        accounts::login,
        accounts::refresh,
        accounts::logout,
        accounts::list_sessions,
        accounts::delete_session,
        accounts::forgot_password,
        accounts::reset_password,
        accounts::change_password,
        accounts::me,
        accounts::get_user,
        accounts::search_users,
        described::websocket,
        conversations::create_group,
        conversations::open_direct,
        conversations::list_conversations,
        conversations::get_conversation,
        conversations::rename_conversation,
        conversations::add_member,
        conversations::remove_member,
        conversations::mark_read,
        messages::send_message,
        messages::list_messages,
        messages::edit_message,
        messages::delete_message,
        audit::list_events,
        audit::get_stream,
        notifications::vapid_public_key,
        notifications::create_subscription,
        notifications::list_subscriptions,
        notifications::delete_subscription,
        notifications::get_settings,
        notifications::put_settings,
        notifications::mute_conversation,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "accounts", description = "Registration, login, sessions, passwords, profiles"),
        (name = "conversations", description = "Groups, direct conversations, membership, read markers"),
        (name = "messages", description = "Sending, history, edits, deletions"),
        (name = "notifications", description = "Web push subscriptions and notification settings"),
        (name = "audit", description = "The event log (role `auditor`)"),
        (name = "websocket", description = "Live events and sending over WebSocket"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

/// The `bearer` security scheme (PASETO v4.public access tokens).
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("PASETO v4.public")
                    .description(Some(
                        "`Authorization: Bearer <access_token>` from login or refresh",
                    ))
                    .build(),
            ),
        );
    }
}

/// Stand-ins describing endpoints whose handlers are not annotated (health,
/// WebSocket). Never routed; only their annotations are used.
#[allow(dead_code, clippy::unused_async)]
pub mod described {
    use crate::error::Problem;

    /// 200 while the process runs.
    #[utoipa::path(get, path = "/healthz", tag = "health",
        responses((status = 200, description = "Running")))]
    pub async fn healthz() {}

    /// 200 when Redis and the services answer, 503 otherwise.
    #[utoipa::path(get, path = "/readyz", tag = "health",
        responses((status = 200, description = "Ready"), (status = 503, description = "A dependency is away")))]
    pub async fn readyz() {}

    /// Prometheus (OpenMetrics) text.
    #[utoipa::path(get, path = "/metrics", tag = "health",
        responses((status = 200, description = "Metrics", body = String, content_type = "application/openmetrics-text")))]
    pub async fn metrics() {}

    /// WebSocket upgrade (text frames of JSON; see API.md "WebSocket").
    /// Authenticate with the `Authorization` header or the first `hello`
    /// frame.
    #[utoipa::path(get, path = "/v1/ws", tag = "websocket",
        responses((status = 101, description = "Switching protocols"),
            (status = 401, description = "Bad credentials in the header", body = Problem, content_type = "application/problem+json")))]
    pub async fn websocket() {}
}
