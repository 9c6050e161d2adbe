//! The writer task: the only owner of the socket's sink.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::SplitSink;
use futures::SinkExt;
use tokio::sync::{mpsc, oneshot};

use super::close::GONE;
use crate::state::AppState;
use crate::ws::hub::{self, CloseReason};

/// Owns the sink: forwards queued frames, then sends the close frame.
pub(super) async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut out: mpsc::Receiver<Message>,
    mut close: oneshot::Receiver<CloseReason>,
    state: AppState,
) {
    let reason = loop {
        tokio::select! {
            biased;
            r = &mut close => break r.unwrap_or(GONE),
            m = out.recv() => match m {
                Some(m) => {
                    let text = matches!(m, Message::Text(_));
                    tokio::select! {
                        r = sink.send(m) => {
                            if r.is_err() {
                                return;
                            }
                            if text {
                                state.metrics.ws_frames_out.inc();
                            }
                        }
                        r = &mut close => break r.unwrap_or(GONE),
                    }
                }
                None => break (&mut close).await.unwrap_or(GONE),
            },
        }
    };
    let finish = async {
        // Frames queued before the close (an error frame explaining it)
        // go first, unless the client is not reading anyway.
        if reason != hub::SLOW_CONSUMER {
            while let Ok(m) = out.try_recv() {
                let text = matches!(m, Message::Text(_));
                if sink.send(m).await.is_err() {
                    return;
                }
                if text {
                    state.metrics.ws_frames_out.inc();
                }
            }
        }
        if reason != GONE {
            let frame = CloseFrame {
                code: reason.code,
                reason: Utf8Bytes::from_static(reason.reason),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), finish).await;
}
