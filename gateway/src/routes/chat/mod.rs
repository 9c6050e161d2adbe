//! API.md's chat endpoints: conversations, messages, and the audit log.
//!
//! Every handler authenticates with [`AuthUser`](crate::auth::AuthUser),
//! calls command-service (writes) or query-service (reads) on the caller's
//! behalf ([`state::as_user`](crate::state::as_user)), and maps gRPC
//! statuses to problems through `ApiError: From<tonic::Status>` (not a
//! member → 404, wrong role → 403). Path ids must be UUIDs: anything else is
//! a 400 problem, since a malformed id cannot name anything.
//!
//! Reads go through the projector: a write's effect shows up in the GETs
//! once projected (milliseconds), not in the same request.

pub mod audit;
pub mod conversations;
pub mod messages;

use axum::routing::{delete, get, patch, post, put};
use axum::Router;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/conversations",
            post(conversations::create_group).get(conversations::list_conversations),
        )
        .route("/v1/conversations/direct", post(conversations::open_direct))
        .route(
            "/v1/conversations/{id}",
            get(conversations::get_conversation).patch(conversations::rename_conversation),
        )
        .route(
            "/v1/conversations/{id}/members",
            post(conversations::add_member),
        )
        .route(
            "/v1/conversations/{id}/members/{user_id}",
            delete(conversations::remove_member),
        )
        .route("/v1/conversations/{id}/read", put(conversations::mark_read))
        .route(
            "/v1/conversations/{id}/messages",
            post(messages::send_message).get(messages::list_messages),
        )
        .route(
            "/v1/conversations/{id}/messages/{message_id}",
            patch(messages::edit_message).delete(messages::delete_message),
        )
        .route("/v1/audit/events", get(audit::list_events))
        .route(
            "/v1/audit/streams/{aggregate_type}/{aggregate_id}",
            get(audit::get_stream),
        )
}
