//! `/v1/conversations/{id}/messages`: send (idempotent per
//! `client_msg_id`), history, edit, delete.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use proto::command::v1 as cmd;
use proto::query::v1 as qry;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::{as_user, AppState};

/// A message as API.md defines it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    #[schema(format = Uuid)]
    pub message_id: String,
    #[schema(format = Uuid)]
    pub conversation_id: String,
    /// The conversation stream's sequence of the event that created it.
    pub seq: i64,
    #[schema(format = Uuid)]
    pub sender_id: String,
    /// Null once deleted: the body is gone.
    pub body: Option<String>,
    #[schema(format = DateTime)]
    pub sent_at: String,
    #[schema(format = DateTime)]
    pub edited_at: Option<String>,
    pub deleted: bool,
}

impl From<qry::Message> for MessageView {
    fn from(m: qry::Message) -> Self {
        Self {
            message_id: m.message_id,
            conversation_id: m.conversation_id,
            seq: m.seq,
            sender_id: m.sender_id,
            body: if m.deleted { None } else { m.body },
            sent_at: m.sent_at,
            edited_at: m.edited_at,
            deleted: m.deleted,
        }
    }
}

/// `POST /v1/conversations/{id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    /// The client's id for this message, 1–64 printable ASCII characters;
    /// resending it returns the first result and appends nothing.
    #[schema(min_length = 1, max_length = 64, pattern = "^[!-~]+$")]
    pub client_msg_id: String,
    /// 1–4000 characters after trimming.
    #[schema(
        min_length = 1,
        max_length = 4000,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub body: String,
}

/// The result of a send.
#[derive(Debug, Serialize, ToSchema)]
pub struct Sent {
    #[schema(format = Uuid)]
    pub message_id: String,
    pub seq: i64,
    #[schema(format = DateTime)]
    pub sent_at: String,
}

/// History query: at most one of `before_seq` and `after_seq`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListMessagesQuery {
    /// Messages with seq < before_seq, newest first.
    #[param(minimum = 1)]
    pub before_seq: Option<i64>,
    /// Messages with seq > after_seq, oldest first.
    #[param(minimum = 0)]
    pub after_seq: Option<i64>,
    /// Page size: default 50, at most 200.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// A page of history.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    /// More messages exist beyond this page, in its direction.
    pub has_more: bool,
}

/// `PATCH /v1/conversations/{id}/messages/{message_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    /// 1–4000 characters after trimming.
    #[schema(
        min_length = 1,
        max_length = 4000,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub body: String,
}

/// Sends a message: 201, or 200 with the first result when this
/// `client_msg_id` was already used by the caller.
#[utoipa::path(
    post, path = "/v1/conversations/{id}/messages", tag = "messages",
    params(("id" = Uuid, Path, description = "Conversation id")),
    request_body = SendBody,
    responses(
        (status = 201, description = "Sent", body = Sent),
        (status = 200, description = "A repeated client_msg_id: the first result", body = Sent),
        (status = 404, description = "No such conversation, or not a member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: concurrent changes; retry", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Empty or too long body, or a bad `client_msg_id`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn send_message(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<SendBody>,
) -> Result<impl IntoResponse, ApiError> {
    let sent = state
        .commands
        .clone()
        .send_message(as_user(
            &user.id(),
            cmd::SendMessageRequest {
                conversation_id: id.to_string(),
                client_msg_id: body.client_msg_id,
                body: body.body,
            },
        ))
        .await?
        .into_inner();
    let status = if sent.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(Sent {
            message_id: sent.message_id,
            seq: sent.seq,
            sent_at: sent.sent_at,
        }),
    ))
}

/// History: newest first (no bound or `before_seq`), oldest first
/// (`after_seq`); only messages of the caller's membership periods.
#[utoipa::path(
    get, path = "/v1/conversations/{id}/messages", tag = "messages",
    params(("id" = Uuid, Path, description = "Conversation id"), ListMessagesQuery),
    responses(
        (status = 200, description = "A page", body = MessagePage),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such conversation, or not a member", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Both bounds, or a bad limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_messages(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<ListMessagesQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    if query.before_seq.is_some() && query.after_seq.is_some() {
        return Err(ApiError::invalid(
            "after_seq",
            "give before_seq or after_seq, not both",
        ));
    }
    let page = state
        .queries
        .clone()
        .list_messages(as_user(
            &user.id(),
            qry::ListMessagesRequest {
                conversation_id: id.to_string(),
                before_seq: query.before_seq,
                after_seq: query.after_seq,
                limit: query.limit,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(MessagePage {
        messages: page.messages.into_iter().map(MessageView::from).collect(),
        has_more: page.has_more,
    }))
}

/// Edits a message (author only).
#[utoipa::path(
    patch, path = "/v1/conversations/{id}/messages/{message_id}", tag = "messages",
    params(
        ("id" = Uuid, Path, description = "Conversation id"),
        ("message_id" = Uuid, Path, description = "Message id"),
    ),
    request_body = EditBody,
    responses(
        (status = 204, description = "Edited"),
        (status = 403, description = "Not the author", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such conversation or message", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The message is deleted", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Empty or too long body", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn edit_message(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath((id, message_id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(body): ApiJson<EditBody>,
) -> Result<StatusCode, ApiError> {
    state
        .commands
        .clone()
        .edit_message(as_user(
            &user.id(),
            cmd::EditMessageRequest {
                conversation_id: id.to_string(),
                message_id: message_id.to_string(),
                body: body.body,
            },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a message (author, or owner/admin); its body leaves the read
/// models.
#[utoipa::path(
    delete, path = "/v1/conversations/{id}/messages/{message_id}", tag = "messages",
    params(
        ("id" = Uuid, Path, description = "Conversation id"),
        ("message_id" = Uuid, Path, description = "Message id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Neither the author nor owner/admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such conversation or message", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: concurrent changes; retry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_message(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath((id, message_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    state
        .commands
        .clone()
        .delete_message(as_user(
            &user.id(),
            cmd::DeleteMessageRequest {
                conversation_id: id.to_string(),
                message_id: message_id.to_string(),
            },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
