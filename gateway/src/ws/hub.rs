//! The hub: one shared Redis subscriber connection per gateway process and
//! a local registry `channel → listeners` (the open sockets that want it).
//!
//! A channel is `SUBSCRIBE`d when its first local listener arrives and
//! `UNSUBSCRIBE`d when its last one leaves, so 10,000 sockets cost one Redis
//! connection and one subscription per distinct channel, not one
//! connection per socket.
//!
//! # Tasks
//!
//! - *dispatch* reads the subscriber's messages in arrival order (Redis
//!   delivers one connection's messages in publish order), parses each
//!   payload once into a [`Live`] shared by `Arc`, and `try_send`s it to
//!   every listener's bounded queue. A full queue marks that socket a slow
//!   consumer ([`Kill`]) instead of blocking or buffering without bound.
//!   Revocations (`{p}:revoked:{user}`) are not queued: they kill the
//!   matching sockets directly.
//! - *subscriptions* turns registry changes into `SUBSCRIBE`/`UNSUBSCRIBE`
//!   batches. It treats the registry as the truth (a channel with listeners
//!   should be subscribed, one without should not), so bursts of joins and
//!   leaves coalesce and commands never reorder. When a channel's
//!   `SUBSCRIBE` is acknowledged, its readiness flag flips, which is what a
//!   socket awaits before replaying ("subscribe first, then read").
//! - fred's `manage_subscriptions` re-subscribes everything after a Redis
//!   reconnect; frames published meanwhile are lost to pub/sub, and the
//!   sockets repair such gaps from query-service when the next frame of the
//!   conversation shows a jump in `seq`.
//! - *probe* proves the live path end to end: every
//!   `GATEWAY_LIVE_PROBE_MS` it publishes a token (through the same Redis
//!   as the projector's frames) on this process's `{p}:probe:{instance}`
//!   channel, which is in the registry like any socket's channel, and
//!   waits for dispatch to see it. A missed probe marks the live path down
//!   (`/readyz` answers 503, `gateway_live_path_up` is 0); two in a row
//!   heal it: every registry channel is subscribed again (the registry is
//!   the truth, whatever the connection or fred believe), after a forced
//!   reconnection if the subscriber is not connected.
//! - *resync*: whenever the path comes back (a probe succeeds after a
//!   miss, or after fred reported a reconnect), the hub publishes a new
//!   resync epoch with the head it had seen at the last good probe before
//!   the trouble; every socket then replays from there through the same
//!   path as a live frame (deduplicated by `seq`, membership changes
//!   applied). Frames lost to pub/sub while the path was down therefore
//!   arrive without waiting for the conversation's next frame to reveal
//!   the gap.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::extract::ws::Utf8Bytes;
use domain::frame::FrameEvent;
use fred::clients::{Pool, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use infra::retry::Backoff;
use serde::Deserialize;
use tokio::sync::{mpsc, watch, Notify};
use uuid::Uuid;

use crate::config::Config;
use crate::metrics::Metrics;

/// Why the hub (or the socket itself) ends a connection: a WebSocket
/// close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

/// A one-shot "close this socket" signal: the first reason wins.
#[derive(Debug, Default)]
pub struct Kill {
    reason: OnceLock<CloseReason>,
    notify: Notify,
}

impl Kill {
    /// Asks the socket to close with `reason` (later calls are ignored).
    pub fn fire(&self, reason: CloseReason) -> bool {
        let first = self.reason.set(reason).is_ok();
        if first {
            self.notify.notify_one();
        }
        first
    }

    /// Resolves once fired, with the reason.
    pub async fn fired(&self) -> CloseReason {
        loop {
            if let Some(r) = self.reason.get() {
                return *r;
            }
            self.notify.notified().await;
        }
    }
}

/// Which kind of channel a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `{p}:conv:{id}`: conversation events and typing frames.
    Conv,
    /// `{p}:user:{id}`: membership changes concerning the user, read markers.
    User,
}

