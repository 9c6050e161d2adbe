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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::telemetry::init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => {
            let app = Application::build(&cli.config).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Cmd::Migrate => {
            let pool = command_service::connect(&cli.config.database_url, 2).await?;
            command_service::MIGRATOR.run(&pool).await?;
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
