//! Read-side latency: p50/p99 of the conversation list (first page) and of
//! the newest history page, with the Redis cache and without it
//! (`--cache false`), end to end over mutual-TLS gRPC as the gateway calls
//! them, and in-process (the reads alone, no transport).
//!
//! Needs the dev stack (PostgreSQL, Redis); run it with
//! `./dev test` variables set, in release mode for meaningful numbers:
//!
//! ```text
//! cargo run --release -p tests --bin bench-queries -- --requests 5000
//! ```
//!
//! It creates its own database, fills the read models directly (one user in
//! `--conversations` conversations, one of them with `--messages`
//! messages), starts two query-services on it (cache on, cache off) and
//! times sequential requests after a warm-up.

#![allow(clippy::print_stdout)]

use std::future::Future;
use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use proto::query::v1 as pb;
use tests::harness::{as_user, fresh_database};
use tests::query_support::{QueryService, QueryServiceOptions, ReadModel};
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "query-service latency with and without the Redis cache")]
struct Args {
    /// Timed requests per scenario.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Untimed requests before each scenario.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Conversations of the benchmark user.
    #[arg(long, default_value_t = 200)]
    conversations: usize,
    /// Messages in the conversation whose history is read.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs `op` `warmup + n` times, timing the last `n` (microseconds).
async fn time<F, Fut>(warmup: usize, n: usize, mut op: F) -> Result<Histogram<u64>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    for _ in 0..warmup {
        op().await?;
    }
    let mut h = Histogram::<u64>::new(3)?;
    for _ in 0..n {
        let t = Instant::now();
        op().await?;
        h.record(t.elapsed().as_micros() as u64)?;
    }
    Ok(h)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (url, pool) = fresh_database().await?;
    let rm = ReadModel::new(pool);
    let me = rm.user("bench").await?;
    let other = rm.user("other").await?;
    let mut history = None;
    for i in 0..args.conversations {
        let c = rm.group(me, &format!("conversation {i}"), &[other]).await?;
        rm.send(c, other, &format!("hello {i}")).await?;
        history.get_or_insert(c);
    }
    let history = history.unwrap_or_else(Uuid::now_v7);
    for i in 0..args.messages {
        let who = if i % 2 == 0 { me } else { other };
        rm.send(
            history,
            who,
            &format!("message number {i} with a typical length body"),
        )
        .await?;
    }

    let cached = QueryService::start(&url, QueryServiceOptions::default()).await?;
    let uncached = QueryService::start(
        &url,
        QueryServiceOptions {
            extra_args: vec!["--cache".into(), "false".into()],
            ..Default::default()
        },
    )
    .await?;

    println!("## query-service latency\n");
    println!(
        "{} sequential requests per row after {} warm-up; user in {} conversations; history of {} messages; default page sizes (50).\n",
        args.requests, args.warmup, args.conversations, args.messages
    );
    println!("| read | path | cache | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for (label, qs) in [("on", &cached), ("off", &uncached)] {
        let client = qs.client().await?;
        let list = time(args.warmup, args.requests, || {
            let mut c = client.clone();
            async move {
                let r = c
                    .list_conversations(as_user(
                        &me.to_string(),
                        pb::ListConversationsRequest {
                            limit: None,
                            cursor: None,
                        },
                    ))
                    .await?
                    .into_inner();
                ensure!(r.conversations.len() == 50);
                Ok(())
            }
        })
        .await?;
        let page = time(args.warmup, args.requests, || {
            let mut c = client.clone();
            async move {
                let r = c
                    .list_messages(as_user(
                        &me.to_string(),
                        pb::ListMessagesRequest {
                            conversation_id: history.to_string(),
                            before_seq: None,
                            after_seq: None,
                            limit: None,
                        },
                    ))
                    .await?
                    .into_inner();
                ensure!(r.messages.len() == 50);
                Ok(())
            }
        })
        .await?;
        let reads = qs.reads.clone();
        let list_in = time(args.warmup, args.requests, || {
            let reads = reads.clone();
            async move {
                reads.list_conversations(me, None, None).await?;
                Ok(())
            }
        })
        .await?;
        let page_in = time(args.warmup, args.requests, || {
            let reads = reads.clone();
            async move {
                reads
                    .list_messages(me, &history.to_string(), None, None, None)
                    .await?;
                Ok(())
            }
        })
        .await?;
        for (read, path, h) in [
            ("ListConversations", "gRPC mTLS", &list),
            ("ListMessages newest", "gRPC mTLS", &page),
            ("ListConversations", "in-process", &list_in),
            ("ListMessages newest", "in-process", &page_in),
        ] {
            println!(
                "| {read} | {path} | {label} | {:.3} | {:.3} | {:.3} |",
                ms(h, 0.5),
                ms(h, 0.99),
                h.max() as f64 / 1000.0
            );
        }
    }
    let counts = cached.cache_counts();
    println!("\ncache on: {} hits, {} misses", counts.hits, counts.misses);
    cached.stop().await?;
    uncached.stop().await?;
    Ok(())
}
