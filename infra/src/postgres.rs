//! PostgreSQL: the one pool setup, the one set of migrations, and the
//! connection setting every service that touches the database flattens
//! into its `Config`.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The migrations of the whole platform (`migrations/` at the repo root),
/// embedded at compile time (`build.rs` tells cargo to watch the folder).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The database URL. `Debug` is hand-written: the URL may carry a password.
#[derive(Clone, clap::Args)]
pub struct PostgresArgs {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "MESSENGER_DATABASE_URL",
        default_value = "postgres://messenger:messenger@127.0.0.1:55432/messenger"
    )]
    pub database_url: String,
}

impl std::fmt::Debug for PostgresArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresArgs").finish_non_exhaustive()
    }
}

/// A pool of at most `size` connections (at least one) to `url`; waiting
/// for a free connection fails after 10 s.
pub async fn connect(url: &str, size: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().context("parsing the database URL")?;
    PgPoolOptions::new()
        .max_connections(size.max(1))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")
}

/// [`connect`], then [`MIGRATOR`] when `migrate` is set.
pub async fn connect_and_migrate(url: &str, size: u32, migrate: bool) -> anyhow::Result<PgPool> {
    let pool = connect(url, size).await?;
    if migrate {
        MIGRATOR.run(&pool).await.context("applying migrations")?;
    }
    Ok(pool)
}
