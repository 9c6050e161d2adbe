//! gateway binary: serves HTTPS/WSS until SIGINT or SIGTERM, then drains.

use clap::Parser;
use gateway::config::Config;
use gateway::Application;

#[derive(Parser)]
#[command(version, about = "Messenger gateway (REST + WebSocket)")]
struct Cli {
    #[command(flatten)]
    config: Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::telemetry::init();
    let cli = Cli::parse();
    let app = Application::build(&cli.config).await?;
    app.run_until_stopped(infra::shutdown::signal()).await
}
