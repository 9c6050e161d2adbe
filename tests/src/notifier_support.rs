//! Support for notifier tests: an in-process notifier (own consumer group,
//! Redis prefix, dead-letter topic, VAPID key), and a push service acting
//! as browser + push service.
//!
//! The push service is a real HTTPS server (axum over tokio-rustls, with
//! the `gateway-https` certificate of the test PKI, which covers `localhost`);
//! the notifier trusts the test CA through `--push-extra-ca-file`. For each
//! request it checks what a push service checks (RFC 8030 headers, the
//! RFC 8292 VAPID JWT's ES256 signature against `k=` and its `aud`, `exp`,
//! `sub` claims) and what a browser does (decrypts the RFC 8291 body with
//! the subscription's private key using the `ece` crate, an implementation
//! independent of the notifier's), and records it. Each endpoint answers
//! 201 unless the test scripted other statuses for it, after a fixed delay
//! and a random one if the test set them (answers then overtake each
//! other, as they do on a real push service).

use crate::running::Running;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use notifier::consumer::Stats;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use proto::notifier::v1::notifier_service_client::NotifierServiceClient;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::harness::{pki, stack, CommandService};

fn unique(tag: &str) -> String {
    format!("{tag}-{}", Uuid::now_v7().simple())
}

/// The SMTP URL services send to (`MESSENGER_SMTP_URL`).
pub fn smtp_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("MESSENGER_SMTP_URL")
            .unwrap_or_else(|_| panic!("MESSENGER_SMTP_URL is not set: run ./dev test"))
    })
}

/// The SMTP sink's HTTP API (`MESSENGER_SMTP_API_URL`).
pub fn smtp_api_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("MESSENGER_SMTP_API_URL")
            .unwrap_or_else(|_| panic!("MESSENGER_SMTP_API_URL is not set: run ./dev test"))
    })
}

/// Mail the sink received for `to`.
pub async fn mail_to(to: &str) -> Result<Vec<crate::smtp_sink::Message>> {
    let url = format!("{}/api/messages", smtp_api_url());
    let resp = reqwest::Client::new()
        .get(url)
        .query(&[("to", to)])
        .send()
        .await?
        .error_for_status()?;
    Ok(resp.json().await?)
}

/// A test's VAPID key file (PEM), written once per process.
pub fn vapid_key_file() -> &'static std::path::Path {
    static FILE: OnceLock<std::path::PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let key = notifier::webpush::VapidKey::generate();
        let path =
            std::env::temp_dir().join(format!("messenger-vapid-{}.pem", Uuid::now_v7().simple()));
        let pem = key
            .to_pem()
            .unwrap_or_else(|e| panic!("encoding the VAPID key: {e}"));
        std::fs::write(&path, pem).unwrap_or_else(|e| panic!("writing the VAPID key: {e}"));
        path
    })
}

/// How to start a test notifier; `None` fields get fresh unique values.
#[derive(Debug, Clone, Default)]
pub struct NotifierOptions {
    pub group_id: Option<String>,
    pub redis_prefix: Option<String>,
    pub dead_letter_topic: Option<String>,
    pub extra_args: Vec<String>,
}

/// The notifier's config for a command-service's database and topic.
pub fn config(svc: &CommandService, opts: &NotifierOptions) -> Result<notifier::config::Config> {
    let pki = pki();
    let mut args: Vec<String> = vec![
        "notifier".into(),
        "--database-url".into(),
        svc.database_url.clone(),
        "--db-pool".into(),
        "16".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--pki-dir".into(),
        pki.to_string_lossy().into_owned(),
        "--kafka-brokers".into(),
        stack().kafka_brokers.clone(),
        "--events-topic".into(),
        svc.topic.clone(),
        "--dead-letter-topic".into(),
        opts.dead_letter_topic
            .clone()
            .unwrap_or_else(|| unique("test-dead-letter")),
        "--group-id".into(),
        opts.group_id.clone().unwrap_or_else(|| unique("notifier")),
        "--redis-url".into(),
        crate::query_support::redis_url().into(),
        "--redis-prefix".into(),
        opts.redis_prefix
            .clone()
            .unwrap_or_else(crate::query_support::unique_prefix),
        "--vapid-private-key-file".into(),
        vapid_key_file().to_string_lossy().into_owned(),
        "--vapid-subject".into(),
        "mailto:tests@messenger.invalid".into(),
        "--push-extra-ca-file".into(),
        pki.join("ca.pem").to_string_lossy().into_owned(),
        // The test push service: `https://localhost:PORT` (the default
        // policy allows only the public push services on public addresses).
        "--push-allowed-hosts".into(),
        "localhost:*".into(),
        "--push-allowed-networks".into(),
        "127.0.0.0/8,::1/128".into(),
        "--smtp-url".into(),
        smtp_url().into(),
        "--poll-ms".into(),
        "50".into(),
        "--push-backoff-ms".into(),
        "200".into(),
        // Short, for the kill test (a crash's claims come back when their
        // lease ends), and still longer than the timeout: a lease ending
        // while its request is in flight would send the push twice.
        "--push-lease-secs".into(),
        "6".into(),
        "--push-timeout-ms".into(),
        "5000".into(),
        "--projection-wait-secs".into(),
        "30".into(),
    ];
    args.extend(opts.extra_args.iter().cloned());
    Ok(infra::cli::parse_from::<notifier::config::Config, _, _>(
        args,
    )?)
}

