//! The OpenAPI 3.1 document at `GET /v1/openapi.json`, generated from the
//! handlers' annotations (utoipa).
//!
//! The accounts, chat, audit and notifications handlers carry their own
//! `#[utoipa::path]`, naming the statuses particular to each operation
//! (403, 404, 409, 422, 429...). The health and WebSocket endpoints are
//! described here by annotated stand-ins ([`described`]).
//!
//! The statuses every handler shares through its extractors are added by
//! [`Conventions`], so that no operation can forget them:
//!
//! - a JSON body ([`ApiJson`](crate::extract::ApiJson)): 400 (malformed
//!   JSON, invalid UTF-8, a non-JSON `Content-Type`), 413 (over the body
//!   limit), 422 (missing, unknown or mistyped fields);
//! - path or query parameters ([`ApiPath`](crate::extract::ApiPath),
//!   [`ApiQuery`](crate::extract::ApiQuery)): 400;
//! - the bearer scheme ([`AuthUser`](crate::auth::AuthUser)): 401;
//! - every `/v1` operation but this document: 503 when Redis or a service
//!   is away;
//! - every 429 carries `Retry-After`.
//!
//! Every error is a `Problem` as `application/problem+json`. Constraints
//! the server enforces are schema keywords (lengths, patterns, ranges,
//! enums, formats); the numbers are `domain::Limits::default()` and the
//! query-service's page limits. `tests/tests/gateway_rest.rs` checks that
//! every `METHOD /path` of API.md is in the document,
//! `tests/tests/openapi_contract.rs` that it states the known constraints
//! and statuses, and `tests/tests/fuzz_rest.rs` (schemathesis) that the
//! server answers as it says.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Type};
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
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object, content_type = "application/json")))]
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
    modifiers(&BearerAuth, &Conventions),
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

/// Adds the statuses every operation shares through its extractors (see
/// the module docs), where the operation's own annotation has not already
/// described them.
#[derive(Debug)]
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            let api = path.starts_with("/v1/") && path != "/v1/openapi.json";
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                conventions(op, api);
            }
        }
    }
}

fn conventions(op: &mut Operation, api: bool) {
    let params = op
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query));
    let authenticated = op
        .security
        .iter()
        .flatten()
        .any(|s| s != &utoipa::openapi::security::SecurityRequirement::default());
    let mut add = |status: &str, description: &str| {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| problem_response(description));
    };
    if op.request_body.is_some() {
        add(
            "400",
            "`malformed_request`: malformed JSON, invalid UTF-8, or a `Content-Type` that is not JSON",
        );
        add(
            "413",
            "`payload_too_large`: the body is over the limit (64 KiB by default)",
        );
        add(
            "422",
            "`validation_failed`: a field is missing, unknown, mistyped or invalid (`errors` names it)",
        );
    }
    if params {
        add(
            "400",
            "`malformed_request`: a malformed path or query parameter",
        );
    }
    if authenticated {
        add(
            "401",
            "No bearer token, or an invalid or expired one, or its session has ended",
        );
    }
    if api {
        add(
            "503",
            "`unavailable`: Redis or a service is away; retry later",
        );
    }
    if let Some(RefOr::T(r)) = op.responses.responses.get_mut("429") {
        r.headers
            .entry("Retry-After".to_owned())
            .or_insert_with(|| {
                HeaderBuilder::new()
                    .schema(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(1)),
                    )
                    .description(Some("Seconds to wait before retrying"))
                    .build()
            });
    }
}

/// A response carrying a `Problem` document.
fn problem_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build(),
    )
}

/// Stand-ins describing endpoints whose handlers are not annotated (health,
/// WebSocket). Never routed; only their annotations are used.
#[allow(dead_code, clippy::unused_async)]
pub mod described {
    use crate::error::Problem;

    /// `GET /healthz`.
    #[derive(Debug, utoipa::ToSchema)]
    pub struct Health {
        status: HealthStatus,
    }

    /// Always `ok`.
    #[derive(Debug, utoipa::ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub enum HealthStatus {
        Ok,
    }

    /// `GET /readyz`.
    #[derive(Debug, utoipa::ToSchema)]
    pub struct Readiness {
        /// `ready` when every dependency answers.
        status: ReadyStatus,
        redis: bool,
        command_service: bool,
        query_service: bool,
        /// Whether a probe published on Redis came back through this
        /// gateway's live subscription within `GATEWAY_LIVE_PROBE_MS`.
        live_path: bool,
    }

    /// Whether every dependency answers.
    #[derive(Debug, utoipa::ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub enum ReadyStatus {
        Ready,
        NotReady,
    }

    /// 200 while the process runs.
    #[utoipa::path(get, path = "/healthz", tag = "health",
        responses((status = 200, description = "Running", body = Health)))]
    pub async fn healthz() {}

    /// 200 when Redis, command-service and query-service answer and the
    /// live path (Redis pub/sub to this gateway) carries a probe, 503
    /// otherwise (naming what does not).
    #[utoipa::path(get, path = "/readyz", tag = "health",
        responses((status = 200, description = "Ready", body = Readiness),
            (status = 503, description = "A dependency is away", body = Readiness)))]
    pub async fn readyz() {}

    /// Prometheus (OpenMetrics) text.
    #[utoipa::path(get, path = "/metrics", tag = "health",
        responses((status = 200, description = "Metrics", body = String, content_type = "application/openmetrics-text")))]
    pub async fn metrics() {}

    /// WebSocket upgrade (text frames of JSON; see API.md "WebSocket").
    /// Authenticate with the `Authorization` header or the first `hello`
    /// frame. The `ready` frame states `max_frame_bytes`: a larger frame
    /// gets an error frame, one beyond four times it (at least 64 KiB)
    /// closes the socket with 1009. Other closes: 1007 (not UTF-8), 1002
    /// (protocol error), 1008 (no `hello` first, a `hello` cursor ahead of
    /// the log, or a slow consumer).
    #[utoipa::path(get, path = "/v1/ws", tag = "websocket",
        responses((status = 101, description = "Switching protocols"),
            (status = 426, description = "`upgrade_required`: not a WebSocket upgrade request (the response carries `Upgrade: websocket`)", body = Problem, content_type = "application/problem+json"),
            (status = 401, description = "Bad credentials in the header", body = Problem, content_type = "application/problem+json")))]
    pub async fn websocket() {}
}
