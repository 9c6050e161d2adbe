//! The load generator's engine: N users over real WSS (and REST for what a
//! real client does over REST: register, log in, create groups), G groups
//! of size S plus direct chats, sending at a fixed open-loop rate or as fast
//! as acknowledgements come back, and **accounting for every message**.
//!
//! Every message carries a unique `client_msg_id` (`{run}-{n}`). Each
//! member's socket records the `MessageSent` events it receives; at the end
//! every acknowledged message must have reached every member of its
//! conversation (the sender's own socket included) exactly once, and each
//! member must have seen each conversation's `seq` grow by exactly 1.
//! The report counts sent / acknowledged / delivered / missing / duplicated
//! / out of order, latency from send to delivery (HDR histogram), throughput
//! per second, errors by kind, and CPU time and peak memory of the platform
//! processes read from `/proc`.
//!
//! Used by `tests/src/bin/loadgen.rs` (the CLI, `./dev bench`) and by the
//! fault-injection test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `https://host:port` of a gateway.
    pub base_url: String,
    /// CA certificate (PEM) the gateway's certificate chains to.
    pub ca_pem: PathBuf,
    pub users: usize,
    pub groups: usize,
    pub group_size: usize,
    /// Direct conversations between random pairs.
    pub directs: usize,
    /// Messages per second over all users; 0 = as fast as acks come back
    /// (each user keeps `window` sends in flight).
    pub rate: f64,
    /// Unacknowledged sends per user in maximum-rate mode.
    pub window: usize,
    pub duration: Duration,
    /// After sending stops, how long to wait for outstanding deliveries.
    pub drain: Duration,
    /// Processes to account (name, pid); the PostgreSQL postmaster's
    /// children are included with it.
    pub processes: Vec<(String, u32)>,
    /// Show a progress bar.
    pub progress: bool,
    /// Reconnect and resume (with the last cursor) when a socket drops,
    /// instead of counting it as an error and stopping that user.
    pub reconnect: bool,
    /// Created once every socket is ready and sending starts.
    pub ready_file: Option<PathBuf>,
    /// Sending stops when this file exists (or at `duration`, whichever
    /// comes first).
    pub until_file: Option<PathBuf>,
    /// After draining, page through every conversation's history over REST
    /// and count acknowledged messages that are not there.
    pub verify_history: bool,
    /// Send with `POST /v1/conversations/{id}/messages` instead of the
    /// WebSocket `send` frame (deliveries still arrive over WSS).
    pub send_via_rest: bool,
}

/// Latency summary, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// CPU and memory of one process over the run.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessUsage {
    pub name: String,
    pub pid: u32,
    /// User + system CPU time spent during the run, seconds.
    pub cpu_seconds: f64,
    /// Peak resident set (VmHWM), KiB (for PostgreSQL: the postmaster's
    /// plus the largest backend's).
    pub peak_rss_kib: u64,
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    pub t: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub p99_ms: f64,
}

/// The outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub users: usize,
    pub groups: usize,
    pub group_size: usize,
    pub directs: usize,
    pub target_rate: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub acked: u64,
    /// Messages per second acknowledged over the sending period.
    pub acked_per_s: f64,
    /// Deliveries that were expected: members × acknowledged messages.
    pub expected_deliveries: u64,
    /// Distinct (member, message) deliveries seen.
    pub delivered: u64,
    /// Deliveries to members other than the sender per second.
    pub deliveries_per_s: f64,
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Sends refused or failed, by error code.
    pub errors: BTreeMap<String, u64>,
    pub reconnects: u64,
    /// Send to delivery at members other than the sender.
    pub latency: Latency,
    /// Send to acknowledgement.
    pub ack_latency: Latency,
    pub timeline: Vec<Second>,
    pub processes: Vec<ProcessUsage>,
    /// CPU of all platform processes per delivery, microseconds.
    pub platform_cpu_us_per_delivery: f64,
    /// CPU of the load generator itself, seconds.
    pub loadgen_cpu_seconds: f64,
    /// Acknowledged messages missing from history (`verify_history`).
    pub missing_in_history: Option<u64>,
}

// ------------------------------------------------------------ accounting

#[derive(Debug)]
struct Sent {
    at: Instant,
    conv: usize,
    sender: usize,
    acked: bool,
    /// From the acknowledgement.
    message_id: Option<String>,
}