/// A notifier running in this process.
#[derive(Debug)]
pub struct RunningNotifier {
    pub config: notifier::config::Config,
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    running: Running,
}

impl RunningNotifier {
    pub async fn start(svc: &CommandService, opts: &NotifierOptions) -> Result<Self> {
        Self::start_with(config(svc, opts)?).await
    }

    pub async fn start_with(config: notifier::config::Config) -> Result<Self> {
        crate::projector_support::init_logging();
        let app = notifier::Application::build(&config).await?;
        let addr = app.local_addr();
        let stats = app.stats();
        let running = Running::spawn(|stop| app.run_until_stopped(stop));
        Ok(Self {
            config,
            addr,
            stats,
            running,
        })
    }

    /// A gRPC client presenting the `gateway` certificate (the identity
    /// allowed to act for users).
    pub async fn client(&self) -> Result<NotifierServiceClient<Channel>> {
        self.client_as("gateway").await
    }

    /// A gRPC client presenting certificate `name` from the test PKI.
    pub async fn client_as(&self, name: &str) -> Result<NotifierServiceClient<Channel>> {
        let tls = infra::tls::client(pki(), name, "localhost")?;
        let channel = Endpoint::from_shared(format!("https://localhost:{}", self.addr.port()))?
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(NotifierServiceClient::new(channel))
    }

    /// A crash: the task is aborted, so every future of the notifier is
    /// dropped wherever it is (requests in flight, an open transaction,
    /// uncommitted offsets).
    pub async fn kill(self) {
        self.running.kill().await;
    }

    /// Graceful stop.
    pub async fn stop(self) -> Result<()> {
        self.running.stop().await
    }
}

/// One request the push service received.
#[derive(Debug, Clone)]
pub struct Received {
    pub token: String,
    /// What the push service answered.
    pub status: u16,
    pub at: Instant,
    /// The decrypted payload (when decryption worked).
    pub payload: Option<Value>,
    pub ttl: Option<String>,
    pub urgency: Option<String>,
    pub topic: Option<String>,
    /// Every check that failed (VAPID, headers, decryption); empty = good.
    pub problems: Vec<String>,
    /// The push service's own handling time (checks and decryption, without
    /// a scripted delay): what the harness adds to each request.
    pub handled_in: Duration,
}

/// A browser's subscription, as the push service knows it.
struct Sub {
    keys: ece::EcKeyComponents,
    auth: [u8; 16],
}

/// A scripted answer: status and `Retry-After` seconds.
type Answer = (u16, Option<u64>);

#[derive(Default)]
struct PushState {
    origin: String,
    vapid_public: String,
    subs: Mutex<HashMap<String, Sub>>,
    scripts: Mutex<HashMap<String, VecDeque<Answer>>>,
    received: Mutex<Vec<Received>>,
    /// `Authorization` values whose ES256 signature verified against their
    /// `k=`. The notifier reuses one JWT per origin for hours, so the
    /// signature of each distinct value is checked once (the same bytes
    /// verify the same way); the claims are still checked on every request.
    verified: Mutex<HashSet<String>>,
    /// Added to every answer (a slow push service).
    delay: Mutex<Duration>,
    /// Up to this much more, at random, per answer.
    jitter: Mutex<Duration>,
    arrived: Notify,
}

