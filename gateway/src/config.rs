//! Typed configuration, parsed once at start from flags and environment.
//! Every setting has an env var and a documented default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of the gateway. `Debug` is hand-written: URLs may carry
/// passwords.
#[derive(Clone, clap::Args)]
pub struct Config {
    /// HTTPS/WSS listen address (port 0 picks a free port).
    #[arg(long, env = "GATEWAY_ADDR", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Serve plain HTTP instead of HTTPS. Refused unless the listen address
    /// is a loopback one (behind a TLS-terminating proxy on the same host).
    #[arg(long, env = "GATEWAY_PLAINTEXT", default_value_t = false, action = clap::ArgAction::Set)]
    pub plaintext: bool,
    /// Directory with `ca.pem` and the gateway's certificates (`NAME.pem`,
    /// `NAME.key`): its client identity for mutual TLS to the services, and
    /// its public HTTPS certificate.
    #[command(flatten)]
    pub pki: infra::cli::PkiArgs,
    /// Name of the gateway's client certificate (mutual TLS to the
    /// services, which let only this identity act for users).
    #[arg(long, env = "GATEWAY_TLS_NAME", default_value = "gateway")]
    pub tls_name: String,
    /// Name of the public HTTPS certificate. A separate key from the client
    /// identity: the HTTPS key faces the internet (and may sit in a
    /// terminating proxy), the client key opens every service.
    #[arg(long, env = "GATEWAY_HTTPS_NAME", default_value = "gateway-https")]
    pub https_name: String,
    /// command-service gRPC endpoint (mutual TLS).
    #[arg(
        long,
        env = "GATEWAY_COMMAND_SERVICE_URL",
        default_value = "https://localhost:50051"
    )]
    pub command_service_url: String,
    /// query-service gRPC endpoint (mutual TLS).
    #[arg(
        long,
        env = "GATEWAY_QUERY_SERVICE_URL",
        default_value = "https://localhost:50052"
    )]
    pub query_service_url: String,
    /// notifier gRPC endpoint (mutual TLS), for push subscriptions and
    /// notification settings.
    #[arg(
        long,
        env = "GATEWAY_NOTIFIER_URL",
        default_value = "https://localhost:50053"
    )]
    pub notifier_url: String,
    /// Redis: sessions, rate limits, presence, live pub/sub.
    #[command(flatten)]
    pub redis: infra::cli::RedisArgs,
    /// Ed25519 key signing the PASETO v4.public access tokens (64 bytes:
    /// secret seed then public key, base64). Created with mode 0600 when
    /// missing and `token_key_create` is set; every gateway of a deployment
    /// must share it.
    #[arg(
        long,
        env = "GATEWAY_TOKEN_KEY_FILE",
        default_value = ".dev/gateway-token.key"
    )]
    pub token_key_file: PathBuf,
    /// Create the token key file when it does not exist (development).
    #[arg(long, env = "GATEWAY_TOKEN_KEY_CREATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub token_key_create: bool,
    /// Access token lifetime, seconds.
    #[arg(long, env = "GATEWAY_ACCESS_TTL_SECS", default_value_t = 900)]
    pub access_ttl_secs: u64,
    /// Refresh token (and idle session) lifetime, seconds.
    #[arg(long, env = "GATEWAY_REFRESH_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub refresh_ttl_secs: u64,
    /// Absolute session lifetime from login, seconds: refreshes renew the
    /// idle lifetime but never beyond this; then the user logs in again.
    /// 90 days by default, a deliberate choice for a messenger (see
    /// docs/security.md: ASVS L2 suggests 12 h, which would log phones out
    /// daily); lower it where that risk is not accepted.
    #[arg(long, env = "GATEWAY_SESSION_MAX_SECS", default_value_t = 90 * 24 * 3600)]
    pub session_max_secs: u64,
    /// Most sessions per user; a login beyond the cap revokes the user's
    /// oldest session.
    #[arg(long, env = "GATEWAY_MAX_SESSIONS_PER_USER", default_value_t = 50)]
    pub max_sessions_per_user: u32,
    /// How long a just-rotated refresh token still gets the same successor
    /// (a retried request whose answer was lost, two tabs refreshing at
    /// once) instead of counting as reuse, seconds.
    #[arg(long, env = "GATEWAY_REFRESH_GRACE_SECS", default_value_t = 10)]
    pub refresh_grace_secs: u64,
    /// Largest accepted request body, bytes (413 beyond).
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// SMTP server for password-reset mail, as a lettre URL:
    /// `smtp://host:port` (plain, for the local sink),
    /// `smtp://host:port?tls=required` (STARTTLS) or `smtps://host:port`.
    #[arg(
        long,
        env = "GATEWAY_SMTP_URL",
        default_value = "smtp://127.0.0.1:52525"
    )]
    pub smtp_url: String,
    /// Sender of the gateway's mail.
    #[arg(
        long,
        env = "GATEWAY_MAIL_FROM",
        default_value = "Messenger <no-reply@messenger.localhost>"
    )]
    pub mail_from: String,
    /// Public base URL of the web client, for links in mail.
    #[arg(
        long,
        env = "GATEWAY_PUBLIC_URL",
        default_value = "https://localhost:8443"
    )]
    pub public_url: String,
    /// Requests allowed per IP per window on register, login and forgot.
    #[arg(long, env = "GATEWAY_RATE_LIMIT_PER_IP", default_value_t = 20)]
    pub rate_limit_per_ip: u32,
    /// Requests allowed per account (login name or email) per window.
    #[arg(long, env = "GATEWAY_RATE_LIMIT_PER_ACCOUNT", default_value_t = 5)]
    pub rate_limit_per_account: u32,
    /// Rate-limit window, seconds.
    #[arg(long, env = "GATEWAY_RATE_LIMIT_WINDOW_SECS", default_value_t = 60)]
    pub rate_limit_window_secs: u64,
    /// Frames queued to one WebSocket before the connection is closed as a
    /// slow consumer (close code 1008... see ws module).
    #[arg(long, env = "GATEWAY_WS_QUEUE", default_value_t = 1024)]
    pub ws_queue: usize,
    /// Interval between server pings on a WebSocket, seconds.
    #[arg(long, env = "GATEWAY_WS_PING_SECS", default_value_t = 20)]
    pub ws_ping_secs: u64,
    /// A WebSocket with no frame from the client for this long is closed,
    /// seconds (reaps half-open connections).
    #[arg(long, env = "GATEWAY_WS_IDLE_SECS", default_value_t = 60)]
    pub ws_idle_secs: u64,
    /// How long a new WebSocket may take to send its `hello`, seconds:
    /// unauthenticated sockets cost memory and are not rate-limited
    /// otherwise, so this is short.
    #[arg(long, env = "GATEWAY_WS_HELLO_SECS", default_value_t = 10)]
    pub ws_hello_secs: u64,
    /// How long a client may take to send a request's headers (and how long
    /// an idle keep-alive connection stays open), seconds: a client that
    /// never finishes its headers (slowloris) is cut off after this.
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Deadline of every gRPC call to the services, seconds: a stuck
    /// service answers 503 instead of holding the request (and its
    /// connection) forever.
    #[arg(long, env = "GATEWAY_GRPC_TIMEOUT_SECS", default_value_t = 30)]
    pub grpc_timeout_secs: u64,
    /// Furthest back a `hello.cursor` may resume, in log positions: a
    /// replay costs the database work proportional to the positions it
    /// covers, so an older cursor (cursor 0 of a long history) is refused
    /// with `cursor_too_old` and the client re-syncs through REST.
    #[arg(long, env = "GATEWAY_WS_RESUME_WINDOW", default_value_t = 1_000_000)]
    pub ws_resume_window: i64,
    /// Largest accepted WebSocket frame, bytes.
    #[arg(long, env = "GATEWAY_WS_MAX_FRAME_BYTES", default_value_t = 16 * 1024)]
    pub ws_max_frame_bytes: usize,
    /// Interval of the live-path probe (a token published through Redis
    /// that the WebSocket dispatch must see within the same time), ms.
    /// A missed probe makes `/readyz` answer 503; two re-subscribe.
    #[arg(long, env = "GATEWAY_LIVE_PROBE_MS", default_value_t = 2000)]
    pub live_probe_ms: u64,
    /// Presence key lifetime, seconds; refreshed while a socket is open, so
    /// a dead gateway's users go offline within this time.
    #[arg(long, env = "GATEWAY_PRESENCE_TTL_SECS", default_value_t = 60)]
    pub presence_ttl_secs: u64,
    /// How long in-flight requests get to finish on shutdown, seconds.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
}

impl Config {
    /// [`Self::access_ttl_secs`] as a duration.
    pub fn access_ttl(&self) -> Duration {
        Duration::from_secs(self.access_ttl_secs.max(1))
    }
    /// [`Self::refresh_ttl_secs`] as a duration.
    pub fn refresh_ttl(&self) -> Duration {
        Duration::from_secs(self.refresh_ttl_secs.max(1))
    }
    /// [`Self::rate_limit_window_secs`] as a duration.
    pub fn rate_limit_window(&self) -> Duration {
        Duration::from_secs(self.rate_limit_window_secs.max(1))
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("plaintext", &self.plaintext)
            .field("command_service_url", &self.command_service_url)
            .field("query_service_url", &self.query_service_url)
            .field("notifier_url", &self.notifier_url)
            .field("redis", &self.redis)
            .field("access_ttl_secs", &self.access_ttl_secs)
            .finish_non_exhaustive()
    }
}
