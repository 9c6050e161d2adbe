//! Idle WebSocket capacity of one gateway (issue: Gateway): opens N
//! authenticated WSS sockets (`hello` → `ready`) against a gateway running
//! in another process, keeps them idle (answering the server's pings) and
//! reports the gateway's resident memory per connection, read from
//! `/proc/<pid>/status` (`VmRSS`). Design target: 10,000 idle sockets at
//! ≤ 30 KiB each.
//!
//! Run against the local stack (`./dev up` first; the gateway and this
//! client each need an open-files limit above N, see `ulimit -n` and
//! `/proc/<gateway pid>/limits`):
//!
//! ```text
//! export CARGO_TARGET_DIR=/root/.cache/messenger/target
//! cargo build -p tests --bin ws-idle
//! $CARGO_TARGET_DIR/debug/ws-idle --sockets 10000
//! ```
//!
//! Steps: register and log in `--users` users (the dev gateway rate-limits
//! account endpoints per IP, so few; sockets share their access tokens,
//! several sockets per session being legal); read the gateway's RSS and
//! its `gateway_ws_connections` gauge (`GET /metrics`); open the sockets
//! `--concurrency` at a time (TLS handshakes are CPU-bound), reading RSS
//! half-way and at the end; wait until RSS settles; hold them idle for
//! `--hold` seconds (longer than the server's ping interval, so heartbeats
//! are exercised) and count survivors; close them all and wait until the
//! gauge is back to its value before the run.
//!
//! "KiB per connection" is (RSS with N open − RSS before) / N; the
//! marginal figure (RSS at N − RSS at N/2) / (N/2) leaves out one-time
//! growth (allocator arenas, runtime warm-up). Measure against a freshly
//! started gateway: the allocator keeps the memory of closed sockets
//! (RSS does not fall after the close), so a second run reuses it and
//! understates the cost. Exit status 1 when fewer than N sockets opened or
//! stayed open, or the gauge did not return.
//!
//! Measured (2 shared cores, debug gateway from `./dev up`, fresh, 10,000
//! sockets, 4 users, concurrency 32): all 10,000 open and survive 45 s of
//! heartbeats; 150.8 KiB per socket with tungstenite's default 128 KiB
//! read buffer, 27.4 KiB with the gateway's 4 KiB one; 266–332
//! handshakes/s. The bound is the container's hard open-files limit
//! (20,000) of each process, not memory.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Parser)]
#[command(about = "How many idle WebSockets one gateway holds, and its memory per socket")]
struct Args {
    /// The gateway (https).
    #[arg(long, default_value = "https://localhost:8443")]
    url: String,
    /// CA certificate of the gateway's certificate.
    #[arg(long, default_value = ".dev/pki/ca.pem")]
    ca: PathBuf,
    /// The gateway's pid (default: read from `<dev-dir>/pids/gateway.pid`).
    #[arg(long)]
    pid: Option<u32>,
    /// Directory of ./dev's state (pid files).
    #[arg(long, default_value = ".dev")]
    dev_dir: PathBuf,
    /// Sockets to open.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    sockets: usize,
    /// Handshakes (TCP + TLS + upgrade + hello/ready) in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Users to register; the sockets are spread over their tokens.
    #[arg(long, default_value_t = 4)]
    users: usize,
    /// Seconds the sockets are held idle once all are open.
    #[arg(long, default_value_t = 45)]
    hold: u64,
    /// Longest wait for the gateway's RSS to settle, seconds.
    #[arg(long, default_value_t = 60)]
    settle: u64,
    /// Seconds one socket gets for its handshake and `ready`.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Stop opening sockets after this many failures.
    #[arg(long, default_value_t = 50)]
    max_failures: usize,
}

/// KiB, from a `/proc` status line value.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// The soft and hard open-files limits of a process.
fn nofile(pid: &str) -> Result<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open-files limit")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(3)
        .take(2)
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect();
    match v[..] {
        [soft, hard] => Ok((soft, hard)),
        _ => bail!("unreadable open-files limit: {line}"),
    }
}

/// Raises this process's soft open-files limit to the hard one when it is
/// below `need`, with util-linux `prlimit` (the workspace forbids the
/// `unsafe` a direct `setrlimit` would take).
fn raise_nofile(need: u64) -> Result<u64> {
    let (soft, hard) = nofile("self")?;
    if soft >= need {
        return Ok(soft);
    }
    let pid = std::process::id().to_string();
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status();
    let (soft, _) = nofile("self")?;
    if soft < need {
        eprintln!(
            "warning: open-files limit {soft} (hard {hard}, prlimit: {status:?}) is below the {need} this run needs"
        );
    }
    Ok(soft)
}

