//! `GET /v1/ws` over real WSS against the whole platform in-process
//! (command-service + relay, Kafka, projector, Redis pub/sub,
//! query-service, gateway).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fred::prelude::{KeysInterface, PubsubInterface};
use proto::command::v1 as cmd;
use serde_json::{json, Value};
use tests::gateway_support::{Platform, PlatformOptions, TestUser, WsClient};

const T: Duration = Duration::from_secs(30);

async fn platform(args: &[&str]) -> Result<Platform> {
    Platform::start_with(PlatformOptions {
        gateway_args: args.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    })
    .await
}

fn req<M>(user: &TestUser, msg: M) -> tonic::Request<M> {
    gateway::state::as_user(&user.user_id, msg)
}

async fn group(p: &Platform, owner: &TestUser, members: &[&TestUser]) -> Result<String> {
    p.group_direct(owner, members).await
}

async fn send(p: &Platform, from: &TestUser, conv: &str, body: &str) -> Result<i64> {
    p.send_direct(from, conv, body).await
}

async fn add(p: &Platform, by: &TestUser, conv: &str, who: &TestUser) -> Result<()> {
    let mut c = p.gateway.state.commands.clone();
    c.add_member(req(
        by,
        cmd::AddMemberRequest {
            conversation_id: conv.into(),
            user_id: who.user_id.clone(),
            role: None,
        },
    ))
    .await?;
    Ok(())
}

async fn remove(p: &Platform, by: &TestUser, conv: &str, who: &TestUser) -> Result<()> {
    let mut c = p.gateway.state.commands.clone();
    c.remove_member(req(
        by,
        cmd::RemoveMemberRequest {
            conversation_id: conv.into(),
            user_id: who.user_id.clone(),
        },
    ))
    .await?;
    Ok(())
}

/// Connects with the header, says hello (with `cursor`), waits for ready;
/// returns the socket, the ready frame and the events sent before it.
async fn connect(
    p: &Platform,
    u: &TestUser,
    cursor: Option<&str>,
) -> Result<(WsClient, Value, Vec<Value>)> {
    let mut ws = WsClient::connect(&p.ws_url(), Some(&u.access_token)).await?;
    let mut hello = json!({"type": "hello"});
    if let Some(c) = cursor {
        hello["cursor"] = json!(c);
    }
    ws.send(&hello).await?;
    let mut replayed = Vec::new();
    loop {
        let f = ws.next(T).await?;
        match f["type"].as_str() {
            Some("ready") => return Ok((ws, f, replayed)),
            Some("event") => replayed.push(f),
            _ => bail!("unexpected frame before ready: {f}"),
        }
    }
}

fn is_event(f: &Value, conv: &str, event_type: &str) -> bool {
    f["type"] == "event"
        && f["event"]["conversation_id"] == conv
        && f["event"]["event_type"] == event_type
}

/// Event frames until `pred` matches one (included), within `timeout`.
async fn events_until(
    ws: &mut WsClient,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let f = ws
            .next(deadline.saturating_duration_since(Instant::now()))
            .await?;
        if f["type"] == "event" {
            let done = pred(&f);
            out.push(f);
            if done {
                return Ok(out);
            }
        }
    }
}

