//! Support for projector tests: an in-process projector on a test's
//! database and topic (own consumer group, Redis prefix and dead-letter
//! topic), waiting for it to catch up, dumping read-model tables, reading
//! raw records and Redis pub/sub.

use crate::running::Running;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fred::prelude::{ClientLike, EventInterface, KeysInterface, PubsubInterface};
use projector::config::Config;
use projector::live::{Stats, StatsSnapshot};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use sqlx::{PgPool, Row};

use crate::harness::{stack, CommandService};

/// Redis of the running stack (`./dev test` sets `MESSENGER_REDIS_URL`).
pub fn redis_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("MESSENGER_REDIS_URL").unwrap_or_else(|_| {
            panic!("MESSENGER_REDIS_URL is not set: run the tests with `./dev test` (it starts the stack and sets it)")
        })
    })
}

/// Logs of the code under test, through libtest's capture (shown for
/// failing tests only). `RUST_LOG` filters; default `info` for the
/// projector, `warn` elsewhere.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,projector=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::now_v7().simple())
}

/// How to start a test projector; `None` fields get fresh unique values.
#[derive(Debug, Clone, Default)]
pub struct ProjectorOptions {
    pub group_id: Option<String>,
    pub redis_prefix: Option<String>,
    pub dead_letter_topic: Option<String>,
    /// Consume this topic instead of the command-service's.
    pub topic: Option<String>,
    /// Extra `--flag value` arguments (any of its config).
    pub extra_args: Vec<String>,
}

/// The projector's config for a test database and topic.
/// `prefix` is the Redis prefix unless `opts` names another.
pub fn config(
    database_url: &str,
    topic: &str,
    prefix: &str,
    opts: &ProjectorOptions,
) -> Result<Config> {
    let mut args: Vec<String> = vec![
        "projector".into(),
        "--database-url".into(),
        database_url.into(),
        "--db-pool".into(),
        "4".into(),
        "--kafka-brokers".into(),
        stack().kafka_brokers.clone(),
        "--events-topic".into(),
        opts.topic.clone().unwrap_or_else(|| topic.to_owned()),
        "--dead-letter-topic".into(),
        opts.dead_letter_topic
            .clone()
            .unwrap_or_else(|| unique("test-dead-letter")),
        "--group-id".into(),
        opts.group_id.clone().unwrap_or_else(|| unique("projector")),
        "--redis-url".into(),
        redis_url().into(),
        "--redis-prefix".into(),
        opts.redis_prefix
            .clone()
            .unwrap_or_else(|| prefix.to_owned()),
        "--redis-retry-secs".into(),
        "5".into(),
    ];
    args.extend(opts.extra_args.iter().cloned());
    Ok(infra::cli::parse_from::<projector::config::Config, _, _>(
        args,
    )?)
}

/// A projector running in this process.
#[derive(Debug)]
pub struct RunningProjector {
    pub config: Config,
    pub stats: Arc<Stats>,
    running: Running,
}

impl RunningProjector {
    /// Starts a projector on the service's database and topic.
    pub async fn start(svc: &CommandService, opts: ProjectorOptions) -> Result<Self> {
        Self::start_with(config(
            &svc.database_url,
            &svc.topic,
            &svc.redis_prefix,
            &opts,
        )?)
        .await
    }

    /// Starts a projector with a given config.
    pub async fn start_with(config: Config) -> Result<Self> {
        init_logging();
        let app = projector::Application::build(&config).await?;
        let stats = app.stats();
        let running = Running::spawn(|stop| app.run_until_stopped(stop));
        Ok(Self {
            config,
            stats,
            running,
        })
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Polls the counters until `done` holds.
    pub async fn wait_stats(
        &self,
        timeout: Duration,
        done: impl Fn(&StatsSnapshot) -> bool,
    ) -> Result<StatsSnapshot> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.snapshot();
            if done(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("projector counters did not reach the expected state: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful stop: the batch in progress finishes and commits.
    pub async fn stop(self) -> Result<()> {
        self.running.stop().await
    }
}

/// Streams whose projection `projection` is behind the event store.
pub async fn lagging_streams(pool: &PgPool, projection: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM ( \
           SELECT aggregate_type, aggregate_id, max(sequence) AS last FROM events GROUP BY 1, 2 \
         ) e LEFT JOIN rm_checkpoints c ON c.projection = $1 \
           AND c.aggregate_type = e.aggregate_type AND c.aggregate_id = e.aggregate_id \
         WHERE c.last_sequence IS DISTINCT FROM e.last",
    )
    .bind(projection)
    .fetch_one(pool)
    .await?)
}

/// Waits until every projection has applied every stored event.
pub async fn wait_caught_up(pool: &PgPool, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut behind = 0;
        for p in projector::projections::builtin().all() {
            behind += lagging_streams(pool, p.name()).await?;
        }
        if behind == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("projections still behind on {behind} streams after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `check` (a SQL query returning one boolean) until it is true.
pub async fn wait_sql(pool: &PgPool, timeout: Duration, check: &str, bind: &str) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let ok: bool = sqlx::query_scalar(check).bind(bind).fetch_one(pool).await?;
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for: {check} ({bind})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the relay has given every stored event a position and
/// confirmed it on Kafka.
pub async fn wait_relayed(pool: &PgPool, timeout: Duration) -> Result<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM events WHERE position IS NULL) AS unpositioned, \
                    (SELECT published_position FROM relay_state) AS published, \
                    (SELECT COALESCE(max(position), 0) FROM events) AS head",
        )
        .fetch_one(pool)
        .await?;
        let (unpositioned, published, head): (i64, i64, i64) = (
            row.try_get("unpositioned")?,
            row.try_get("published")?,
            row.try_get("head")?,
        );
        if unpositioned == 0 && published == head {
            return Ok(head);
        }
        if Instant::now() > deadline {
            bail!("relay behind: {unpositioned} unpositioned, published {published} of {head}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The read-model tables (`rm_%`) of the database.
pub async fn read_model_tables(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name LIKE 'rm\\_%' ORDER BY 1",
    )
    .fetch_all(pool)
    .await?)
}

/// Every row of every read-model table, as text, sorted.
pub async fn dump(pool: &PgPool) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for table in read_model_tables(pool).await? {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM {table} t ORDER BY 1"))
                .fetch_all(pool)
                .await?;
        out.insert(table, rows);
    }
    Ok(out)
}

