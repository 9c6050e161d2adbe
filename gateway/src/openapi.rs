//! The OpenAPI 3.1 document at `GET /v1/openapi.json`, generated from the
//! handlers' annotations (utoipa).

use axum::Router;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}