/// What the gateway needs to know of an event frame, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInfo {
    pub conversation_id: String,
    pub seq: i64,
    /// The global position (the frame's `cursor`).
    pub position: i64,
    pub event_type: String,
    /// `data.user_id` (the member concerned by a membership event).
    pub subject: Option<String>,
}

impl EventInfo {
    /// Read markers are their own streams: their `seq` is not the
    /// conversation's, so they are deduplicated apart and never
    /// gap-checked.
    pub fn is_marker(&self) -> bool {
        self.event_type == "ReadMarkerMoved"
    }
}

/// A parsed live frame.
#[derive(Debug, Clone)]
pub enum Info {
    Event(EventInfo),
    /// An ephemeral typing frame another gateway relayed.
    Typing {
        conversation_id: String,
        user_id: String,
    },
}

/// A frame from Redis, shared by every local listener of its channel.
#[derive(Debug)]
pub struct LiveFrame {
    pub source: Source,
    pub info: Info,
    /// The payload, forwarded as is (cheap to clone: reference counted).
    pub text: Utf8Bytes,
}

/// What the gateway reads of a frame on a live channel: an `event` frame
/// ([`EventFrame`], the shape the projector writes) or a `typing` frame
/// (which gateways publish). One parse serves both.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default, borrow)]
    event: Option<FrameEvent<'a, Subject>>,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

/// The one payload field routing needs: whom a membership event is about.
#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    user_id: Option<String>,
}

/// Parses an event or typing frame; `None` for anything else.
pub fn parse_frame(text: &str) -> Option<Info> {
    let raw: RawFrame<'_> = serde_json::from_str(text).ok()?;
    match raw.kind {
        "event" => {
            let e = raw.event?;
            Some(Info::Event(EventInfo {
                conversation_id: e.conversation_id.into_owned(),
                seq: e.seq,
                position: raw.cursor?.parse().ok()?,
                event_type: e.event_type.into_owned(),
                subject: e.data.user_id,
            }))
        }
        "typing" => Some(Info::Typing {
            conversation_id: raw.conversation_id?,
            user_id: raw.user_id?,
        }),
        _ => None,
    }
}

/// One socket as the hub sees it.
#[derive(Debug, Clone)]
pub struct Listener {
    pub id: u64,
    pub session_id: Uuid,
    pub tx: mpsc::Sender<Arc<LiveFrame>>,
    pub kill: Arc<Kill>,
}

#[derive(Debug)]
struct Entry {
    listeners: HashMap<u64, Listener>,
    /// True once Redis acknowledged the `SUBSCRIBE`.
    ready: watch::Sender<bool>,
}

/// Close code and reason for a socket whose queue overflowed.
pub const SLOW_CONSUMER: CloseReason = CloseReason {
    code: 1008,
    reason: "slow consumer",
};
/// Close code and reason for a revoked session.
pub const REVOKED: CloseReason = CloseReason {
    code: 4401,
    reason: "session revoked",
};

