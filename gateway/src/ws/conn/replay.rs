//! One WebSocket connection.
//!
//! Two tasks: the *connection* task below (reads client frames, takes live
//! frames from its hub queue, decides what to send) and a *writer* task
//! that owns the socket's sink. Between them a small bounded queue; when
//! the client stops reading, the writer blocks, the connection task blocks
//! on it, the hub queue (`GATEWAY_WS_QUEUE` frames) fills, and the hub
//! closes the socket as a slow consumer: memory per socket stays bounded.
//!
//! # Ordering guarantees
//!
//! - Subscribe first: the user's channel, its revocation channel and every
//!   conversation channel are subscribed (Redis acknowledged) before the
//!   replay or the head lookup starts; live frames queue meanwhile.
//! - Replay (`hello.cursor`) pages `ListEventsForUser` until `has_more` is
//!   false, pausing while `waiting_for_projection`; its last
//!   `next_position` is `ready.cursor` and the *floor*: queued and later
//!   live event frames at or below it are not sent (the replay had them).
//! - Per conversation, frames go out in `seq` order exactly once: a live
//!   frame whose `seq` is not above the last one sent is dropped; one that
//!   jumps (a frame lost to pub/sub, e.g. during a Redis reconnect) first
//!   triggers a catch-up of that conversation from query-service.
//! - Membership: a `ConversationCreated`/`MemberAdded` naming the user (on
//!   the user's channel) is sent, the socket joins the conversation's
//!   channel, and once subscribed catches up from that event's cursor
//!   (frames published between the event and the subscription). A
//!   `MemberRemoved` of the user is sent, then nothing more of that
//!   conversation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use fred::interfaces::{KeysInterface, PubsubInterface, SetsInterface};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use proto::command::v1 as cmd;
use proto::query::v1 as q;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

use super::frames::{self, ClientFrame};
use super::hub::{CloseReason, EventInfo, Hub, Info, Kill, Listener, Live, Source};
use crate::auth::{authenticate, sessions, AuthUser};
use crate::error::ApiError;
use crate::state::{as_user, AppState};

const SHUTDOWN: CloseReason = CloseReason {
    code: 1001,
    reason: "server shutting down",
};
const GONE: CloseReason = CloseReason {
    code: 1000,
    reason: "",
};
const HELLO_REQUIRED: CloseReason = CloseReason {
    code: 1008,
    reason: "hello required",
};
const TOO_LARGE: CloseReason = CloseReason {
    code: 1009,
    reason: "frame too large",
};
const BAD_CURSOR: CloseReason = CloseReason {
    code: 1008,
    reason: "cursor ahead of the log",
};
const INVALID_TEXT: CloseReason = CloseReason {
    code: 1007,
    reason: "text frame is not UTF-8",
};
const PROTOCOL_ERROR: CloseReason = CloseReason {
    code: 1002,
    reason: "protocol error",
};
const TRY_AGAIN: CloseReason = CloseReason {
    code: 1013,
    reason: "try again later",
};
const UNAUTHENTICATED: CloseReason = CloseReason {
    code: 4401,
    reason: "unauthenticated",
};
const IDLE: CloseReason = CloseReason {
    code: 4408,
    reason: "idle timeout",
};

/// Frames between the connection task and the writer.
const OUT_QUEUE: usize = 64;
/// `send` frames in flight per socket; more wait (back-pressure on reads).
const MAX_SENDS_IN_FLIGHT: usize = 32;
/// Replay page size.
const REPLAY_PAGE: u32 = 1000;
/// Head lookup (no cursor) gives up after this many pages and uses the
/// position reached: resuming from it may repeat older events, never
/// miss one.
const HEAD_LOOKUP_PAGES: usize = 64;
/// How long a replay waits for the projector before giving up.
const PROJECTION_WAIT: Duration = Duration::from_secs(30);
/// Typing frames per conversation per socket: at most one per this.
const TYPING_INTERVAL: Duration = Duration::from_millis(1000);

type Step = Result<(), CloseReason>;

/// Decrements the connection gauge when the connection ends.
struct Gauge(Arc<crate::metrics::Metrics>);
impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.ws_connections.dec();
    }
}

