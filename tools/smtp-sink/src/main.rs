//! `smtp-sink`: the dev stack's SMTP catcher (see [`smtp_sink`]).
//!
//! ```text
//! smtp-sink --smtp-addr 127.0.0.1:52525 --http-addr 127.0.0.1:58025 --dir .dev/smtp
//! ```
//!
//! Stops cleanly on Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Parser;
use smtp_sink::{Config, SmtpSink, DEFAULT_CAPACITY, DEFAULT_MAX_MESSAGE_BYTES};
use tracing_subscriber::EnvFilter;

/// An SMTP server that keeps every message and shows them over HTTP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// SMTP listen address.
    #[arg(long, default_value = "127.0.0.1:52525")]
    smtp_addr: SocketAddr,
    /// HTTP API listen address (GET /healthz, GET|DELETE /api/messages).
    #[arg(long, default_value = "127.0.0.1:58025")]
    http_addr: SocketAddr,
    /// Directory receiving one `<id>.eml` per message; memory only if absent.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Messages kept in memory (oldest dropped first).
    #[arg(long, default_value_t = DEFAULT_CAPACITY)]
    capacity: usize,
    /// Largest accepted message in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = Config {
        smtp_addr: args.smtp_addr,
        http_addr: args.http_addr,
        dir: args.dir,
        capacity: args.capacity,
        max_message_bytes: args.max_message_bytes,
        ..Config::ephemeral()
    };
    let sink = SmtpSink::bind(config.clone())
        .await
        .with_context(|| format!("binding {} and {}", config.smtp_addr, config.http_addr))?;
    tracing::info!(smtp = %sink.smtp_addr(), http = %sink.http_addr(), dir = ?config.dir, "smtp-sink listening");
    sink.run_until_stopped(infra::shutdown::signal()).await?;
    tracing::info!("smtp-sink stopped");
    Ok(())
}
