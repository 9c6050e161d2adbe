//! projector binary: `run` (default) consumes the event topic into the read
//! models; `rebuild [--projection NAME]` recreates projections from the
//! event store; `projections` lists what this build maintains.

use clap::{Parser, Subcommand};
use projector::config::Config;
use projector::Application;

#[derive(Parser)]
#[command(
    version,
    about = "Messenger projector: Kafka to read models, Redis fan-out, rebuilds"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Cmd {
    /// Consume the event topic into the read models (the default).
    Run,
    /// Truncate a projection (all when omitted) and replay the event store
    /// into it, by global position; a running `projector run` carries on
    /// from there without missing or repeating anything.
    Rebuild {
        /// The projection to rebuild (see `projector projections`).
        #[arg(long)]
        projection: Option<String>,
        /// Then keep consuming live, as `run` does.
        #[arg(long)]
        follow: bool,
        /// No progress bar (it is hidden anyway when stderr is no terminal).
        #[arg(long)]
        quiet: bool,
    },
    /// List the registered projections and the tables they own.
    Projections,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::telemetry::init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Run) {
        Cmd::Run => run(&cli.config).await,
        Cmd::Rebuild {
            projection,
            follow,
            quiet,
        } => {
            projector::rebuild(&cli.config, projection.as_deref(), !quiet).await?;
            if follow {
                run(&cli.config).await?;
            }
            Ok(())
        }
        Cmd::Projections => {
            list_projections();
            Ok(())
        }
    }
}

/// The listing is the command's output, hence stdout.
#[allow(clippy::print_stdout)]
fn list_projections() {
    for p in projector::projections::builtin().all() {
        println!("{}\t{}", p.name(), p.tables().join(" "));
    }
}

async fn run(config: &Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run_until_stopped(infra::shutdown::signal()).await
}