/// Serves one upgraded socket until it closes.
pub async fn run(socket: WebSocket, state: AppState, header_user: Option<AuthUser>) {
    state.metrics.ws_connections.inc();
    let _gauge = Gauge(state.metrics.clone());
    let (sink, stream) = socket.split();
    let (out, out_rx) = mpsc::channel(OUT_QUEUE);
    let (close_tx, close_rx) = oneshot::channel();
    let writer = tokio::spawn(write_loop(sink, out_rx, close_rx, state.clone()));
    let hub = state.ws.clone();
    let hub_resyncs = hub.resyncs();
    let (live_tx, live) = mpsc::channel(state.config.ws_queue.max(1));
    let mut conn = Conn {
        id: hub.next_id(),
        hub,
        kill: Arc::new(Kill::default()),
        out,
        live_tx,
        live,
        shutdown: state.shutdown.clone(),
        user: None,
        channels: HashSet::new(),
        convs: HashSet::new(),
        last: HashMap::new(),
        floor: -1,
        last_heard: Instant::now(),
        sends: Arc::new(Semaphore::new(MAX_SENDS_IN_FLIGHT)),
        typing_sent: HashMap::new(),
        resyncs: hub_resyncs,
        state,
    };
    let reason = match conn.run(stream, header_user).await {
        Ok(()) => GONE,
        Err(r) => r,
    };
    conn.cleanup().await;
    drop(conn);
    let _ = close_tx.send(reason);
    let _ = writer.await;
}

/// What was last sent of a stream (a conversation, or a read-marker
/// stream), for deduplication and gap detection.
#[derive(Debug, Clone, Copy)]
struct Seen {
    seq: i64,
    position: i64,
}

struct Conn {
    state: AppState,
    hub: Arc<Hub>,
    id: u64,
    kill: Arc<Kill>,
    /// To the writer.
    out: mpsc::Sender<Message>,
    /// The hub's end of this socket's queue (cloned into its listener).
    live_tx: mpsc::Sender<Arc<Live>>,
    live: mpsc::Receiver<Arc<Live>>,
    shutdown: watch::Receiver<bool>,
    user: Option<AuthUser>,
    /// Hub channels this socket listens to.
    channels: HashSet<String>,
    /// Conversations the user belongs to (live frames of others dropped).
    convs: HashSet<String>,
    /// Keyed by (is read marker, conversation id).
    last: HashMap<(bool, String), Seen>,
    /// Event frames at or below this position are not sent live.
    floor: i64,
    /// When the client last sent anything (idle reaping).
    last_heard: Instant,
    sends: Arc<Semaphore>,
    typing_sent: HashMap<String, Instant>,
    /// The hub's resync epochs (the live path came back after trouble).
    resyncs: watch::Receiver<(u64, i64)>,
}

impl Conn {
    fn user(&self) -> Result<AuthUser, CloseReason> {
        self.user.ok_or(UNAUTHENTICATED)
    }

    fn listener(&self) -> Result<Listener, CloseReason> {
        Ok(Listener {
            id: self.id,
            session_id: self.user()?.session_id,
            tx: self.live_tx.clone(),
            kill: self.kill.clone(),
        })
    }

    fn listen(&mut self, channel: String) -> Result<watch::Receiver<bool>, CloseReason> {
        let rx = self.hub.listen(&channel, &self.listener()?);
        self.channels.insert(channel);
        Ok(rx)
    }

    fn unlisten(&mut self, channel: &str) {
        if self.channels.remove(channel) {
            self.hub.unlisten(channel, self.id);
        }
    }

    fn conv_channel(&self, conversation_id: &str) -> String {
        infra::keys::conv_channel(self.hub.prefix(), conversation_id)
    }

    fn presence_key(&self, user: &AuthUser) -> String {
        infra::keys::presence(self.hub.prefix(), &user.user_id.to_string())
    }

    fn presence_member(&self) -> String {
        format!("{}:{}", self.hub.instance, self.id)
    }

    /// Queues a text frame for the writer, giving up when the socket is
    /// being closed.
    async fn emit(&mut self, text: impl Into<Utf8Bytes>) -> Step {
        let msg = Message::Text(text.into());
        tokio::select! {
            biased;
            r = self.kill.fired() => Err(r),
            () = shutting_down(&mut self.shutdown) => Err(SHUTDOWN),
            r = self.out.send(msg) => r.map_err(|_| GONE),
        }
    }

    async fn run(&mut self, mut stream: SplitStream<WebSocket>, header: Option<AuthUser>) -> Step {
        let (user, cursor) = self.hello(&mut stream, header).await?;
        self.user = Some(user);
        self.setup(cursor).await?;
        self.serve(stream).await
    }

