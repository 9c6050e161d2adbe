//! Hostile input against the whole platform in-process (command-service +
//! relay, Kafka, projector, Redis pub/sub, query-service, gateway) over real
//! HTTPS and WSS: what one user sends must never reach another user's
//! delivery, and every refusal is a problem document or an error frame.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fred::prelude::ClientLike;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tests::gateway_support::{Platform, PlatformOptions, TestUser, WsClient};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(30);

async fn platform(args: &[&str]) -> Result<Platform> {
    Platform::start_with(PlatformOptions {
        gateway_args: args.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    })
    .await
}

/// Connects with the header, says `hello` (with `cursor`), and returns the
/// socket and the first frame that is not a replayed event.
async fn hello(p: &Platform, u: &TestUser, cursor: Option<Value>) -> Result<(WsClient, Value)> {
    let mut ws = WsClient::connect(&p.ws_url(), Some(&u.access_token)).await?;
    let mut frame = json!({"type": "hello"});
    if let Some(c) = cursor {
        frame["cursor"] = c;
    }
    ws.send(&frame).await?;
    loop {
        let f = ws.next(T).await?;
        if f["type"] != "event" {
            return Ok((ws, f));
        }
    }
}

fn cursor_of(ready: &Value) -> Result<i64> {
    ensure!(ready["type"] == "ready", "expected ready, got {ready}");
    Ok(ready["cursor"].as_str().context("ready.cursor")?.parse()?)
}

/// Waits for `body` to arrive live on `ws` as a MessageSent of `conv`.
async fn receives(ws: &mut WsClient, conv: &str, body: &str) -> Result<Value> {
    ws.next_matching(T, |f| {
        f["type"] == "event"
            && f["event"]["conversation_id"] == conv
            && f["event"]["event_type"] == "MessageSent"
            && f["event"]["data"]["body"] == body
    })
    .await
    .with_context(|| format!("{body:?} did not arrive live"))
}

#[tokio::test]
async fn a_cursor_beyond_the_head_is_refused_and_stops_no_one_elses_live_delivery() -> Result<()> {
    let p = Platform::start().await?;
    let ann = p.user_direct("ann").await?;
    let bob = p.user_direct("bob").await?;
    let conv = p.group_direct(&ann, &[&bob]).await?;
    p.send_direct(&ann, &conv, "before").await?;
    let (_first, ready) = hello(&p, &ann, None).await?;
    let head = cursor_of(&ready)?;

    // The frame that stopped live delivery for a whole gateway, and a
    // cursor merely ahead of the log: refused, the socket closed.
    for cursor in [
        json!("9223372036854775807"),
        json!(i64::MAX),
        json!((head + 1_000).to_string()),
    ] {
        let (mut ws, refused) = hello(&p, &ann, Some(cursor.clone())).await?;
        ensure!(
            refused["type"] == "error" && refused["code"] == "cursor_ahead",
            "cursor {cursor}: {refused}"
        );
        assert_eq!(ws.closed(T).await?, Some(1008), "cursor {cursor}");
    }

    // Everyone else still starts at the real head and gets live events.
    let (mut bobs, ready) = hello(&p, &bob, None).await?;
    let bob_head = cursor_of(&ready)?;
    ensure!(
        (head..head + 1_000).contains(&bob_head),
        "bob starts at {bob_head}, the head was {head}"
    );
    p.send_direct(&ann, &conv, "after").await?;
    receives(&mut bobs, &conv, "after").await?;
    // A cursor the server gave out still resumes.
    let (mut again, f) = hello(&p, &bob, Some(json!(bob_head.to_string()))).await?;
    ensure!(f["type"] == "event" || f["type"] == "ready", "{f}");
    p.send_direct(&ann, &conv, "later").await?;
    receives(&mut again, &conv, "later").await?;
    p.stop().await
}

/// `/readyz` as (status, body).
async fn readyz(p: &Platform) -> Result<(u16, Value)> {
    let r = p.http.get(p.url("/readyz")).send().await?;
    Ok((r.status().as_u16(), r.json().await?))
}