/// The push service + browser of the tests.
///
/// It runs on its own thread with its own runtime, as a push service is
/// another machine: its TLS, VAPID checks and decryption then never take
/// turns with the notifier on the test's (single-threaded) runtime, which
/// made the burst benchmark measure the harness as much as the notifier.
pub struct PushServer {
    pub addr: SocketAddr,
    state: Arc<PushState>,
    /// Dropping it stops the push service's runtime and its connections.
    stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for PushServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for PushServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A browser's subscription: what it posts to the API.
#[derive(Debug, Clone)]
pub struct BrowserSubscription {
    pub token: String,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}

impl PushServer {
    /// Starts on a free port, expecting pushes signed by the test VAPID key.
    pub async fn start() -> Result<Self> {
        let text = std::fs::read_to_string(vapid_key_file())?;
        let vapid = notifier::webpush::VapidKey::parse(&text)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(PushState {
            origin: format!("https://localhost:{}", addr.port()),
            vapid_public: vapid.public_key().to_owned(),
            ..PushState::default()
        });
        let app = Router::new()
            .route("/push/{token}", post(receive))
            .with_state(state.clone());
        let tls = server_tls()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready) = oneshot::channel::<std::io::Result<()>>();
        std::thread::Builder::new()
            .name("push-service".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => {
                            let _ = ready_tx.send(Ok(()));
                            l
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let serve = async move {
                        loop {
                            let Ok((tcp, _)) = listener.accept().await else {
                                continue;
                            };
                            let tls = tls.clone();
                            let app = app.clone();
                            tokio::spawn(async move {
                                let Ok(stream) = tls.accept(tcp).await else {
                                    return;
                                };
                                let service = hyper_util::service::TowerToHyperService::new(app);
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        () = serve => {}
                    }
                });
                // Dropping the runtime here drops every connection task.
            })?;
        ready.await.context("the push service thread ended")??;
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
        })
    }

    /// A new browser subscription on this push service.
    pub fn subscribe(&self) -> Result<BrowserSubscription> {
        let (pair, auth) = ece::generate_keypair_and_auth_secret()
            .map_err(|e| anyhow::anyhow!("ece keypair: {e}"))?;
        let public = pair
            .pub_as_raw()
            .map_err(|e| anyhow::anyhow!("ece public key: {e}"))?;
        let keys = pair
            .raw_components()
            .map_err(|e| anyhow::anyhow!("ece components: {e}"))?;
        let token = Uuid::now_v7().simple().to_string();
        lock(&self.state.subs).insert(token.clone(), Sub { keys, auth });
        Ok(BrowserSubscription {
            endpoint: format!("https://localhost:{}/push/{token}", self.addr.port()),
            token,
            p256dh: B64.encode(public),
            auth: B64.encode(auth),
        })
    }

    /// The next answers of `token` (then 201 again): (status, Retry-After).
    pub fn script(&self, token: &str, answers: &[(u16, Option<u64>)]) {
        lock(&self.state.scripts).insert(token.to_owned(), answers.iter().copied().collect());
    }

    /// Delays every answer (a slow push service).
    pub fn set_delay(&self, d: Duration) {
        *lock(&self.state.delay) = d;
    }

    /// Delays every answer by a random time up to `max` more (uniform), so
    /// concurrent requests are answered (and recorded) in any order.
    pub fn set_jitter(&self, max: Duration) {
        *lock(&self.state.jitter) = max;
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    pub fn received_by(&self, token: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.token == token)
            .collect()
    }

    /// Waits until `done(received)` holds, or fails after `timeout`.
    ///
    /// `done` sees the list in place (under the lock) and it is copied only
    /// once, at the end: copying it on every arrival made a burst quadratic
    /// (the copy of 6,000 decrypted payloads per push was a quarter of the
    /// benchmark's CPU time).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Result<Vec<Received>> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.arrived.notified();
            let count = {
                let got = lock(&self.state.received);
                if done(&got) {
                    return Ok(got.clone());
                }
                got.len()
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("timed out waiting for {what}; received {count} pushes");
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn server_tls() -> Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    let dir = pki();
    let certs = rustls_pki_types::pem::PemObject::pem_file_iter(dir.join("gateway-https.pem"))
        .context("reading the push service certificate")?
        .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()?;
    let key = <rustls_pki_types::PrivateKeyDer<'static> as rustls_pki_types::pem::PemObject>::from_pem_file(
        dir.join("gateway-https.key"),
    )
    .context("reading the push service key")?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The push service's side of one request.
