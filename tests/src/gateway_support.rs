//! Support for gateway tests: the whole platform in-process (command-service
//! with its relay, projector, query-service, gateway) on a test's own
//! database, topic, consumer group and Redis prefix, reached over real
//! HTTPS and WSS that trust the test CA only.

use crate::running::Running;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{pki, CommandService, CommandServiceOptions};
use crate::projector_support::{ProjectorOptions, RunningProjector};
use crate::query_support::{QueryService, QueryServiceOptions};

/// Options of [`Platform::start_with`].
#[derive(Debug, Clone, Default)]
pub struct PlatformOptions {
    /// Extra `--flag value` arguments for the gateway.
    pub gateway_args: Vec<String>,
    /// Extra arguments for command-service.
    pub command_args: Vec<String>,
}

/// A gateway running in this process.
#[derive(Debug)]
pub struct Gateway {
    pub addr: SocketAddr,
    pub state: gateway::state::AppState,
    running: Running,
}

impl Gateway {
    /// Starts a gateway with `config`.
    pub async fn start(config: gateway::config::Config) -> Result<Self> {
        let app = gateway::Application::build(&config).await?;
        let addr = app.local_addr();
        let state = app.state().clone();
        let running = Running::spawn(|stop| app.run_until_stopped(stop));
        Ok(Self {
            addr,
            state,
            running,
        })
    }

    /// Graceful stop.
    pub async fn stop(self) -> Result<()> {
        self.running.stop().await
    }
}

/// The whole platform for one test.
#[derive(Debug)]
pub struct Platform {
    pub commands: CommandService,
    pub projector: RunningProjector,
    pub queries: QueryService,
    pub gateway: Gateway,
    /// Redis prefix shared by projector, query-service and gateway.
    pub prefix: String,
    /// `https://localhost:PORT`
    pub base: String,
    /// An HTTPS client trusting the test CA only.
    pub http: reqwest::Client,
}

/// The test CA as a reqwest certificate.
fn ca_certificate() -> Result<reqwest::Certificate> {
    let pem = std::fs::read(pki().join("ca.pem"))?;
    Ok(reqwest::Certificate::from_pem(&pem)?)
}

/// An HTTPS client that trusts only the test CA.
pub fn https_client() -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca_certificate()?)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// The gateway's config for a test.
pub fn gateway_config(
    commands: &CommandService,
    queries: &QueryService,
    prefix: &str,
    extra: &[String],
) -> Result<gateway::config::Config> {
    let key = std::env::temp_dir().join(format!(
        "messenger-test-token-{}.key",
        uuid::Uuid::now_v7().simple()
    ));
    let smtp =
        std::env::var("MESSENGER_SMTP_URL").unwrap_or_else(|_| "smtp://127.0.0.1:52525".to_owned());
    let mut args: Vec<String> = vec![
        "gateway".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--pki-dir".into(),
        pki().to_string_lossy().into_owned(),
        "--command-service-url".into(),
        format!("https://localhost:{}", commands.addr.port()),
        "--query-service-url".into(),
        format!("https://localhost:{}", queries.addr.port()),
        "--redis-url".into(),
        crate::query_support::redis_url().into(),
        "--redis-prefix".into(),
        prefix.into(),
        "--token-key-file".into(),
        key.to_string_lossy().into_owned(),
        "--smtp-url".into(),
        smtp,
    ];
    args.extend(extra.iter().cloned());
    Ok(infra::cli::parse_from::<gateway::config::Config, _, _>(
        args,
    )?)
}

impl Platform {
    /// Everything with default options.
    pub async fn start() -> Result<Self> {
        Self::start_with(PlatformOptions::default()).await
    }

