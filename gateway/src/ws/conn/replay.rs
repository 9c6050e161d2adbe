//! `impl Conn`: subscribe, then replay from the client's cursor (or find
//! the head), catch a conversation up after a gap, resync after the hub's
//! live path was down.

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use proto::query::v1 as q;
use tokio::sync::watch;
use tokio::time::Instant;

use super::close::{BAD_CURSOR, GONE, OLD_CURSOR, TRY_AGAIN};
use super::live::Seen;
use super::{Conn, Step};
use crate::auth::sessions;
use crate::error::ApiError;
use crate::state::as_user;
use crate::ws::frames;
use crate::ws::hub::{self, CloseReason, EventInfo, Info, LiveFrame, Source};

/// Replay page size.
const REPLAY_PAGE: u32 = 1000;
/// Head lookup (no cursor) gives up after this many pages and uses the
/// position reached: resuming from it may repeat older events, never
/// miss one.
const HEAD_LOOKUP_PAGES: usize = 64;
/// How long a replay waits for the projector before giving up.
const PROJECTION_WAIT: Duration = Duration::from_secs(30);

impl Conn {
    /// Subscribes, replays, sends `ready`, marks presence.
    pub(super) async fn setup(&mut self, cursor: Option<i64>) -> Step {
        let user = self.user()?;
        let uid = user.user_id.to_string();
        let prefix = self.hub.prefix().to_owned();
        let mut waits = vec![
            self.listen(infra::keys::user_channel(&prefix, &uid))?,
            self.listen(sessions::revoked_channel(&prefix, user.user_id))?,
        ];
        for c in self.conversations().await? {
            let channel = self.conv_channel(&c);
            waits.push(self.listen(channel)?);
            self.convs.insert(c);
        }
        for mut w in waits {
            self.await_subscribed(&mut w).await?;
        }
        // A revocation published before the revocation channel was
        // subscribed: the session is gone by now.
        match sessions::is_active(&self.state.redis, &prefix, user.session_id, user.user_id).await {
            Ok(true) => {}
            Ok(false) => {
                self.emit(frames::error_frame(
                    "session_revoked",
                    "the session has ended; log in again",
                    None,
                ))
                .await?;
                return Err(hub::REVOKED);
            }
            Err(e) => {
                tracing::warn!(error = %e, "session store unavailable");
                return Err(TRY_AGAIN);
            }
        }
        let position = match cursor {
            Some(c) => self.resume(c).await?,
            None => self.head().await?,
        };
        self.floor = position;
        self.emit(frames::ready(
            &uid,
            position,
            self.state.config.ws_max_frame_bytes,
            user.expires_at,
        ))
        .await?;
        self.presence(true).await;
        Ok(())
    }

    pub(super) async fn await_subscribed(&mut self, w: &mut watch::Receiver<bool>) -> Step {
        let subscribed = matches!(
            tokio::time::timeout(Duration::from_secs(10), w.wait_for(|r| *r)).await,
            Ok(Ok(_))
        );
        match subscribed {
            true => Ok(()),
            false => {
                self.emit(frames::error_frame(
                    "unavailable",
                    "live delivery is unavailable; retry later",
                    None,
                ))
                .await?;
                Err(TRY_AGAIN)
            }
        }
    }