fn tls(ca: &Path) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Result<Value> {
    let r = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("POST {url}: {status} {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// Registers and logs in `n` users; their access tokens.
async fn tokens(http: &reqwest::Client, base: &str, n: usize) -> Result<Vec<String>> {
    let run = format!("{:08x}", rand::random::<u32>());
    let mut out = Vec::new();
    for i in 0..n.max(1) {
        let name = format!("idle{run}_{i}");
        let password = format!("idle-test-password-{name}");
        post(
            http,
            format!("{base}/v1/auth/register"),
            json!({"email": format!("{name}@idle.test"), "username": name, "password": password}),
        )
        .await?;
        let login = post(
            http,
            format!("{base}/v1/auth/login"),
            json!({"login": name, "password": password}),
        )
        .await?;
        out.push(
            login["access_token"]
                .as_str()
                .context("login without access_token")?
                .to_owned(),
        );
    }
    Ok(out)
}

/// `gateway_ws_connections` from `GET /metrics`.
async fn gauge(http: &reqwest::Client, base: &str) -> Result<i64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix("gateway_ws_connections "))
        .and_then(|v| v.trim().parse().ok())
        .context("no gateway_ws_connections in /metrics")
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects, sends `hello`, waits for `ready`.
async fn open(
    url: &str,
    token: &str,
    connector: tokio_tungstenite::Connector,
    timeout: Duration,
) -> Result<Ws> {
    let work = async {
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        // Small client buffers: the client's memory is not what is measured,
        // but 10,000 × tungstenite's 128 KiB default read buffer is 1.3 GB.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            false,
            Some(connector),
        )
        .await
        .context("handshake")?;
        ws.send(Message::text(json!({"type": "hello"}).to_string()))
            .await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    match v["type"].as_str() {
                        Some("ready") => return Ok(ws),
                        Some("error") => bail!("error before ready: {v}"),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(c))) => bail!("closed before ready: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("before ready: {e}"),
                None => bail!("stream ended before ready"),
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .context("no ready before the timeout")?
}

/// Keeps one socket idle: reads (tungstenite answers pings while polling)
/// until the server closes it or `stop` fires, then closes it.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>, alive: Arc<AtomicUsize>) {
    let closed_by_server = loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break false,
            m = ws.next() => match m {
                Some(Ok(Message::Close(c))) => {
                    eprintln!("server closed a socket: {c:?}");
                    break true;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    eprintln!("socket error: {e}");
                    break true;
                }
                None => break true,
            },
        }
    };
    alive.fetch_sub(1, Ordering::Relaxed);
    if !closed_by_server {
        let _ = ws.close(None).await;
        // Read until the server's close frame (or give up).
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

/// Waits until the gateway's RSS changes by less than 0.5 % over 5 s (or
/// `max` elapses); the last reading.
async fn settle(pid: u32, max: Duration) -> Result<u64> {
    let start = Instant::now();
    let mut window = vec![rss_kib(pid)?];
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_kib(pid)?;
        window.push(now);
        if window.len() > 6 {
            window.remove(0);
        }
        let (lo, hi) = (
            window.iter().min().copied().unwrap_or(now),
            window.iter().max().copied().unwrap_or(now),
        );
        if window.len() == 6 && (hi - lo) * 200 <= hi {
            return Ok(now);
        }
        if start.elapsed() >= max {
            eprintln!("RSS did not settle within {max:?}");
            return Ok(now);
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = args.url.trim_end_matches('/').to_owned();
    let ws_url = format!(
        "{}/v1/ws",
        base.replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    );
    let pid = match args.pid {
        Some(p) => p,
        None => {
            let file = args.dev_dir.join("pids/gateway.pid");
            std::fs::read_to_string(&file)
                .with_context(|| format!("reading {} (is the gateway up?)", file.display()))?
                .trim()
                .parse()?
        }
    };
    let n = args.sockets;
    let own_limit = raise_nofile(n as u64 + 256)?;
    let (gw_soft, _) = nofile(&pid.to_string())?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    println!(
        "gateway pid {pid} ({}), open-files limit {gw_soft}; client limit {own_limit}",
        exe.display()
    );
    if gw_soft < n as u64 + 64 {
        eprintln!(
            "warning: the gateway's open-files limit {gw_soft} is below N = {n} (+ its own fds)"
        );
    }

    let pem = std::fs::read(&args.ca)?;
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .timeout(Duration::from_secs(30))
        .build()?;
    let tokens = tokens(&http, &base, args.users).await?;
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(tls(&args.ca)?));

    let gauge_before = gauge(&http, &base).await?;
    let rss_before = settle(pid, Duration::from_secs(10)).await?;
    let client_before = rss_kib(std::process::id())?;
    println!(
        "before: gateway RSS {:.1} MiB, gateway_ws_connections {gauge_before}",
        mib(rss_before)
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let alive = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut holders = tokio::task::JoinSet::new();
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let mut first_error: Option<String> = None;
    let mut rss_half = None;
    let timeout = Duration::from_secs(args.timeout);
    let started = Instant::now();
    let mut attempts = futures::stream::iter(0..n)
        .map(|i| {
            let (url, token, connector) = (
                ws_url.clone(),
                tokens[i % tokens.len()].clone(),
                connector.clone(),
            );
            let failures = failures.clone();
            let max_failures = args.max_failures;
            async move {
                if failures.load(Ordering::Relaxed) >= max_failures {
                    return None;
                }
                let t = Instant::now();
                let r = open(&url, &token, connector, timeout).await;
                if r.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                Some((r, t.elapsed()))
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    let mut opened = 0usize;
    while let Some(r) = attempts.next().await {
        let Some((r, took)) = r else { continue };
        match r {
            Ok(ws) => {
                opened += 1;
                hist.record(took.as_millis().max(1) as u64)?;
                alive.fetch_add(1, Ordering::Relaxed);
                holders.spawn(hold(ws, stop_rx.clone(), alive.clone()));
                if opened == n / 2 {
                    rss_half = Some(rss_kib(pid)?);
                }
                if opened % 1000 == 0 {
                    eprintln!(
                        "{opened} open ({:.0}/s), gateway RSS {:.1} MiB",
                        opened as f64 / started.elapsed().as_secs_f64(),
                        mib(rss_kib(pid)?)
                    );
                }
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(format!("{e:#}"));
                    eprintln!("open failed (socket #{}): {e:#}", opened + 1);
                }
            }
        }
    }
    drop(attempts);
    let open_secs = started.elapsed().as_secs_f64();
    let failed = failures.load(Ordering::Relaxed);
    let rss_open = rss_kib(pid)?;
    let rss_settled = settle(pid, Duration::from_secs(args.settle)).await?;
    let gauge_open = gauge(&http, &base).await?;
    println!(
        "opened {opened}/{n} in {open_secs:.1} s ({:.0} handshakes/s at concurrency {}); failures {failed}{}",
        opened as f64 / open_secs,
        args.concurrency,
        first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!(
        "handshake+hello→ready latency ms: p50 {} p90 {} p99 {} max {}",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.9),
        hist.value_at_quantile(0.99),
        hist.max()
    );

    println!("holding {opened} idle sockets for {} s", args.hold);
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let survivors = alive.load(Ordering::Relaxed);
    let rss_held = settle(pid, Duration::from_secs(args.settle)).await?;
    let client_rss = rss_kib(std::process::id())?;

    let per = |rss: u64, count: usize| {
        if count == 0 {
            0.0
        } else {
            rss.saturating_sub(rss_before) as f64 / count as f64
        }
    };
    let marginal =
        rss_half.map(|h| rss_settled.saturating_sub(h) as f64 / (opened - n / 2).max(1) as f64);

    stop_tx.send_replace(true);
    let closing = Instant::now();
    while holders.join_next().await.is_some() {}
    let mut gauge_after = gauge(&http, &base).await?;
    while gauge_after != gauge_before && closing.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        gauge_after = gauge(&http, &base).await?;
    }
    let close_secs = closing.elapsed().as_secs_f64();
    let rss_closed = settle(pid, Duration::from_secs(args.settle)).await?;

    println!();
    println!("| | value |");
    println!("|---|---|");
    println!("| N requested / opened / alive after hold | {n} / {opened} / {survivors} |");
    println!("| gateway RSS before | {:.1} MiB |", mib(rss_before));
    println!(
        "| gateway RSS right after opening | {:.1} MiB |",
        mib(rss_open)
    );
    println!(
        "| gateway RSS settled, N open | {:.1} MiB |",
        mib(rss_settled)
    );
    println!(
        "| gateway RSS after {} s idle | {:.1} MiB |",
        args.hold,
        mib(rss_held)
    );
    println!(
        "| KiB per connection (settled − before) / N | {:.1} |",
        per(rss_settled, opened)
    );
    println!(
        "| KiB per connection after idle hold | {:.1} |",
        per(rss_held, survivors)
    );
    if let Some(m) = marginal {
        println!("| marginal KiB per connection (N/2 → N) | {m:.1} |");
    }
    println!(
        "| handshakes/s (TLS + upgrade + hello/ready, concurrency {}) | {:.0} |",
        args.concurrency,
        opened as f64 / open_secs
    );
    println!(
        "| client RSS before / with N open | {:.1} / {:.1} MiB |",
        mib(client_before),
        mib(client_rss)
    );
    println!(
        "| gateway_ws_connections before / open / after close | {gauge_before} / {gauge_open} / {gauge_after} ({close_secs:.1} s) |"
    );
    println!("| gateway RSS after close | {:.1} MiB |", mib(rss_closed));

    let mut ok = true;
    if opened < n || survivors < opened {
        eprintln!("FAIL: {opened} of {n} opened, {survivors} alive after the hold");
        ok = false;
    }
    if gauge_after != gauge_before {
        eprintln!("FAIL: gateway_ws_connections {gauge_after} after close, {gauge_before} before");
        ok = false;
    }
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