    /// Fresh database, topic and prefix; starts every service.
    pub async fn start_with(opts: PlatformOptions) -> Result<Self> {
        crate::projector_support::init_logging();
        let commands = CommandService::start(CommandServiceOptions {
            relay: true,
            redis_prefix: None,
            extra_args: opts.command_args.clone(),
        })
        .await?;
        // One prefix for the relay's live frames, the projector's caches
        // and fence, query-service and the gateway.
        let prefix = commands.redis_prefix.clone();
        let projector = RunningProjector::start(&commands, ProjectorOptions::default()).await?;
        let queries = QueryService::start(
            &commands.database_url,
            QueryServiceOptions {
                prefix: Some(prefix.clone()),
                ..Default::default()
            },
        )
        .await?;
        let config = gateway_config(&commands, &queries, &prefix, &opts.gateway_args)?;
        let gateway = Gateway::start(config).await?;
        let base = format!("https://localhost:{}", gateway.addr.port());
        Ok(Self {
            commands,
            projector,
            queries,
            gateway,
            prefix,
            base,
            http: https_client()?,
        })
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `wss://localhost:PORT/v1/ws`
    pub fn ws_url(&self) -> String {
        format!("wss://localhost:{}/v1/ws", self.gateway.addr.port())
    }

    /// Stops everything gracefully, gateway first.
    pub async fn stop(self) -> Result<()> {
        self.gateway.stop().await?;
        self.queries.stop().await?;
        self.projector.stop().await?;
        self.commands.stop().await
    }
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub user_id: String,
    pub username: String,
    pub email: String,
    pub password: String,
    pub access_token: String,
    pub refresh_token: String,
    pub session_id: String,
}

impl Platform {
    /// Registers `username` (email `username@example.test`, password
    /// `correct horse {username}`) and logs in, through the REST API.
    pub async fn user(&self, username: &str) -> Result<TestUser> {
        let email = format!("{username}@example.test");
        let password = format!("correct horse {username}");
        let r = self
            .http
            .post(self.url("/v1/auth/register"))
            .json(&json!({"email": email, "username": username, "password": password}))
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            bail!("register {username}: {} {}", r.status(), r.text().await?);
        }
        let r = self
            .http
            .post(self.url("/v1/auth/login"))
            .json(&json!({"login": username, "password": password}))
            .send()
            .await?;
        if r.status().as_u16() != 200 {
            bail!("login {username}: {} {}", r.status(), r.text().await?);
        }
        let v: Value = r.json().await?;
        let s = |k: &str| -> Result<String> {
            v[k].as_str()
                .map(str::to_owned)
                .with_context(|| format!("login response lacks {k}: {v}"))
        };
        Ok(TestUser {
            user_id: s("user_id")?,
            username: username.to_owned(),
            email,
            password,
            access_token: s("access_token")?,
            refresh_token: s("refresh_token")?,
            session_id: s("session_id")?,
        })
    }
}

impl Platform {
    /// A user created without the accounts endpoints: registered through
    /// command-service (as the gateway would), with a session written to
    /// Redis the way the gateway keeps them and an access token minted by
    /// the gateway's key. For tests of other parts of the API.
    pub async fn user_direct(&self, username: &str) -> Result<TestUser> {
        use fred::prelude::HashesInterface;
        let email = format!("{username}@example.test");
        let password = format!("correct horse {username}");
        let mut commands = self.gateway.state.commands.clone();
        let user_id = commands
            .register_user(proto::command::v1::RegisterUserRequest {
                email: email.clone(),
                username: username.to_owned(),
                password: password.clone(),
                display_name: None,
            })
            .await
            .with_context(|| format!("registering {username}"))?
            .into_inner()
            .user_id;
        let uid = uuid::Uuid::parse_str(&user_id)?;
        let sid = uuid::Uuid::now_v7();
        let now = chrono::Utc::now().to_rfc3339();
        let key = gateway::auth::sessions::session_key(&self.prefix, sid);
        let () = self
            .gateway
            .state
            .redis
            .hset(
                key,
                vec![
                    ("user_id", user_id.clone()),
                    ("created_at", now.clone()),
                    ("last_seen_at", now),
                    ("user_agent", "test".to_owned()),
                ],
            )
            .await?;
        let access_token = self.gateway.state.tokens.issue(uid, sid)?;
        Ok(TestUser {
            user_id,
            username: username.to_owned(),
            email,
            password,
            access_token,
            refresh_token: String::new(),
            session_id: sid.to_string(),
        })
    }
}

