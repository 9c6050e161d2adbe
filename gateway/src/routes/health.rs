//! `GET /healthz`, `GET /readyz`, `GET /metrics`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// 200 while the process runs.
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// 200 when Redis, command-service and query-service answer and the live
/// path works (the hub's last probe came back through Redis pub/sub and
/// the WebSocket dispatch); 503 naming what does not.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let limit = Duration::from_secs(2);
    let redis = tokio::time::timeout(
        limit,
        crate::auth::sessions::ping(&state.redis, &state.config.redis.redis_prefix),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let (commands, queries) = tokio::join!(
        serving(state.command_channel.clone(), limit),
        serving(state.query_channel.clone(), limit)
    );
    let live_path = state.ws.live_path_up();
    let ok = redis && commands && queries && live_path;
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "redis": redis,
        "command_service": commands,
        "query_service": queries,
        "live_path": live_path,
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Whether the service behind `channel` reports SERVING (gRPC health).
async fn serving(channel: tonic::transport::Channel, limit: Duration) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let check = async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
    };
    matches!(
        tokio::time::timeout(limit, check).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}
