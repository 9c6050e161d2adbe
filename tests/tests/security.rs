//! The security review's findings (`../shared/reviews/security.md`, issue
//! 14) against the whole platform in-process, over real HTTPS and WSS:
//! each test names the finding it proves closed. The push SSRF (H-1) is
//! proved in `notifier.rs`, the gRPC caller check (H-2) in
//! `command_service.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;
use tests::gateway_support::{Platform, PlatformOptions, WsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(30);

async fn platform(args: &[&str]) -> Result<Platform> {
    Platform::start_with(PlatformOptions {
        gateway_args: args.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    })
    .await
}

/// A TLS connection to the gateway, trusting the test CA.
async fn tls_connect(
    p: &Platform,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(tests::harness::pki().join("ca.pem"))?;
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let port = p
        .base
        .rsplit(':')
        .next()
        .context("gateway port")?
        .parse::<u16>()?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost")?.to_owned(),
            tcp,
        )
        .await?)
}

/// M-6: a client that never finishes its headers (slowloris) is cut off
/// after the header-read timeout, and so is a WebSocket that never says
/// `hello`; a client that finishes in time is served.
#[tokio::test]
async fn slow_clients_are_cut_off_at_the_header_and_hello_deadlines() -> Result<()> {
    let p = platform(&["--header-read-timeout-secs", "1", "--ws-hello-secs", "1"]).await?;

    let mut slow = tls_connect(&p).await?;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await?;
    slow.flush().await?;
    let started = Instant::now();
    let mut buf = Vec::new();
    // The server closes; whatever it says first (a 408 or nothing), the
    // read ends well before the test's own deadline.
    let read = tokio::time::timeout(T, slow.read_to_end(&mut buf)).await;
    ensure!(
        read.is_ok(),
        "the half-sent request was still open after {T:?}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "cut off only after {:?}",
        started.elapsed()
    );
    let answer = String::from_utf8_lossy(&buf);
    ensure!(
        !answer.contains("200 OK"),
        "the incomplete request was served: {answer}"
    );

    // A whole request on a fresh connection is answered.
    let mut quick = tls_connect(&p).await?;
    quick
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(T, quick.read_to_end(&mut buf)).await??;
    let answer = String::from_utf8_lossy(&buf);
    ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A socket without hello: closed at the hello deadline (1 s here),
    // not at the idle timeout (60 s).
    let mut silent = WsClient::connect(&p.ws_url(), None).await?;
    let started = Instant::now();
    let code = silent.closed(T).await?;
    ensure!(code == Some(4408), "closed with {code:?}");
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "closed only after {:?}",
        started.elapsed()
    );
    p.stop().await
}

/// L-1: every response, success or problem, carries HSTS, `nosniff`, a
/// CSP that loads nothing, no framing, no referrer, and `no-store` (token
/// and message responses must not be cached).
#[tokio::test]
async fn responses_carry_the_security_headers() -> Result<()> {
    let p = Platform::start().await?;
    let user = p.user("helga").await?;
    let login = p
        .http
        .post(p.url("/v1/auth/login"))
        .json(&json!({"login": user.username, "password": user.password}))
        .send()
        .await?;
    let missing = p.http.get(p.url("/v1/nowhere")).send().await?;
    let health = p.http.get(p.url("/healthz")).send().await?;
    for (what, r) in [("login", &login), ("404", &missing), ("health", &health)] {
        let h = r.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        ensure!(
            get("strict-transport-security").starts_with("max-age="),
            "{what}: {h:?}"
        );
        ensure!(get("x-content-type-options") == "nosniff", "{what}: {h:?}");
        ensure!(get("cache-control") == "no-store", "{what}: {h:?}");
        ensure!(
            get("content-security-policy").contains("default-src 'none'"),
            "{what}: {h:?}"
        );
        ensure!(get("x-frame-options") == "DENY", "{what}: {h:?}");
        ensure!(get("referrer-policy") == "no-referrer", "{what}: {h:?}");
    }
    ensure!(login.status().as_u16() == 200 && missing.status().as_u16() == 404);
    p.stop().await
}

/// Says hello with `cursor` and returns the first frame that is not a
/// replayed event.
async fn hello(
    p: &Platform,
    token: &str,
    cursor: Option<i64>,
) -> Result<(WsClient, serde_json::Value)> {
    let mut ws = WsClient::connect(&p.ws_url(), Some(token)).await?;
    let mut frame = json!({"type": "hello"});
    if let Some(c) = cursor {
        frame["cursor"] = json!(c.to_string());
    }
    ws.send(&frame).await?;
    loop {
        let f = ws.next(T).await?;
        if f["type"] != "event" {
            return Ok((ws, f));
        }
    }
}

