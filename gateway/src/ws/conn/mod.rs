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
//!
//! # Layout
//!
//! - this module: [`run`], the `Conn` state and its main loop (`serve`);
//! - `close`: the close reasons;
//! - `handshake`: `hello` and authentication;
//! - `replay`: subscribe, replay or head lookup, catch-up, resync;
//! - `live`: live frames from the hub (deduplication, gap repair);
//! - `client`: client frames (`send`, `typing`, `ping`);
//! - `writer`: the writer task.

mod client;
mod close;
mod handshake;
mod live;
mod replay;
mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use fred::interfaces::{KeysInterface, SetsInterface};
use futures::stream::SplitStream;
use futures::StreamExt;
use infra::shutdown::Shutdown;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

use self::close::{GONE, IDLE, SHUTDOWN, UNAUTHENTICATED};
use self::live::Seen;
use self::writer::write_loop;
use super::frames;
use super::hub::{self, CloseReason, Hub, Kill, Listener, LiveFrame};
use crate::auth::{sessions, AuthUser};
use crate::state::AppState;

/// Frames between the connection task and the writer.
const OUT_QUEUE: usize = 64;
/// `send` frames in flight per socket; more wait (back-pressure on reads).
const MAX_SENDS_IN_FLIGHT: usize = 32;

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

struct Conn {
    state: AppState,
    hub: Arc<Hub>,
    id: u64,
    kill: Arc<Kill>,
    /// To the writer.
    out: mpsc::Sender<Message>,
    /// The hub's end of this socket's queue (cloned into its listener).
    live_tx: mpsc::Sender<Arc<LiveFrame>>,
    live: mpsc::Receiver<Arc<LiveFrame>>,
    shutdown: Shutdown,
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
            () = self.shutdown.triggered() => Err(SHUTDOWN),
            r = self.out.send(msg) => r.map_err(|_| GONE),
        }
    }

    async fn run(&mut self, mut stream: SplitStream<WebSocket>, header: Option<AuthUser>) -> Step {
        let (user, cursor) = self.hello(&mut stream, header).await?;
        self.user = Some(user);
        self.setup(cursor).await?;
        self.serve(stream).await
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
            let expires_at = self.token_expiry()?;
            let wake = tokio::select! {
                biased;
                r = self.kill.fired() => return Err(r),
                () = self.shutdown.triggered() => return Err(SHUTDOWN),
                () = tokio::time::sleep_until(idle_at) => return Err(IDLE),
                () = tokio::time::sleep_until(expires_at) => Wake::Expired,
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
                Wake::Presence => {
                    self.recheck_session().await?;
                    self.presence(true).await;
                }
                Wake::Expired => {
                    self.emit(frames::error_frame(
                        "token_expired",
                        "the access token has expired; send a reauth frame with a fresh one before it does",
                        None,
                    ))
                    .await?;
                    return Err(UNAUTHENTICATED);
                }
                Wake::Resync => {
                    let from = self.resyncs.borrow_and_update().1;
                    self.resync(from).await?;
                }
            }
        }
    }

    /// When the socket's access token expires, on the monotonic clock.
    fn token_expiry(&self) -> Result<Instant, CloseReason> {
        let left = self.user()?.expires_at - chrono::Utc::now().timestamp();
        Ok(Instant::now() + Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }

    /// The session is checked again periodically (security review M-1):
    /// a revocation whose pub/sub message was lost (published while the
    /// hub reconnected, dropped on a lagging dispatch) or a session that
    /// expired still closes the socket. A session store that does not
    /// answer leaves it open (the next check retries).
    async fn recheck_session(&mut self) -> Step {
        let user = self.user()?;
        let prefix = self.hub.prefix();
        match sessions::is_active(&self.state.redis, prefix, user.session_id, user.user_id).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.emit(frames::error_frame(
                    "session_revoked",
                    "the session has ended; log in again",
                    None,
                ))
                .await?;
                Err(hub::REVOKED)
            }
            Err(e) => {
                tracing::warn!(error = %e, "session re-check failed; the socket stays open");
                Ok(())
            }
        }
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

/// What woke the main loop.
enum Wake {
    Client(Option<Result<Message, axum::Error>>),
    Live(Arc<LiveFrame>),
    Resync,
    Ping,
    Presence,
    Expired,
}
