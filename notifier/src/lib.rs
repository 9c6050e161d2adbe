//! notifier: web push and email digests from the event stream, and the
//! gRPC service behind API.md's push-subscription and notification-settings
//! endpoints.
//!
//! # What happens to a `MessageSent`
//!
//! 1. [`consumer`] reads it in the `notifier` consumer group, waits until
//!    the projector has projected its conversation up to the message, and
//!    computes the recipients: members *at the message's sequence*
//!    (`rm_member_periods`) except the sender, minus those who muted the
//!    conversation (`conversation_mutes`, until `muted_until`) or turned a
//!    channel off (`notification_settings`). Push recipients with a live
//!    WebSocket (presence key `infra::keys::presence` in Redis) are skipped
//!    unless `NOTIFIER_PUSH_WHEN_ONLINE`.
//! 2. In one transaction per batch it writes the dedupe records, a
//!    `push_deliveries` row per (message, subscription), `ON CONFLICT DO
//!    NOTHING`, and marks each conversation with a message as
//!    `digest_pending` (one row per conversation, not per recipient). Then
//!    it commits the Kafka offsets. A redelivered record therefore queues
//!    nothing twice.
//! 3. [`push`] claims due rows per push-service origin, one at a time per
//!    lane (subscription, conversation) in the conversation's order, encrypts
//!    ([`webpush`]: RFC 8291 `aes128gcm`, RFC 8292 VAPID), posts with RFC
//!    8030 `TTL`, `Urgency` and a per-conversation `Topic`, and records the
//!    outcome (404/410 delete the subscription; 429/5xx retry with backoff
//!    and jitter honouring `Retry-After`, then dead-letter).
//! 4. [`digest`] mails, per user and window, every message of a pending
//!    conversation still unread and not mailed before (`digest_marks`) as
//!    one digest (lettre, plain text + HTML), computed at digest time.
//!
//! Poison records go to the dead-letter topic ([`event_stream::dead_letter`]); a
//! `MessageSent` whose conversation the projector has not reached within
//! `NOTIFIER_PROJECTION_WAIT_SECS` goes there too (`not_projected`).
//!
//! # Exactly once, and where it is at-least-once
//!
//! Kafka redelivery and restarts never duplicate: the rows of step 2 are
//! the dedupe records, written before the offsets move and before any
//! send. Each row is then claimed (`sending`, with a lease) before its
//! request and closed after the answer (2xx answers in batches). The one
//! unavoidable window is a crash while a request is in flight or its 2xx
//! awaits its batch: the push service may or may not have
//! accepted it, and the row is sent again when its lease ends. The payload
//! carries `message_id` (a service worker can drop a repeat) and the
//! per-conversation `Topic` lets the push service replace it. ADR 0004.
//!
//! # Why read models for membership
//!
//! The projector already folds membership into `rm_member_periods`, exact
//! per sequence; keeping a second copy here would be a second fold to keep
//! right. The cost is a dependency on projector progress, handled by
//! waiting on its checkpoint (`rm_checkpoints`, projection `core`).
//!
//! # Layout
//!
//! - [`config`]: settings from flags and environment.
//! - [`consumer`]: the Kafka loop and the recipient computation.
//! - [`webpush`]: encryption, VAPID, origins.
//! - [`push`]: the push worker (claims, per-origin concurrency, retries).
//! - [`digest`]: the email digest worker.
//! - [`prefs`]: subscriptions, settings and mutes in Postgres.
//! - [`grpc`]: `NotifierService` over [`prefs`].
//! - [`event_stream`]: the events consumer with offsets in PostgreSQL and
//!   the dead-letter producer, shared with the projector.
//!
//! Secrets: subscription keys live only in `push_subscriptions`; the VAPID
//! private key only in memory ([`webpush::VapidKey`]'s `Debug` shows the
//! public key). Neither is logged, traced or produced to Kafka.