#[derive(Debug, Default)]
struct Books {
    sent: HashMap<String, Sent>,
    /// (member, client_msg_id)
    delivered: HashSet<(usize, String)>,
    duplicated: u64,
    out_of_order: u64,
    /// (member, conversation id) → last seq seen.
    last_seq: HashMap<(usize, String), i64>,
    errors: BTreeMap<String, u64>,
    latency: Option<Histogram<u64>>,
    ack_latency: Option<Histogram<u64>>,
    seconds: BTreeMap<u64, Tally>,
}

/// One second's counts: sent, acknowledged, delivered, latency.
#[derive(Debug, Default)]
struct Tally(u64, u64, u64, Option<Histogram<u64>>);

impl Books {
    fn sec(&mut self, start: Instant) -> &mut Tally {
        let s = start.elapsed().as_secs();
        self.seconds.entry(s).or_default()
    }
}

#[allow(clippy::expect_used)]
fn hist() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits: valid constant bounds.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug)]
struct Shared {
    run: String,
    start: Instant,
    books: Mutex<Books>,
    conv_index: HashMap<String, usize>,
    sending: AtomicBool,
    reconnects: AtomicU64,
    acked: AtomicU64,
    delivered_others: AtomicU64,
}

impl Shared {
    fn error(&self, kind: &str) {
        if let Ok(mut b) = self.books.lock() {
            *b.errors.entry(kind.to_owned()).or_default() += 1;
        }
    }

