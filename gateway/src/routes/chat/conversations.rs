//! `/v1/conversations`: create, open direct, list, details, rename,
//! membership, read markers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use proto::command::v1 as cmd;
use proto::query::v1 as qry;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::messages::MessageView;
use crate::auth::AuthUser;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::{as_user, AppState};

/// `POST /v1/conversations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupBody {
    /// 1–128 characters after trimming, no control characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub title: String,
    /// Initial members besides the creator (who becomes the owner);
    /// repeats and the creator are ignored. More than the group size limit
    /// (1000 with the owner) is 409 `group_full`.
    #[serde(default)]
    pub member_ids: Vec<Uuid>,
}

/// `POST /v1/conversations/direct`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenDirectBody {
    /// The other user.
    pub user_id: Uuid,
}

/// A created or found conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationId {
    #[schema(format = Uuid)]
    pub conversation_id: String,
}

/// `GET /v1/conversations` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListConversationsQuery {
    /// Page size: default 50, at most 200.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One conversation in the caller's list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationSummary {
    #[schema(format = Uuid)]
    pub conversation_id: String,
    #[schema(value_type = ConversationKind)]
    pub kind: String,
    pub title: Option<String>,
    /// The latest message the caller may see, if any.
    pub last_message: Option<MessageView>,
    pub unread_count: i64,
    pub last_seq: i64,
    /// RFC 3339; the ordering key (most recently active first).
    #[schema(format = DateTime)]
    pub last_activity_at: String,
}

/// `GET /v1/conversations` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<ConversationSummary>,
    /// Pass back as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// A current member.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    #[schema(format = Uuid)]
    pub user_id: String,
    #[schema(value_type = MemberRole)]
    pub role: String,
    #[schema(format = DateTime)]
    pub joined_at: String,
    /// The conversation sequence at which the member joined.
    pub joined_seq: i64,
}

/// `GET /v1/conversations/{id}` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationDetails {
    #[schema(format = Uuid)]
    pub conversation_id: String,
    #[schema(value_type = ConversationKind)]
    pub kind: String,
    pub title: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = Uuid)]
    pub created_by: String,
    pub members: Vec<MemberView>,
    pub last_seq: i64,
}

/// `PATCH /v1/conversations/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    /// 1–128 characters after trimming, no control characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub title: String,
}

/// A conversation's kind.
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum ConversationKind {
    Direct,
    Group,
}

/// A member's role.
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum MemberRole {
    Owner,
    Admin,
    Member,
}

/// Roles a member can be added with.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AddableRole {
    Admin,
    Member,
}

/// `POST /v1/conversations/{id}/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMemberBody {
    pub user_id: Uuid,
    /// `admin` or `member` (default).
    #[schema(value_type = Option<AddableRole>)]
    pub role: Option<String>,
}

/// `PUT /v1/conversations/{id}/read`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkReadBody {
    /// Highest sequence read, 1 to the conversation's `last_seq`; the
    /// marker only moves forward.
    #[schema(minimum = 1)]
    pub seq: i64,
}

/// Creates a group whose creator is its owner.
#[utoipa::path(
    post, path = "/v1/conversations", tag = "conversations",
    request_body = CreateGroupBody,
    responses(
        (status = 201, description = "Created", body = ConversationId),
        (status = 404, description = "A member does not exist", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Over the group size limit", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid title or members", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_group(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<CreateGroupBody>,
) -> Result<impl IntoResponse, ApiError> {
    let response = state
        .commands
        .clone()
        .create_group(as_user(
            &user.id(),
            cmd::CreateGroupRequest {
                title: body.title,
                member_ids: body.member_ids.iter().map(Uuid::to_string).collect(),
            },
        ))
        .await?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        Json(ConversationId {
            conversation_id: response.conversation_id,
        }),
    ))
}

/// Opens the direct conversation with a user: 201 when created, 200 when it
/// existed.
#[utoipa::path(
    post, path = "/v1/conversations/direct", tag = "conversations",
    request_body = OpenDirectBody,
    responses(
        (status = 201, description = "Created", body = ConversationId),
        (status = 200, description = "Already existed", body = ConversationId),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: concurrent changes; retry", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: the caller's own id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn open_direct(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<OpenDirectBody>,
) -> Result<impl IntoResponse, ApiError> {
    let response = state
        .commands
        .clone()
        .open_direct(as_user(
            &user.id(),
            cmd::OpenDirectRequest {
                user_id: body.user_id.to_string(),
            },
        ))
        .await?
        .into_inner();
    let status = if response.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(ConversationId {
            conversation_id: response.conversation_id,
        }),
    ))
}