pub mod config;
pub mod consumer;
pub mod digest;
pub mod endpoint;
pub mod grpc;
pub mod prefs;
pub mod push;
pub mod webpush;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use domain::decode::Decoder;
use infra::grpc::GrpcServer;
use infra::shutdown::Shutdown;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use proto::notifier::v1::notifier_service_server::NotifierServiceServer;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::consumer::{Consumer, Stats};
use crate::digest::DigestWorker;
use crate::prefs::Prefs;
use crate::push::{PushSettings, PushWorker};
use crate::webpush::VapidKey;

pub use infra::postgres::{connect, MIGRATOR};

/// Reads the VAPID key file (its content is never logged).
pub fn load_vapid_key(path: &std::path::Path) -> anyhow::Result<VapidKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the VAPID key file {}", path.display()))?;
    VapidKey::parse(&text).with_context(|| format!("parsing the VAPID key file {}", path.display()))
}

/// A built, not yet running, notifier.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    addr: SocketAddr,
    grpc: grpc::NotifierGrpc,
    consumer: Consumer,
    push: PushWorker,
    digest: DigestWorker,
    stats: Arc<Stats>,
    pool: PgPool,
}

impl Application {
    /// Connects PostgreSQL (migrating if configured), Redis, Kafka and the
    /// SMTP transport (lazily), loads the VAPID key, binds the listener.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        // The consumer, the push worker and the digest worker each use a
        // connection at a time: never fewer than two.
        let pool = infra::postgres::connect_and_migrate(
            &config.postgres.database_url,
            config.db_pool.max(2),
            config.migrate,
        )
        .await?;
        let vapid = load_vapid_key(&config.vapid_private_key_file)?;
        let redis = infra::redis::connect(&config.redis.redis_url).await?;
        let (source, dead_letter) = event_stream::open(
            &config.kafka,
            event_stream::GroupSettings {
                group_id: &config.group_id,
                fetch_wait_ms: config.fetch_wait_ms,
                dead_letter_topic: &config.dead_letter_topic,
                kafka_options: &config.kafka_options,
            },
        )?;
        let policy = Arc::new(
            endpoint::EndpointPolicy::new(
                &config.push_allowed_hosts,
                &config.push_allowed_networks,
            )
            .map_err(|e| anyhow::anyhow!("push endpoint policy: {e}"))?,
        );
        // No redirects (a push service answers, it does not redirect; a
        // redirect would lead the request past the endpoint check), HTTPS
        // only, and names resolved through the policy's filter.
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .dns_resolver(Arc::new(endpoint::FilteringResolver(policy.clone())))
            .connect_timeout(Duration::from_millis(config.push_timeout_ms))
            .pool_max_idle_per_host(config.push_per_origin.max(1))
            .user_agent("messenger-notifier");
        if let Some(path) = &config.push_extra_ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the push CA file {}", path.display()))?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).context("parsing the push CA file")?
            {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build().context("building the HTTP client")?;
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
            .context("parsing the SMTP URL")?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        let from = config
            .mail_from
            .parse()
            .context("parsing NOTIFIER_MAIL_FROM")?;
        let server = GrpcServer::bind(
            config.listen,
            &config.pki,
            &config.tls_name,
            &config.grpc,
            proto::FILE_DESCRIPTOR_SET,
        )
        .await?;
        let addr = server.local_addr()?;
        let stats = Arc::new(Stats::default());
        let wake_push = Arc::new(Notify::new());
        let wake_digest = Arc::new(Notify::new());
        let consumer = Consumer {
            source,
            pool: pool.clone(),
            redis,
            prefix: config.redis.redis_prefix.clone(),
            decoder: Decoder::new(),
            dead_letter: dead_letter.clone(),
            batch_size: config.batch_size.max(1),
            projection_wait: Duration::from_secs(config.projection_wait_secs),
            push_when_online: config.push_when_online,
            wake_push: wake_push.clone(),
            wake_digest: wake_digest.clone(),
            stats: stats.clone(),
        };
        // A request still in flight when its lease ends would race its own
        // repeat (and could land after the next push of its lane): the
        // lease outlasts the request timeout.
        let push_timeout = Duration::from_millis(config.push_timeout_ms);
        let mut push_lease = Duration::from_secs(config.push_lease_secs.max(1));
        let min_lease = push_timeout + Duration::from_secs(1);
        if push_lease < min_lease {
            tracing::warn!(
                lease_secs = config.push_lease_secs,
                timeout_ms = config.push_timeout_ms,
                "the push lease is not longer than the push timeout; raised to the timeout plus 1 s"
            );
            push_lease = min_lease;
        }
        let push = PushWorker {
            pool: pool.clone(),
            http,
            policy: policy.clone(),
            vapid: vapid.clone(),
            settings: PushSettings {
                ttl_secs: config.push_ttl_secs,
                timeout: push_timeout,
                per_origin: config.push_per_origin.max(1),
                concurrency: config.push_concurrency.max(1),
                max_attempts: config.push_max_attempts.max(1),
                backoff: Duration::from_millis(config.push_backoff_ms),
                backoff_max: Duration::from_millis(config.push_backoff_max_ms),
                lease: push_lease,
                poll: config.poll(),
                subject: config.vapid_subject.clone(),
            },
            dead_letter,
            wake: wake_push,
            stats: stats.clone(),
            jwt_cache: std::sync::Mutex::default(),
        };
        let digest = DigestWorker {
            pool: pool.clone(),
            mailer,
            from,
            default_delay: config.email_delay_secs,
            // Digests have a resolution of seconds: no need to look as
            // often as the push worker (the consumer still wakes it).
            poll: config.poll().max(Duration::from_secs(1)),
            wake: wake_digest,
            stats: stats.clone(),
            backoff: std::sync::Mutex::default(),
        };
        let grpc = grpc::NotifierGrpc::new(
            Prefs::new(
                pool.clone(),
                config.email_delay_secs,
                policy,
                config.max_subscriptions_per_user.max(1),
            ),
            vapid,
        );
        tracing::info!(
            addr = %addr,
            topic = %config.kafka.events_topic,
            group = %config.group_id,
            "notifier built"
        );
        Ok(Self {
            server,
            addr,
            grpc,
            consumer,
            push,
            digest,
            stats,
            pool,
        })
    }

