//! Load generator (issue: Load): N users over real WSS against a running
//! gateway, G groups of S plus direct chats, open-loop at `--rate` msg/s or
//! at the maximum (`--rate 0`), with exact delivery accounting.
//!
//! Run against the local stack (`./dev up` first):
//!
//! ```text
//! eval "$(./dev env)"
//! cargo run --release -p tests --bin loadgen -- --users 100 --groups 10 --group-size 10 \
//!     --rate 1200 --duration 30 --json target/load.json
//! ```
//!
//! Prints a Markdown table; `--json` writes the full report (timeline
//! included). CPU and peak memory of the platform processes are read from
//! `/proc` using the pid files of `./dev` (`.dev/pids/*.pid`) and the
//! PostgreSQL postmaster (`.dev/pg/postmaster.pid`). Exit status 1 when any
//! acknowledged message was lost or duplicated.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use tests::load::{run, LoadConfig};

#[derive(Parser)]
#[command(about = "Messenger load generator with delivery accounting")]
struct Args {
    /// The gateway.
    #[arg(long, env = "LOADGEN_URL", default_value = "https://localhost:8443")]
    url: String,
    /// CA certificate of the gateway's certificate.
    #[arg(long, default_value = ".dev/pki/ca.pem")]
    ca: PathBuf,
    #[arg(long, default_value_t = 100)]
    users: usize,
    #[arg(long, default_value_t = 10)]
    groups: usize,
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    #[arg(long, default_value_t = 0)]
    directs: usize,
    /// Messages per second in all; 0 = as fast as acknowledgements return.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// In-flight sends per user at maximum rate.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds to wait for outstanding deliveries afterwards.
    #[arg(long, default_value_t = 15)]
    drain: u64,
    /// Write the full report here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write latency.png and throughput.png into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Directory of ./dev's state (pid files).
    #[arg(long, default_value = ".dev")]
    dev_dir: PathBuf,
    /// Reconnect and resume dropped sockets.
    #[arg(long, default_value_t = false)]
    reconnect: bool,
    #[arg(long, default_value_t = false)]
    quiet: bool,
    /// Create this file once every socket is ready.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Stop sending when this file exists.
    #[arg(long)]
    until_file: Option<PathBuf>,
    /// Check that every acknowledged message is in history (REST).
    #[arg(long, default_value_t = false)]
    verify_history: bool,
    /// Send over REST (POST .../messages) instead of WebSocket frames.
    #[arg(long, default_value_t = false)]
    send_via_rest: bool,
}

fn processes(dev: &std::path::Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for name in [
        "gateway",
        "command-service",
        "query-service",
        "projector",
        "notifier",
        "redis",
        "kafka",
    ] {
        if let Some(pid) = std::fs::read_to_string(dev.join("pids").join(format!("{name}.pid")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            out.push((name.to_owned(), pid));
        }
    }
    if let Some(pid) = std::fs::read_to_string(dev.join("pg").join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next()?.trim().parse().ok())
    {
        out.push(("postgres".to_owned(), pid));
    }
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let report = run(LoadConfig {
        base_url: args.url,
        ca_pem: args.ca,
        users: args.users,
        groups: args.groups,
        group_size: args.group_size,
        directs: args.directs,
        rate: args.rate,
        window: args.window,
        duration: Duration::from_secs(args.duration),
        drain: Duration::from_secs(args.drain),
        processes: processes(&args.dev_dir),
        progress: !args.quiet,
        reconnect: args.reconnect,
        ready_file: args.ready_file,
        until_file: args.until_file,
        verify_history: args.verify_history,
        send_via_rest: args.send_via_rest,
    })
    .await?;
    println!("{}", report.markdown());
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("report written to {}", path.display());
    }
    if let Some(dir) = args.plots {
        tests::plot::write(&report, &dir)?;
        eprintln!("plots written to {}", dir.display());
    }
    if report.missing > 0 || report.duplicated > 0 || report.missing_in_history.unwrap_or(0) > 0 {
        eprintln!("LOST OR DUPLICATED DELIVERIES");
        std::process::exit(1);
    }
    Ok(())
}
