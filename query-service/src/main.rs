//! query-service binary: serves `messenger.query.v1.QueryService` until
//! SIGINT or SIGTERM, then drains in-flight calls.

use clap::Parser;
use query_service::config::Config;
use query_service::Application;

#[derive(Parser)]
#[command(version, about = "Messenger query-service")]
struct Cli {
    #[command(flatten)]
    config: Config,
}

fn main() -> anyhow::Result<()> {
    infra::telemetry::init();
    // Before the runtime's threads start: it may set environment variables.
    infra::cli::accept_renamed_env(query_service::config::RENAMED_ENV);
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let app = Application::build(&cli.config).await?;
    app.run_until_stopped(infra::shutdown::signal()).await
}
