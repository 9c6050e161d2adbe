//! command-service binary: `serve` (default), `migrate`, and operator
//! commands (`grant-role`, `revoke-role`).

use clap::{Parser, Subcommand};
use command_service::config::Config;
use command_service::store::CommandMeta;
use command_service::Application;

#[derive(Parser)]
#[command(version, about = "Messenger command-service")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve gRPC and run the relay (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Grant a platform role (e.g. auditor) to a user.
    GrantRole { user_id: String, role: String },
    /// Revoke a platform role.
    RevokeRole { user_id: String, role: String },
}

fn main() -> anyhow::Result<()> {
    infra::telemetry::init();
    // Before the runtime's threads start: it may set environment variables.
    infra::cli::accept_renamed_env(command_service::config::RENAMED_ENV);
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => {
            let app = Application::build(&cli.config).await?;
            app.run_until_stopped(infra::shutdown::signal()).await
        }
        Cmd::Migrate => {
            infra::postgres::connect_and_migrate(&cli.config.postgres.database_url, 2, true)
                .await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Cmd::GrantRole { user_id, role } => operator_role(&cli.config, &user_id, &role, true).await,
        Cmd::RevokeRole { user_id, role } => {
            operator_role(&cli.config, &user_id, &role, false).await
        }
    }
}

async fn operator_role(
    config: &Config,
    user_id: &str,
    role: &str,
    grant: bool,
) -> anyhow::Result<()> {
    let mut config = config.clone();
    config.relay = false;
    config.listen = "127.0.0.1:0".parse()?;
    let app = Application::build(&config).await?;
    app.commands()
        .set_role(
            user_id,
            role,
            grant,
            &CommandMeta::new(domain::envelope::SYSTEM_ACTOR, None),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(user_id, role, grant, "role updated");
    Ok(())
}
