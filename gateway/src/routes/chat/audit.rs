//! `/v1/audit`: the event log for users with the `auditor` role (the
//! query-service checks the role: 403 otherwise).

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

/// One stored event: the envelope of `schemas/envelope.v1.schema.json`
/// with its global `position`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    #[schema(format = Uuid)]
    pub event_id: String,
    #[schema(value_type = AggregateType)]
    pub aggregate_type: String,
    #[schema(format = Uuid)]
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: u32,
    #[schema(format = DateTime)]
    pub occurred_at: String,
    /// A user id, or `system`.
    pub actor: String,
    #[schema(format = Uuid)]
    pub correlation_id: String,
    #[schema(format = Uuid)]
    pub causation_id: Option<String>,
    pub position: i64,
    /// The event's fields (a JSON object), as stored.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl TryFrom<qry::Envelope> for AuditEvent {
    type Error = ApiError;

    fn try_from(e: qry::Envelope) -> Result<Self, ApiError> {
        let payload: serde_json::Value = serde_json::from_str(&e.payload_json).map_err(|err| {
            ApiError::Internal(anyhow::anyhow!(
                "event {} has a payload that is not JSON: {err}",
                e.event_id
            ))
        })?;
        Ok(Self {
            event_id: e.event_id,
            aggregate_type: e.aggregate_type,
            aggregate_id: e.aggregate_id,
            sequence: e.sequence,
            event_type: e.event_type,
            event_version: e.event_version,
            occurred_at: e.occurred_at,
            actor: e.actor,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            position: e.position,
            payload,
        })
    }
}

/// `GET /v1/audit/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events with position > after_position (default 0: from the first).
    #[param(minimum = 0)]
    pub after_position: Option<i64>,
    /// Page size: default 1000, at most 1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of the global log.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<AuditEvent>,
    /// Pass as `after_position` next.
    pub next_position: i64,
}

/// The stream kinds of the event store, for the document.
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum AggregateType {
    User,
    Conversation,
    ReadMarker,
}

/// The stream kinds of the event store.
const AGGREGATE_TYPES: [&str; 3] = ["user", "conversation", "read_marker"];

/// `GET /v1/audit/streams/...` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// First sequence to return (default 1; lower values count as 1).
    pub from_sequence: Option<i64>,
    /// Page size: default 1000, at most 1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of one stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamPage {
    pub events: Vec<AuditEvent>,
    /// More events follow; continue from `next_sequence`.
    pub has_more: bool,
    pub next_sequence: i64,
}

/// Every event in global position order (role `auditor`).
#[utoipa::path(
    get, path = "/v1/audit/events", tag = "audit",
    params(EventsQuery),
    responses(
        (status = 200, description = "A page", body = EventPage),
        (status = 403, description = "Not an auditor", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad position or limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_events(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let page = state
        .queries
        .clone()
        .list_events(as_user(
            &user.id(),
            qry::ListEventsRequest {
                after_position: query.after_position.unwrap_or(0),
                limit: query.limit,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(EventPage {
        events: page
            .events
            .into_iter()
            .map(AuditEvent::try_from)
            .collect::<Result<_, _>>()?,
        next_position: page.next_position,
    }))
}

/// One stream in sequence order (role `auditor`).
#[utoipa::path(
    get, path = "/v1/audit/streams/{aggregate_type}/{aggregate_id}", tag = "audit",
    params(
        ("aggregate_type" = AggregateType, Path, description = "`user`, `conversation` or `read_marker`"),
        ("aggregate_id" = Uuid, Path, description = "Stream id"),
        StreamQuery,
    ),
    responses(
        (status = 200, description = "A page", body = StreamPage),
        (status = 403, description = "Not an auditor", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown aggregate type, bad sequence or limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_stream(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath((aggregate_type, aggregate_id)): ApiPath<(String, Uuid)>,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> Result<Json<StreamPage>, ApiError> {
    if !AGGREGATE_TYPES.contains(&aggregate_type.as_str()) {
        return Err(ApiError::invalid(
            "aggregate_type",
            "must be \"user\", \"conversation\" or \"read_marker\"",
        ));
    }
    let page = state
        .queries
        .clone()
        .get_stream(as_user(
            &user.id(),
            qry::GetStreamRequest {
                aggregate_type,
                aggregate_id: aggregate_id.to_string(),
                from_sequence: query.from_sequence,
                limit: query.limit,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(StreamPage {
        events: page
            .events
            .into_iter()
            .map(AuditEvent::try_from)
            .collect::<Result<_, _>>()?,
        has_more: page.has_more,
        next_sequence: page.next_sequence,
    }))
}