/// The caller's conversations, most recently active first.
#[utoipa::path(
    get, path = "/v1/conversations", tag = "conversations",
    params(ListConversationsQuery),
    responses(
        (status = 200, description = "A page", body = ConversationList),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad cursor or limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_conversations(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<ListConversationsQuery>,
) -> Result<Json<ConversationList>, ApiError> {
    let response = state
        .queries
        .clone()
        .list_conversations(as_user(
            &user.id(),
            qry::ListConversationsRequest {
                limit: query.limit,
                cursor: query.cursor.filter(|c| !c.is_empty()),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(ConversationList {
        conversations: response
            .conversations
            .into_iter()
            .map(|c| ConversationSummary {
                conversation_id: c.conversation_id,
                kind: c.kind,
                title: c.title,
                last_message: c.last_message.map(MessageView::from),
                unread_count: c.unread_count,
                last_seq: c.last_seq,
                last_activity_at: c.last_activity_at,
            })
            .collect(),
        next_cursor: response.next_cursor,
    }))
}

/// Details and current members.
#[utoipa::path(
    get, path = "/v1/conversations/{id}", tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "Details", body = ConversationDetails),
        (status = 404, description = "No such conversation, or not a member", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_conversation(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ConversationDetails>, ApiError> {
    let c = state
        .queries
        .clone()
        .get_conversation(as_user(
            &user.id(),
            qry::GetConversationRequest {
                conversation_id: id.to_string(),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(ConversationDetails {
        conversation_id: c.conversation_id,
        kind: c.kind,
        title: c.title,
        created_at: c.created_at,
        created_by: c.created_by,
        members: c
            .members
            .into_iter()
            .map(|m| MemberView {
                user_id: m.user_id,
                role: m.role,
                joined_at: m.joined_at,
                joined_seq: m.joined_seq,
            })
            .collect(),
        last_seq: c.last_seq,
    }))
}

/// Renames a group (owner or admin).
#[utoipa::path(
    patch, path = "/v1/conversations/{id}", tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id")),
    request_body = RenameBody,
    responses(
        (status = 204, description = "Renamed"),
        (status = 403, description = "Not owner or admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such conversation, or not a member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A direct conversation", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid title", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn rename_conversation(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<RenameBody>,
) -> Result<StatusCode, ApiError> {
    state
        .commands
        .clone()
        .rename_conversation(as_user(
            &user.id(),
            cmd::RenameConversationRequest {
                conversation_id: id.to_string(),
                title: body.title,
            },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds a member (owner or admin; only the owner adds admins).
#[utoipa::path(
    post, path = "/v1/conversations/{id}/members", tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id")),
    request_body = AddMemberBody,
    responses(
        (status = 204, description = "Added"),
        (status = 403, description = "Not owner or admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such conversation or user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already a member, group full, or a direct conversation", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid user id or role", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn add_member(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<AddMemberBody>,
) -> Result<StatusCode, ApiError> {
    let role = match body.role.as_deref() {
        None => None,
        Some(r @ ("admin" | "member")) => Some(r.to_owned()),
        Some(_) => return Err(ApiError::invalid("role", "must be \"admin\" or \"member\"")),
    };
    state
        .commands
        .clone()
        .add_member(as_user(
            &user.id(),
            cmd::AddMemberRequest {
                conversation_id: id.to_string(),
                user_id: body.user_id.to_string(),
                role,
            },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a member (owner or admin), or leaves (a member removing itself).
#[utoipa::path(
    delete, path = "/v1/conversations/{id}/members/{user_id}", tag = "conversations",
    params(
        ("id" = Uuid, Path, description = "Conversation id"),
        ("user_id" = Uuid, Path, description = "The member to remove"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Not owner or admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such conversation or member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The owner cannot leave; a direct conversation", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn remove_member(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath((id, member)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    state
        .commands
        .clone()
        .remove_member(as_user(
            &user.id(),
            cmd::RemoveMemberRequest {
                conversation_id: id.to_string(),
                user_id: member.to_string(),
            },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Moves the caller's read marker forward.
#[utoipa::path(
    put, path = "/v1/conversations/{id}/read", tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id")),
    request_body = MarkReadBody,
    responses(
        (status = 204, description = "Marked"),
        (status = 404, description = "No such conversation, or not a member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: concurrent moves of the marker; retry", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`seq` is not within 1 and the conversation's `last_seq`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn mark_read(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<MarkReadBody>,
) -> Result<StatusCode, ApiError> {
    state
        .commands
        .clone()
        .mark_read(as_user(
            &user.id(),
            cmd::MarkReadRequest {
                conversation_id: id.to_string(),
                seq: body.seq,
            },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
