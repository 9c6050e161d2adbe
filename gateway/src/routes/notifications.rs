//! API.md's notifications endpoints: web-push subscriptions, the VAPID
//! public key, notification settings and per-conversation mute. Each is a
//! call to the notifier's gRPC service (over `state.notifier`, mutual TLS)
//! on the caller's behalf.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use proto::notifier::v1 as pb;
use proto::notifier::v1::notifier_service_client::NotifierServiceClient;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::state::{as_user, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/push/vapid-public-key", get(vapid_public_key))
        .route(
            "/v1/push/subscriptions",
            post(create_subscription).get(list_subscriptions),
        )
        .route("/v1/push/subscriptions/{id}", delete(delete_subscription))
        .route(
            "/v1/me/notification-settings",
            get(get_settings).put(put_settings),
        )
        .route(
            "/v1/conversations/{id}/notifications",
            put(mute_conversation),
        )
}

fn client(state: &AppState) -> NotifierServiceClient<Channel> {
    NotifierServiceClient::new(state.notifier.clone())
}

/// The VAPID public key browsers subscribe with.
#[derive(Debug, Serialize, ToSchema)]
pub struct VapidKey {
    /// base64url (no padding) of the uncompressed P-256 point.
    pub public_key: String,
}

/// A PushSubscription's keys.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushKeys {
    /// base64url uncompressed P-256 point (65 bytes; padding optional).
    #[schema(pattern = "^[A-Za-z0-9_-]{87}=*$")]
    pub p256dh: String,
    /// base64url 16-byte authentication secret (padding optional).
    #[schema(pattern = "^[A-Za-z0-9_-]{22}=*$")]
    pub auth: String,
}

/// The browser's `PushSubscription.toJSON()`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    /// The push service endpoint: an absolute `https` (or `http`) URL
    /// with a host, at most 2048 bytes.
    #[schema(
        format = "uri",
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://"
    )]
    pub endpoint: String,
    pub keys: PushKeys,
    /// Accepted and ignored (browsers send null or a time in
    /// milliseconds, which need not be whole).
    #[serde(rename = "expirationTime", default)]
    #[schema(value_type = Option<f64>)]
    pub expiration_time: Option<serde_json::Value>,
}

/// A created (or refreshed) subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionId {
    #[schema(format = Uuid)]
    pub subscription_id: String,
}

/// One of the caller's subscriptions (keys are write-only).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    #[schema(format = Uuid)]
    pub subscription_id: String,
    pub endpoint: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `GET /v1/push/subscriptions` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionList {
    pub subscriptions: Vec<SubscriptionView>,
}

/// The caller's notification settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub push: bool,
    pub email: bool,
    /// Delay before unread messages are mailed as a digest, 0–604800.
    #[schema(minimum = 0, maximum = 604800)]
    pub email_delay_seconds: u32,
}

/// `PUT /v1/conversations/{id}/notifications`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteBody {
    pub muted: bool,
    /// RFC 3339; absent or null = until unmuted. Ignored when unmuting.
    #[schema(format = DateTime)]
    pub muted_until: Option<String>,
}

/// The VAPID public key.
#[utoipa::path(
    get, path = "/v1/push/vapid-public-key", tag = "notifications",
    responses(
        (status = 200, description = "The key", body = VapidKey),
        (status = 401, description = "Unauthenticated", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn vapid_public_key(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<VapidKey>, ApiError> {
    let key = client(&state)
        .get_vapid_public_key(as_user(&user.id(), pb::GetVapidPublicKeyRequest {}))
        .await?
        .into_inner();
    Ok(Json(VapidKey {
        public_key: key.public_key,
    }))
}

/// Registers a browser's push subscription: 201 when new, 200 when the
/// endpoint was already registered (its keys are replaced).
#[utoipa::path(
    post, path = "/v1/push/subscriptions", tag = "notifications",
    request_body = SubscriptionBody,
    responses(
        (status = 201, description = "Created", body = SubscriptionId),
        (status = 200, description = "Already registered; keys refreshed", body = SubscriptionId),
        (status = 422, description = "Not an https endpoint, or bad keys", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_subscription(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<SubscriptionBody>,
) -> Result<impl IntoResponse, ApiError> {
    let created = client(&state)
        .create_subscription(as_user(
            &user.id(),
            pb::CreateSubscriptionRequest {
                endpoint: body.endpoint,
                p256dh: body.keys.p256dh,
                auth: body.keys.auth,
            },
        ))
        .await?
        .into_inner();
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(SubscriptionId {
            subscription_id: created.subscription_id,
        }),
    ))
}

/// The caller's subscriptions, oldest first.
#[utoipa::path(
    get, path = "/v1/push/subscriptions", tag = "notifications",
    responses(
        (status = 200, description = "Subscriptions", body = SubscriptionList),
        (status = 401, description = "Unauthenticated", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_subscriptions(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<SubscriptionList>, ApiError> {
    let list = client(&state)
        .list_subscriptions(as_user(&user.id(), pb::ListSubscriptionsRequest {}))
        .await?
        .into_inner();
    Ok(Json(SubscriptionList {
        subscriptions: list
            .subscriptions
            .into_iter()
            .map(|s| SubscriptionView {
                subscription_id: s.subscription_id,
                endpoint: s.endpoint,
                created_at: s.created_at,
            })
            .collect(),
    }))
}

/// Removes one of the caller's subscriptions.
#[utoipa::path(
    delete, path = "/v1/push/subscriptions/{id}", tag = "notifications",
    params(("id" = Uuid, Path, description = "Subscription id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such subscription of the caller", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_subscription(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    client(&state)
        .delete_subscription(as_user(
            &user.id(),
            pb::DeleteSubscriptionRequest {
                subscription_id: id.to_string(),
            },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's notification settings (defaults when never set).
#[utoipa::path(
    get, path = "/v1/me/notification-settings", tag = "notifications",
    responses(
        (status = 200, description = "Settings", body = Settings),
        (status = 401, description = "Unauthenticated", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_settings(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Settings>, ApiError> {
    let s = client(&state)
        .get_settings(as_user(&user.id(), pb::GetSettingsRequest {}))
        .await?
        .into_inner();
    Ok(Json(Settings {
        push: s.push,
        email: s.email,
        email_delay_seconds: s.email_delay_seconds,
    }))
}

/// Replaces the caller's notification settings (every field).
#[utoipa::path(
    put, path = "/v1/me/notification-settings", tag = "notifications",
    request_body = Settings,
    responses(
        (status = 204, description = "Saved"),
        (status = 422, description = "Out of range", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn put_settings(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<Settings>,
) -> Result<StatusCode, ApiError> {
    client(&state)
        .put_settings(as_user(
            &user.id(),
            pb::NotificationSettings {
                push: body.push,
                email: body.email,
                email_delay_seconds: body.email_delay_seconds,
            },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mutes or unmutes a conversation for the caller.
#[utoipa::path(
    put, path = "/v1/conversations/{id}/notifications", tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id")),
    request_body = MuteBody,
    responses(
        (status = 204, description = "Saved"),
        (status = 404, description = "No such conversation, or not a member", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "muted_until is not RFC 3339", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn mute_conversation(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<MuteBody>,
) -> Result<StatusCode, ApiError> {
    client(&state)
        .set_conversation_mute(as_user(
            &user.id(),
            pb::SetConversationMuteRequest {
                conversation_id: id.to_string(),
                muted: body.muted,
                muted_until: body.muted_until.unwrap_or_default(),
            },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