    /// A frame arrived at `member`'s socket.
    fn on_frame(&self, member: usize, frame: &Value, acks: &AckWaiters) {
        let now = Instant::now();
        match frame["type"].as_str() {
            Some("event") => {
                let ev = &frame["event"];
                let conv = ev["conversation_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let seq = ev["seq"].as_i64().unwrap_or(0);
                let Ok(mut b) = self.books.lock() else { return };
                if self.conv_index.contains_key(&conv) {
                    match b.last_seq.get(&(member, conv.clone())).copied() {
                        Some(last) if seq <= last => {
                            // A repeated frame: counted as duplicate below if
                            // it is a message; otherwise ignore.
                        }
                        Some(last) if seq != last + 1 => {
                            b.out_of_order += 1;
                            b.last_seq.insert((member, conv.clone()), seq);
                        }
                        _ => {
                            b.last_seq.insert((member, conv.clone()), seq);
                        }
                    }
                }
                if ev["event_type"] != "MessageSent" {
                    return;
                }
                let Some(id) = ev["data"]["client_msg_id"].as_str() else {
                    return;
                };
                if !id.starts_with(&self.run) {
                    return;
                }
                if !b.delivered.insert((member, id.to_owned())) {
                    b.duplicated += 1;
                    return;
                }
                let Some(sent) = b.sent.get(id) else { return };
                if sent.sender == member {
                    return;
                }
                let micros = now.duration_since(sent.at).as_micros() as u64;
                let start = self.start;
                if let Some(h) = b.latency.as_mut() {
                    let _ = h.record(micros.max(1));
                }
                let s = b.sec(start);
                s.2 += 1;
                let _ = s.3.get_or_insert_with(hist).record(micros.max(1));
                self.delivered_others.fetch_add(1, Ordering::Relaxed);
            }
            Some("ack") => {
                let id = frame["client_msg_id"].as_str().unwrap_or_default();
                if let Ok(mut b) = self.books.lock() {
                    let start = self.start;
                    let at = match b.sent.get_mut(id) {
                        Some(s) if !s.acked => {
                            s.acked = true;
                            s.message_id = frame["message_id"].as_str().map(str::to_owned);
                            Some(s.at)
                        }
                        _ => None,
                    };
                    if let Some(at) = at {
                        let micros = now.duration_since(at).as_micros() as u64;
                        if let Some(h) = b.ack_latency.as_mut() {
                            let _ = h.record(micros.max(1));
                        }
                        b.sec(start).1 += 1;
                        self.acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                acks.release(member);
            }
            Some("error") => {
                let code = frame["code"].as_str().unwrap_or("unknown").to_owned();
                self.error(&format!("send: {code}"));
                if frame.get("client_msg_id").is_some() {
                    acks.release(member);
                }
            }
            _ => {}
        }
    }
}

/// Per-user in-flight counters for the maximum-rate mode.
#[derive(Debug)]
struct AckWaiters {
    permits: Vec<Arc<tokio::sync::Semaphore>>,
}

impl AckWaiters {
    fn release(&self, member: usize) {
        if let Some(p) = self.permits.get(member) {
            p.add_permits(1);
        }
    }
}

// ---------------------------------------------------------------- client

fn tls_config(ca_pem: &PathBuf) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(ca_pem).with_context(|| format!("reading {}", ca_pem.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

fn http_client(ca_pem: &PathBuf) -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(ca_pem)?;
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()?)
}

async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Result<Value> {
    let mut r = http.post(&url).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.with_context(|| format!("POST {url}"))?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("POST {url}: {status} {text}");
    }
    Ok(if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    })
}

struct User {
    id: String,
    token: String,
}

async fn create_users(cfg: &LoadConfig, http: &reqwest::Client, run: &str) -> Result<Vec<User>> {
    let base = cfg.base_url.clone();
    let results = futures::stream::iter(0..cfg.users)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            let name = format!("lg{run}_{i}");
            async move {
                let password = format!("load-test-password-{name}");
                let email = format!("{name}@load.test");
                post(
                    &http,
                    format!("{base}/v1/auth/register"),
                    None,
                    json!({"email": email, "username": name, "password": password}),
                )
                .await?;
                let login = post(
                    &http,
                    format!("{base}/v1/auth/login"),
                    None,
                    json!({"login": name, "password": password}),
                )
                .await?;
                Ok::<_, anyhow::Error>(User {
                    id: login["user_id"]
                        .as_str()
                        .context("login without user_id")?
                        .to_owned(),
                    token: login["access_token"]
                        .as_str()
                        .context("login without access_token")?
                        .to_owned(),
                })
            }
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// Conversations: groups first (member indices), then directs.
async fn create_conversations(
    cfg: &LoadConfig,
    http: &reqwest::Client,
    users: &[User],
) -> Result<(Vec<String>, Vec<Vec<usize>>)> {
    let n = users.len();
    let mut plan: Vec<Vec<usize>> = Vec::new();
    for g in 0..cfg.groups {
        let members: Vec<usize> = (0..cfg.group_size.min(n))
            .map(|k| (g * cfg.group_size + k) % n)
            .collect();
        plan.push(members);
    }
    for d in 0..cfg.directs {
        let a = (d * 7) % n;
        let b = (a + 1 + d % (n - 1).max(1)) % n;
        if a != b {
            plan.push(vec![a, b]);
        }
    }
    let base = &cfg.base_url;
    let mut ids = Vec::with_capacity(plan.len());
    let mut members_of = Vec::with_capacity(plan.len());
    for (i, members) in plan.into_iter().enumerate() {
        let owner = &users[members[0]];
        let id = if i < cfg.groups {
            let others: Vec<&str> = members[1..].iter().map(|m| users[*m].id.as_str()).collect();
            let r = post(
                http,
                format!("{base}/v1/conversations"),
                Some(&owner.token),
                json!({"title": format!("load group {i}"), "member_ids": others}),
            )
            .await?;
            r["conversation_id"]
                .as_str()
                .context("no conversation_id")?
                .to_owned()
        } else {
            let r = post(
                http,
                format!("{base}/v1/conversations/direct"),
                Some(&owner.token),
                json!({"user_id": users[members[1]].id}),
            )
            .await?;
            r["conversation_id"]
                .as_str()
                .context("no conversation_id")?
                .to_owned()
        };
        if ids.contains(&id) {
            continue; // a direct pair drawn twice
        }
        ids.push(id);
        members_of.push(members);
    }
    Ok((ids, members_of))
}

/// One user's socket: connects, says hello (resuming from its cursor after
/// a drop), forwards queued frames, hands received frames to the books.
#[allow(clippy::too_many_arguments)]
async fn run_socket(
    member: usize,
    url: String,
    token: String,
    tls: Arc<rustls::ClientConfig>,
    shared: Arc<Shared>,
    acks: Arc<AckWaiters>,
    mut outbox: mpsc::Receiver<String>,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    reconnect: bool,
    stop: Arc<AtomicBool>,
) {
    let mut ready = ready;
    let mut cursor: Option<String> = None;
    loop {
        let connect = async {
            let mut request = url.as_str().into_client_request()?;
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
            let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
                request,
                None,
                true,
                Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
            )
            .await?;
            Ok::<_, anyhow::Error>(ws)
        };
        let ws = match connect.await {
            Ok(ws) => ws,
            Err(_) if reconnect && !stop.load(Ordering::Relaxed) => {
                shared.error("connect");
                tokio::time::sleep(Duration::from_millis(200)).await; // back-off between attempts, not readiness
                continue;
            }
            Err(_) => {
                shared.error("connect");
                return;
            }
        };
        let (mut tx, mut rx) = ws.split();
        let mut hello = json!({"type": "hello"});
        if let Some(c) = &cursor {
            hello["cursor"] = json!(c);
        }
        if tx.send(Message::text(hello.to_string())).await.is_err() {
            shared.error("hello");
            if reconnect {
                continue;
            } else {
                return;
            }
        }
        loop {
            tokio::select! {
                frame = rx.next() => {
                    match frame {
                        Some(Ok(Message::Text(t))) => {
                            let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                                shared.error("bad frame");
                                continue;
                            };
                            match v["type"].as_str() {
                                Some("ready") => {
                                    if let Some(c) = v["cursor"].as_str() {
                                        cursor.get_or_insert_with(|| c.to_owned());
                                    }
                                    if let Some(r) = ready.take() {
                                        let _ = r.send(());
                                    }
                                }
                                Some("event") => {
                                    if let Some(c) = v["cursor"].as_str() {
                                        cursor = Some(c.to_owned());
                                    }
                                }
                                _ => {}
                            }
                            shared.on_frame(member, &v, &acks);
                        }
                        Some(Ok(Message::Close(f))) => {
                            // Why the server closed it (1008 slow consumer,
                            // 4408 idle, 1001 shutdown...), counted by code.
                            let code = f.map_or(1005, |f| u16::from(f.code));
                            shared.error(&format!("closed by server {code}"));
                            break;
                        }
                        None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    }
                }
                out = outbox.recv() => {
                    match out {
                        Some(text) => {
                            if tx.send(Message::text(text)).await.is_err() {
                                break;
                            }
                        }
                        None => {
                            // The run is over.
                            let _ = tx.send(Message::Close(None)).await;
                            return;
                        }
                    }
                }
            }
        }
        // The socket dropped.
        if stop.load(Ordering::Relaxed) {
            return;
        }
        shared.error("socket dropped");
        if !reconnect {
            return;
        }
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

// ------------------------------------------------------------- /proc

fn clock_ticks() -> f64 {
    100.0 // USER_HZ on Linux
}

/// (utime + stime, cutime + cstime) in ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some((n(11) + n(12), n(13) + n(14)))
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.split_whitespace().nth(1) == Some(&pid.to_string()))
                })
                .unwrap_or(false)
        })
        .collect()
}

