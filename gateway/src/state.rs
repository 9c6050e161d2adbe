//! What every handler shares: configuration, gRPC clients, Redis, keys.

use std::sync::Arc;

use fred::prelude::Pool;
use proto::command::v1::command_service_client::CommandServiceClient;
use proto::query::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;

use crate::auth::tokens::Tokens;
use crate::config::Config;
use crate::metrics::Metrics;

/// Shared state; cheap to clone (every field is a handle).
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// command-service over mutual TLS (a tonic channel multiplexes).
    pub commands: CommandServiceClient<Channel>,
    /// query-service over mutual TLS.
    pub queries: QueryServiceClient<Channel>,
    /// The channels behind `commands` and `queries` (health checks).
    pub command_channel: Channel,
    pub query_channel: Channel,
    /// notifier over mutual TLS (push subscriptions, settings); a lazy
    /// channel, so the gateway starts while the notifier is away.
    pub notifier: Channel,
    /// Redis commands (sessions, rate limits, presence).
    pub redis: Pool,
    /// Access-token keys.
    pub tokens: Arc<Tokens>,
    /// Prometheus registry and counters.
    pub metrics: Arc<Metrics>,
    /// The WebSocket hub: one shared Redis subscriber, local fan-out.
    pub ws: Arc<crate::ws::hub::Hub>,
    /// Flips to true when shutdown starts (WebSockets close with 1001).
    pub shutdown: infra::shutdown::Shutdown,
}

/// Attaches the caller's id to a gRPC request (`x-user-id`, trusted by the
/// services because only mTLS clients reach them).
pub fn as_user<T>(user_id: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(v) = user_id.parse() {
        request.metadata_mut().insert(proto::meta::USER_ID, v);
    }
    request
}
