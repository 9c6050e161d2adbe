//! gateway: Messenger's public edge. REST and WebSocket (API.md) over
//! HTTPS/WSS, accounts and sessions, calling command-, query- and
//! notifier-service over mutual TLS.
//!
//! # Layout (a code tour, in the order a request travels)
//!
//! - [`config`]: typed settings from flags and environment.
//! - [`Application::build`]: keys, Redis, gRPC channels, the listener;
//!   [`router`] assembles the routes and layers (body limit, panics → 500
//!   problem, metrics, tracing).
//! - [`extract`]: JSON, path and query extractors whose rejections are
//!   problem documents; [`error`]: the one mapping of failures (ours and the
//!   services' gRPC statuses) to RFC 9457 problems.
//! - [`auth`]: PASETO v4.public access tokens, sessions in Redis, the
//!   [`auth::AuthUser`] extractor.
//! - [`ratelimit`]: per-IP and per-account limits on the account
//!   endpoints; [`mail`]: the password-reset mail (SMTP, lettre).
//! - [`routes`]: the REST endpoints, one module per API.md section.
//! - [`ws`]: `GET /v1/ws`: hello, resume, live fan-out from Redis pub/sub,
//!   send/ack, typing, presence, heartbeats.
//! - [`openapi`]: the OpenAPI 3.1 document at `/v1/openapi.json`.
//! - [`metrics`]: Prometheus counters at `/metrics`.
//!
//! # Transport security
//!
//! HTTPS/WSS with rustls by default, using the gateway's certificate from
//! the PKI directory (the dev CA of the local stack). Plain HTTP only with
//! `GATEWAY_PLAINTEXT=true` and a loopback listen address (behind a
//! TLS-terminating proxy on the same host); anything else is refused at
//! start.

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod mail;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod state;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use fred::prelude::ClientLike;
use infra::shutdown::Shutdown;
use proto::command::v1::command_service_client::CommandServiceClient;
use proto::query::v1::query_service_client::QueryServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::auth::tokens::Tokens;
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::{HttpLabels, Metrics};
use crate::state::AppState;

/// A built, not yet serving, gateway.
#[derive(Debug)]
pub struct Application {
    /// Bound before serving so `local_addr` is known (port 0 in tests).
    listener: std::net::TcpListener,
    addr: SocketAddr,
    state: AppState,
    /// Flips the state's shutdown flag.
    stop: Shutdown,
    /// HTTPS certificate and key (PEM); `None` when plaintext.
    tls: Option<(Vec<u8>, Vec<u8>)>,
}

fn channel(config: &Config, url: &str, server_name: &str) -> anyhow::Result<Channel> {
    let tls = infra::tls::client(&config.pki.pki_dir, &config.tls_name, server_name)?;
    Ok(Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("parsing {url}"))?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(config.grpc_timeout_secs.max(1)))
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}