    /// Every conversation of the user (all pages).
    async fn conversations(&mut self) -> Result<Vec<String>, CloseReason> {
        let uid = self.user()?.id();
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut queries = self.state.queries.clone();
            let page = queries
                .list_conversations(as_user(
                    &uid,
                    q::ListConversationsRequest {
                        limit: Some(200),
                        cursor: cursor.clone(),
                    },
                ))
                .await;
            let page = match page {
                Ok(p) => p.into_inner(),
                Err(status) => return Err(self.upstream_failed(status).await),
            };
            out.extend(page.conversations.into_iter().map(|c| c.conversation_id));
            match page.next_cursor {
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => return Ok(out),
            }
        }
    }

    /// Tells the client a service failed and picks the close reason.
    async fn upstream_failed(&mut self, status: tonic::Status) -> CloseReason {
        let e = ApiError::from(status);
        if let ApiError::Internal(cause) = &e {
            tracing::error!(error = format!("{cause:#}"), "WebSocket setup failed");
        }
        if self.emit(frames::api_error_frame(&e, None)).await.is_err() {
            return GONE;
        }
        TRY_AGAIN
    }

    async fn list_events(&self, after: i64) -> Result<q::ListEventsForUserResponse, tonic::Status> {
        let uid = self.user.map(|u| u.id()).unwrap_or_default();
        let mut attempt = 0;
        loop {
            let mut queries = self.state.queries.clone();
            let r = queries
                .list_events_for_user(as_user(
                    &uid,
                    q::ListEventsForUserRequest {
                        after_position: after,
                        limit: Some(REPLAY_PAGE),
                        up_to_position: None,
                    },
                ))
                .await;
            match r {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == tonic::Code::Unavailable && attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(s) => return Err(s),
            }
        }
    }

    /// The head of the log for a socket without a cursor: paged forward
    /// from the hub's hint without sending anything.
    async fn head(&mut self) -> Result<i64, CloseReason> {
        match self.replay(self.hub.head(), false).await {
            // The hint only ever holds positions query-service or the
            // projector vouched for, so this means the log itself went back
            // (a restored database): start over from its beginning.
            Err(Replay::CursorAhead) => {
                tracing::warn!(
                    hint = self.hub.head(),
                    "head hint beyond the log; resetting it"
                );
                self.hub.reset_head();
                match self.replay(0, false).await {
                    Ok(p) => Ok(p),
                    // (TooOld only comes from a delivering replay.)
                    Err(Replay::CursorAhead | Replay::TooOld) => Err(TRY_AGAIN),
                    Err(Replay::Closed(r)) => Err(r),
                }
            }
            Err(Replay::TooOld) => Err(TRY_AGAIN),
            Err(Replay::Closed(r)) => Err(r),
            Ok(p) => Ok(p),
        }
    }

    /// Pages the replay from the client's cursor `from`, sending the frames.
    async fn resume(&mut self, from: i64) -> Result<i64, CloseReason> {
        // Known too old from the head this gateway has seen: refused
        // before any query (security review M-7). A stale hint lets an old
        // cursor start; the replay's own count stops it.
        if self.hub.head().saturating_sub(from) > self.state.config.ws_resume_window {
            return Err(self.cursor_too_old().await);
        }
        match self.replay(from, true).await {
            Ok(p) => Ok(p),
            Err(Replay::TooOld) => Err(self.cursor_too_old().await),
            // Never a position anyone was given: refused, and it never
            // reaches the hub's head hint (where it would become every
            // later socket's starting point).
            Err(Replay::CursorAhead) => {
                self.emit(frames::error_frame(
                    "cursor_ahead",
                    "the cursor is beyond the head of the event log; reconnect without a cursor",
                    None,
                ))
                .await?;
                Err(BAD_CURSOR)
            }
            Err(Replay::Closed(r)) => Err(r),
        }
    }

    async fn cursor_too_old(&mut self) -> CloseReason {
        let sent = self
            .emit(frames::error_frame(
                "cursor_too_old",
                "the cursor is too far behind the head of the event log; \
                 re-sync through the REST API and reconnect without a cursor",
                None,
            ))
            .await;
        match sent {
            Ok(()) => OLD_CURSOR,
            Err(r) => r,
        }
    }

    /// Pages the replay from `from`; sends the frames when `deliver`.
    /// Returns the last `next_position`.
    async fn replay(&mut self, from: i64, deliver: bool) -> Result<i64, Replay> {
        let mut after = from;
        let mut pages = 0;
        let deadline = Instant::now() + PROJECTION_WAIT;
        loop {
            let page = match self.list_events(after).await {
                Ok(p) => p,
                Err(status) if status.code() == tonic::Code::OutOfRange => {
                    return Err(Replay::CursorAhead)
                }
                Err(status) => return Err(self.upstream_failed(status).await.into()),
            };
            if deliver {
                for ev in page.events {
                    if let Some(Info::Event(info)) = hub::parse_frame(&ev.frame_json) {
                        self.send_replayed(&info, ev.frame_json).await?;
                    }
                }
            }
            after = after.max(page.next_position);
            if !page.has_more {
                break;
            }
            pages += 1;
            if !deliver && pages >= HEAD_LOOKUP_PAGES {
                break;
            }
            if deliver && after - from > self.state.config.ws_resume_window {
                return Err(Replay::TooOld);
            }
            if page.waiting_for_projection {
                if Instant::now() > deadline {
                    if !deliver {
                        break;
                    }
                    self.emit(frames::error_frame(
                        "unavailable",
                        "the event projection is behind; retry later",
                        None,
                    ))
                    .await?;
                    return Err(TRY_AGAIN.into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Every page was answered for a position at or below the head
        // (query-service refuses one beyond it), so `after` is a real one.
        self.hub.saw(after);
        Ok(after)
    }

    /// Sends a replayed or caught-up frame unless already sent.
    async fn send_replayed(&mut self, info: &EventInfo, text: String) -> Step {
        if info.position <= self.floor {
            return Ok(());
        }
        let key = (info.is_marker(), info.conversation_id.clone());
        if self.last.get(&key).is_some_and(|s| info.seq <= s.seq) {
            return Ok(());
        }
        self.emit(text).await?;
        self.last.insert(
            key,
            Seen {
                seq: info.seq,
                position: info.position,
            },
        );
        Ok(())
    }

    /// Fills a conversation's frames after `from` from query-service
    /// (best effort: a failure is logged; the next gap retries).
    pub(super) async fn catch_up(&mut self, conversation_id: &str, from: i64) -> Step {
        let mut after = from;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let page = match self.list_events(after).await {
                Ok(p) => p,
                Err(status) => {
                    tracing::warn!(error = %status, "WebSocket catch-up failed");
                    return Ok(());
                }
            };
            for ev in page.events {
                if ev.conversation_id != conversation_id {
                    continue;
                }
                if let Some(Info::Event(info)) = hub::parse_frame(&ev.frame_json) {
                    if !info.is_marker() {
                        self.send_replayed(&info, ev.frame_json).await?;
                    }
                }
            }
            after = after.max(page.next_position);
            if !page.has_more {
                return Ok(());
            }
            if page.waiting_for_projection {
                if Instant::now() > deadline {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Replays from `from` as if each frame arrived live (deduplicated by
    /// `seq`, membership changes applied): what pub/sub lost while the
    /// hub's live path was down. Best effort, like [`Self::catch_up`].
    pub(super) async fn resync(&mut self, from: i64) -> Step {
        let mut after = from.max(self.floor);
        let deadline = Instant::now() + PROJECTION_WAIT;
        loop {
            let page = match self.list_events(after).await {
                Ok(p) => p,
                Err(status) => {
                    tracing::warn!(error = %status, "WebSocket resync failed");
                    return Ok(());
                }
            };
            for ev in page.events {
                let Some(info) = hub::parse_frame(&ev.frame_json) else {
                    continue;
                };
                // A replayed creation is about the user (they are in it);
                // other membership events say so by their subject.
                let source = match &info {
                    Info::Event(e) if e.event_type == "ConversationCreated" => Source::User,
                    _ => Source::Conv,
                };
                let live = LiveFrame {
                    source,
                    info,
                    text: Utf8Bytes::from(ev.frame_json),
                };
                self.on_live(&live).await?;
            }
            after = after.max(page.next_position);
            if !page.has_more {
                return Ok(());
            }
            if page.waiting_for_projection {
                if Instant::now() > deadline {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Why a replay stopped short.
enum Replay {
    /// query-service refused the start position: beyond the head.
    CursorAhead,
    /// The replay covered more than the resume window and is not done.
    TooOld,
    /// The socket is to close with this reason (the client was told why).
    Closed(CloseReason),
}

impl From<CloseReason> for Replay {
    fn from(r: CloseReason) -> Self {
        Self::Closed(r)
    }
}