impl Platform {
    /// Creates a group owned by `owner` with `members`, through
    /// command-service as the gateway would; its conversation id.
    pub async fn group_direct(&self, owner: &TestUser, members: &[&TestUser]) -> Result<String> {
        let mut c = self.gateway.state.commands.clone();
        Ok(c.create_group(gateway::state::as_user(
            &owner.user_id,
            proto::command::v1::CreateGroupRequest {
                title: "g".into(),
                member_ids: members.iter().map(|m| m.user_id.clone()).collect(),
            },
        ))
        .await?
        .into_inner()
        .conversation_id)
    }

    /// Sends `body` to `conv` as `from` through command-service; its seq.
    pub async fn send_direct(&self, from: &TestUser, conv: &str, body: &str) -> Result<i64> {
        let mut c = self.gateway.state.commands.clone();
        Ok(c.send_message(gateway::state::as_user(
            &from.user_id,
            proto::command::v1::SendMessageRequest {
                conversation_id: conv.into(),
                client_msg_id: uuid::Uuid::now_v7().to_string(),
                body: body.into(),
            },
        ))
        .await?
        .into_inner()
        .seq)
    }
}

/// A WebSocket client over WSS trusting the test CA.
#[derive(Debug)]
pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// A WebSocket TLS connector trusting the dev CA (the gateway's certificate).
fn ws_connector() -> Result<tokio_tungstenite::Connector> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(pki().join("ca.pem"))?;
    for cert in rustls_pki_types_certs(&pem)? {
        roots.add(cert)?;
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_tungstenite::Connector::Rustls(Arc::new(tls)))
}

impl WsClient {
    /// Connects; with `token`, authenticates with the `Authorization` header.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut request = url.into_client_request()?;
        if let Some(t) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        let connector = ws_connector()?;
        let (stream, _) =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
                .await
                .context("WebSocket handshake")?;
        Ok(Self { stream })
    }

    /// Sends a JSON text frame.
    pub async fn send(&mut self, frame: &Value) -> Result<()> {
        self.stream.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// The next JSON text frame (pings and pongs skipped), within `timeout`.
    /// A close frame or end of stream is an error naming the close code.
    pub async fn next(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.stream.next())
                .await
                .context("no frame before the deadline")?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("WebSocket error: {e}"),
                None => bail!("stream ended"),
            }
        }
    }

    /// Frames until one satisfies `pred` (returned), within `timeout`.
    pub async fn next_matching(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.next(left).await?;
            if pred(&v) {
                return Ok(v);
            }
        }
    }
}

impl WsClient {
    /// Reads (skipping text frames) until the server closes; the close
    /// code, or `None` when the stream ended without a close frame.
    pub async fn closed(&mut self, timeout: Duration) -> Result<Option<u16>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.stream.next())
                .await
                .context("no close before the deadline")?;
            match msg {
                Some(Ok(Message::Close(c))) => return Ok(c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ok(None),
            }
        }
    }

    /// Connects (header authentication) over a TCP socket whose receive
    /// buffer is limited to `recv_buffer` bytes, so a client that does not
    /// read stalls the server quickly (slow-consumer tests).
    pub async fn connect_small_buffer(url: &str, token: &str, recv_buffer: u32) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let port = request.uri().port_u16().context("the URL has a port")?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(recv_buffer)?;
        let tcp = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await?;
        let connector = ws_connector()?;
        let (stream, _) =
            tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector))
                .await
                .context("WebSocket handshake")?;
        Ok(Self { stream })
    }

    /// Sends a raw text frame (malformed-input tests).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.stream.send(Message::text(text.to_owned())).await?;
        Ok(())
    }

    /// Sends any frame as is: binary, invalid UTF-8 in a text frame's
    /// place, control frames (fuzzing).
    pub async fn send_raw(&mut self, message: Message) -> Result<()> {
        self.stream.send(message).await?;
        Ok(())
    }
}

fn rustls_pki_types_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    Ok(rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?)
}
