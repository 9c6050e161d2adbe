//! `GET /v1/ws`: the real-time WebSocket (API.md, WebSocket).
//!
//! # Layout
//!
//! - [`hub`]: one shared Redis subscriber per process, the local registry
//!   channel → sockets, slow-consumer detection, revocations.
//! - [`conn`]: one socket: hello and authentication, subscribe-then-replay
//!   resume, live delivery with per-conversation `seq` deduplication and
//!   gap repair, send/ack, typing, heartbeats, presence.
//! - [`frames`]: the client frames and the server's own frames.
//!
//! # Authentication
//!
//! Either an `Authorization: Bearer` header on the upgrade request (a bad
//! one is refused before the upgrade: 401 problem+json), or the first
//! frame's `access_token` (browsers). Either way the first frame must be
//! `hello`; with header authentication it may omit `access_token` (if it
//! carries one, that token decides). An authentication failure after the
//! upgrade sends `{"type":"error","code"}` (`unauthenticated`,
//! `invalid_token`, `token_expired`, `session_revoked`) and closes.
//!
//! # Close codes
//!
//! | code | reason | when |
//! |---|---|---|
//! | 1000 | | the client closed |
//! | 1001 | `server shutting down` | graceful shutdown |
//! | 1008 | `slow consumer` | the outbound queue (`GATEWAY_WS_QUEUE` frames) overflowed; reconnect with the last cursor |
//! | 1008 | `hello required` | the first frame was not a valid `hello` |
//! | 1002 | `protocol error` | a WebSocket protocol violation (RFC 6455) |
//! | 1007 | `text frame is not UTF-8` | a text frame whose payload is not UTF-8 |
//! | 1008 | `cursor ahead of the log` | `hello.cursor` beyond the head of the event log (after an error frame `cursor_ahead`): reconnect without a cursor |
//! | 1008 | `cursor too old` | `hello.cursor` more than `GATEWAY_WS_RESUME_WINDOW` positions behind the head (after an error frame `cursor_too_old`): re-sync through REST, reconnect without a cursor |
//! | 1009 | `frame too large` | a frame beyond the hard limit (4 × `GATEWAY_WS_MAX_FRAME_BYTES`, at least 64 KiB); frames above `GATEWAY_WS_MAX_FRAME_BYTES` but under it get an error frame and the socket stays open |
//! | 1013 | `try again later` | query-service unavailable during hello/resume |
//! | 4401 | `unauthenticated` / `session revoked` | authentication failed, or the session was revoked (logout, password change) while the socket was open |
//! | 4408 | `idle timeout` | no frame (not even a pong) for `GATEWAY_WS_IDLE_SECS`, or no `hello` within `GATEWAY_WS_HELLO_SECS` |
//!
//! # Cursors
//!
//! A cursor is a global event position (a decimal string). `ready.cursor`
//! is the position the socket's stream starts after: the end of the
//! replay when `hello` had a cursor; otherwise the head of the log as far
//! as query-service has projected it (found by paging `ListEventsForUser`
//! forward from the highest position this gateway has seen, without
//! sending those frames). Resuming later from `ready.cursor`, or from any
//! later event's `cursor`, misses nothing.

pub mod conn;
pub mod frames;
pub mod hub;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::{authenticate, bearer};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/ws", get(upgrade))
}

/// The hard frame limit of the WebSocket codec: beyond it the frame is not
/// even read (close 1009). Between `ws_max_frame_bytes` and this, the frame
/// is read and answered with an error frame.
pub fn hard_frame_limit(max_frame_bytes: usize) -> usize {
    max_frame_bytes.saturating_mul(4).max(64 * 1024)
}

/// Initial capacity of a socket's read buffer, and the most one read
/// takes from the TLS stream. tungstenite's default (128 KiB) is allocated
/// and zero-filled on a socket's first read, so it was resident for every
/// open socket: ~150 KiB per idle socket in all, against a design target
/// of 30 KiB (`tests/src/bin/ws-idle.rs`). A larger frame still grows the
/// buffer to its length (up to [`hard_frame_limit`]); it just takes more
/// reads.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

async fn upgrade(
    State(state): State<AppState>,
    parts: Parts,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // A plain GET (no `Upgrade: websocket`, a bad key or version) gets a
    // problem document like every other refusal, not axum's text/plain.
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return ApiError::UpgradeRequired(rejection.body_text()).into_response(),
    };
    let header_user = match bearer(&parts) {
        Some(token) => match authenticate(&state, token).await {
            Ok(user) => Some(user),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let limit = hard_frame_limit(state.config.ws_max_frame_bytes);
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| conn::run(socket, state, header_user))
}