    /// Waits for the `hello` frame and authenticates.
    async fn hello(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        header: Option<AuthUser>,
    ) -> Result<(AuthUser, Option<i64>), CloseReason> {
        let deadline = Instant::now() + Duration::from_secs(self.state.config.ws_idle_secs.max(1));
        let max = self.state.config.ws_max_frame_bytes;
        let text = loop {
            let msg = tokio::select! {
                r = self.kill.fired() => return Err(r),
                () = shutting_down(&mut self.shutdown) => return Err(SHUTDOWN),
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

    /// Subscribes, replays, sends `ready`, marks presence.
    async fn setup(&mut self, cursor: Option<i64>) -> Step {
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
                return Err(super::hub::REVOKED);
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
        ))
        .await?;
        self.presence(true).await;
        Ok(())
    }

    async fn await_subscribed(&mut self, w: &mut watch::Receiver<bool>) -> Step {
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
                    Err(Replay::CursorAhead) => Err(TRY_AGAIN),
                    Err(Replay::Closed(r)) => Err(r),
                }
            }
            Err(Replay::Closed(r)) => Err(r),
            Ok(p) => Ok(p),
        }
    }

    /// Pages the replay from the client's cursor `from`, sending the frames.
    async fn resume(&mut self, from: i64) -> Result<i64, CloseReason> {
        match self.replay(from, true).await {
            Ok(p) => Ok(p),
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
                    if let Some(Info::Event(info)) = super::hub::parse_frame(&ev.frame_json) {
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
    async fn catch_up(&mut self, conversation_id: &str, from: i64) -> Step {
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
                if let Some(Info::Event(info)) = super::hub::parse_frame(&ev.frame_json) {
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
    async fn resync(&mut self, from: i64) -> Step {
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
                let Some(info) = super::hub::parse_frame(&ev.frame_json) else {
                    continue;
                };
                // A replayed creation is about the user (they are in it);
                // other membership events say so by their subject.
                let source = match &info {
                    Info::Event(e) if e.event_type == "ConversationCreated" => Source::User,
                    _ => Source::Conv,
                };
                let live = Live {
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

    /// The main loop after `ready`.
    async fn serve(&mut self, mut stream: SplitStream<WebSocket>) -> Step {
        let ping_every = Duration::from_secs(self.state.config.ws_ping_secs.max(1));
        let idle = Duration::from_secs(self.state.config.ws_idle_secs.max(1));
        let presence_every = Duration::from_secs((self.state.config.presence_ttl_secs / 3).max(1));
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut presence =
            tokio::time::interval_at(Instant::now() + presence_every, presence_every);
        loop {
            let idle_at = self.last_heard + idle;
            let wake = tokio::select! {
                biased;
                r = self.kill.fired() => return Err(r),
                () = shutting_down(&mut self.shutdown) => return Err(SHUTDOWN),
                () = tokio::time::sleep_until(idle_at) => return Err(IDLE),
                m = stream.next() => Wake::Client(m),
                Some(live) = self.live.recv() => Wake::Live(live),
                Ok(()) = self.resyncs.changed() => Wake::Resync,
                _ = ping.tick() => Wake::Ping,
                _ = presence.tick() => Wake::Presence,
            };
            match wake {
                Wake::Client(m) => self.on_client(m).await?,
                Wake::Live(live) => self.on_live(&live).await?,
                Wake::Ping => {
                    // Not counted as a frame: control frames are not API frames.
                    if self
                        .out
                        .try_send(Message::Ping(Default::default()))
                        .is_err()
                    {
                        tracing::debug!("ping skipped: outbound queue full");
                    }
                }
                Wake::Presence => self.presence(true).await,
                Wake::Resync => {
                    let from = self.resyncs.borrow_and_update().1;
                    self.resync(from).await?;
                }
            }
        }
    }

    async fn on_client(&mut self, msg: Option<Result<Message, axum::Error>>) -> Step {
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

    async fn on_live(&mut self, live: &Live) -> Step {
        let me = self.user()?.id();
        match &live.info {
            Info::Typing {
                conversation_id,
                user_id,
            } => {
                if live.source == Source::Conv
                    && self.convs.contains(conversation_id)
                    && *user_id != me
                {
                    self.emit(live.text.clone()).await?;
                }
                Ok(())
            }
            Info::Event(e) => {
                let cid = e.conversation_id.clone();
                let about_me = live.source == Source::User || e.subject.as_deref() == Some(&me);
                if about_me && !e.is_marker() {
                    match e.event_type.as_str() {
                        "ConversationCreated" | "MemberAdded" => {
                            let new = self.convs.insert(cid.clone());
                            self.send_live(e, &live.text).await?;
                            if new {
                                let channel = self.conv_channel(&cid);
                                let mut w = self.listen(channel)?;
                                self.await_subscribed(&mut w).await?;
                                self.catch_up(&cid, e.position).await?;
                            }
                            return Ok(());
                        }
                        "MemberRemoved" => {
                            if self.convs.remove(&cid) {
                                self.send_live(e, &live.text).await?;
                                self.last.remove(&(false, cid.clone()));
                                let channel = self.conv_channel(&cid);
                                self.unlisten(&channel);
                            }
                            return Ok(());
                        }
                        _ => {}
                    }
                }
                if !e.is_marker() && !self.convs.contains(&cid) {
                    return Ok(());
                }
                self.send_live(e, &live.text).await
            }
        }
    }

    /// Sends a live event frame once, in `seq` order, repairing gaps.
    async fn send_live(&mut self, e: &EventInfo, text: &Utf8Bytes) -> Step {
        if e.position <= self.floor {
            return Ok(());
        }
        let key = (e.is_marker(), e.conversation_id.clone());
        if let Some(seen) = self.last.get(&key).copied() {
            if e.seq <= seen.seq {
                return Ok(());
            }
            if !e.is_marker() && e.seq > seen.seq + 1 {
                tracing::debug!(
                    conversation_id = %e.conversation_id,
                    from = seen.seq,
                    to = e.seq,
                    "live gap; catching up"
                );
                self.catch_up(&e.conversation_id, seen.position).await?;
                if self.last.get(&key).is_some_and(|s| e.seq <= s.seq) {
                    return Ok(());
                }
            }
        }
        self.emit(text.clone()).await?;
        self.last.insert(
            key,
            Seen {
                seq: e.seq,
                position: e.position,
            },
        );
        Ok(())
    }

    /// Adds (or refreshes) or removes this socket in the user's presence
    /// set. Failures are logged: presence only tunes push notifications.
    async fn presence(&mut self, online: bool) {
        let Some(user) = self.user else { return };
        let key = self.presence_key(&user);
        let member = self.presence_member();
        let ttl = i64::try_from(self.state.config.presence_ttl_secs.max(1)).unwrap_or(60);
        let redis = self.state.redis.next().clone();
        let work = async move {
            if online {
                let _: i64 = redis.sadd(&key, member).await?;
                let _: i64 = redis.expire(&key, ttl, None).await?;
            } else {
                let _: i64 = redis.srem(&key, member).await?;
            }
            Ok::<(), fred::error::Error>(())
        };
        if let Err(e) = work.await {
            tracing::warn!(error = %e, "presence update failed");
        }
    }

    /// Leaves every hub channel and the presence set.
    async fn cleanup(&mut self) {
        for c in std::mem::take(&mut self.channels) {
            self.hub.unlisten(&c, self.id);
        }
        self.presence(false).await;
    }
}

/// Why a replay stopped short.
enum Replay {
    /// query-service refused the start position: beyond the head.
    CursorAhead,
    /// The socket is to close with this reason (the client was told why).
    Closed(CloseReason),
}

impl From<CloseReason> for Replay {
    fn from(r: CloseReason) -> Self {
        Self::Closed(r)
    }
}

/// What woke the main loop.
enum Wake {
    Client(Option<Result<Message, axum::Error>>),
    Live(Arc<Live>),
    Resync,
    Ping,
    Presence,
}

/// Resolves once shutdown has started.
async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        // The sender is gone: the application is being torn down.
    }
}

/// The close reason for a read error: 1009 when the frame exceeded the
/// codec's hard limit, 1007 for a text frame that is not UTF-8 and 1002
/// for another protocol violation (RFC 6455 §7.4.1), else the socket is
/// gone.
fn stream_error(e: &axum::Error) -> CloseReason {
    let text = e.to_string().to_ascii_lowercase();
    if text.contains("too long") || text.contains("space limit") || text.contains("too big") {
        TOO_LARGE
    } else if text.contains("utf-8") {
        INVALID_TEXT
    } else if text.contains("protocol error") {
        PROTOCOL_ERROR
    } else {
        tracing::debug!(error = %e, "WebSocket read failed");
        GONE
    }
}

/// Owns the sink: forwards queued frames, then sends the close frame.
async fn write_loop(
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
        if reason != super::hub::SLOW_CONSUMER {
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
