//! `impl Conn`: the `hello` frame and authentication.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::stream::SplitStream;
use futures::StreamExt;
use tokio::time::Instant;

use super::close::{
    stream_error, GONE, HELLO_REQUIRED, IDLE, SHUTDOWN, TRY_AGAIN, UNAUTHENTICATED,
};
use super::Conn;
use crate::auth::{authenticate, AuthUser};
use crate::error::ApiError;
use crate::ws::frames::{self, ClientFrame};
use crate::ws::hub::CloseReason;

impl Conn {
    /// Waits for the `hello` frame and authenticates.
    pub(super) async fn hello(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        header: Option<AuthUser>,
    ) -> Result<(AuthUser, Option<i64>), CloseReason> {
        let deadline = Instant::now() + Duration::from_secs(self.state.config.ws_hello_secs.max(1));
        let max = self.state.config.ws_max_frame_bytes;
        let text = loop {
            let msg = tokio::select! {
                r = self.kill.fired() => return Err(r),
                () = self.shutdown.triggered() => return Err(SHUTDOWN),
                () = tokio::time::sleep_until(deadline) => return Err(IDLE),
                m = stream.next() => m,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    self.state.metrics.ws_frames_in.inc();
                    break t;
                }
                Some(Ok(Message::Binary(_))) => {
                    self.state.metrics.ws_frames_in.inc();
                    self.emit(frames::error_frame(
                        "hello_required",
                        "the first frame must be a text hello",
                        None,
                    ))
                    .await?;
                    return Err(HELLO_REQUIRED);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Err(GONE),
                Some(Err(e)) => return Err(stream_error(&e)),
            }
        };
        if text.len() > max {
            self.emit(frames::error_frame(
                "frame_too_large",
                &format!("frames are limited to {max} bytes"),
                None,
            ))
            .await?;
            return Err(HELLO_REQUIRED);
        }
        let hello = match frames::parse(text.as_str()) {
            Ok(ClientFrame::Hello(h)) => h,
            Ok(_) => {
                self.emit(frames::error_frame(
                    "hello_required",
                    "the first frame must be {\"type\":\"hello\"}",
                    None,
                ))
                .await?;
                return Err(HELLO_REQUIRED);
            }
            Err(e) => {
                self.emit(e.to_json()).await?;
                return Err(HELLO_REQUIRED);
            }
        };
        let cursor = match hello.position() {
            Ok(c) => c,
            Err(e) => {
                self.emit(frames::api_error_frame(&e, None)).await?;
                return Err(HELLO_REQUIRED);
            }
        };
        let user = match (hello.access_token.as_deref(), header) {
            (Some(token), _) => authenticate(&self.state, token).await,
            (None, Some(user)) => Ok(user),
            (None, None) => Err(ApiError::unauthenticated(
                "unauthenticated",
                "send access_token in hello or an Authorization: Bearer header",
            )),
        };
        match user {
            Ok(user) => Ok((user, cursor)),
            Err(e) => {
                let unavailable = matches!(e, ApiError::Unavailable(_));
                self.emit(frames::api_error_frame(&e, None)).await?;
                Err(if unavailable {
                    TRY_AGAIN
                } else {
                    UNAUTHENTICATED
                })
            }
        }
    }
}
