//! query-service: every read of Messenger, over gRPC with mutual TLS.
//!
//! It answers from the read models the projector maintains (`rm_*` tables),
//! with Redis in front of the hot reads, and from the event store itself
//! for the audit log and the WebSocket replay. It never writes PostgreSQL.
//!
//! # Layout (a code tour, in the order a read travels)
//!
//! - [`grpc`]: tonic service `messenger.query.v1.QueryService`; takes the
//!   caller from the `x-user-id` metadata (trusted: only CA-signed clients
//!   reach it), maps errors to statuses (the only such mapping).
//! - [`reads`]: the reads and their authorization, transport-free:
//!   [`reads::conversations`] (list, details, read markers),
//!   [`reads::messages`] (history bounded by membership periods),
//!   [`reads::users`] (profiles, prefix search), [`reads::audit`] (the
//!   global log and streams for auditors; the replay for the gateway).
//! - [`cache`]: the Redis read-through cache, reader side of the
//!   generation scheme of [`infra::keys`]; degrades to PostgreSQL when
//!   Redis is away.
//! - [`cursor`]: the opaque keyset cursor of the conversation list.
//! - [`config`]: typed settings from flags and environment.
//!
//! [`Application::build`] wires it together; [`Application::run_until_stopped`]
//! serves until the shutdown future resolves, then drains in-flight calls.
//!
//! # Authorization
//!
//! - Conversation details, list entries and read markers: current members
//!   only (`rm_members`); NOT_FOUND otherwise, indistinguishable from a
//!   conversation that does not exist.
//! - History: the messages of the caller's membership periods
//!   (`rm_member_periods`, `joined_seq <= seq < left_seq`). A late joiner
//!   sees from their joining; a removed member sees nothing from their
//!   removal on, but keeps the history of the periods they were in (the
//!   stricter of the two options of the Read-side issue: no blanket
//!   access, no blanket loss); a user with no period gets NOT_FOUND.
//! - Audit log: role `auditor` in `rm_users.roles`, PERMISSION_DENIED
//!   otherwise.
//!
//! # The WebSocket resume (`ListEventsForUser`)
//!
//! Frames are built from the event store (same JSON as the projector's live
//! frames), filtered by the caller's membership periods (plus the
//! `MemberRemoved` that ends one, and the caller's own read markers), with
//! bodies of since-deleted messages blanked. A page never passes a
//! conversation event the projector has not applied yet
//! (`waiting_for_projection`), because membership is decided from the read
//! models. The gateway subscribes to the live channels first, pages until
//! `has_more` is false, then forwards live frames with a cursor above the
//! last `next_position`.
//!
//! # What the cache needs from the projector
//!
//! After each read-model commit, `INCR {p}:gen:conv:{conversation_id}` for
//! any event of that conversation (details, members, periods and the newest
//! page all live in that scope), and `INCR {p}:gen:user:{user_id}` for every
//! user whose conversation list shows a change (every current member on a
//! message, rename or membership change; the member concerned on joining
//! or leaving; the reader on a read marker).

pub mod cache;
pub mod config;
pub mod cursor;
pub mod grpc;
pub mod reads;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use infra::grpc::GrpcServer;
use infra::shutdown::Shutdown;
use proto::query::v1::query_service_server::QueryServiceServer;

use crate::cache::Cache;
use crate::config::Config;
use crate::reads::Reads;

pub use infra::postgres::connect;

/// A built, not yet running, query-service.
#[derive(Debug)]
pub struct Application {
    /// Bound before running so `local_addr` is known (port 0 in tests).
    server: GrpcServer,
    addr: SocketAddr,
    /// The reads, shared with in-process callers (tests, benchmarks).
    reads: Reads,
}

impl Application {
    /// Connects PostgreSQL, starts connecting Redis (in the background: the
    /// service serves from PostgreSQL until Redis answers), binds the listener.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let pool = connect(&config.postgres.database_url, config.db_pool).await?;
        let cache = if config.cache {
            Cache::connect(
                &config.redis.redis_url,
                &config.redis.redis_prefix,
                config.cache_ttl(),
                config.redis_timeout(),
                config.redis_pool,
            )?
            .with_read_fence(Duration::from_millis(config.read_fence_ms))
        } else {
            Cache::disabled()
        };
        let cache = Arc::new(cache);
        // A warm start when Redis is there; no failure when it is not.
        if config.cache && !cache.wait_connected(Duration::from_secs(2)).await {
            tracing::warn!("Redis not reachable yet; serving from PostgreSQL meanwhile");
        }
        let server = GrpcServer::bind(
            config.listen,
            &config.pki,
            &config.tls_name,
            &config.grpc,
            proto::FILE_DESCRIPTOR_SET,
        )
        .await?;
        let addr = server.local_addr()?;
        Ok(Self {
            server,
            addr,
            reads: Reads::new(pool, cache),
        })
    }

    /// Where the gRPC server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The reads, for in-process callers.
    pub fn reads(&self) -> Reads {
        self.reads.clone()
    }

    /// Serves until `shutdown` resolves; then in-flight calls finish and the
    /// Redis connections close.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr, "query-service listening (mTLS)");
        let reads = self.reads.clone();
        let stop = Shutdown::new();
        let server = self
            .server
            .add_service(QueryServiceServer::new(grpc::QueryGrpc::new(self.reads)))
            .serve(stop.triggered_owned());
        let server = tokio::spawn(server);
        shutdown.await;
        tracing::info!("shutting down");
        stop.trigger();
        server.await??;
        reads.cache().quit().await;
        reads.pool().close().await;
        Ok(())
    }
}