async fn wait_ready(p: &Platform, want: bool) -> Result<Value> {
    let deadline = Instant::now() + T;
    loop {
        let (status, body) = readyz(p).await?;
        if (status == 200) == want && body["live_path"] == want {
            return Ok(body);
        }
        if Instant::now() > deadline {
            bail!("readyz never became {want}: {status} {body}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn metrics(p: &Platform) -> Result<String> {
    Ok(p.http.get(p.url("/metrics")).send().await?.text().await?)
}

#[tokio::test]
async fn readiness_proves_the_live_path_and_the_gateway_heals_it() -> Result<()> {
    let p = platform(&["--live-probe-ms", "200"]).await?;
    let ann = p.user_direct("ann").await?;
    let bob = p.user_direct("bob").await?;
    let conv = p.group_direct(&ann, &[&bob]).await?;
    let body = wait_ready(&p, true).await?;
    ensure!(body["status"] == "ready", "{body}");
    ensure!(metric(&metrics(&p).await?, "gateway_live_path_up") == Some(1.0));
    let (mut bobs, _) = hello(&p, &bob, None).await?;
    p.send_direct(&ann, &conv, "one").await?;
    receives(&mut bobs, &conv, "one").await?;

    // Every subscription lost behind the hub's back (the connection up,
    // nothing arriving): not ready, then healed without a restart.
    p.gateway.state.ws.break_subscriptions().await?;
    let down = wait_ready(&p, false).await?;
    ensure!(down["status"] == "not_ready", "{down}");
    wait_ready(&p, true).await?;
    let text = metrics(&p).await?;
    ensure!(
        metric(&text, "gateway_live_path_heals_total").is_some_and(|n| n >= 1.0),
        "no heal counted:\n{text}"
    );
    // bob's socket, open all along, gets what is sent now.
    p.send_direct(&ann, &conv, "two").await?;
    receives(&mut bobs, &conv, "two").await?;

    // The subscriber connection killed at the server: it comes back and
    // so does delivery on the same socket.
    let redis = tests::projector_support::redis().await?;
    let name = p.gateway.state.ws.subscriber_name().to_owned();
    let list: String = redis
        .custom(
            fred::types::CustomCommand::new_static("CLIENT", None, false),
            vec!["LIST", "TYPE", "pubsub"],
        )
        .await?;
    let id = list
        .lines()
        .find(|l| l.split(' ').any(|kv| kv == format!("name={name}")))
        .and_then(|l| l.split(' ').find_map(|kv| kv.strip_prefix("id=")))
        .with_context(|| format!("no pubsub connection named {name} in\n{list}"))?
        .to_owned();
    let killed: i64 = redis
        .custom(
            fred::types::CustomCommand::new_static("CLIENT", None, false),
            vec!["KILL", "ID", id.as_str()],
        )
        .await?;
    ensure!(killed == 1, "CLIENT KILL ID {id} killed {killed}");
    wait_ready(&p, true).await?;
    p.send_direct(&ann, &conv, "three").await?;
    receives(&mut bobs, &conv, "three").await?;
    p.stop().await
}

/// A response's status, headers and body (JSON or `Null`).
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    async fn from(r: reqwest::Response) -> Result<Self> {
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Self {
            status,
            headers,
            body,
        })
    }

    /// Asserts a problem document with `status` and `code`.
    fn problem(&self, status: u16, code: &str, what: &str) -> Result<()> {
        let ct = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        ensure!(
            self.status.as_u16() == status
                && ct == "application/problem+json"
                && self.body["status"] == status
                && self.body["code"] == code,
            "{what}: expected {status} {code}, got {} {ct} {}",
            self.status,
            self.body
        );
        Ok(())
    }

    fn closes(&self) -> bool {
        self.headers
            .get("connection")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

#[tokio::test]
async fn rest_refuses_hostile_input_with_problem_documents() -> Result<()> {
    let p = Platform::start().await?;
    let ann = p.user("ann").await?;
    let bob = p.user("bob").await?;
    let conv = p.group_direct(&ann, &[&bob]).await?;
    // HTTP/1.1, where `Connection: close` means something.
    let http = reqwest::Client::builder()
        .http1_only()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            tests::harness::pki().join("ca.pem"),
        )?)?)
        .build()?;
    let call = |method: Method, path: &str, body: Option<Value>| {
        let mut r = http
            .request(method, p.url(path))
            .bearer_auth(&ann.access_token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move { Reply::from(r.send().await?).await }
    };

    // U+0000 wherever a string enters: 422 naming the field, nothing stored.
    let messages = format!("/v1/conversations/{conv}/messages");
    let r = call(
        Method::POST,
        &messages,
        Some(json!({"client_msg_id": "nul-1", "body": "a\u{0}b"})),
    )
    .await?;
    r.problem(422, "validation_failed", "NUL in a body")?;
    ensure!(r.body["errors"]["body"].is_string(), "{}", r.body);
    ensure!(!r.closes(), "a read body keeps the connection");
    let sent = call(
        Method::POST,
        &messages,
        Some(json!({"client_msg_id": "ok-1", "body": "fine"})),
    )
    .await?;
    ensure!(sent.status == 201, "{}", sent.body);
    let message_id = sent.body["message_id"].as_str().context("message_id")?;
    call(
        Method::PATCH,
        &format!("{messages}/{message_id}"),
        Some(json!({"body": "\u{0}"})),
    )
    .await?
    .problem(422, "validation_failed", "NUL in an edit")?;
    call(
        Method::POST,
        "/v1/conversations",
        Some(json!({"title": "t\u{0}", "member_ids": []})),
    )
    .await?
    .problem(422, "validation_failed", "NUL in a title")?;
    call(
        Method::POST,
        "/v1/auth/register",
        Some(json!({"email": "nul@example.test", "username": "nul_user", "password": "correct horse nul\u{0}"})),
    )
    .await?
    .problem(422, "validation_failed", "NUL in a password")?;
    for query in ["username_prefix=%00", "username_prefix=a%00b&limit=5"] {
        let r = call(Method::GET, &format!("/v1/users?{query}"), None).await?;
        r.problem(422, "validation_failed", query)?;
        ensure!(
            r.body["errors"]["username_prefix"].is_string(),
            "{}",
            r.body
        );
    }
    call(
        Method::GET,
        &format!("/v1/audit/streams/conversation%00/{conv}"),
        None,
    )
    .await?
    .problem(422, "validation_failed", "NUL in a path")?;

    // A method the path does not have: 405 in the status and the document.
    call(Method::PUT, "/v1/conversations", None)
        .await?
        .problem(405, "method_not_allowed", "PUT /v1/conversations")?;
    // The WebSocket endpoint without the handshake: a problem document.
    let r = call(Method::GET, "/v1/ws", None).await?;
    r.problem(426, "upgrade_required", "GET /v1/ws without upgrade")?;
    ensure!(r.headers.get("upgrade").is_some_and(|v| v == "websocket"));

    // Bodies the server does not read to their end: the connection is
    // closed, and the answer says so.
    let big = "x".repeat(2 * 1024 * 1024);
    let r = call(
        Method::POST,
        &messages,
        Some(json!({"client_msg_id": "big", "body": big})),
    )
    .await?;
    r.problem(413, "payload_too_large", "a 2 MiB body")?;
    ensure!(r.closes(), "413 without Connection: close");
    let r = Reply::from(
        http.post(p.url(&messages))
            .bearer_auth("v4.public.garbage")
            .json(&json!({"client_msg_id": "x", "body": "y".repeat(100_000)}))
            .send()
            .await?,
    )
    .await?;
    ensure!(r.status == 401, "{}", r.body);
    ensure!(
        r.closes(),
        "401 before the body was read, without Connection: close"
    );
    // The same client carries on (a fresh connection where it must).
    let r = call(Method::GET, "/v1/conversations", None).await?;
    ensure!(r.status == 200, "{}", r.body);

    // Invented methods do not mint metric series.
    for m in ["FOO", "BAR", "BAZ"] {
        let _ = http
            .request(
                Method::from_bytes(m.as_bytes())?,
                p.url("/v1/conversations"),
            )
            .send()
            .await?;
    }
    let text = metrics(&p).await?;
    ensure!(
        !["FOO", "BAR", "BAZ"]
            .iter()
            .any(|m| text.contains(&format!("method=\"{m}\""))),
        "request methods became labels"
    );
    ensure!(text.contains("method=\"other\""), "{text}");
    p.stop().await
}

#[tokio::test]
async fn websocket_frames_refuse_hostile_input_and_keep_the_socket() -> Result<()> {
    let p = Platform::start().await?;
    let ann = p.user_direct("ann").await?;
    let bob = p.user_direct("bob").await?;
    let conv = p.group_direct(&ann, &[&bob]).await?;
    let (mut ws, ready) = hello(&p, &ann, None).await?;
    let max = ready["max_frame_bytes"]
        .as_u64()
        .context("ready.max_frame_bytes")?;
    ensure!(max == 16 * 1024, "{ready}");

    ws.send(
        &json!({"type": "send", "conversation_id": conv, "client_msg_id": "n1", "body": "x\u{0}"}),
    )
    .await?;
    let e = ws.next(T).await?;
    ensure!(
        e["type"] == "error" && e["code"] == "validation_failed" && e["client_msg_id"] == "n1",
        "{e}"
    );
    // Over the advertised limit, under the codec's: an error frame.
    ws.send_text(&format!(
        r#"{{"type":"send","conversation_id":"{conv}","client_msg_id":"big","body":"{}"}}"#,
        "x".repeat(usize::try_from(max)? * 2)
    ))
    .await?;
    let e = ws.next(T).await?;
    ensure!(e["code"] == "frame_too_large", "{e}");
    ws.send(&json!({"type": "ping"})).await?;
    ensure!(ws.next(T).await?["type"] == "pong");
    // Beyond the codec's limit (4 × the advertised one): close 1009.
    ws.send_text(&"x".repeat(usize::try_from(max)? * 4 + 1))
        .await?;
    assert_eq!(ws.closed(T).await?, Some(1009));
    p.stop().await
}

/// One fuzzed frame for the main connection.
fn fuzz_frame(rng: &mut rand::rngs::StdRng, conv: &str, foreign: &str) -> Message {
    let pick =
        |rng: &mut rand::rngs::StdRng, xs: &[&str]| xs[rng.random_range(0..xs.len())].to_owned();
    let junk_value = |rng: &mut rand::rngs::StdRng| -> Value {
        match rng.random_range(0..8) {
            0 => Value::Null,
            1 => json!(rng.random::<i64>()),
            2 => json!(rng.random::<f64>() * 1e300),
            3 => json!([1, "a", null]),
            4 => json!({"nested": {"x": 1}}),
            5 => json!(true),
            6 => json!("\u{0}"),
            _ => json!("x".repeat(rng.random_range(0..300))),
        }
    };
    match rng.random_range(0..14) {
        // Not JSON at all.
        0 => Message::text(pick(
            rng,
            &["{", "}", "nope", "[", "\"", "{\"type\":", "null", "1e999", "{\"type\":\"send\",}"],
        )),
        // JSON that is not an object, or has no string type.
        1 => Message::text(pick(
            rng,
            &["[]", "42", "\"hello\"", "{}", r#"{"type":7}"#, r#"{"type":null}"#, r#"{"type":["send"]}"#],
        )),
        // Unknown types.
        2 => Message::text(
            json!({"type": pick(rng, &["dance", "HELLO", "Send", "", "ack", "event", "ready", "\u{0}"])})
                .to_string(),
        ),
        // Binary frames of random bytes.
        3 => {
            let n = rng.random_range(0..2048);
            Message::binary((0..n).map(|_| rng.random::<u8>()).collect::<Vec<u8>>())
        }
        // Deeply nested JSON (beyond serde_json's recursion limit).
        4 => {
            let depth = rng.random_range(100..5000);
            Message::text(format!("{}{}", "[".repeat(depth), "]".repeat(depth)))
        }
        // Oversized (over the advertised limit, under the codec's).
        5 => Message::text(format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "p".repeat(rng.random_range(17_000..60_000))
        )),
        // Wrong types for each field of send.
        6 => {
            let mut f = json!({"type": "send", "conversation_id": conv, "client_msg_id": "c", "body": "b"});
            let field = pick(rng, &["conversation_id", "client_msg_id", "body"]);
            f[field] = junk_value(rng);
            Message::text(f.to_string())
        }
        // Missing and unknown fields.
        7 => Message::text(
            pick(
                rng,
                &[
                    r#"{"type":"send"}"#,
                    r#"{"type":"send","conversation_id":"x"}"#,
                    r#"{"type":"typing"}"#,
                    r#"{"type":"typing","conversation_id":"c","extra":1}"#,
                    r#"{"type":"ping","x":{}}"#,
                ],
            ),
        ),
        // Sends and typing to a conversation the user is not in, or none.
        8 => Message::text(
            json!({"type": "send", "conversation_id": foreign, "client_msg_id": format!("f{}", rng.random::<u32>()), "body": "intrusion"})
                .to_string(),
        ),
        9 => Message::text(
            json!({"type": "typing", "conversation_id": pick(rng, &[foreign, "not-a-uuid", "", "00000000-0000-0000-0000-000000000000"])})
                .to_string(),
        ),
        // hello again, with hostile cursors.
        10 => Message::text(json!({"type": "hello", "cursor": junk_value(rng)}).to_string()),
        // Bodies and ids at and beyond their limits.
        11 => Message::text(
            json!({"type": "send", "conversation_id": conv,
                   "client_msg_id": "i".repeat(rng.random_range(0..100)),
                   "body": "b".repeat(rng.random_range(0..5000))})
            .to_string(),
        ),
        // Unicode edge cases that JSON allows.
        12 => Message::text(
            pick(
                rng,
                &[
                    r#"{"type":"send","conversation_id":"c","client_msg_id":"u","body":"\ud800"}"#,
                    r#"{"type":"send","conversation_id":"c","client_msg_id":"u","body":"\udfff\ud800"}"#,
                    r#"{"type":"typing","conversation_id":"\u0000"}"#,
                    "{\"type\":\"ping\",\"\u{FEFF}\":1}",
                ],
            ),
        ),
        // Control frames in between.
        _ => Message::Ping(vec![rng.random::<u8>(); rng.random_range(0..125)].into()),
    }
}

// The counts are the fuzz stage's report (the closing note quotes them).
#[allow(clippy::print_stdout)]
#[tokio::test]
async fn a_frame_fuzzer_stops_no_ones_live_delivery() -> Result<()> {
    let p = Platform::start().await?;
    let ann = p.user_direct("ann").await?;
    let bob = p.user_direct("bob").await?;
    let eve = p.user_direct("eve").await?;
    // eve fuzzes: `own` is her group, `conv` (ann's and bob's) is not hers.
    let conv = p.group_direct(&ann, &[&bob]).await?;
    let own = p.group_direct(&eve, &[]).await?;
    let (mut bobs, ready) = hello(&p, &bob, None).await?;
    let head = cursor_of(&ready)?;

    let frames: usize = std::env::var("MESSENGER_FUZZ_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let seed: u64 = std::env::var("MESSENGER_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("frame fuzzer: {frames} frames, seed {seed} (MESSENGER_FUZZ_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut eves, _) = hello(&p, &eve, None).await?;
    let started = Instant::now();
    let (mut errors, mut acks) = (0usize, 0usize);
    for i in 0..frames {
        let frame = fuzz_frame(&mut rng, &own, &conv);
        let what = format!("{frame:?}").chars().take(160).collect::<String>();
        eves.send_raw(frame).await?;
        // Every frame is answered before the next ping's pong; none with
        // a server error, none closing the socket.
        eves.send(&json!({"type": "ping"})).await?;
        loop {
            let f = eves
                .next(T)
                .await
                .with_context(|| format!("frame {i} ({what}) closed the socket"))?;
            match f["type"].as_str() {
                Some("pong") => break,
                Some("error") => {
                    ensure!(
                        f["code"] != "internal" && f["code"] != "unavailable",
                        "frame {i} ({what}): {f}"
                    );
                    errors += 1;
                }
                Some("ack") => acks += 1,
                Some("event" | "typing") => {}
                _ => bail!("frame {i} ({what}): unexpected {f}"),
            }
        }
    }

    // Hostile hellos from other connections; each refused alone.
    let mut hellos = 0;
    for cursor in [
        json!(-1),
        json!("-1"),
        json!(1.5),
        json!("1e400"),
        json!("18446744073709551616"),
        json!(i64::MAX),
        json!((head + 1).to_string()),
        json!({"position": 1}),
        json!(["1"]),
        json!(" 12 "),
        json!("0x10"),
    ] {
        let (mut ws, f) = hello(&p, &eve, Some(cursor.clone())).await?;
        if f["type"] == "ready" {
            // Some of these are valid positions (" 12 " trims, head + 1
            // exists by now): fine, as long as it is a real one.
            ensure!(cursor_of(&f)? < 1_000_000, "cursor {cursor}: {f}");
            continue;
        }
        ensure!(
            f["type"] == "error" && f["code"] != "internal",
            "cursor {cursor}: {f}"
        );
        ensure!(ws.closed(T).await? == Some(1008), "cursor {cursor}");
        hellos += 1;
    }
    // A text frame that is not UTF-8 is a protocol error (RFC 6455 §8.1:
    // the connection fails with 1007), for that connection only.
    let (mut bad, _) = hello(&p, &eve, None).await?;
    bad.send_raw(Message::Frame(Frame::message(
        vec![0xff, 0xfe, b'{'],
        OpCode::Data(Data::Text),
        true,
    )))
    .await?;
    ensure!(bad.closed(T).await? == Some(1007), "invalid UTF-8");

    println!(
        "frame fuzzer: {frames} frames in {:.1} s: {errors} error frames, {acks} acks, 0 server errors; {hellos} hostile hellos refused",
        started.elapsed().as_secs_f64()
    );
    // Someone else's live delivery is untouched: bob's socket, open since
    // before, and a new one without a cursor.
    p.send_direct(&ann, &conv, "still here").await?;
    receives(&mut bobs, &conv, "still here").await?;
    let (mut fresh, ready) = hello(&p, &bob, None).await?;
    ensure!(cursor_of(&ready)? >= head);
    p.send_direct(&ann, &conv, "and here").await?;
    receives(&mut fresh, &conv, "and here").await?;
    let (status, body) = readyz(&p).await?;
    ensure!(status == 200, "{body}");
    p.stop().await
}