/// The process-wide hub.
pub struct Hub {
    prefix: String,
    subscriber: SubscriberClient,
    registry: Mutex<HashMap<String, Entry>>,
    /// Wakes the subscription task.
    changed: mpsc::UnboundedSender<String>,
    /// The highest global position seen (live or replayed): where a socket
    /// without a cursor starts looking for the head of the log.
    head: AtomicI64,
    next_id: AtomicU64,
    /// Identifies this process's sockets in presence sets.
    pub instance: Uuid,
    metrics: Arc<Metrics>,
    /// `{p}:probe:{instance}`.
    probe_channel: String,
    /// The highest probe token dispatch has seen.
    probe_seen: watch::Sender<u64>,
    /// Whether the last probe came back in time.
    live_up: AtomicBool,
    /// Set by [`Hub::quit`]: the probe stops (and never reconnects).
    stopped: AtomicBool,
    /// The head as of the last good probe while nothing was wrong: frames
    /// up to it were delivered.
    mark: AtomicI64,
    /// fred reconnected the subscriber since the last good probe.
    reconnected: AtomicBool,
    /// (epoch, replay from): bumped when the live path comes back.
    resync: watch::Sender<(u64, i64)>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("prefix", &self.prefix)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Connects the subscriber and starts the dispatch, subscription and
    /// probe tasks; `publisher` sends the probes.
    pub async fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        publisher: Pool,
    ) -> anyhow::Result<Arc<Self>> {
        let subscriber = infra::redis::builder(&config.redis.redis_url)?
            .with_performance_config(|p| {
                // The dispatch task drains it quickly; a burst beyond this
                // is lost to the sockets (repaired by seq gap detection).
                p.broadcast_channel_capacity = 1 << 16;
            })
            .with_connection_config(|c| {
                // Named in CLIENT LIST, so an operator (or a test) can tell
                // which connection carries a gateway's live path.
                c.auto_client_setname = true;
            })
            .build_subscriber_client()
            .context("building the Redis subscriber")?;
        subscriber
            .init()
            .await
            .context("connecting the Redis subscriber")?;
        let _resubscriber = subscriber.manage_subscriptions();
        let (changed, changes) = mpsc::unbounded_channel();
        let instance = Uuid::now_v7();
        let hub = Arc::new(Self {
            prefix: config.redis.redis_prefix.clone(),
            subscriber,
            registry: Mutex::new(HashMap::new()),
            changed,
            head: AtomicI64::new(0),
            next_id: AtomicU64::new(1),
            instance,
            metrics,
            probe_channel: infra::keys::probe_channel(
                &config.redis.redis_prefix,
                &instance.to_string(),
            ),
            probe_seen: watch::channel(0).0,
            live_up: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            mark: AtomicI64::new(0),
            reconnected: AtomicBool::new(false),
            resync: watch::channel((0, 0)).0,
        });
        // The probe channel is a registry entry without sockets: subscribed
        // (and re-subscribed) like theirs, never unsubscribed.
        hub.registry().insert(
            hub.probe_channel.clone(),
            Entry {
                listeners: HashMap::new(),
                ready: watch::channel(false).0,
            },
        );
        let _ = hub.changed.send(hub.probe_channel.clone());
        tokio::spawn(dispatch(Arc::downgrade(&hub), hub.subscriber.message_rx()));
        tokio::spawn(reconnects(
            Arc::downgrade(&hub),
            hub.subscriber.reconnect_rx(),
        ));
        tokio::spawn(subscriptions(Arc::downgrade(&hub), changes));
        let every = Duration::from_millis(config.live_probe_ms.max(50));
        tokio::spawn(probe(Arc::downgrade(&hub), publisher, every));
        Ok(hub)
    }

    /// Unsubscribes and closes the subscriber connection.
    pub async fn quit(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = self.subscriber.unsubscribe_all().await;
        let _ = self.subscriber.quit().await;
    }

    /// The Redis key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A fresh socket id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The highest position seen so far.
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Relaxed)
    }

    /// Raises the head hint. Only positions that exist may come here: live
    /// frames (published by the projector) and replay positions that
    /// query-service answered; never a client's cursor as given.
    pub fn saw(&self, position: i64) {
        self.head.fetch_max(position, Ordering::Relaxed);
    }

    /// Forgets the head hint (it was found beyond the log).
    pub fn reset_head(&self) {
        self.head.store(0, Ordering::Relaxed);
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned lock only means a panic elsewhere mid-update of plain
        // maps; the data is still usable.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `listener` to `channel`; the receiver turns true once the
    /// channel's Redis subscription is active.
    pub fn listen(&self, channel: &str, listener: &Listener) -> watch::Receiver<bool> {
        let mut registry = self.registry();
        let entry = registry.entry(channel.to_owned()).or_insert_with(|| {
            let _ = self.changed.send(channel.to_owned());
            Entry {
                listeners: HashMap::new(),
                ready: watch::channel(false).0,
            }
        });
        entry.listeners.insert(listener.id, listener.clone());
        entry.ready.subscribe()
    }

    /// Removes socket `id` from `channel`.
    pub fn unlisten(&self, channel: &str, id: u64) {
        let mut registry = self.registry();
        if let Some(entry) = registry.get_mut(channel) {
            entry.listeners.remove(&id);
            if entry.listeners.is_empty() {
                registry.remove(channel);
                let _ = self.changed.send(channel.to_owned());
            }
        }
    }

    /// Number of channels with local listeners (tests, metrics).
    pub fn channel_count(&self) -> usize {
        self.registry()
            .values()
            .filter(|e| !e.listeners.is_empty())
            .count()
    }

    /// Whether the last probe went through Redis and dispatch in time.
    pub fn live_path_up(&self) -> bool {
        self.live_up.load(Ordering::Relaxed)
    }

    /// Drops every Redis subscription behind the hub's back, as a broken
    /// subscriber connection or a lost `SUBSCRIBE` would; the registry is
    /// untouched. For tests of the probe's detection and healing.
    #[doc(hidden)]
    pub async fn break_subscriptions(&self) -> anyhow::Result<()> {
        self.subscriber.unsubscribe_all().await?;
        Ok(())
    }

    /// The subscriber connection's `CLIENT SETNAME` name.
    pub fn subscriber_name(&self) -> &str {
        self.subscriber.id()
    }

    /// Subscribes every registry channel again, reconnecting first if the
    /// subscriber is not connected.
    async fn heal(&self) {
        self.metrics.live_path_heals.inc();
        if !self.subscriber.is_connected() {
            if let Err(e) = self.subscriber.force_reconnection().await {
                tracing::warn!(error = %e, "reconnecting the live subscriber failed");
            }
        }
        let channels: Vec<String> = self.registry().keys().cloned().collect();
        for batch in channels.chunks(1000) {
            if let Err(e) = self.subscriber.subscribe(batch.to_vec()).await {
                tracing::warn!(error = %e, "re-subscribing the live channels failed");
                return;
            }
        }
        tracing::info!(channels = channels.len(), "live path re-subscribed");
    }

    /// Resync epochs: a new value means "replay from this position".
    pub fn resyncs(&self) -> watch::Receiver<(u64, i64)> {
        self.resync.subscribe()
    }

    /// Records a probe's outcome. After trouble (a miss, or a reconnect
    /// reported meanwhile), the first good probe asks every socket to
    /// replay from the mark; otherwise a good probe moves the mark.
    fn probed(&self, up: bool, ever_up: bool) {
        let was_up = self.live_up.load(Ordering::Relaxed);
        self.set_live_up(up);
        if !up {
            return;
        }
        let reconnected = self.reconnected.swap(false, Ordering::Relaxed);
        if ever_up && (reconnected || !was_up) {
            let from = self.mark.load(Ordering::Relaxed);
            self.resync.send_modify(|(epoch, at)| {
                *epoch += 1;
                *at = from;
            });
            tracing::info!(
                from,
                "live path back; sockets replay what pub/sub may have lost"
            );
        } else {
            self.mark.store(self.head(), Ordering::Relaxed);
        }
    }

    fn set_live_up(&self, up: bool) {
        let was = self.live_up.swap(up, Ordering::Relaxed);
        self.metrics.live_path_up.set(i64::from(up));
        if was != up {
            if up {
                tracing::info!("live path up");
            } else {
                tracing::warn!("live path down: a probe did not come back");
            }
        }
    }

    fn deliver(&self, channel: &str, payload: &str) {
        let rest = channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(':'));
        let Some(rest) = rest else { return };
        let source = if rest.starts_with("conv:") {
            Source::Conv
        } else if rest.starts_with("user:") {
            Source::User
        } else if rest.starts_with("revoked:") {
            self.revoke(channel, payload.trim());
            return;
        } else if channel == self.probe_channel {
            if let Ok(n) = payload.parse::<u64>() {
                self.probe_seen.send_if_modified(|seen| {
                    let newer = n > *seen;
                    if newer {
                        *seen = n;
                    }
                    newer
                });
            }
            return;
        } else {
            return;
        };
        let Some(info) = parse_frame(payload) else {
            tracing::warn!(channel, "ignoring an unparsable live frame");
            return;
        };
        if let Info::Event(e) = &info {
            self.saw(e.position);
        }
        let live = Arc::new(LiveFrame {
            source,
            info,
            text: Utf8Bytes::from(payload.to_owned()),
        });
        let registry = self.registry();
        let Some(entry) = registry.get(channel) else {
            return;
        };
        for l in entry.listeners.values() {
            match l.tx.try_send(live.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if l.kill.fire(SLOW_CONSUMER) {
                        self.metrics.ws_slow_consumers.inc();
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Closes the sockets of session `payload` (`*`: every session) among
    /// the listeners of a `{p}:revoked:{user}` channel.
    fn revoke(&self, channel: &str, payload: &str) {
        let all = payload == "*";
        let session = Uuid::parse_str(payload).ok();
        let registry = self.registry();
        if let Some(entry) = registry.get(channel) {
            for l in entry.listeners.values() {
                if all || session == Some(l.session_id) {
                    l.kill.fire(REVOKED);
                }
            }
        }
    }
}

/// Reads the subscriber's messages until the hub is gone.
async fn dispatch(
    hub: std::sync::Weak<Hub>,
    mut rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match rx.recv().await {
            Ok(message) => {
                let Some(hub) = hub.upgrade() else { return };
                match message.value.as_str() {
                    Some(payload) => hub.deliver(&message.channel, &payload),
                    None => tracing::warn!(channel = %message.channel, "non-text live frame"),
                }
            }
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    lost = n,
                    "the live dispatch lagged; sockets repair gaps by seq"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Notes fred's reconnections of the subscriber (pub/sub may have lost
/// frames meanwhile) for the probe to act on.
async fn reconnects(
    hub: std::sync::Weak<Hub>,
    mut rx: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match rx.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {
                let Some(hub) = hub.upgrade() else { return };
                hub.reconnected.store(true, Ordering::Relaxed);
                tracing::info!("live subscriber reconnected");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Keeps Redis subscriptions equal to the registry's channels.
async fn subscriptions(hub: std::sync::Weak<Hub>, mut changes: mpsc::UnboundedReceiver<String>) {
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut pending: HashSet<String> = HashSet::new();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        if pending.is_empty() {
            match changes.recv().await {
                Some(c) => {
                    pending.insert(c);
                }
                None => return,
            }
        }
        while pending.len() < 10_000 {
            match changes.try_recv() {
                Ok(c) => {
                    pending.insert(c);
                }
                Err(_) => break,
            }
        }
        let Some(hub) = hub.upgrade() else { return };
        // Decide from the registry, under its lock, what each touched
        // channel should be.
        let (mut subscribe, mut unsubscribe, mut ready) = (Vec::new(), Vec::new(), Vec::new());
        {
            let registry = hub.registry();
            for c in pending.drain() {
                match (registry.get(&c), subscribed.contains(&c)) {
                    (Some(_), false) => subscribe.push(c),
                    (Some(_), true) => ready.push(c),
                    (None, true) => unsubscribe.push(c),
                    (None, false) => {}
                }
            }
        }
        let mut failed = false;
        if !subscribe.is_empty() {
            match hub.subscriber.subscribe(subscribe.clone()).await {
                Ok(()) => {
                    subscribed.extend(subscribe.iter().cloned());
                    ready.append(&mut subscribe);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SUBSCRIBE failed; retrying");
                    pending.extend(subscribe);
                    failed = true;
                }
            }
        }
        if !unsubscribe.is_empty() {
            match hub.subscriber.unsubscribe(unsubscribe.clone()).await {
                Ok(()) => {
                    for c in &unsubscribe {
                        subscribed.remove(c);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "UNSUBSCRIBE failed; retrying");
                    pending.extend(unsubscribe);
                    failed = true;
                }
            }
        }
        {
            let registry = hub.registry();
            for c in ready {
                if let Some(entry) = registry.get(&c) {
                    entry.ready.send_replace(true);
                }
            }
        }
        drop(hub);
        if failed {
            tokio::time::sleep(backoff.next_delay()).await;
        } else {
            backoff.reset();
        }
    }
}

/// Publishes a probe every `every` and waits (as long) for dispatch to see
/// it; marks the live path up or down, heals it after two misses.
async fn probe(hub: std::sync::Weak<Hub>, publisher: Pool, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut token = 0u64;
    let mut misses = 0u32;
    let mut ever_up = false;
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        if hub.stopped.load(Ordering::Relaxed) {
            return;
        }
        token += 1;
        let mut seen = hub.probe_seen.subscribe();
        let channel = hub.probe_channel.clone();
        let round_trip = async {
            let _: i64 = publisher.next().publish(channel, token.to_string()).await?;
            let _ = seen.wait_for(|s| *s >= token).await;
            Ok::<(), fred::error::Error>(())
        };
        let up = matches!(tokio::time::timeout(every, round_trip).await, Ok(Ok(())));
        if hub.stopped.load(Ordering::Relaxed) {
            return;
        }
        hub.probed(up, ever_up);
        ever_up |= up;
        misses = if up { 0 } else { misses + 1 };
        if misses >= 2 {
            hub.heal().await;
            misses = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_and_typing_frames() {
        let e = r#"{"type":"event","cursor":"42","event":{"event_id":"0193b0a4-7e1c-7cc2-9a43-0c2b7d1e8f00","event_type":"MessageSent","event_version":1,"conversation_id":"c","seq":5,"occurred_at":"2026-12-03T12:00:00Z","actor":"a","data":{}}}"#;
        match parse_frame(e) {
            Some(Info::Event(info)) => {
                assert_eq!(info.position, 42);
                assert_eq!(info.seq, 5);
                assert_eq!(info.conversation_id, "c");
                assert!(!info.is_marker());
            }
            other => panic!("{other:?}"),
        }
        let t = r#"{"type":"typing","conversation_id":"c","user_id":"u"}"#;
        assert!(matches!(parse_frame(t), Some(Info::Typing { .. })));
        assert!(parse_frame("nope").is_none());
        assert!(parse_frame(r#"{"type":"event","cursor":"x","event":{}}"#).is_none());
    }

    #[tokio::test]
    async fn kill_keeps_the_first_reason() {
        let k = Kill::default();
        assert!(k.fire(SLOW_CONSUMER));
        assert!(!k.fire(REVOKED));
        assert_eq!(k.fired().await, SLOW_CONSUMER);
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever a channel carries, parsing never panics.
        #[test]
        fn any_payload_parses_or_is_ignored(text in any::<String>()) {
            let _ = parse_frame(&text);
        }

        /// A projector frame parses to its own fields.
        #[test]
        fn event_frames_round_trip(
            position in 0i64..i64::MAX,
            seq in any::<i64>(),
            conversation_id in any::<String>(),
            event_type in any::<String>(),
            subject in proptest::option::of(any::<String>()),
        ) {
            let mut data = serde_json::json!({});
            if let Some(s) = &subject {
                data["user_id"] = serde_json::json!(s);
            }
            let text = serde_json::json!({
                "type": "event",
                "cursor": position.to_string(),
                "event": {
                    "event_id": "0193b0a4-7e1c-7cc2-9a43-0c2b7d1e8f00",
                    "event_type": event_type,
                    "event_version": 1,
                    "conversation_id": conversation_id,
                    "seq": seq,
                    "occurred_at": "2026-12-03T12:00:00Z",
                    "actor": "a",
                    "data": data,
                },
            })
            .to_string();
            match parse_frame(&text) {
                Some(Info::Event(e)) => {
                    prop_assert_eq!(e.position, position);
                    prop_assert_eq!(e.seq, seq);
                    prop_assert_eq!(e.conversation_id, conversation_id);
                    prop_assert_eq!(e.event_type, event_type);
                    prop_assert_eq!(e.subject, subject);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
