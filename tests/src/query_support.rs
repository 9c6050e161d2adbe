//! Harness for query-service tests: an in-process query-service over mutual
//! TLS, a Redis handle that plays the projector's part in the cache scheme
//! (`INCR` of generations), and [`ReadModel`], a small builder that writes
//! the `rm_*` read models directly, the way the projector would, so reads
//! can be tested before and independently of the projector.

use crate::running::Running;
use std::fmt::Display;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use proto::query::v1::query_service_client::QueryServiceClient;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::harness::{fresh_database, pki, stack, CommandService, CommandServiceOptions};

/// The stack's Redis (`MESSENGER_REDIS_URL`, set by `./dev test`).
pub fn redis_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("MESSENGER_REDIS_URL").unwrap_or_else(|_| {
            panic!(
                "MESSENGER_REDIS_URL is not set: run ./dev test (it starts the stack and sets it)"
            )
        })
    })
}

/// A Redis key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}", Uuid::now_v7().simple())
}

/// Options for an in-process query-service.
#[derive(Debug, Clone, Default)]
pub struct QueryServiceOptions {
    /// Redis to use; `None` = the stack's.
    pub redis_url: Option<String>,
    /// Key prefix; `None` = a fresh one.
    pub prefix: Option<String>,
    /// Extra `--flag value` arguments (any of its config).
    pub extra_args: Vec<String>,
}

/// A query-service running in this process.
#[derive(Debug)]
pub struct QueryService {
    pub addr: std::net::SocketAddr,
    /// Its Redis key prefix.
    pub prefix: String,
    /// The reads behind the gRPC service (cache counters live there).
    pub reads: query_service::reads::Reads,
    running: Running,
}

impl QueryService {
    /// Starts against `database_url` (a database with the migrations applied).
    pub async fn start(database_url: &str, opts: QueryServiceOptions) -> anyhow::Result<Self> {
        let prefix = opts.prefix.unwrap_or_else(unique_prefix);
        let mut args: Vec<String> = vec![
            "query-service".into(),
            "--database-url".into(),
            database_url.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--pki-dir".into(),
            pki().to_string_lossy().into_owned(),
            "--redis-url".into(),
            opts.redis_url.unwrap_or_else(|| redis_url().to_owned()),
            "--redis-prefix".into(),
            prefix.clone(),
            "--db-pool".into(),
            "8".into(),
        ];
        args.extend(opts.extra_args);
        let config = infra::cli::parse_from::<query_service::config::Config, _, _>(args)?;
        let app = query_service::Application::build(&config).await?;
        let addr = app.local_addr();
        let reads = app.reads();
        let running = Running::spawn(|stop| app.run_until_stopped(stop));
        Ok(Self {
            addr,
            prefix,
            reads,
            running,
        })
    }

    /// A gRPC client presenting the `gateway` certificate (the identity
    /// allowed to act for users).
    pub async fn client(&self) -> anyhow::Result<QueryServiceClient<Channel>> {
        Ok(QueryServiceClient::new(self.channel("gateway").await?))
    }

    /// A channel presenting certificate `name` from the test PKI.
    pub async fn channel(&self, name: &str) -> anyhow::Result<Channel> {
        let tls = infra::tls::client(pki(), name, "localhost")?;
        Ok(
            Endpoint::from_shared(format!("https://localhost:{}", self.addr.port()))?
                .tls_config(tls)?
                .connect()
                .await?,
        )
    }

    /// Cache hits and misses so far.
    pub fn cache_counts(&self) -> query_service::cache::CacheCounts {
        self.reads.cache().counts()
    }

    /// Graceful stop: in-flight calls finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.running.stop().await
    }
}

/// The projector's side of the cache scheme, for tests: generation bumps.
#[derive(Debug)]
pub struct Redis {
    client: fred::clients::Client,
    pub prefix: String,
}

impl Redis {
    /// Connects to the stack's Redis, using `prefix`.
    pub async fn connect(prefix: &str) -> anyhow::Result<Self> {
        let client = Builder::from_config(Config::from_url(redis_url())?).build()?;
        client.init().await.context("connecting to Redis")?;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
        })
    }

    /// `INCR {p}:gen:{scope}:{id}`, as the projector does after a commit.
    pub async fn bump(&self, scope: &str, id: impl Display) -> anyhow::Result<i64> {
        Ok(self
            .client
            .incr(infra::keys::generation(
                &self.prefix,
                scope,
                &id.to_string(),
            ))
            .await?)
    }

    /// Whether a cached value exists for `scope`/`id`/`what` at the
    /// current generation.
    pub async fn cached_now(
        &self,
        scope: &str,
        id: impl Display,
        what: &str,
    ) -> anyhow::Result<bool> {
        let id = id.to_string();
        let generation: Option<i64> = self
            .client
            .get(infra::keys::generation(&self.prefix, scope, &id))
            .await?;
        let key = infra::keys::cached(&self.prefix, scope, &id, what, generation.unwrap_or(0));
        let n: i64 = self.client.exists(key).await?;
        Ok(n == 1)
    }
}

