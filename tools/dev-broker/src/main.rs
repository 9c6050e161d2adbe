//! The dev stack's Kafka-protocol broker: tansu 0.6 (its SQLite engine) and
//! its topic admin, as one small binary built inside the workspace.
//!
//! `./dev` used to `cargo install tansu`: about 390 crates compiled in a
//! target directory of their own, in release, beside the workspace's own
//! build: more than half of a fresh machine's first `./dev up`. Linked here,
//! the broker shares tokio, hyper, rustls, tonic, prost and the rest with the
//! services, leaves out what the stack never runs (tansu's proxy, perf,
//! generator, cat, schema lakes) and is built by the same cargo invocation.
//!
//! The command line is the subset of tansu's that `./dev` uses, spelled the
//! same way:
//!
//! ```text
//! dev-broker broker --listener-url tcp://127.0.0.1:9092 \
//!     --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine sqlite://tansu.db
//! dev-broker topic create NAME --partitions 2 --broker tcp://127.0.0.1:9092
//! dev-broker topic list --broker tcp://127.0.0.1:9092
//! ```
//!
//! Against a real Kafka or Redpanda none of this runs: the services take
//! any broker by address (`MESSENGER_KAFKA_BROKERS`).

use std::{collections::HashMap, process::ExitCode};

use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand};
use tansu_broker::{broker::Broker, coordinator::group::administrator::Controller, NODE_ID};
use tansu_sans_io::ErrorCode;
use tansu_storage::StorageContainer;
use tansu_topic::Topic;
use url::Url;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(about = "The dev stack's Kafka-protocol broker (tansu) and its topic admin")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker until it is stopped.
    Broker(BrokerArgs),
    /// Create or list topics.
    #[command(subcommand)]
    Topic(TopicCommand),
}

#[derive(Debug, clap::Args)]
struct BrokerArgs {
    #[arg(long, default_value = "tansu_cluster")]
    cluster_id: String,
    /// Where the broker listens.
    #[arg(long, default_value = "tcp://127.0.0.1:9092")]
    listener_url: Url,
    /// What the broker tells clients to connect to.
    #[arg(long, default_value = "tcp://127.0.0.1:9092")]
    advertised_listener_url: Url,
    /// `sqlite://FILE` (relative to the working directory: tansu 0.6
    /// mangles absolute SQLite paths) or `memory://tansu/`.
    #[arg(long, default_value = "sqlite://tansu.db")]
    storage_engine: Url,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic (fails if it exists).
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        #[arg(long, default_value = "tcp://127.0.0.1:9092")]
        broker: Url,
        /// Topic configuration, KEY=VALUE (repeatable).
        #[arg(long, value_parser = key_value)]
        config: Vec<(String, String)>,
    },
    /// Print the topics as JSON.
    List {
        #[arg(long, default_value = "tcp://127.0.0.1:9092")]
        broker: Url,
    },
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

#[tokio::main]
async fn main() -> ExitCode {
    // tansu's own subscriber (RUST_LOG, text to stderr); without it the
    // broker still runs, silently.
    let _tracing = tansu_broker::otel::init(tansu_broker::TracingFormat::Text).ok();
    match run(Cli::parse()).await {
        Ok(ErrorCode::None) => ExitCode::SUCCESS,
        Ok(code) => {
            tracing::error!(%code, "dev-broker failed");
            ExitCode::FAILURE
        }
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "dev-broker failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ErrorCode> {
    match cli.command {
        Command::Broker(args) => broker(args).await,
        Command::Topic(TopicCommand::Create {
            name,
            partitions,
            broker,
            config,
        }) => Topic::create()
            .broker(broker)
            .name(name.clone())
            .partitions(partitions)
            .config(HashMap::from_iter(config))
            .build()
            .main()
            .await
            .map_err(|err| anyhow!("{err}"))
            .with_context(|| format!("creating topic {name}")),
        Command::Topic(TopicCommand::List { broker }) => Topic::list()
            .broker(broker)
            .build()
            .main()
            .await
            .map_err(|err| anyhow!("{err}"))
            .context("listing topics"),
    }
}

async fn broker(args: BrokerArgs) -> anyhow::Result<ErrorCode> {
    let started = tokio::time::Instant::now();
    tracing::warn!(
        listener = %args.listener_url,
        advertised = %args.advertised_listener_url,
        storage = %args.storage_engine,
        "dev-broker (tansu 0.6) starting"
    );
    Broker::<Controller<StorageContainer>, StorageContainer>::builder()
        .node_id(NODE_ID)
        .cluster_id(args.cluster_id)
        .incarnation_id(Uuid::now_v7())
        .advertised_listener(args.advertised_listener_url)
        .otlp_endpoint_url(None)
        .schema_registry(None)
        .storage(args.storage_engine)
        .listener(args.listener_url)
        .authentication(false)
        .tls_server_config(None)
        .silent(true)
        .build()
        .await
        .map_err(|err| anyhow!("{err}"))
        .context("starting the broker")?
        .main(started)
        .await
        .map_err(|err| anyhow!("{err}"))
        .context("running the broker")
}
