//! `impl Conn`: the client's frames after `hello`: `send`, `typing`,
//! `reauth`, `ping`.

use std::time::Duration;

use axum::extract::ws::Message;
use fred::interfaces::PubsubInterface;
use proto::command::v1 as cmd;
use tokio::time::Instant;

use super::close::{stream_error, GONE};
use super::{Conn, Step};
use crate::error::ApiError;
use crate::state::as_user;
use crate::ws::frames::{self, ClientFrame};

/// Typing frames per conversation per socket: at most one per this.
const TYPING_INTERVAL: Duration = Duration::from_millis(1000);

impl Conn {
    pub(super) async fn on_client(&mut self, msg: Option<Result<Message, axum::Error>>) -> Step {
        let max = self.state.config.ws_max_frame_bytes;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(b))) => {
                self.last_heard = Instant::now();
                self.state.metrics.ws_frames_in.inc();
                let (code, detail) = if b.len() > max {
                    (
                        "frame_too_large",
                        format!("frames are limited to {max} bytes"),
                    )
                } else {
                    (
                        "unsupported_frame",
                        "only text frames are accepted".to_owned(),
                    )
                };
                return self.emit(frames::error_frame(code, &detail, None)).await;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                self.last_heard = Instant::now();
                return Ok(());
            }
            Some(Ok(Message::Close(_))) | None => return Err(GONE),
            Some(Err(e)) => return Err(stream_error(&e)),
        };
        self.last_heard = Instant::now();
        self.state.metrics.ws_frames_in.inc();
        if text.len() > max {
            return self
                .emit(frames::error_frame(
                    "frame_too_large",
                    &format!("frames are limited to {max} bytes"),
                    None,
                ))
                .await;
        }
        match frames::parse(text.as_str()) {
            Err(e) => self.emit(e.to_json()).await,
            Ok(ClientFrame::Ping) => self.emit(frames::PONG).await,
            Ok(ClientFrame::Hello(_)) => {
                self.emit(frames::error_frame(
                    "unexpected_hello",
                    "hello is only the first frame",
                    None,
                ))
                .await
            }
            Ok(ClientFrame::Send(s)) => self.send(s).await,
            Ok(ClientFrame::Typing(t)) => self.typing(t).await,
            Ok(ClientFrame::Reauth(r)) => self.reauth(&r.access_token).await,
        }
    }

    /// Accepts a fresh access token of the same user and session (the
    /// socket's revocation listener is keyed by the session): the socket
    /// then lives until the new token expires. A refused token leaves the
    /// socket as it was.
    async fn reauth(&mut self, token: &str) -> Step {
        let current = self.user()?;
        match crate::auth::authenticate(&self.state, token).await {
            Ok(fresh)
                if fresh.user_id == current.user_id && fresh.session_id == current.session_id =>
            {
                self.user = Some(fresh);
                self.emit(frames::reauthenticated(fresh.expires_at)).await
            }
            Ok(_) => {
                self.emit(frames::error_frame(
                    "session_mismatch",
                    "reauth needs a token of the socket's own session",
                    None,
                ))
                .await
            }
            Err(e) => self.emit(frames::api_error_frame(&e, None)).await,
        }
    }

    /// Runs a `send` in its own task; its ack or error frame arrives when
    /// it is done (acks of one socket may come in any order).
    async fn send(&mut self, s: frames::Send) -> Step {
        let permit = tokio::select! {
            r = self.kill.fired() => return Err(r),
            p = self.sends.clone().acquire_owned() => p.map_err(|_| GONE)?,
        };
        let uid = self.user()?.id();
        let mut commands = self.state.commands.clone();
        let out = self.out.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let r = commands
                .send_message(as_user(
                    &uid,
                    cmd::SendMessageRequest {
                        conversation_id: s.conversation_id,
                        client_msg_id: s.client_msg_id.clone(),
                        body: s.body,
                    },
                ))
                .await;
            let text = match r {
                Ok(r) => {
                    let r = r.into_inner();
                    frames::ack(&s.client_msg_id, &r.message_id, r.seq)
                }
                Err(status) => {
                    let e = ApiError::from(status);
                    match &e {
                        ApiError::Internal(cause) => {
                            tracing::error!(error = format!("{cause:#}"), "WebSocket send failed");
                        }
                        ApiError::Unavailable(why) => {
                            tracing::warn!(why = %why, "WebSocket send: dependency unavailable");
                        }
                        _ => {}
                    }
                    frames::api_error_frame(&e, Some(s.client_msg_id))
                }
            };
            let _ = out.send(Message::Text(text.into())).await;
        });
        Ok(())
    }

    /// Relays a typing notice to the conversation's members (pub/sub only,
    /// never stored), at most once per [`TYPING_INTERVAL`].
    async fn typing(&mut self, t: frames::Typing) -> Step {
        if !self.convs.contains(&t.conversation_id) {
            return self
                .emit(frames::error_frame(
                    "conversation_not_found",
                    "no such conversation",
                    None,
                ))
                .await;
        }
        let now = Instant::now();
        if self
            .typing_sent
            .get(&t.conversation_id)
            .is_some_and(|at| now.duration_since(*at) < TYPING_INTERVAL)
        {
            return Ok(());
        }
        self.typing_sent.insert(t.conversation_id.clone(), now);
        let channel = self.conv_channel(&t.conversation_id);
        let frame = frames::typing(&t.conversation_id, &self.user()?.id());
        let redis = self.state.redis.next().clone();
        tokio::spawn(async move {
            let r: Result<i64, _> = redis.publish(channel, frame).await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "typing relay failed");
            }
        });
        Ok(())
    }
}
