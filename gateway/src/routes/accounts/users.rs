//! `/v1/me` and `/v1/users`: the caller's profile and the user directory.

use axum::extract::State;
use axum::Json;
use proto::query::v1 as qry;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::{as_user, AppState};

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