/// Compares two dumps table by table; the error names the first rows that
/// differ rather than printing everything.
pub fn compare_dumps(
    expected: &BTreeMap<String, Vec<String>>,
    actual: &BTreeMap<String, Vec<String>>,
) -> Result<()> {
    let names = |d: &BTreeMap<String, Vec<String>>| d.keys().cloned().collect::<Vec<_>>();
    if names(expected) != names(actual) {
        bail!(
            "different tables: {:?} vs {:?}",
            names(expected),
            names(actual)
        );
    }
    let mut problems = Vec::new();
    for (table, want) in expected {
        let got = &actual[table];
        if want != got {
            let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(3).collect();
            let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(3).collect();
            problems.push(format!(
                "{table}: {} rows vs {}; missing {missing:?}; unexpected {extra:?}",
                want.len(),
                got.len()
            ));
        }
    }
    if !problems.is_empty() {
        bail!("read models differ:\n{}", problems.join("\n"));
    }
    Ok(())
}

/// A Kafka record read back byte for byte.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

/// Reads `count` records of `topic` from the beginning (fresh group).
pub async fn read_raw(topic: &str, count: usize, timeout: Duration) -> Result<Vec<RawRecord>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack().kafka_brokers)
        .set("group.id", unique("test-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the consumer")?;
    consumer.subscribe(&[topic]).context("subscribing")?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("read {} of {count} records from {topic}", out.len());
        }
        let Ok(msg) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        let msg = msg.context("consuming")?;
        let mut headers = HashMap::new();
        if let Some(h) = msg.headers() {
            for hdr in h.iter() {
                if let Some(v) = hdr.value {
                    headers.insert(hdr.key.to_owned(), String::from_utf8_lossy(v).into_owned());
                }
            }
        }
        out.push(RawRecord {
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    Ok(out)
}

/// A connected Redis client of the test stack.
pub async fn redis() -> Result<fred::prelude::Client> {
    let config = fred::prelude::Config::from_url(redis_url())?;
    let client = fred::prelude::Builder::from_config(config).build()?;
    client.init().await?;
    Ok(client)
}

/// A generation counter (missing = 0).
pub async fn generation(
    client: &fred::prelude::Client,
    prefix: &str,
    scope: &str,
    id: &str,
) -> Result<i64> {
    let v: Option<i64> = client
        .get(infra::keys::generation(prefix, scope, id))
        .await?;
    Ok(v.unwrap_or(0))
}

/// A Redis pub/sub subscriber collecting `(channel, message)` pairs.
#[derive(Debug)]
pub struct Subscriber {
    client: fred::prelude::Client,
    rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
}

impl Subscriber {
    pub async fn connect() -> Result<Self> {
        let client = redis().await?;
        let rx = client.message_rx();
        Ok(Self { client, rx })
    }

    pub async fn subscribe(&self, channel: &str) -> Result<()> {
        self.client.subscribe(channel).await?;
        Ok(())
    }

    /// The next message on any subscribed channel, as `(channel, JSON)`.
    pub async fn next(&mut self, timeout: Duration) -> Result<(String, serde_json::Value)> {
        let m = tokio::time::timeout(timeout, self.rx.recv())
            .await
            .context("no pub/sub message in time")??;
        let text: String = m.value.convert()?;
        Ok((m.channel.to_string(), serde_json::from_str(&text)?))
    }

    /// Skips messages until one on `channel` satisfies `pred`.
    pub async fn next_matching(
        &mut self,
        channel: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (ch, v) = self
                .next(left)
                .await
                .with_context(|| format!("waiting on {channel}"))?;
            if ch == channel && pred(&v) {
                return Ok(v);
            }
        }
    }

    pub async fn quit(self) {
        let _ = self.client.quit().await;
    }
}

/// A conversation's head as marked by the relay (`live`) or the projector
/// (`projected`) for the read fence (missing = 0).
pub async fn head(
    client: &fred::prelude::Client,
    prefix: &str,
    which: &str,
    conversation: &str,
) -> Result<i64> {
    let key = match which {
        "live" => infra::keys::live_head(prefix, conversation),
        "projected" => infra::keys::projected_head(prefix, conversation),
        other => bail!("no head {other}"),
    };
    let v: Option<i64> = client.get(key).await?;
    Ok(v.unwrap_or(0))
}

/// Waits until the projector has marked `conversation` projected up to
/// `seq` (after its commit and its generation `INCR`s).
pub async fn wait_projected_head(
    client: &fred::prelude::Client,
    prefix: &str,
    conversation: &str,
    seq: i64,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let at = head(client, prefix, "projected", conversation).await?;
        if at >= seq {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("conversation {conversation} projected up to {at}, not {seq}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