fn hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Total CPU ticks of a process and (for the postmaster) its children,
/// living and reaped.
fn tree_ticks(pid: u32) -> u64 {
    let (own, reaped) = cpu_ticks(pid).unwrap_or((0, 0));
    let kids: u64 = children(pid)
        .iter()
        .filter_map(|c| cpu_ticks(*c))
        .map(|(o, r)| o + r)
        .sum();
    own + reaped + kids
}

fn tree_hwm(pid: u32) -> u64 {
    hwm_kib(pid) + children(pid).iter().map(|c| hwm_kib(*c)).max().unwrap_or(0)
}

// ------------------------------------------------------------------ run

/// Sets up users and conversations, runs the load, drains, reports.
pub async fn run(cfg: LoadConfig) -> Result<Report> {
    if cfg.users < 2 || cfg.group_size < 2 {
        bail!("at least 2 users and groups of at least 2");
    }
    let run = format!("{:08x}", rand::random::<u32>());
    let http = http_client(&cfg.ca_pem)?;
    let tls = tls_config(&cfg.ca_pem)?;
    let users = create_users(&cfg, &http, &run)
        .await
        .context("creating users")?;
    let (conv_ids, members) = create_conversations(&cfg, &http, &users)
        .await
        .context("creating conversations")?;
    let conv_index = conv_ids
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), i))
        .collect();
    let shared = Arc::new(Shared {
        run: run.clone(),
        start: Instant::now(),
        books: Mutex::new(Books {
            latency: Some(hist()),
            ack_latency: Some(hist()),
            ..Default::default()
        }),
        conv_index,
        sending: AtomicBool::new(true),
        reconnects: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        delivered_others: AtomicU64::new(0),
    });
    let window = cfg.window.max(1);
    let acks = Arc::new(AckWaiters {
        permits: (0..users.len())
            .map(|_| Arc::new(tokio::sync::Semaphore::new(window)))
            .collect(),
    });
    let ws_url = format!(
        "{}/v1/ws",
        cfg.base_url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut outboxes = Vec::new();
    let mut sockets = Vec::new();
    let mut readies = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<String>(4096);
        let (rtx, rrx) = tokio::sync::oneshot::channel();
        outboxes.push(tx);
        readies.push(rrx);
        sockets.push(tokio::spawn(run_socket(
            i,
            ws_url.clone(),
            u.token.clone(),
            tls.clone(),
            shared.clone(),
            acks.clone(),
            rx,
            Some(rtx),
            cfg.reconnect,
            stop.clone(),
        )));
    }
    for r in readies {
        tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .context("a socket did not become ready")?
            .context("a socket ended before ready")?;
    }
    // Which conversations each user sends into.
    let mut convs_of: Vec<Vec<usize>> = vec![Vec::new(); users.len()];
    for (c, ms) in members.iter().enumerate() {
        for m in ms {
            convs_of[*m].push(c);
        }
    }
    let cpu_before: Vec<u64> = cfg.processes.iter().map(|(_, p)| tree_ticks(*p)).collect();
    let self_before = cpu_ticks(std::process::id()).map_or(0, |(o, _)| o);
    let bar = cfg.progress.then(|| {
        let b = indicatif::ProgressBar::new(cfg.duration.as_secs());
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    // ---- send
    let started = Instant::now();
    let mut n: u64 = 0;
    let mut rng_state: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(rand::random::<u32>());
    let mut next_rand = move || {
        // xorshift: cheap, no allocation, good enough to spread senders.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let senders: Vec<usize> = (0..users.len())
        .filter(|u| !convs_of[*u].is_empty())
        .collect();
    let mut last_tick = 0;
    if let Some(f) = &cfg.ready_file {
        std::fs::write(f, b"ready\n").with_context(|| format!("writing {}", f.display()))?;
    }
    while started.elapsed() < cfg.duration && !cfg.until_file.as_ref().is_some_and(|f| f.exists()) {
        let sender = senders[(next_rand() % senders.len() as u64) as usize];
        if cfg.rate > 0.0 {
            let due = started + Duration::from_secs_f64(n as f64 / cfg.rate);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep_until(due.into()).await; // open-loop pacing, not readiness
            }
        } else {
            let permit = acks.permits[sender].clone();
            match tokio::time::timeout(Duration::from_secs(5), permit.acquire_owned()).await {
                Ok(Ok(p)) => p.forget(),
                _ => {
                    shared.error("ack timeout");
                    continue;
                }
            }
        }
        let conv = convs_of[sender][(next_rand() % convs_of[sender].len() as u64) as usize];
        let id = format!("{run}-{n}");
        let frame = json!({
            "type": "send",
            "conversation_id": conv_ids[conv],
            "client_msg_id": id,
            "body": format!("load message {n}"),
        })
        .to_string();
        if let Ok(mut b) = shared.books.lock() {
            b.sent.insert(
                id,
                Sent {
                    at: Instant::now(),
                    conv,
                    sender,
                    acked: false,
                    message_id: None,
                },
            );
            let start = shared.start;
            b.sec(start).0 += 1;
        }
        if cfg.send_via_rest {
            let (http, shared, acks) = (http.clone(), shared.clone(), acks.clone());
            let url = format!(
                "{}/v1/conversations/{}/messages",
                cfg.base_url, conv_ids[conv]
            );
            let token = users[sender].token.clone();
            let id = format!("{run}-{n}");
            tokio::spawn(async move {
                let body = json!({"client_msg_id": id, "body": format!("load message {id}")});
                let frame = match http.post(&url).bearer_auth(&token).json(&body).send().await {
                    Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                        Ok(v) => {
                            json!({"type": "ack", "client_msg_id": id, "message_id": v["message_id"]})
                        }
                        Err(_) => {
                            json!({"type": "error", "client_msg_id": id, "code": "bad_response"})
                        }
                    },
                    Ok(r) => {
                        json!({"type": "error", "client_msg_id": id, "code": format!("http_{}", r.status().as_u16())})
                    }
                    Err(_) => {
                        json!({"type": "error", "client_msg_id": id, "code": "http_transport"})
                    }
                };
                shared.on_frame(sender, &frame, &acks);
            });
        } else if outboxes[sender].try_send(frame).is_err() {
            shared.error("client outbox full");
        }
        n += 1;
        if let Some(b) = &bar {
            let s = started.elapsed().as_secs();
            if s != last_tick {
                last_tick = s;
                b.set_position(s);
                b.set_message(format!(
                    "sent {n} acked {} delivered {}",
                    shared.acked.load(Ordering::Relaxed),
                    shared.delivered_others.load(Ordering::Relaxed)
                ));
            }
        }
    }
    let send_elapsed = started.elapsed();
    shared.sending.store(false, Ordering::Relaxed);
    // ---- drain: until every acknowledged message reached every member, or
    // the drain time is up.
    let deadline = Instant::now() + cfg.drain;
    loop {
        let (expected, got) = {
            let b = shared
                .books
                .lock()
                .map_err(|_| anyhow::anyhow!("books poisoned"))?;
            let expected: u64 = b
                .sent
                .values()
                .filter(|s| s.acked)
                .map(|s| members[s.conv].len() as u64)
                .sum();
            (expected, b.delivered.len() as u64)
        };
        if got >= expected
            && n > 0
            && shared.acked.load(Ordering::Relaxed) + errors_total(&shared) >= n
        {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling the books with a deadline
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let cpu_after: Vec<u64> = cfg.processes.iter().map(|(_, p)| tree_ticks(*p)).collect();
    let self_after = cpu_ticks(std::process::id()).map_or(0, |(o, _)| o);
    stop.store(true, Ordering::Relaxed);
    drop(outboxes);
    for s in sockets {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    // ---- history: every acknowledged message must be there.
    let missing_in_history = if cfg.verify_history {
        let mut in_history: HashSet<String> = HashSet::new();
        // Deliveries no longer wait for the read models (ADR 0006): a
        // read the projector cannot answer yet is a 503, retried here
        // until the drain time is up, as any client would.
        let retry_until = Instant::now() + cfg.drain;
        for (c, id) in conv_ids.iter().enumerate() {
            let token = &users[members[c][0]].token;
            let mut after = 0i64;
            loop {
                let url = format!(
                    "{}/v1/conversations/{id}/messages?after_seq={after}&limit=200",
                    cfg.base_url
                );
                let response = http.get(&url).bearer_auth(token).send().await?;
                if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    && Instant::now() < retry_until
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let page: Value = response.error_for_status()?.json().await?;
                let msgs = page["messages"].as_array().cloned().unwrap_or_default();
                for m in &msgs {
                    if let Some(mid) = m["message_id"].as_str() {
                        in_history.insert(mid.to_owned());
                    }
                    after = after.max(m["seq"].as_i64().unwrap_or(after));
                }
                if msgs.is_empty() || page["has_more"] != true {
                    break;
                }
            }
        }
        let b = shared
            .books
            .lock()
            .map_err(|_| anyhow::anyhow!("books poisoned"))?;
        Some(
            b.sent
                .values()
                .filter(|s| s.acked)
                .filter(|s| {
                    !s.message_id
                        .as_ref()
                        .is_some_and(|m| in_history.contains(m))
                })
                .count() as u64,
        )
    } else {
        None
    };
    // ---- report
    let b = shared
        .books
        .lock()
        .map_err(|_| anyhow::anyhow!("books poisoned"))?;
    let mut expected = 0u64;
    let mut missing = 0u64;
    let mut acked = 0u64;
    for (id, s) in &b.sent {
        if !s.acked {
            continue;
        }
        acked += 1;
        for m in &members[s.conv] {
            expected += 1;
            if !b.delivered.contains(&(*m, id.clone())) {
                missing += 1;
            }
        }
    }
    let delivered_others = shared.delivered_others.load(Ordering::Relaxed);
    let processes: Vec<ProcessUsage> = cfg
        .processes
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|((name, pid), (a, z))| ProcessUsage {
            name: name.clone(),
            pid: *pid,
            cpu_seconds: z.saturating_sub(*a) as f64 / clock_ticks(),
            peak_rss_kib: tree_hwm(*pid),
        })
        .collect();
    let platform_cpu: f64 = processes.iter().map(|p| p.cpu_seconds).sum();
    let timeline = b
        .seconds
        .iter()
        .map(|(t, Tally(s, a, d, h))| Second {
            t: *t,
            sent: *s,
            acked: *a,
            delivered: *d,
            p99_ms: h
                .as_ref()
                .map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0),
        })
        .collect();
    let secs = send_elapsed.as_secs_f64().max(1e-9);
    Ok(Report {
        users: users.len(),
        groups: cfg.groups,
        group_size: cfg.group_size,
        directs: cfg.directs,
        target_rate: cfg.rate,
        duration_s: secs,
        sent: n,
        acked,
        acked_per_s: acked as f64 / secs,
        expected_deliveries: expected,
        delivered: b.delivered.len() as u64,
        deliveries_per_s: delivered_others as f64 / secs,
        missing,
        duplicated: b.duplicated,
        out_of_order: b.out_of_order,
        errors: b.errors.clone(),
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        latency: b.latency.as_ref().map(Latency::of).unwrap_or_default(),
        ack_latency: b.ack_latency.as_ref().map(Latency::of).unwrap_or_default(),
        timeline,
        processes,
        platform_cpu_us_per_delivery: if delivered_others > 0 {
            platform_cpu * 1e6 / delivered_others as f64
        } else {
            0.0
        },
        loadgen_cpu_seconds: self_after.saturating_sub(self_before) as f64 / clock_ticks(),
        missing_in_history,
    })
}

fn errors_total(shared: &Shared) -> u64 {
    shared
        .books
        .lock()
        .map(|b| {
            b.errors
                .iter()
                .filter(|(k, _)| k.starts_with("send"))
                .map(|(_, v)| *v)
                .sum()
        })
        .unwrap_or(0)
}

impl Report {
    /// A Markdown table of the headline figures.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| {
            s.push_str(&format!("| {k} | {v} |\n"));
        };
        row(
            "workload",
            format!(
                "{} users, {} groups of {}, {} directs",
                self.users, self.groups, self.group_size, self.directs
            ),
        );
        row(
            "target rate",
            if self.target_rate > 0.0 {
                format!("{:.0} msg/s", self.target_rate)
            } else {
                "maximum".into()
            },
        );
        row(
            "sent / acknowledged",
            format!(
                "{} / {} ({:.0} msg/s acknowledged)",
                self.sent, self.acked, self.acked_per_s
            ),
        );
        row(
            "deliveries expected / seen",
            format!(
                "{} / {} ({:.0} deliveries/s to others)",
                self.expected_deliveries, self.delivered, self.deliveries_per_s
            ),
        );
        row(
            "missing / duplicated / out of order",
            format!(
                "{} / {} / {}",
                self.missing, self.duplicated, self.out_of_order
            ),
        );
        row(
            "send→delivery ms p50/p90/p99/p99.9/max",
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1} / {:.1}",
                self.latency.p50,
                self.latency.p90,
                self.latency.p99,
                self.latency.p999,
                self.latency.max
            ),
        );
        row(
            "send→ack ms p50/p99",
            format!("{:.1} / {:.1}", self.ack_latency.p50, self.ack_latency.p99),
        );
        row("errors", format!("{:?}", self.errors));
        row("reconnects", self.reconnects.to_string());
        if let Some(m) = self.missing_in_history {
            row("acknowledged but missing from history", m.to_string());
        }
        for p in &self.processes {
            row(
                &format!("CPU s / peak RSS MiB: {}", p.name),
                format!(
                    "{:.1} / {:.0}",
                    p.cpu_seconds,
                    p.peak_rss_kib as f64 / 1024.0
                ),
            );
        }
        row(
            "platform CPU per delivery",
            format!("{:.0} µs", self.platform_cpu_us_per_delivery),
        );
        row(
            "load generator CPU",
            format!("{:.1} s", self.loadgen_cpu_seconds),
        );
        format!("| figure | value |\n|---|---|\n{s}")
    }
}