impl Application {
    /// Loads keys and certificates, starts connecting Redis and the
    /// services (lazily: the gateway starts and answers `/readyz` 503 while
    /// they are away), binds the listener.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        // One process-wide crypto provider for rustls (HTTPS and tonic).
        let _ = rustls::crypto::ring::default_provider().install_default();
        if config.plaintext && !config.listen.ip().is_loopback() {
            anyhow::bail!(
                "GATEWAY_PLAINTEXT is only allowed on a loopback address (behind a TLS-terminating proxy), not {}",
                config.listen
            );
        }
        let tokens = Tokens::load_or_create(
            &config.token_key_file,
            config.token_key_create,
            config.access_ttl(),
        )?;
        let redis = infra::redis::builder(&config.redis.redis_url)?
            .with_config(|c| c.fail_fast = true)
            .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
            .with_connection_config(|c| c.internal_command_timeout = Duration::from_secs(2))
            .build_pool(4)
            .context("building the Redis pool")?;
        redis.init().await.context("connecting to Redis")?;
        let command_channel = channel(config, &config.command_service_url, "command-service")?;
        let query_channel = channel(config, &config.query_service_url, "query-service")?;
        let commands = CommandServiceClient::new(command_channel.clone());
        let queries = QueryServiceClient::new(query_channel.clone());
        let notifier = channel(config, &config.notifier_url, "notifier")?;
        let tls = if config.plaintext {
            None
        } else {
            let read = |ext: &str| {
                let path = config
                    .pki
                    .pki_dir
                    .join(format!("{}.{ext}", config.https_name));
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
            };
            Some((read("pem")?, read("key")?))
        };
        let listener = std::net::TcpListener::bind(config.listen)
            .with_context(|| format!("binding {}", config.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Shutdown::new();
        let metrics = Arc::new(Metrics::default());
        let ws = ws::hub::Hub::start(config, metrics.clone(), redis.clone())
            .await
            .context("starting the WebSocket hub")?;
        let state = AppState {
            config: Arc::new(config.clone()),
            commands,
            queries,
            command_channel,
            query_channel,
            notifier,
            redis,
            tokens: Arc::new(tokens),
            metrics,
            ws,
            shutdown: stop.clone(),
        };
        Ok(Self {
            listener,
            addr,
            state,
            stop,
            tls,
        })
    }

    /// Where the gateway listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (tests mint tokens with it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves; then stops accepting, tells open
    /// WebSockets to close (1001), and gives in-flight requests the grace
    /// period to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = router(self.state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let handle = axum_server::Handle::new();
        let grace = Duration::from_secs(self.state.config.shutdown_grace_secs);
        {
            let handle = handle.clone();
            let stop = self.stop;
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutting down");
                stop.trigger();
                handle.graceful_shutdown(Some(grace));
            });
        }
        let header_read = Duration::from_secs(self.state.config.header_read_timeout_secs.max(1));
        tracing::info!(addr = %self.addr, tls = self.tls.is_some(), "gateway listening");
        match self.tls {
            Some((cert, key)) => {
                let tls = axum_server::tls_rustls::RustlsConfig::from_pem(cert, key)
                    .await
                    .context("loading the HTTPS certificate")?;
                let mut server = axum_server::from_tcp_rustls(self.listener, tls)
                    .context("serving HTTPS on the listener")?;
                http_timeouts(server.http_builder(), header_read);
                server.handle(handle).serve(app).await?;
            }
            None => {
                let mut server =
                    axum_server::from_tcp(self.listener).context("serving HTTP on the listener")?;
                http_timeouts(server.http_builder(), header_read);
                server.handle(handle).serve(app).await?;
            }
        }
        self.state.ws.quit().await;
        self.state.redis.quit().await.ok();
        Ok(())
    }
}

/// Connection timeouts hyper applies only when it has a timer, which
/// axum-server does not give it: without one, a client that never finishes
/// its headers holds its connection forever (security review M-6). HTTP/1:
/// the headers of each request (the first, and the next on a kept-alive
/// connection) within `header_read`. HTTP/2: keep-alive pings, and a peer
/// that does not answer them is dropped.
fn http_timeouts(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    header_read: Duration,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(header_read);
}

/// Every route and layer.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .merge(routes::health::router())
        .merge(routes::accounts::router())
        .merge(routes::chat::router())
        .merge(routes::notifications::router())
        .merge(ws::router())
        .merge(openapi::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(axum::middleware::from_fn(close_if_body_unread))
        .layer(axum::middleware::map_response(security_headers))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Headers every response carries unless its route set its own (security
/// review L-1): HTTPS only from now on (HSTS; ignored by browsers over
/// plain HTTP), no MIME sniffing, no framing, no referrer, a CSP that lets
/// an API response load nothing, and no caching (responses carry tokens
/// and private messages).
async fn security_headers(mut response: Response) -> Response {
    use axum::http::header::{
        CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, STRICT_TRANSPORT_SECURITY,
        X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
    };
    use axum::http::HeaderValue;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        ),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (X_FRAME_OPTIONS, "DENY"),
        (REFERRER_POLICY, "no-referrer"),
        (
            CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (CACHE_CONTROL, "no-store"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal(anyhow::anyhow!("a handler panicked")).into_response()
}

/// Answers `Connection: close` when the request had a body that the
/// handler did not read to its end (a 413, a 401 before the body was
/// looked at): hyper cannot reuse such a connection and closes it, and a
/// client must be told so, or its next request on it fails.
async fn close_if_body_unread(request: Request, next: Next) -> Response {
    use axum::body::HttpBody;
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let request = request.map(|body| {
        axum::body::Body::new(TrackedBody {
            inner: body,
            read: read.clone(),
        })
    });
    let mut response = next.run(request).await;
    if !read.load(std::sync::atomic::Ordering::Acquire) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// A request body that records when it was read to its end.
struct TrackedBody {
    inner: axum::body::Body,
    read: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, std::sync::atomic::Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // From a fixed set: a client inventing methods must not mint series.
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