/// (conversation, seq) of each MessageSent frame.
fn seqs(frames: &[Value]) -> Vec<(String, i64)> {
    frames
        .iter()
        .filter(|f| f["type"] == "event" && f["event"]["event_type"] == "MessageSent")
        .map(|f| {
            (
                f["event"]["conversation_id"].as_str().unwrap().to_owned(),
                f["event"]["seq"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Per conversation, the seqs are exactly `first..=last` in order.
fn assert_contiguous(frames: &[Value], expected: &HashMap<String, (i64, i64)>) {
    let mut by: HashMap<String, Vec<i64>> = HashMap::new();
    for (c, s) in seqs(frames) {
        by.entry(c).or_default().push(s);
    }
    for (c, got) in &by {
        let Some((first, last)) = expected.get(c) else {
            panic!("frames of an unexpected conversation {c}: {got:?}");
        };
        let want: Vec<i64> = (*first..=*last).collect();
        assert_eq!(got, &want, "conversation {c}");
    }
    for c in expected.keys() {
        assert!(by.contains_key(c), "nothing of {c}");
    }
}

#[tokio::test]
async fn hello_ready_ping_and_both_ways_to_authenticate() -> Result<()> {
    let p = Platform::start().await?;
    let alice = p.user_direct("alice").await?;

    // Header authentication.
    let (mut ws, ready, _) = connect(&p, &alice, None).await?;
    assert_eq!(ready["user_id"], alice.user_id.as_str());
    ensure!(
        ready["cursor"].as_str().is_some(),
        "ready has a cursor: {ready}"
    );
    ws.send(&json!({"type": "ping"})).await?;
    assert_eq!(ws.next(T).await?, json!({"type": "pong"}));

    // First-frame authentication (browsers).
    let mut ws2 = WsClient::connect(&p.ws_url(), None).await?;
    ws2.send(&json!({"type": "hello", "access_token": alice.access_token}))
        .await?;
    let r = ws2.next(T).await?;
    assert_eq!(r["type"], "ready");
    assert_eq!(r["user_id"], alice.user_id.as_str());

    // A bad token in hello: error frame, then close 4401.
    let mut bad = WsClient::connect(&p.ws_url(), None).await?;
    bad.send(&json!({"type": "hello", "access_token": "v4.public.garbage"}))
        .await?;
    let e = bad.next(T).await?;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "invalid_token");
    assert_eq!(bad.closed(T).await?, Some(4401));

    // No credentials at all.
    let mut none = WsClient::connect(&p.ws_url(), None).await?;
    none.send(&json!({"type": "hello"})).await?;
    assert_eq!(none.next(T).await?["code"], "unauthenticated");
    assert_eq!(none.closed(T).await?, Some(4401));

    // A bad header is refused before the upgrade (401 problem).
    let refused = WsClient::connect(&p.ws_url(), Some("v4.public.garbage")).await;
    let err = format!("{:?}", refused.err().context("bad header accepted")?);
    ensure!(err.contains("401"), "{err}");

    // hello must come first.
    let mut early = WsClient::connect(&p.ws_url(), Some(&alice.access_token)).await?;
    early.send(&json!({"type": "ping"})).await?;
    assert_eq!(early.next(T).await?["code"], "hello_required");
    assert_eq!(early.closed(T).await?, Some(1008));

    // The first sockets still work.
    ws.send(&json!({"type": "ping"})).await?;
    assert_eq!(ws.next(T).await?["type"], "pong");
    p.stop().await
}

#[tokio::test]
async fn bad_frames_get_errors_and_nothing_breaks() -> Result<()> {
    let p = Platform::start().await?;
    let alice = p.user_direct("alice").await?;
    let bob = p.user_direct("bob").await?;
    let conv = group(&p, &alice, &[&bob]).await?;
    let (mut a, _, _) = connect(&p, &alice, None).await?;
    let (mut b, _, _) = connect(&p, &bob, None).await?;

    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "malformed_frame"),
        ("[1,2]".into(), "malformed_frame"),
        (r#"{"no":"type"}"#.into(), "malformed_frame"),
        (r#"{"type":"dance"}"#.into(), "unknown_frame_type"),
        (
            r#"{"type":"send","conversation_id":"x"}"#.into(),
            "validation_failed",
        ),
        (r#"{"type":"hello"}"#.into(), "unexpected_hello"),
        (
            json!({"type": "send", "conversation_id": conv, "client_msg_id": "big", "body": "x".repeat(20_000)})
                .to_string(),
            "frame_too_large",
        ),
    ];
    for (text, code) in &cases {
        a.send_text(text).await?;
        // (Skipping events: the conversation's creation may arrive live.)
        let e = a.next_matching(T, |f| f["type"] != "event").await?;
        assert_eq!(e["type"], "error", "{text:.60}");
        assert_eq!(e["code"], *code, "{text:.60}: {e}");
        ensure!(e["detail"].is_string(), "{e}");
    }
    // A send the command side refuses: error with the client_msg_id.
    a.send(&json!({"type": "send", "conversation_id": uuid::Uuid::now_v7(), "client_msg_id": "nope", "body": "hi"}))
        .await?;
    let e = a.next_matching(T, |f| f["type"] != "event").await?;
    assert_eq!(e["type"], "error");
    assert_eq!(e["client_msg_id"], "nope");
    assert_eq!(e["code"], "conversation_not_found");

    // Both sockets still work: send → ack, and the event reaches bob.
    a.send(&json!({"type": "send", "conversation_id": conv, "client_msg_id": "c1", "body": "hello bob"}))
        .await?;
    let ack = a.next_matching(T, |f| f["type"] == "ack").await?;
    assert_eq!(ack["client_msg_id"], "c1");
    let seq = ack["seq"].as_i64().context("ack seq")?;
    let ev = b
        .next_matching(T, |f| is_event(f, &conv, "MessageSent"))
        .await?;
    assert_eq!(ev["event"]["data"]["body"], "hello bob");
    assert_eq!(ev["event"]["seq"], seq);
    assert_eq!(ev["event"]["data"]["message_id"], ack["message_id"]);
    assert_eq!(ev["event"]["data"]["client_msg_id"], "c1");
    p.stop().await
}

#[tokio::test]
async fn concurrent_senders_every_member_gets_each_message_once_in_order() -> Result<()> {
    let p = Platform::start().await?;
    let alice = p.user_direct("alice").await?;
    let bob = p.user_direct("bob").await?;
    let shared = group(&p, &alice, &[&bob]).await?;
    let only_a = group(&p, &alice, &[]).await?;
    let only_b = group(&p, &bob, &[]).await?;
    let (mut a, _, _) = connect(&p, &alice, None).await?;
    let (mut b, _, _) = connect(&p, &bob, None).await?;
    const N: usize = 40;
    // Each socket sends N to the shared conversation and N to its own,
    // without waiting for acks.
    for (ws, own) in [(&mut a, &only_a), (&mut b, &only_b)] {
        for i in 0..N {
            for conv in [&shared, own] {
                ws.send(&json!({"type": "send", "conversation_id": conv, "client_msg_id": format!("{conv}-{i}"), "body": format!("m{i}")}))
                    .await?;
            }
        }
    }
    // 2N + N events per user plus 2N acks.
    let (ea, eb) = tokio::try_join!(collect(&mut a, 3 * N, 2 * N), collect(&mut b, 3 * N, 2 * N))?;
    // seq 1 is ConversationCreated: messages are 2..=2N+1 in the shared
    // one, 2..=N+1 in each own one.
    let n = i64::try_from(N)?;
    assert_contiguous(
        &ea,
        &HashMap::from([
            (shared.clone(), (2, 2 * n + 1)),
            (only_a.clone(), (2, n + 1)),
        ]),
    );
    assert_contiguous(
        &eb,
        &HashMap::from([
            (shared.clone(), (2, 2 * n + 1)),
            (only_b.clone(), (2, n + 1)),
        ]),
    );
    // Nothing more (no duplicate message) arrives before the pong.
    for ws in [&mut a, &mut b] {
        ws.send(&json!({"type": "ping"})).await?;
        loop {
            let f = ws.next(T).await?;
            if f["type"] == "pong" {
                break;
            }
            ensure!(f["event"]["event_type"] != "MessageSent", "extra {f}");
        }
    }
    p.stop().await
}

/// Reads until `events` MessageSent frames and `acks` acks arrived (other
/// events, e.g. the sender's own read markers, are skipped).
async fn collect(ws: &mut WsClient, events: usize, acks: usize) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut got_acks = 0;
    while out.len() < events || got_acks < acks {
        let f = ws.next(T).await?;
        match f["type"].as_str() {
            Some("ack") => got_acks += 1,
            Some("event") if f["event"]["event_type"] == "MessageSent" => out.push(f),
            Some("event") => {}
            Some("typing") => {}
            _ => bail!("unexpected {f}"),
        }
    }
    Ok(out)
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_events_then_live() -> Result<()> {
    let p = Platform::start().await?;
    let alice = p.user_direct("alice").await?;
    let bob = p.user_direct("bob").await?;
    let conv = group(&p, &alice, &[&bob]).await?;
    let (mut b, _, _) = connect(&p, &bob, None).await?;
    const N: i64 = 500;
    let sender = {
        let mut c = p.gateway.state.commands.clone();
        let alice = alice.clone();
        let conv = conv.clone();
        tokio::spawn(async move {
            for i in 0..N {
                c.send_message(gateway::state::as_user(
                    &alice.user_id,
                    cmd::SendMessageRequest {
                        conversation_id: conv.clone(),
                        client_msg_id: format!("m{i}"),
                        body: format!("message {i}"),
                    },
                ))
                .await?;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    // Receive some, then drop the socket in the middle of the stream.
    let mut first = Vec::new();
    while first.len() < 120 {
        let f = b.next(T).await?;
        if f["type"] == "event" {
            first.push(f);
        }
    }
    drop(b);
    let cursor = first
        .last()
        .and_then(|f| f["cursor"].as_str())
        .context("cursor")?
        .to_owned();
    let last_seq = first.last().unwrap()["event"]["seq"].as_i64().unwrap();
    let (mut b, ready, replayed) = connect(&p, &bob, Some(&cursor)).await?;
    ensure!(
        ready["cursor"].as_str().unwrap().parse::<i64>()? >= cursor.parse::<i64>()?,
        "ready cursor goes forward"
    );
    sender.await??;
    // After ready: the rest live, then a few more.
    let mut all: Vec<Value> = first.clone();
    all.extend(replayed.iter().cloned());
    let mut live = Vec::new();
    let have = |all: &Vec<Value>, live: &Vec<Value>| all.len() + live.len();
    while have(&all, &live) < usize::try_from(N)? {
        let f = b.next(T).await?;
        if f["type"] == "event" {
            live.push(f);
        }
    }
    send(&p, &alice, &conv, "after").await?;
    live.extend(events_until(&mut b, T, |f| f["event"]["data"]["body"] == "after").await?);
    ensure!(
        !replayed.is_empty() || last_seq == N + 1,
        "the reconnect replayed something"
    );
    all.extend(live);
    // Messages are seqs 2..=N+2 (1 is ConversationCreated).
    assert_contiguous(&all, &HashMap::from([(conv.clone(), (2, N + 2))]));
    // Cursors strictly increase across the whole stream.
    let cursors: Vec<i64> = all
        .iter()
        .map(|f| f["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    ensure!(cursors.windows(2).all(|w| w[0] < w[1]), "cursors increase");
    p.stop().await
}

#[tokio::test]
async fn membership_changes_take_effect_on_open_sockets() -> Result<()> {
    let p = Platform::start().await?;
    let alice = p.user_direct("alice").await?;
    let bob = p.user_direct("bob").await?;
    let conv = group(&p, &alice, &[]).await?;
    let marker = group(&p, &alice, &[&bob]).await?;
    let (mut b, _, _) = connect(&p, &bob, None).await?;
    send(&p, &alice, &conv, "before bob").await?;

    // Added: bob's socket gets his MemberAdded first, then what follows.
    add(&p, &alice, &conv, &bob).await?;
    send(&p, &alice, &conv, "welcome").await?;
    let got = events_until(&mut b, T, |f| f["event"]["data"]["body"] == "welcome").await?;
    let types: Vec<&str> = got
        .iter()
        .filter(|f| f["event"]["conversation_id"] == conv.as_str())
        .map(|f| f["event"]["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["MemberAdded", "MessageSent"], "{got:?}");
    let added = got
        .iter()
        .find(|f| is_event(f, &conv, "MemberAdded"))
        .context("MemberAdded")?;
    assert_eq!(added["event"]["data"]["user_id"], bob.user_id.as_str());

    // Typing while a member is relayed.
    let (mut a, _, _) = connect(&p, &alice, None).await?;
    b.send(&json!({"type": "typing", "conversation_id": conv}))
        .await?;
    let t = a.next_matching(T, |f| f["type"] == "typing").await?;
    assert_eq!(
        t,
        json!({"type": "typing", "conversation_id": conv, "user_id": bob.user_id})
    );

    // Removed: the MemberRemoved arrives, then nothing of that
    // conversation, although messages follow. Order holds within a
    // conversation, not across two (they may sit on different partitions),
    // so each step waits for what it depends on: the removal at bob, the
    // later messages at alice (so they have been fanned out), and only then
    // the marker conversation's message, which ends bob's observation.
    remove(&p, &alice, &conv, &bob).await?;
    let got = events_until(&mut b, T, |f| is_event(f, &conv, "MemberRemoved")).await?;
    let removed = got.last().context("MemberRemoved")?;
    assert_eq!(removed["event"]["data"]["user_id"], bob.user_id.as_str());
    send(&p, &alice, &conv, "after bob").await?;
    send(&p, &alice, &conv, "after bob 2").await?;
    events_until(&mut a, T, |f| f["event"]["data"]["body"] == "after bob 2").await?;
    send(&p, &alice, &marker, "marker").await?;
    let got = events_until(&mut b, T, |f| f["event"]["data"]["body"] == "marker").await?;
    let of_conv: Vec<&Value> = got
        .iter()
        .filter(|f| f["event"]["conversation_id"] == conv.as_str())
        .collect();
    assert!(
        of_conv.is_empty(),
        "nothing of the conversation after removal: {of_conv:?}"
    );
    // And typing there is refused.
    b.send(&json!({"type": "typing", "conversation_id": conv}))
        .await?;
    assert_eq!(
        b.next_matching(T, |f| f["type"] == "error").await?["code"],
        "conversation_not_found"
    );
    p.stop().await
}

#[tokio::test]
async fn typing_is_relayed_to_other_members_never_stored_nor_echoed() -> Result<()> {
    let p = Platform::start().await?;
    let alice = p.user_direct("alice").await?;
    let bob = p.user_direct("bob").await?;
    let carol = p.user_direct("carol").await?;
    let conv = group(&p, &alice, &[&bob]).await?;
    let (mut a, _, _) = connect(&p, &alice, None).await?;
    let (mut b, _, _) = connect(&p, &bob, None).await?;
    let (mut c, _, _) = connect(&p, &carol, None).await?;
    let stored = |p: &Platform| {
        let pool = p.commands.pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
                .fetch_one(&pool)
                .await?;
            Ok::<_, anyhow::Error>(n)
        }
    };
    // Both sockets know the conversation once its first message reached
    // them (it may have been projected after they connected).
    send(&p, &alice, &conv, "hi").await?;
    for ws in [&mut a, &mut b] {
        ws.next_matching(T, |f| is_event(f, &conv, "MessageSent"))
            .await?;
    }
    let before = stored(&p).await?;
    a.send(&json!({"type": "typing", "conversation_id": conv}))
        .await?;
    // (The conversation's creation may reach bob live first, when it was
    // projected after his ready.)
    let t = b.next_matching(T, |f| f["type"] != "event").await?;
    assert_eq!(
        t,
        json!({"type": "typing", "conversation_id": conv, "user_id": alice.user_id})
    );
    // Carol (not a member) may not type there.
    c.send(&json!({"type": "typing", "conversation_id": conv}))
        .await?;
    assert_eq!(
        c.next_matching(T, |f| f["type"] != "event").await?["code"],
        "conversation_not_found"
    );
    // Neither alice (no echo) nor carol got a typing frame: the next
    // non-event frame each gets is the pong.
    for ws in [&mut a, &mut c] {
        ws.send(&json!({"type": "ping"})).await?;
        assert_eq!(
            ws.next_matching(T, |f| f["type"] != "event").await?["type"],
            "pong"
        );
    }
    assert_eq!(stored(&p).await?, before, "typing is not an event");
    p.stop().await
}

#[tokio::test]
async fn presence_and_revocation() -> Result<()> {
    let p = Platform::start().await?;
    let alice = p.user_direct("alice").await?;
    let key = infra::keys::presence(&p.prefix, &alice.user_id);
    let redis = p.gateway.state.redis.clone();
    let exists = |k: String| {
        let redis = redis.clone();
        async move {
            let n: i64 = redis.exists(k).await?;
            Ok::<_, anyhow::Error>(n == 1)
        }
    };
    ensure!(!exists(key.clone()).await?, "offline before");
    let (mut ws, _, _) = connect(&p, &alice, None).await?;
    let (ws2, _, _) = connect(&p, &alice, None).await?;
    ensure!(exists(key.clone()).await?, "online with a socket");
    let ttl: i64 = redis.ttl(&key).await?;
    ensure!(ttl > 0, "presence expires if the gateway dies: {ttl}");
    drop(ws2);
    // Still online with one socket left, once the other is cleaned up.
    let deadline = Instant::now() + T;
    while p.gateway.state.metrics.ws_connections.get() > 1 {
        ensure!(Instant::now() < deadline, "the dropped socket lingers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(exists(key.clone()).await?, "still online");

    // Revoke the session: the socket closes with 4401.
    let sid = uuid::Uuid::parse_str(&alice.session_id)?;
    let uid = uuid::Uuid::parse_str(&alice.user_id)?;
    let _: i64 = redis
        .del(gateway::auth::sessions::session_key(&p.prefix, sid))
        .await?;
    let _: i64 = redis
        .next()
        .publish(
            gateway::auth::sessions::revoked_channel(&p.prefix, uid),
            sid.to_string(),
        )
        .await?;
    assert_eq!(ws.closed(T).await?, Some(4401));
    // Offline once every socket is gone.
    let deadline = Instant::now() + T;
    while exists(key.clone()).await? {
        ensure!(Instant::now() < deadline, "presence not cleared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.stop().await
}

// Multi-threaded like a real gateway: on one thread, the in-process
// platform's bursts would starve the reading clients too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_others_unaffected() -> Result<()> {
    let p = platform(&["--ws-queue", "64"]).await?;
    let alice = p.user_direct("alice").await?;
    let bob = p.user_direct("bob").await?;
    let carol = p.user_direct("carol").await?;
    // Carol floods bob; alice only hears from carol now and then.
    let flood = group(&p, &carol, &[&bob]).await?;
    let quiet = group(&p, &carol, &[&alice]).await?;
    let (mut a, _, _) = connect(&p, &alice, None).await?;
    // Carol reads the flood: sending is paced by delivery, so the test
    // does not outrun the projector.
    let (mut c, _, _) = connect(&p, &carol, None).await?;
    // Bob's socket never reads after ready, with a small TCP window.
    let mut b = WsClient::connect_small_buffer(&p.ws_url(), &bob.access_token, 4096).await?;
    b.send(&json!({"type": "hello"})).await?;
    b.next_matching(T, |f| f["type"] == "ready").await?;
    let slow = || p.gateway.state.metrics.ws_slow_consumers.get();
    // 4000 four-byte characters: 16 KB frames.
    let body = "\u{1F600}".repeat(4000);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut sent = 0u64;
    while slow() == 0 {
        ensure!(
            Instant::now() < deadline,
            "never closed after {sent} messages"
        );
        let mut tasks = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..16 {
            let mut cl = p.gateway.state.commands.clone();
            let id = uuid::Uuid::now_v7().to_string();
            ids.insert(id.clone());
            let r = req(
                &carol,
                cmd::SendMessageRequest {
                    conversation_id: flood.clone(),
                    client_msg_id: id,
                    body: body.clone(),
                },
            );
            tasks.push(tokio::spawn(async move { cl.send_message(r).await }));
        }
        for t in tasks {
            t.await??;
            sent += 1;
        }
        while !ids.is_empty() {
            let f = c.next(T).await?;
            if let Some(id) = f["event"]["data"]["client_msg_id"].as_str() {
                ids.remove(id);
            }
        }
    }
    tracing::info!(sent, "bob closed as a slow consumer (16 KB messages)");
    // Bob's socket ends (close 1008 when it gets through, else cut).
    let code = b.closed(Duration::from_secs(60)).await?;
    ensure!(matches!(code, Some(1008) | None), "{code:?}");
    // Alice's socket still works (once the projector has worked through
    // the flood's backlog).
    send(&p, &carol, &quiet, "still there?").await?;
    let f = a
        .next_matching(Duration::from_secs(120), |f| {
            is_event(f, &quiet, "MessageSent")
        })
        .await?;
    assert_eq!(f["event"]["data"]["body"], "still there?");
    a.send(&json!({"type": "ping"})).await?;
    a.next_matching(T, |f| f["type"] == "pong").await?;
    assert_eq!(slow(), 1, "only bob was slow");
    p.stop().await
}

#[tokio::test]
async fn idle_sockets_are_reaped_and_shutdown_says_1001() -> Result<()> {
    let p = platform(&["--ws-idle-secs", "2", "--ws-ping-secs", "1"]).await?;
    let alice = p.user_direct("alice").await?;
    // A client that reads answers the server's pings and stays open.
    let (mut live, _, _) = connect(&p, &alice, None).await?;
    let (mut idle, _, _) = connect(&p, &alice, None).await?;
    let started = Instant::now();
    // `live` keeps reading (and thus ponging) for 4 s.
    let kept = live.next(Duration::from_secs(4)).await;
    ensure!(kept.is_err(), "no frame expected: {kept:?}");
    ensure!(started.elapsed() >= Duration::from_secs(4));
    // `idle` did not read: it was closed for idleness meanwhile.
    assert_eq!(idle.closed(T).await?, Some(4408));
    live.send(&json!({"type": "ping"})).await?;
    assert_eq!(live.next(T).await?["type"], "pong");
    // Shutdown: 1001.
    let stop = tokio::spawn(p.stop());
    assert_eq!(live.closed(T).await?, Some(1001));
    stop.await??;
    Ok(())
}

#[tokio::test]
async fn logout_closes_that_sessions_sockets_only() -> Result<()> {
    let p = Platform::start().await?;
    // Through the real accounts endpoints: two sessions of one user.
    let first = p.user("dora").await?;
    let r = p
        .http
        .post(p.url("/v1/auth/login"))
        .json(&json!({"login": first.username, "password": first.password}))
        .send()
        .await?;
    ensure!(r.status().as_u16() == 200, "second login: {}", r.status());
    let second: Value = r.json().await?;
    let second_token = second["access_token"].as_str().context("token")?;
    let (mut one, _, _) = connect(&p, &first, None).await?;
    let mut two = WsClient::connect(&p.ws_url(), None).await?;
    two.send(&json!({"type": "hello", "access_token": second_token}))
        .await?;
    assert_eq!(two.next(T).await?["type"], "ready");
    let r = p
        .http
        .post(p.url("/v1/auth/logout"))
        .bearer_auth(&first.access_token)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(one.closed(T).await?, Some(4401));
    // The other session's socket is untouched.
    two.send(&json!({"type": "ping"})).await?;
    assert_eq!(two.next(T).await?["type"], "pong");
    // And the logged-out token cannot open a new one.
    let refused = WsClient::connect(&p.ws_url(), Some(&first.access_token)).await;
    ensure!(refused.is_err(), "a revoked token opened a socket");
    p.stop().await
}
