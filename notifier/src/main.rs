//! notifier binary: `run` (default) consumes the event topic, sends web
//! pushes and email digests and serves `NotifierService`;
//! `generate-vapid-key --out FILE` writes a fresh VAPID key (PEM) unless
//! the file exists, and prints the public key.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use notifier::config::Config;
use notifier::Application;

#[derive(Parser)]
#[command(version, about = "Messenger notifier: web push and email digests")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Cmd {
    /// Consume, notify and serve (the default).
    Run,
    /// Write a new VAPID private key (SEC1 PEM, mode 0600) to `--out`,
    /// keeping an existing file; print the public key.
    GenerateVapidKey {
        #[arg(long)]
        out: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::telemetry::init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Run) {
        Cmd::Run => {
            let app = Application::build(&cli.config).await?;
            app.run_until_stopped(infra::shutdown::signal()).await
        }
        Cmd::GenerateVapidKey { out } => generate(&out),
    }
}

/// The public key is the command's output, hence stdout.
#[allow(clippy::print_stdout)]
fn generate(out: &std::path::Path) -> anyhow::Result<()> {
    let key = if out.exists() {
        notifier::load_vapid_key(out)?
    } else {
        let key = notifier::webpush::VapidKey::generate();
        let pem = key.to_pem()?;
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_private(out, pem.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
        key
    };
    println!("{}", key.public_key());
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}
