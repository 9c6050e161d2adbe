//! `GET /v1/ws`: the real-time WebSocket (API.md, WebSocket).

use axum::Router;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}