async fn receive(
    State(state): State<Arc<PushState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let jitter = *lock(&state.jitter);
    let delay = *lock(&state.delay) + jitter.mul_f64(rand::random::<f64>());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let started = Instant::now();
    let mut problems = Vec::new();
    check_vapid(&state, &headers, &mut problems);
    if header(&headers, "content-encoding").as_deref() != Some("aes128gcm") {
        problems.push("Content-Encoding is not aes128gcm".into());
    }
    let payload = {
        let subs = lock(&state.subs);
        match subs.get(&token) {
            None => None,
            Some(sub) => match ece::decrypt(&sub.keys, &sub.auth, &body) {
                Ok(plain) => match serde_json::from_slice::<Value>(&plain) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        problems.push(format!("payload is not JSON: {e}"));
                        None
                    }
                },
                Err(e) => {
                    problems.push(format!("decryption failed: {e}"));
                    None
                }
            },
        }
    };
    let known = lock(&state.subs).contains_key(&token);
    let (status, retry_after) = if !known {
        (404, None)
    } else {
        lock(&state.scripts)
            .get_mut(&token)
            .and_then(VecDeque::pop_front)
            .unwrap_or((201, None))
    };
    lock(&state.received).push(Received {
        token,
        status,
        at: Instant::now(),
        payload,
        ttl: header(&headers, "ttl"),
        urgency: header(&headers, "urgency"),
        topic: header(&headers, "topic"),
        problems,
        handled_in: started.elapsed(),
    });
    state.arrived.notify_waiters();
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match retry_after {
        Some(s) => (code, [("retry-after", s.to_string())]).into_response(),
        None => code.into_response(),
    }
}

/// RFC 8292: `Authorization: vapid t=<JWT>, k=<key>`; ES256 over the
/// JWT with `k`; `aud` = this origin, `exp` within 24 h, `sub` a contact.
fn check_vapid(state: &PushState, headers: &HeaderMap, problems: &mut Vec<String>) {
    let Some(auth) = header(headers, "authorization") else {
        problems.push("no Authorization".into());
        return;
    };
    let Some(rest) = auth.strip_prefix("vapid ") else {
        problems.push("Authorization is not vapid".into());
        return;
    };
    let mut t = None;
    let mut k = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("t=") {
            t = Some(v.to_owned());
        } else if let Some(v) = part.strip_prefix("k=") {
            k = Some(v.to_owned());
        }
    }
    let (Some(t), Some(k)) = (t, k) else {
        problems.push("vapid without t= or k=".into());
        return;
    };
    if k != state.vapid_public {
        problems.push("k= is not the configured VAPID public key".into());
    }
    let Some((input, sig)) = t.rsplit_once('.') else {
        problems.push("JWT without signature".into());
        return;
    };
    let verified = (|| -> Result<()> {
        if !lock(&state.verified).contains(&auth) {
            let public = p256::PublicKey::from_sec1_bytes(&B64.decode(&k)?)?;
            let signature = Signature::from_slice(&B64.decode(sig)?)?;
            VerifyingKey::from(public).verify(input.as_bytes(), &signature)?;
            lock(&state.verified).insert(auth.clone());
        }
        let (h, c) = input.split_once('.').context("JWT without claims")?;
        let header: Value = serde_json::from_slice(&B64.decode(h)?)?;
        if header["alg"] != "ES256" {
            bail!("alg is {}", header["alg"]);
        }
        let claims: Value = serde_json::from_slice(&B64.decode(c)?)?;
        if claims["aud"] != state.origin.as_str() {
            bail!("aud {} is not {}", claims["aud"], state.origin);
        }
        let exp = claims["exp"].as_i64().context("exp missing")?;
        let now = chrono::Utc::now().timestamp();
        if exp <= now || exp > now + 24 * 3600 {
            bail!("exp {exp} not within 24 h of {now}");
        }
        if !claims["sub"]
            .as_str()
            .is_some_and(|s| s.starts_with("mailto:") || s.starts_with("https:"))
        {
            bail!("sub {} is no contact", claims["sub"]);
        }
        Ok(())
    })();
    if let Err(e) = verified {
        problems.push(format!("VAPID: {e:#}"));
    }
}

/// Distinct (token, message_id) pairs answered with 2xx.
pub fn delivered(received: &[Received]) -> HashSet<(String, String)> {
    received
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .filter_map(|r| {
            r.payload
                .as_ref()
                .and_then(|p| p["message_id"].as_str())
                .map(|m| (r.token.clone(), m.to_owned()))
        })
        .collect()
}