    /// Where the gRPC server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves gRPC, consumes and sends until `shutdown` resolves; then the
    /// consumer finishes its batch and commits, requests in flight finish.
    /// Dropping the returned future instead (a crash, as tests simulate)
    /// aborts everything at once: every task lives in a `JoinSet` it owns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = Shutdown::new();
        let server = self
            .server
            .add_service(NotifierServiceServer::new(self.grpc))
            .serve(stop.triggered_owned());
        tracing::info!(addr = %self.addr, "notifier listening (mTLS)");
        let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
        tasks.spawn(async move { server.await.context("gRPC server") });
        let (consumer, push, digest) = (self.consumer, self.push, self.digest);
        let s = stop.clone();
        tasks.spawn(async move {
            consumer.run(s).await;
            Ok(())
        });
        let s = stop.clone();
        tasks.spawn(async move {
            push.run(s).await;
            Ok(())
        });
        let s = stop.clone();
        tasks.spawn(async move {
            digest.run(s).await;
            Ok(())
        });
        let mut result = Ok(());
        tokio::select! {
            () = shutdown => {}
            Some(r) = tasks.join_next() => {
                result = r.map_err(anyhow::Error::from).and_then(|r| r);
                if result.is_ok() {
                    result = Err(anyhow::anyhow!("a notifier task ended on its own"));
                }
            }
        }
        tracing::info!("shutting down");
        stop.trigger();
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
                tracing::error!(error = ?e, "notifier task failed");
            }
        }
        self.pool.close().await;
        result
    }
}
