//! The Redis read-through cache, reader side of the generation scheme of
//! [`infra::keys`].
//!
//! A read goes: [`Cache::generation`] (`GET {p}:gen:{scope}:{id}`, missing
//! = 0), then [`Cache::get`] of `{p}:cache:{scope}:{id}:{what}:g{n}`; on a
//! miss the caller reads PostgreSQL and [`Cache::put`]s the value under the
//! generation it read *before* the database read. The projector increments
//! the generation after each commit, so a value computed from an older
//! database state is filed under a generation nobody asks for any more.
//!
//! # The read fence (ADR 0006)
//!
//! Live frames are published by command-service's relay as soon as events
//! are positioned, before the projector has applied them. So that a client
//! that received a frame and then reads the conversation sees the event,
//! [`Cache::generation`] of scope `conv` reads the generation together
//! with the conversation's live head (`{p}:live:conv:{id}`, set by the
//! relay before it publishes) and projected head (`{p}:projected:conv:{id}`,
//! set by the projector after its commit and its `INCR`s), in one pipeline.
//! While the projected head is behind the live head seen first, it polls
//! every [`FENCE_POLL`], for at most the configured fence
//! (`QUERY_SERVICE_READ_FENCE_MS`); the generation it returns is the one
//! read with the head that satisfied it, so the cached values it leads to
//! were filed after the projector's commit. A fence that times out (the
//! projector stopped or stalled) fails the read with [`ProjectionBehind`]
//! (UNAVAILABLE, 503 at the gateway: retry), and is counted: answering
//! from read models that miss a frame the client already has would break
//! the contract.
//!
//! The cache is an optimisation, never a dependency: when Redis is down,
//! slow or answers garbage, every method degrades to "no generation" / "miss"
//! / "not stored" and the caller reads PostgreSQL. A disconnected client is
//! detected without a round trip (no waiting on a dead socket per request);
//! every command is bounded by a timeout. The transition to and from the
//! degraded state is logged once each, not per request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use fred::prelude::{ClientLike, Expiration, KeysInterface, Pool};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

/// A cache scope of [`infra::keys`]: what a generation counter covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One conversation: details, members, membership periods, newest page.
    Conv,
    /// One user: their conversation list.
    User,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Conv => "conv",
            Self::User => "user",
        }
    }
}

/// A generation read from Redis: the key space cached values may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    scope: Scope,
    id: String,
    /// The counter's value when read (missing counter = 0).
    pub value: i64,
}

/// Hit and miss counters, for tests, benchmarks and logs.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Values served from Redis.
    pub hits: AtomicU64,
    /// Lookups that went to PostgreSQL (including while Redis was down).
    pub misses: AtomicU64,
    /// Reads that waited for the projector (read fence).
    pub fence_waits: AtomicU64,
    /// Reads whose fence timed out.
    pub fence_timeouts: AtomicU64,
}

/// Snapshot of [`CacheStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
    pub fence_waits: u64,
    pub fence_timeouts: u64,
}

/// A cached value with the conversation generations it was read under.
#[derive(Serialize, serde::Deserialize)]
struct Dependent<T> {
    conversations: Vec<(Uuid, i64)>,
    value: T,
}

/// A read of a conversation whose projection did not reach the frames
/// already sent live within the read fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the read models are behind the live events; retry")]
pub struct ProjectionBehind;

/// How often a fenced read polls the projected head.
pub const FENCE_POLL: Duration = Duration::from_millis(2);

/// The connection and settings; absent when the cache is disabled.
#[derive(Debug)]
struct Redis {
    /// A few multiplexed connections; reconnects by itself.
    pool: Pool,
    /// Key prefix shared with the projector (`MESSENGER_REDIS_PREFIX`).
    prefix: String,
    /// TTL of cached values, seconds.
    ttl_secs: i64,
    /// Whether the last command failed; flips are logged once each.
    degraded: AtomicBool,
    /// Longest wait of a read for the projector (zero: no fence).
    fence: Duration,
}