/// M-7: a resume from a cursor further back than the resume window is
/// refused with `cursor_too_old` (the client re-syncs through REST)
/// instead of replaying the whole log; one within the window replays.
#[tokio::test]
async fn a_resume_from_far_back_is_refused_cheaply() -> Result<()> {
    let p = platform(&["--ws-resume-window", "8"]).await?;
    let ann = p.user_direct("ann").await?;
    let bob = p.user_direct("bob").await?;
    let conv = p.group_direct(&ann, &[&bob]).await?;
    let (mut ws, ready) = hello(&p, &bob.access_token, None).await?;
    ensure!(ready["type"] == "ready", "{ready}");
    for i in 0..12 {
        p.send_direct(&ann, &conv, &format!("m{i}")).await?;
    }
    // The head: the last message's cursor, as it arrives live.
    let last = ws
        .next_matching(T, |f| {
            f["type"] == "event" && f["event"]["data"]["body"] == "m11"
        })
        .await?;
    let head: i64 = last["cursor"].as_str().context("cursor")?.parse()?;
    ensure!(head > 8, "the log is too short for the test: {head}");

    let (mut old, refused) = hello(&p, &bob.access_token, Some(0)).await?;
    ensure!(
        refused["type"] == "error" && refused["code"] == "cursor_too_old",
        "{refused}"
    );
    ensure!(old.closed(T).await? == Some(1008));

    let (_recent, ready) = hello(&p, &bob.access_token, Some(head - 4)).await?;
    ensure!(ready["type"] == "ready", "a recent cursor: {ready}");
    p.stop().await
}

/// M-1: an open socket does not outlive its access token or its session.
/// It closes with `token_expired` (4401) when the token expires unless the
/// client sent a `reauth` frame with a fresh token of the same session;
/// and a session that ends without a revocation message reaching the
/// gateway (here its key is deleted behind the gateway's back) is noticed
/// by the periodic re-check.
#[tokio::test]
async fn sockets_close_at_token_expiry_and_when_the_session_ends_silently() -> Result<()> {
    let p = platform(&["--access-ttl-secs", "5", "--presence-ttl-secs", "3"]).await?;

    // bob's session ends without a message on the revocation channel.
    let bob = p.user("bob").await?;
    let (mut silent, _) = hello(&p, &bob.access_token, None).await?;
    let redis = tests::projector_support::redis().await?;
    let key = format!("{}:session:{}", p.prefix, bob.session_id);
    let removed: i64 = fred::prelude::KeysInterface::del(&redis, &key).await?;
    ensure!(removed == 1, "no session key {key}");
    let started = Instant::now();
    let f = silent.next(T).await?;
    ensure!(f["code"] == "session_revoked", "{f}");
    ensure!(silent.closed(T).await? == Some(4401));
    ensure!(started.elapsed() < Duration::from_secs(10));

    // Tokens live 5 s from here.
    let cat = p.user("cat").await?;
    let ann = p.user("ann").await?;
    let (mut lapsing, ready) = hello(&p, &ann.access_token, None).await?;
    ensure!(ready["type"] == "ready", "{ready}");
    let expires = chrono::DateTime::parse_from_rfc3339(
        ready["expires_at"].as_str().context("ready.expires_at")?,
    )?;
    let (mut renewed, _) = hello(&p, &ann.access_token, None).await?;

    // A refresh (same session) yields a fresh token for `reauth`.
    let r = p
        .http
        .post(p.url("/v1/auth/refresh"))
        .json(&json!({"refresh_token": ann.refresh_token}))
        .send()
        .await?;
    ensure!(r.status().as_u16() == 200, "refresh: {}", r.status());
    let fresh: serde_json::Value = r.json().await?;
    let fresh = fresh["access_token"].as_str().context("access_token")?;
    // Someone else's token is refused and changes nothing.
    renewed
        .send(&json!({"type": "reauth", "access_token": cat.access_token}))
        .await?;
    let f = renewed.next(T).await?;
    ensure!(f["code"] == "session_mismatch", "{f}");
    renewed
        .send(&json!({"type": "reauth", "access_token": fresh}))
        .await?;
    let f = renewed.next(T).await?;
    ensure!(f["type"] == "reauthenticated", "{f}");
    let later = chrono::DateTime::parse_from_rfc3339(f["expires_at"].as_str().context("exp")?)?;
    ensure!(later >= expires, "{later} < {expires}");

    // The socket without reauth closes at expiry, after telling why.
    let f = lapsing.next(T).await?;
    ensure!(f["code"] == "token_expired", "{f}");
    ensure!(lapsing.closed(T).await? == Some(4401));
    // The renewed one is still served.
    renewed.send(&json!({"type": "ping"})).await?;
    ensure!(renewed.next(T).await?["type"] == "pong");
    let _ = fred::prelude::ClientLike::quit(&redis).await;
    p.stop().await
}

