//! Redis: one reconnect policy and connection timeout for every client.
//! Callers add what differs on purpose (pools, command timeouts, fail-fast,
//! subscriber settings) to the [`builder`] they get.

use std::time::Duration;

use anyhow::Context;
use fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy};

/// A client builder for `url`: reconnects forever with exponential backoff
/// (100 ms doubling to 5 s) and gives a connection attempt 2 s.
pub fn builder(url: &str) -> anyhow::Result<Builder> {
    let config = Config::from_url(url).context("parsing the Redis URL")?;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
    Ok(builder)
}

/// A single connected client of [`builder`]'s settings.
pub async fn connect(url: &str) -> anyhow::Result<fred::prelude::Client> {
    let client = builder(url)?.build().context("building the Redis client")?;
    client.init().await.context("connecting to Redis")?;
    Ok(client)
}