/// Read-through cache over Redis; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Cache {
    redis: Option<Redis>,
    stats: CacheStats,
}

impl Cache {
    /// A cache that caches nothing: every read goes to PostgreSQL.
    pub fn disabled() -> Self {
        Self {
            redis: None,
            stats: CacheStats::default(),
        }
    }

    /// Starts connecting to `url` in the background and returns at once:
    /// the service starts (and serves from PostgreSQL) even while Redis is
    /// unreachable, and reconnects with exponential back-off.
    pub fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
        timeout: Duration,
        connections: usize,
    ) -> anyhow::Result<Self> {
        let pool = infra::redis::builder(url)?
            .with_config(|c| c.fail_fast = false)
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
            })
            .build_pool(connections.max(1))
            .context("building the Redis pool")?;
        // The handle resolves only when the pool quits; dropping it detaches.
        drop(pool.connect());
        Ok(Self {
            redis: Some(Redis {
                pool,
                prefix: prefix.to_owned(),
                ttl_secs: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
                degraded: AtomicBool::new(false),
                fence: Duration::from_secs(1),
            }),
            stats: CacheStats::default(),
        })
    }

    /// Sets the longest wait of a conversation read for the projector (the
    /// read fence; zero turns it off). One second unless set.
    pub fn with_read_fence(mut self, fence: Duration) -> Self {
        if let Some(r) = &mut self.redis {
            r.fence = fence;
        }
        self
    }

    /// Hit, miss and fence counts so far.
    pub fn counts(&self) -> CacheCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheCounts {
            hits: get(&self.stats.hits),
            misses: get(&self.stats.misses),
            fence_waits: get(&self.stats.fence_waits),
            fence_timeouts: get(&self.stats.fence_timeouts),
        }
    }

    /// Whether the cache is configured and its connection is up.
    pub fn is_available(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| r.pool.is_connected())
    }

    /// Waits up to `timeout` for the first connection (used by callers that
    /// prefer a warm start; never required).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let Some(r) = &self.redis else { return false };
        matches!(
            tokio::time::timeout(timeout, r.pool.wait_for_connect()).await,
            Ok(Ok(()))
        )
    }

    /// Closes the connections (graceful shutdown).
    pub async fn quit(&self) {
        if let Some(r) = &self.redis {
            let _ = r.pool.quit().await;
        }
    }

    /// The connection, if configured and up. A disconnected pool is known
    /// without a round trip, so an outage costs requests nothing.
    fn live(&self) -> Option<&Redis> {
        let r = self.redis.as_ref()?;
        if r.pool.is_connected() {
            Some(r)
        } else {
            r.failed(&"not connected");
            None
        }
    }

    /// The current generation of `scope`/`id`, or `None` when Redis cannot
    /// answer (the caller then neither reads nor writes the cache). For a
    /// conversation, first waits for the read fence (module docs).
    pub async fn generation(
        &self,
        scope: Scope,
        id: &str,
    ) -> Result<Option<Generation>, ProjectionBehind> {
        let Some(r) = self.live() else {
            return Ok(None);
        };
        let key = infra::keys::generation(&r.prefix, scope.as_str(), id);
        let value = if scope == Scope::Conv && !r.fence.is_zero() {
            self.fenced(r, key, id).await
        } else {
            r.pool
                .get::<Option<i64>, _>(key)
                .await
                .map(|v| Some(v.unwrap_or(0)))
        };
        match value {
            Ok(Some(value)) => {
                r.ok();
                Ok(Some(Generation {
                    scope,
                    id: id.to_owned(),
                    value,
                }))
            }
            Ok(None) => {
                r.ok();
                Err(ProjectionBehind)
            }
            Err(e) => {
                r.failed(&e);
                Ok(None)
            }
        }
    }

    /// The conversation's generation once its projected head has reached
    /// the live head seen by the first read; `None` if the fence timed out.
    async fn fenced(
        &self,
        r: &Redis,
        generation_key: String,
        conversation: &str,
    ) -> Result<Option<i64>, fred::error::Error> {
        // The generation last: the projector sets its head after its
        // `INCR`s, so a head seen here implies the new generation below.
        let keys = vec![
            infra::keys::live_head(&r.prefix, conversation),
            infra::keys::projected_head(&r.prefix, conversation),
            generation_key,
        ];
        let mut target = None;
        let mut deadline = None;
        loop {
            // A pipeline, not MGET: each key is routed on its own, so this
            // also holds on a Redis Cluster.
            let pipeline = r.pool.next_connected().pipeline();
            for key in &keys {
                let () = pipeline.get(key.as_str()).await?;
            }
            let (live, projected, generation): (Option<i64>, Option<i64>, Option<i64>) =
                pipeline.all().await?;
            let (generation, live, projected) = (
                generation.unwrap_or(0),
                live.unwrap_or(0),
                projected.unwrap_or(0),
            );
            let target = *target.get_or_insert(live);
            if projected >= target {
                return Ok(Some(generation));
            }
            let deadline = *deadline.get_or_insert_with(|| {
                self.stats.fence_waits.fetch_add(1, Ordering::Relaxed);
                Instant::now() + r.fence
            });
            if Instant::now() >= deadline {
                self.stats.fence_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    conversation,
                    live = target,
                    projected,
                    "read fence timed out"
                );
                return Ok(None);
            }
            tokio::time::sleep(FENCE_POLL).await;
        }
    }

    fn key(r: &Redis, generation: &Generation, what: &str) -> String {
        infra::keys::cached(
            &r.prefix,
            generation.scope.as_str(),
            &generation.id,
            what,
            generation.value,
        )
    }

    /// The raw value cached as `what` under `generation`, uncounted.
    async fn get_raw(&self, generation: Option<&Generation>, what: &str) -> Option<String> {
        let (Some(g), Some(r)) = (generation, self.live()) else {
            return None;
        };
        match r.pool.get::<Option<String>, _>(Self::key(r, g, what)).await {
            Ok(v) => {
                r.ok();
                v
            }
            Err(e) => {
                r.failed(&e);
                None
            }
        }
    }

    /// The value cached as `what` under `generation`, if any.
    pub async fn get<T: DeserializeOwned>(
        &self,
        generation: Option<&Generation>,
        what: &str,
    ) -> Option<T> {
        let raw = self.get_raw(generation, what).await;
        self.decode(raw, what)
    }

    /// Two values cached under the same generation, in one round trip (a
    /// pipeline: each key is routed on its own, so this also holds on a
    /// Redis Cluster, unlike `MGET`).
    pub async fn get_two<A: DeserializeOwned, B: DeserializeOwned>(
        &self,
        generation: Option<&Generation>,
        what_a: &str,
        what_b: &str,
    ) -> (Option<A>, Option<B>) {
        let raw: Option<(Option<String>, Option<String>)> = match (generation, self.live()) {
            (Some(g), Some(r)) => {
                let pipeline = r.pool.next_connected().pipeline();
                let queued = async {
                    let () = pipeline.get(Self::key(r, g, what_a)).await?;
                    let () = pipeline.get(Self::key(r, g, what_b)).await?;
                    pipeline.all::<(Option<String>, Option<String>)>().await
                };
                match queued.await {
                    Ok(v) => {
                        r.ok();
                        Some(v)
                    }
                    Err(e) => {
                        r.failed(&e);
                        None
                    }
                }
            }
            _ => None,
        };
        let (a, b) = raw.unwrap_or_default();
        (self.decode(a, what_a), self.decode(b, what_b))
    }

    /// Decodes a raw cached value and counts the lookup as hit or miss.
    fn decode<T: DeserializeOwned>(&self, raw: Option<String>, what: &str) -> Option<T> {
        let found = Self::parse(raw, what);
        self.count(found.is_some());
        found
    }

    fn parse<T: DeserializeOwned>(raw: Option<String>, what: &str) -> Option<T> {
        raw.and_then(|s| match serde_json::from_str(&s) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(error = %e, what, "undecodable cache entry ignored");
                None
            }
        })
    }

    fn count(&self, hit: bool) {
        let counter = if hit {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The current `conv` generations of `conversations`, in one pipeline
    /// (missing = 0), unfenced; `None` when Redis cannot answer. Read them
    /// *before* the database read of a value that depends on them, as
    /// [`Cache::generation`].
    pub async fn conversation_generations(
        &self,
        conversations: &[Uuid],
    ) -> Option<Vec<(Uuid, i64)>> {
        let r = self.live()?;
        if conversations.is_empty() {
            return Some(Vec::new());
        }
        let pipeline = r.pool.next_connected().pipeline();
        let read = async {
            for c in conversations {
                let key = infra::keys::generation(&r.prefix, Scope::Conv.as_str(), &c.to_string());
                let () = pipeline.get(key).await?;
            }
            pipeline.all::<Vec<Option<i64>>>().await
        };
        match read.await {
            Ok(values) => {
                r.ok();
                Some(
                    conversations
                        .iter()
                        .copied()
                        .zip(values.into_iter().map(|v| v.unwrap_or(0)))
                        .collect(),
                )
            }
            Err(e) => {
                r.failed(&e);
                None
            }
        }
    }

    /// A value cached by [`Cache::put_dependent`]: served only while every
    /// conversation generation it was read under is still current (one
    /// more pipeline). A value that depends on many conversations (a
    /// user's list) is thus invalidated by their own `INCR`s, without the
    /// projector bumping every member of a conversation on each message.
    pub async fn get_dependent<T: DeserializeOwned>(
        &self,
        generation: Option<&Generation>,
        what: &str,
    ) -> Option<T> {
        let raw = self.get_raw(generation, what).await;
        let Some(entry) = Self::parse::<Dependent<T>>(raw, what) else {
            self.count(false);
            return None;
        };
        let ids: Vec<Uuid> = entry.conversations.iter().map(|(c, _)| *c).collect();
        let current = self.conversation_generations(&ids).await;
        let fresh = current.as_ref() == Some(&entry.conversations);
        self.count(fresh);
        fresh.then_some(entry.value)
    }

    /// Stores `value` as `what` under `generation`, valid while the
    /// `conversations` generations (read before the database read) hold.
    pub async fn put_dependent<T: Serialize>(
        &self,
        generation: Option<&Generation>,
        what: &str,
        conversations: Vec<(Uuid, i64)>,
        value: &T,
    ) {
        self.put(
            generation,
            what,
            &Dependent {
                conversations,
                value,
            },
        )
        .await;
    }

    /// Stores `value` as `what` under `generation` with the configured TTL.
    pub async fn put<T: Serialize>(&self, generation: Option<&Generation>, what: &str, value: &T) {
        let (Some(g), Some(r)) = (generation, self.live()) else {
            return;
        };
        let json = match serde_json::to_string(value) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, what, "value not cacheable");
                return;
            }
        };
        match r
            .pool
            .set::<(), _, _>(
                Self::key(r, g, what),
                json,
                Some(Expiration::EX(r.ttl_secs)),
                None,
                false,
            )
            .await
        {
            Ok(()) => r.ok(),
            Err(e) => r.failed(&e),
        }
    }

    /// Read-through: the cached value, or `load()`'s, which is then cached
    /// (only `Some`: absence is not cached, so probing ids fills nothing).
    pub async fn read_through<T, E, F, Fut>(
        &self,
        generation: Option<&Generation>,
        what: &str,
        load: F,
    ) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, E>>,
    {
        if let Some(v) = self.get(generation, what).await {
            return Ok(Some(v));
        }
        let loaded = load().await?;
        if let Some(v) = &loaded {
            self.put(generation, what, v).await;
        }
        Ok(loaded)
    }
}

impl Redis {
    fn ok(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis answers again; cache back in use");
        }
    }

    fn failed(&self, error: &dyn std::fmt::Display) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %error, "Redis command failed; reading PostgreSQL until it answers");
        }
    }
}
