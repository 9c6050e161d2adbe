//! Benchmark of the command side (issue: Foundation), against the real stack.
//!
//! Starts command-service in-process (fresh database and topic, relay on)
//! and drives it over gRPC with mutual TLS from N concurrent clients:
//!
//! 1. send-message commands/s into 1 conversation and into 1000;
//! 2. send latency on a conversation with 100,000 prior events (bulk-loaded,
//!    then snapshotted the way the store does it) versus a fresh one, cold
//!    (first command after a cache flush) and warm;
//! 3. from command handling (`occurred_at`, just before the commit) to the
//!    record's arrival at a Kafka consumer, p50/p99.
//!
//! Run: `eval "$(./dev env)"; cargo run --release -p tests --bin bench-commands`
//! (the stack must be up: `./dev up`). Prints a Markdown table.

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use proto::command::v1 as pb;
use rdkafka::consumer::Consumer;
use rdkafka::Message;
use tests::harness::{as_user, stack, CommandService, CommandServiceOptions};

#[derive(Parser)]
struct Args {
    /// Concurrent gRPC clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Sends per scenario.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Conversations in the spread scenario.
    #[arg(long, default_value_t = 1000)]
    conversations: usize,
    /// Prior events in the long-history scenario.
    #[arg(long, default_value_t = 100_000)]
    history: i64,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn run_sends(
    svc: &CommandService,
    user: &str,
    convs: &[String],
    clients: usize,
    total: usize,
    tag: &str,
) -> Result<(f64, Histogram<u64>)> {
    let mut tasks = Vec::new();
    let start = Instant::now();
    let per = total / clients;
    for c in 0..clients {
        let mut client = svc.client().await?;
        let convs = convs.to_vec();
        let user = user.to_owned();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            for i in 0..per {
                let conv = &convs[(c * per + i) % convs.len()];
                let t = Instant::now();
                client
                    .send_message(as_user(
                        &user,
                        pb::SendMessageRequest {
                            conversation_id: conv.clone(),
                            client_msg_id: format!("{tag}-{c}-{i}"),
                            body: "benchmark message body".into(),
                        },
                    ))
                    .await?;
                h.record(t.elapsed().as_micros() as u64)?;
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let rate = (per * clients) as f64 / start.elapsed().as_secs_f64();
    Ok((rate, all))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let svc = CommandService::start(CommandServiceOptions {
        relay: true,
        ..Default::default()
    })
    .await?;
    let mut c = svc.client().await?;
    let user = c
        .register_user(pb::RegisterUserRequest {
            email: "bench@example.org".into(),
            username: "bench".into(),
            password: "bench-password".into(),
            display_name: None,
        })
        .await?
        .into_inner()
        .user_id;
    let mut convs = Vec::new();
    for _ in 0..args.conversations {
        convs.push(
            c.create_group(as_user(
                &user,
                pb::CreateGroupRequest {
                    title: "bench".into(),
                    member_ids: vec![],
                },
            ))
            .await?
            .into_inner()
            .conversation_id,
        );
    }

    // Kafka arrival latency, measured by a consumer in this process.
    let consumer = Arc::new(tests::kafka::consumer(&stack().kafka_brokers, &svc.topic)?);
    let kafka_hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (consumer, kafka_hist, measuring) =
            (consumer.clone(), kafka_hist.clone(), measuring.clone());
        tokio::spawn(async move {
            loop {
                let Ok(m) = consumer.recv().await else {
                    continue;
                };
                if !measuring.load(std::sync::atomic::Ordering::Relaxed) {
                    continue;
                }
                let now = chrono::Utc::now();
                let Some(v) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                else {
                    continue;
                };
                if let Some(at) = v["occurred_at"]
                    .as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                {
                    let us = (now - at.with_timezone(&chrono::Utc))
                        .num_microseconds()
                        .unwrap_or(0)
                        .max(0) as u64;
                    if let Ok(mut h) = kafka_hist.lock() {
                        let _ = h.record(us);
                    }
                }
            }
        });
    }
    // Warm up connections, caches and the consumer's assignment.
    run_sends(
        &svc,
        &user,
        &convs[..1],
        args.clients,
        args.clients * 10,
        "warm",
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Commit-to-Kafka latency at a sustainable rate: one client, sequential.
    measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    let (paced_rate, _) = run_sends(&svc, &user, &convs, 1, 3000, "paced").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while kafka_hist.lock().map(|h| h.len()).unwrap_or(0) < 3000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    measuring.store(false, std::sync::atomic::Ordering::Relaxed);
    let kafka = kafka_hist
        .lock()
        .map(|h| h.clone())
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    println!("| occurred_at → Kafka consumer | rate | records | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| 1 client, sequential sends | {paced_rate:.0}/s | {} | {:.2} | {:.2} | {:.2} |",
        kafka.len(),
        ms(&kafka, 0.5),
        ms(&kafka, 0.99),
        kafka.max() as f64 / 1000.0
    );

    let (one_rate, one_h) =
        run_sends(&svc, &user, &convs[..1], args.clients, args.messages, "one").await?;
    let (many_rate, many_h) =
        run_sends(&svc, &user, &convs, args.clients, args.messages, "many").await?;
    // How long the relay needs to drain what the saturation runs appended.
    const BACKLOG: &str = "SELECT (SELECT count(*) FROM events WHERE position IS NULL) \
        + (SELECT last_position - published_position FROM relay_state)";
    let drain_start = Instant::now();
    let backlog: i64 = sqlx::query_scalar(BACKLOG).fetch_one(&svc.pool).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left: i64 = sqlx::query_scalar(BACKLOG).fetch_one(&svc.pool).await?;
        if left == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    // Long history: bulk-load `history` MessageSent events, snapshot, then measure.
    let long = convs[1].clone();
    let fresh = convs[2].clone();
    let t = Instant::now();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'conversation', $1, s, 'MessageSent', '1', \
                json_build_object('message_id', gen_random_uuid(), 'sender_id', $2::text, 'body', 'old', 'client_msg_id', 'bulk-' || s, 'sent_at', now()), \
                json_build_object('event_id', gen_random_uuid(), 'actor', $2::text, 'correlation_id', gen_random_uuid(), 'causation_id', null, 'occurred_at', now()) \
         FROM generate_series((SELECT max(sequence) + 1 FROM events WHERE aggregate_type = 'conversation' AND aggregate_id = $1), $3) s",
    )
    .bind(&long)
    .bind(&user)
    .bind(args.history)
    .execute(&svc.pool)
    .await?;
    let (state, version) = svc.commands.conversations.load(&long).await?;
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) VALUES ('conversation', $1, $2, $3, $4) \
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET last_sequence = EXCLUDED.last_sequence, payload = EXCLUDED.payload",
    )
    .bind(&long)
    .bind(version)
    .bind(version / 100)
    .bind(serde_json::to_value(&state)?)
    .execute(&svc.pool)
    .await?;
    let load_secs = t.elapsed().as_secs_f64();
    // Let the relay publish the bulk-loaded events before measuring latency.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let unpublished: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM events WHERE position IS NULL) + (SELECT last_position - published_position FROM relay_state)",
        )
        .fetch_one(&svc.pool)
        .await?;
        if unpublished == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lat = |conv: String, tag: &'static str| {
        let svc = &svc;
        let user = user.clone();
        async move {
            let mut client = svc.client().await?;
            let mut cold = Histogram::<u64>::new(3)?;
            let mut warm = Histogram::<u64>::new(3)?;
            for i in 0..200 {
                if i % 20 == 0 {
                    svc.commands.conversations.clear_cache();
                }
                let t = Instant::now();
                client
                    .send_message(as_user(
                        &user,
                        pb::SendMessageRequest {
                            conversation_id: conv.clone(),
                            client_msg_id: format!("{tag}-{i}"),
                            body: "x".into(),
                        },
                    ))
                    .await?;
                let us = t.elapsed().as_micros() as u64;
                if i % 20 == 0 {
                    cold.record(us)?;
                } else {
                    warm.record(us)?;
                }
            }
            Ok::<_, anyhow::Error>((cold, warm))
        }
    };
    let (long_cold, long_warm) = lat(long.clone(), "long").await?;
    let (fresh_cold, fresh_warm) = lat(fresh.clone(), "fresh").await?;
    let replayed = svc.commands.conversations.last_load().replayed;

    println!("## command-side benchmark\n");
    println!(
        "clients: {}, messages per scenario: {}, conversations: {}\n",
        args.clients, args.messages, args.conversations
    );
    println!("| scenario | commands/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    println!(
        "| send, 1 conversation | {one_rate:.0} | {:.2} | {:.2} |",
        ms(&one_h, 0.5),
        ms(&one_h, 0.99)
    );
    println!(
        "| send, {} conversations | {many_rate:.0} | {:.2} | {:.2} |",
        args.conversations,
        ms(&many_h, 0.5),
        ms(&many_h, 0.99)
    );
    println!();
    println!("| history | cold p50 ms | cold p99 ms | warm p50 ms | warm p99 ms |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} prior events | {:.2} | {:.2} | {:.2} | {:.2} |",
        args.history,
        ms(&long_cold, 0.5),
        ms(&long_cold, 0.99),
        ms(&long_warm, 0.5),
        ms(&long_warm, 0.99)
    );
    println!(
        "| fresh conversation | {:.2} | {:.2} | {:.2} | {:.2} |",
        ms(&fresh_cold, 0.5),
        ms(&fresh_cold, 0.99),
        ms(&fresh_warm, 0.5),
        ms(&fresh_warm, 0.99)
    );
    println!("\n(bulk load of the history took {load_secs:.1} s; the last cold load replayed {replayed} events after its snapshot)\n");
    println!(
        "\nrelay backlog after the saturation runs: {backlog} events, drained in {drain_secs:.1} s"
    );
    consumer.unsubscribe();
    svc.stop().await.context("stopping")
}