async fn login(p: &Platform, user: &tests::gateway_support::TestUser) -> Result<serde_json::Value> {
    let r = p
        .http
        .post(p.url("/v1/auth/login"))
        .json(&json!({"login": user.username, "password": user.password}))
        .send()
        .await?;
    ensure!(r.status().as_u16() == 200, "login: {}", r.status());
    Ok(r.json().await?)
}

async fn refresh(p: &Platform, token: &str) -> Result<(u16, serde_json::Value)> {
    let r = p
        .http
        .post(p.url("/v1/auth/refresh"))
        .json(&json!({"refresh_token": token}))
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

async fn me_status(p: &Platform, access: &str) -> Result<(u16, serde_json::Value)> {
    let r = p
        .http
        .get(p.url("/v1/auth/sessions"))
        .bearer_auth(access)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

/// L-2, L-10: a refresh retried (or run twice at once) within the grace
/// gets the same successor instead of revoking the session, while a
/// rotated token presented later still revokes it; a login beyond the
/// per-user cap revokes the user's oldest session.
#[tokio::test]
async fn refresh_retries_are_forgiven_and_sessions_per_user_are_capped() -> Result<()> {
    let p = platform(&["--max-sessions-per-user", "2"]).await?;
    let ann = p.user("ann").await?;

    // Two refreshes with the same token, concurrently: both succeed with
    // the same successor.
    let (a, b) = tokio::join!(
        refresh(&p, &ann.refresh_token),
        refresh(&p, &ann.refresh_token)
    );
    let ((sa, a), (sb, b)) = (a?, b?);
    ensure!(sa == 200 && sb == 200, "{sa} {a} / {sb} {b}");
    ensure!(a["refresh_token"] == b["refresh_token"], "{a} / {b}");
    let second = a["refresh_token"].as_str().context("refresh_token")?;
    let (s, third) = refresh(&p, second).await?;
    ensure!(s == 200, "{third}");
    // The first token again, now two rotations back: reuse.
    let (s, reused) = refresh(&p, &ann.refresh_token).await?;
    ensure!(s == 401 && reused["code"] == "session_revoked", "{reused}");

    // The cap: the oldest of three sessions goes.
    let first = login(&p, &ann).await?;
    let second = login(&p, &ann).await?;
    let third = login(&p, &ann).await?;
    let access = |v: &serde_json::Value| v["access_token"].as_str().unwrap_or_default().to_owned();
    let (s, gone) = me_status(&p, &access(&first)).await?;
    ensure!(s == 401 && gone["code"] == "session_revoked", "{gone}");
    for v in [&second, &third] {
        let (s, me) = me_status(&p, &access(v)).await?;
        ensure!(s == 200, "{me}");
    }
    p.stop().await
}

/// M-2: refreshes never extend a session past its absolute lifetime.
#[tokio::test]
async fn sessions_end_at_their_absolute_lifetime() -> Result<()> {
    let p = platform(&["--session-max-secs", "2"]).await?;
    let ann = p.user("ann").await?;
    let started = Instant::now();
    let (s, next) = refresh(&p, &ann.refresh_token).await?;
    ensure!(s == 200, "{next}");
    let mut token = next["refresh_token"].as_str().context("token")?.to_owned();
    // Refresh as often as a client may: the session still ends.
    loop {
        let (s, body) = refresh(&p, &token).await?;
        if s == 401 {
            ensure!(
                ["session_expired", "invalid_token"].contains(&body["code"].as_str().unwrap_or("")),
                "{body}"
            );
            break;
        }
        ensure!(s == 200, "{body}");
        ensure!(started.elapsed() < T, "the session outlived its lifetime");
        token = body["refresh_token"].as_str().context("token")?.to_owned();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        started.elapsed() >= Duration::from_millis(1500),
        "ended early: {:?}",
        started.elapsed()
    );
    let (s, me) = me_status(&p, &ann.access_token).await?;
    ensure!(s == 401, "{me}");
    p.stop().await
}