/// A message written by [`ReadModel::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub message_id: Uuid,
    pub seq: i64,
}

/// Writes the read models directly, as the projector would after applying
/// events. Every conversation mutation takes the next stream sequence (as
/// its event would) in one transaction. Times come from a fake clock that
/// advances by one millisecond per call, so activity order is exact.
#[derive(Debug)]
pub struct ReadModel {
    pub pool: PgPool,
    base: DateTime<Utc>,
    ticks: AtomicI64,
}

impl ReadModel {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            base: DateTime::from_timestamp_micros(Utc::now().timestamp_micros())
                .unwrap_or_default(),
            ticks: AtomicI64::new(0),
        }
    }

    /// The fake clock: strictly increasing, microsecond precision.
    pub fn tick(&self) -> DateTime<Utc> {
        let n = self.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        self.base + chrono::Duration::milliseconds(n)
    }

    /// A user with no role.
    pub async fn user(&self, username: &str) -> anyhow::Result<Uuid> {
        self.user_with(Uuid::now_v7(), username, &[]).await
    }

    /// A user with `id` and `roles` (e.g. one registered through
    /// command-service, made auditor).
    pub async fn user_with(
        &self,
        id: Uuid,
        username: &str,
        roles: &[&str],
    ) -> anyhow::Result<Uuid> {
        sqlx::query(
            "INSERT INTO rm_users (user_id, username, display_name, email, roles, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(username.to_lowercase())
        .bind(format!("{username} (display)"))
        .bind(format!("{username}@example.org"))
        .bind(roles.iter().map(|r| r.to_string()).collect::<Vec<_>>())
        .bind(self.tick())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// A group owned by `owner` with `members` (seq 1 = ConversationCreated).
    pub async fn group(&self, owner: Uuid, title: &str, members: &[Uuid]) -> anyhow::Result<Uuid> {
        self.conversation("group", Some(title), owner, members)
            .await
    }

    /// A direct conversation between `a` and `b`.
    pub async fn direct(&self, a: Uuid, b: Uuid) -> anyhow::Result<Uuid> {
        self.conversation("direct", None, a, &[b]).await
    }

    async fn conversation(
        &self,
        kind: &str,
        title: Option<&str>,
        creator: Uuid,
        others: &[Uuid],
    ) -> anyhow::Result<Uuid> {
        let id = Uuid::now_v7();
        let at = self.tick();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO rm_conversations (conversation_id, kind, title, created_by, created_at, last_seq, last_message_seq, last_activity_at) \
             VALUES ($1, $2, $3, $4, $5, 1, NULL, $5)",
        )
        .bind(id)
        .bind(kind)
        .bind(title)
        .bind(creator)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let creator_role = if kind == "group" { "owner" } else { "member" };
        for (user, role) in
            std::iter::once((creator, creator_role)).chain(others.iter().map(|u| (*u, "member")))
        {
            join(&mut tx, id, user, role, 1, at).await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Takes the next sequence of `conversation`.
    async fn next_seq(tx: &mut sqlx::PgConnection, conversation: Uuid) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "UPDATE rm_conversations SET last_seq = last_seq + 1 WHERE conversation_id = $1 RETURNING last_seq",
        )
        .bind(conversation)
        .fetch_one(tx)
        .await?)
    }

    /// MessageSent: history, last message and activity (lists and unread
    /// counts are derived at read time).
    pub async fn send(&self, conversation: Uuid, sender: Uuid, body: &str) -> anyhow::Result<Sent> {
        let at = self.tick();
        let message_id = Uuid::now_v7();
        let mut tx = self.pool.begin().await?;
        let seq = Self::next_seq(&mut tx, conversation).await?;
        sqlx::query(
            "INSERT INTO rm_messages (conversation_id, seq, message_id, sender_id, client_msg_id, body, sent_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(conversation)
        .bind(seq)
        .bind(message_id)
        .bind(sender)
        .bind(format!("c{seq}"))
        .bind(body)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE rm_conversations SET last_message_seq = $2, last_activity_at = $3 WHERE conversation_id = $1",
        )
        .bind(conversation)
        .bind(seq)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Sent { message_id, seq })
    }

    /// MessageEdited.
    pub async fn edit(
        &self,
        conversation: Uuid,
        message_id: Uuid,
        body: &str,
    ) -> anyhow::Result<i64> {
        let at = self.tick();
        let mut tx = self.pool.begin().await?;
        let seq = Self::next_seq(&mut tx, conversation).await?;
        sqlx::query(
            "UPDATE rm_messages SET body = $3, edited_at = $4 WHERE conversation_id = $1 AND message_id = $2",
        )
        .bind(conversation)
        .bind(message_id)
        .bind(body)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// MessageDeleted: the body is gone.
    pub async fn delete(&self, conversation: Uuid, message_id: Uuid) -> anyhow::Result<i64> {
        let mut tx = self.pool.begin().await?;
        let seq = Self::next_seq(&mut tx, conversation).await?;
        sqlx::query(
            "UPDATE rm_messages SET body = NULL, deleted = true WHERE conversation_id = $1 AND message_id = $2",
        )
        .bind(conversation)
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// MemberAdded: a new membership period from this sequence.
    pub async fn add_member(
        &self,
        conversation: Uuid,
        user: Uuid,
        role: &str,
    ) -> anyhow::Result<i64> {
        let at = self.tick();
        let mut tx = self.pool.begin().await?;
        let seq = Self::next_seq(&mut tx, conversation).await?;
        join(&mut tx, conversation, user, role, seq, at).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// MemberRemoved: the period ends at this sequence; the conversation
    /// leaves the user's list.
    pub async fn remove_member(&self, conversation: Uuid, user: Uuid) -> anyhow::Result<i64> {
        let mut tx = self.pool.begin().await?;
        let seq = Self::next_seq(&mut tx, conversation).await?;
        sqlx::query("DELETE FROM rm_members WHERE conversation_id = $1 AND user_id = $2")
            .bind(conversation)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE rm_member_periods SET left_seq = $3 \
             WHERE conversation_id = $1 AND user_id = $2 AND left_seq IS NULL",
        )
        .bind(conversation)
        .bind(user)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// ConversationRenamed.
    pub async fn rename(&self, conversation: Uuid, title: &str) -> anyhow::Result<i64> {
        let mut tx = self.pool.begin().await?;
        let seq = Self::next_seq(&mut tx, conversation).await?;
        sqlx::query("UPDATE rm_conversations SET title = $2 WHERE conversation_id = $1")
            .bind(conversation)
            .bind(title)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// A read marker (its own stream: no conversation sequence).
    pub async fn mark_read(&self, conversation: Uuid, user: Uuid, seq: i64) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO rm_read_markers (conversation_id, user_id, seq) VALUES ($1, $2, $3) \
             ON CONFLICT (conversation_id, user_id) DO UPDATE SET seq = GREATEST(rm_read_markers.seq, EXCLUDED.seq)",
        )
        .bind(conversation)
        .bind(user)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A user joins at `seq`: member row, open period (the list entry is
/// derived from them).
async fn join(
    tx: &mut sqlx::PgConnection,
    conversation: Uuid,
    user: Uuid,
    role: &str,
    seq: i64,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO rm_members (conversation_id, user_id, role, joined_seq, joined_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(conversation)
    .bind(user)
    .bind(role)
    .bind(seq)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO rm_member_periods (conversation_id, user_id, joined_seq, left_seq) VALUES ($1, $2, $3, NULL)",
    )
    .bind(conversation)
    .bind(user)
    .bind(seq)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Waits until the relay has positioned every stored event.
pub async fn wait_positioned(pool: &PgPool, timeout: Duration) -> anyhow::Result<i64> {
    let start = Instant::now();
    loop {
        let (total, positioned): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(position) FROM events")
                .fetch_one(pool)
                .await?;
        if total == positioned {
            return Ok(total);
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "{} of {total} events still without a position",
            total - positioned
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Gives committed events their global positions the way the outbox relay
/// does (its own `assign` step: serialized allocation in commit order), but
/// without publishing to Kafka: the read side needs positions, not the
/// broker, so these tests do not depend on the shared broker's health.
#[derive(Debug)]
pub struct Positioner {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Positioner {
    /// Starts assigning positions in the background, every few milliseconds.
    pub fn start(pool: PgPool) -> anyhow::Result<Self> {
        let relay = command_service::relay::Relay::new(
            pool,
            command_service::relay::RelayConfig {
                brokers: stack().kafka_brokers.clone(),
                topic: "unused".into(),
                batch_size: 1000,
                poll_interval: Duration::from_millis(100),
                linger_ms: 0,
                headers: false,
                extra: vec![],
            },
        )?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            while !*stopped.borrow() {
                let assigned = relay.assign().await?;
                if assigned.is_empty() {
                    tokio::select! {
                        _ = stopped.changed() => {}
                        () = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                }
            }
            Ok(())
        });
        Ok(Self { stop, task })
    }

    /// Stops after the current round.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}

/// command-service on a fresh database with its relay off, plus a
/// [`Positioner`]: real appends, real global positions, no Kafka.
pub async fn command_service_without_kafka() -> anyhow::Result<(CommandService, Positioner)> {
    let (url, pool) = fresh_database().await?;
    let svc = CommandService::start_on(
        url,
        pool,
        format!("unused-{}", Uuid::now_v7().simple()),
        CommandServiceOptions {
            relay: false,
            ..Default::default()
        },
    )
    .await?;
    let positioner = Positioner::start(svc.pool.clone())?;
    Ok((svc, positioner))
}
