//! The notifier against the real stack: command-service (in-process, fresh
//! database and topic) produces the events, the projector maintains the
//! read models, the notifier (own consumer group, Redis prefix,
//! dead-letter topic) pushes to the HTTPS push service of
//! `tests::notifier_support` and mails digests through the stack's SMTP
//! sink, whose HTTP API the tests read.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use command_service::commands::{Commands, SentMessage};
use command_service::store::CommandMeta;
use domain::values::UserId;
use fred::prelude::{ClientLike, Expiration, KeysInterface};
use proto::notifier::v1 as pb;
use proto::notifier::v1::notifier_service_client::NotifierServiceClient;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tests::harness::{as_user, stack, CommandService, CommandServiceOptions};
use tests::notifier_support::{
    delivered, mail_to, BrowserSubscription, NotifierOptions, PushServer, RunningNotifier,
};
use tests::projector_support::{read_raw, ProjectorOptions, RunningProjector};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(60);

fn meta(actor: UserId) -> CommandMeta {
    CommandMeta::new(actor.to_string(), None)
}

/// A user with a unique name (the SMTP sink is shared by every test).
async fn register(c: &Commands, tag: &str) -> Result<(UserId, String)> {
    let name = format!("{tag}_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let email = format!("{name}@example.org");
    let id = c
        .register(
            &email,
            &name,
            &format!("{name}-password"),
            None,
            &CommandMeta::new(domain::envelope::SYSTEM_ACTOR, None),
        )
        .await?;
    c.change_display_name(id, &format!("{tag} display"), &meta(id))
        .await?;
    Ok((id, email))
}

async fn group(c: &Commands, owner: UserId, title: &str, members: &[UserId]) -> Result<String> {
    let ids: Vec<String> = members.iter().map(ToString::to_string).collect();
    Ok(c.create_group(owner, title, &ids, &meta(owner))
        .await?
        .to_string())
}

async fn send(c: &Commands, user: UserId, conv: &str, body: &str) -> Result<SentMessage> {
    Ok(c.send_message(
        user,
        conv,
        &uuid::Uuid::now_v7().to_string(),
        body,
        &meta(user),
    )
    .await?)
}

async fn subscribe(
    client: &mut NotifierServiceClient<Channel>,
    user: UserId,
    sub: &BrowserSubscription,
) -> Result<String> {
    let r = client
        .create_subscription(as_user(
            &user.to_string(),
            pb::CreateSubscriptionRequest {
                endpoint: sub.endpoint.clone(),
                p256dh: sub.p256dh.clone(),
                auth: sub.auth.clone(),
            },
        ))
        .await?
        .into_inner();
    Ok(r.subscription_id)
}

async fn put_settings(
    client: &mut NotifierServiceClient<Channel>,
    user: UserId,
    push: bool,
    email: bool,
    delay: u32,
) -> Result<()> {
    client
        .put_settings(as_user(
            &user.to_string(),
            pb::NotificationSettings {
                push,
                email,
                email_delay_seconds: delay,
            },
        ))
        .await?;
    Ok(())
}

/// command-service + projector + notifier + push service.
struct Stack {
    svc: CommandService,
    projector: RunningProjector,
    notifier: Option<RunningNotifier>,
    push: PushServer,
    prefix: String,
    opts: NotifierOptions,
}

impl Stack {
    async fn start(extra_args: &[&str]) -> Result<Self> {
        let svc = CommandService::start(CommandServiceOptions::default()).await?;
        // The projector's dead-letter topic must exist: the poison test's
        // record reaches it too.
        let projector = RunningProjector::start(
            &svc,
            ProjectorOptions {
                dead_letter_topic: Some(tests::harness::fresh_topic(1).await?),
                ..ProjectorOptions::default()
            },
        )
        .await?;
        let prefix = tests::query_support::unique_prefix();
        let opts = NotifierOptions {
            group_id: Some(format!("notifier-{}", uuid::Uuid::now_v7().simple())),
            redis_prefix: Some(prefix.clone()),
            dead_letter_topic: Some(tests::harness::fresh_topic(1).await?),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
        };
        let notifier = RunningNotifier::start(&svc, &opts).await?;
        let push = PushServer::start().await?;
        Ok(Self {
            svc,
            projector,
            notifier: Some(notifier),
            push,
            prefix,
            opts,
        })
    }

    fn pool(&self) -> &PgPool {
        &self.svc.pool
    }

    async fn client(&self) -> Result<NotifierServiceClient<Channel>> {
        self.notifier
            .as_ref()
            .context("notifier down")?
            .client()
            .await
    }

    async fn stop(self) -> Result<()> {
        if let Some(n) = self.notifier {
            n.stop().await?;
        }
        self.projector.stop().await?;
        self.svc.stop().await
    }
}

async fn count(pool: &PgPool, sql: &str, user: UserId) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).bind(user.0).fetch_one(pool).await?)
}

/// Waits (polling, with a deadline) until every queued push is final.
async fn wait_pushes_final(pool: &PgPool) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM push_deliveries WHERE state IN ('pending', 'sending')",
        )
        .fetch_one(pool)
        .await?;
        if open == 0 {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{open} pushes still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn push_reaches_offline_members_only_encrypted_and_signed() -> Result<()> {
    let s = Stack::start(&[]).await?;
    let c = &s.svc.commands;
    let mut client = s.client().await?;
    let (ann, _) = register(c, "ann").await?;
    let (bob, _) = register(c, "bob").await?;
    let (cat, _) = register(c, "cat").await?;
    let (dan, _) = register(c, "dan").await?;
    let (eve, _) = register(c, "eve").await?;
    let conv = group(c, ann, "Climbing", &[bob, cat, dan, eve]).await?;
    let subs: HashMap<&str, BrowserSubscription> = [
        ("ann", ann),
        ("bob", bob),
        ("cat", cat),
        ("dan", dan),
        ("eve", eve),
    ]
    .into_iter()
    .map(|(n, _)| Ok((n, s.push.subscribe()?)))
    .collect::<Result<_>>()?;
    for (name, user) in [
        ("ann", ann),
        ("bob", bob),
        ("cat", cat),
        ("dan", dan),
        ("eve", eve),
    ] {
        subscribe(&mut client, user, &subs[name]).await?;
    }
    // cat has a live WebSocket; dan muted the conversation; eve turned push off.
    let redis = tests::projector_support::redis().await?;
    let () = redis
        .set(
            infra::keys::presence(&s.prefix, &cat.to_string()),
            "1",
            Some(Expiration::EX(120)),
            None,
            false,
        )
        .await?;
    // The mute needs the membership projected.
    tests::projector_support::wait_caught_up(s.pool(), WAIT).await?;
    client
        .set_conversation_mute(as_user(
            &dan.to_string(),
            pb::SetConversationMuteRequest {
                conversation_id: conv.clone(),
                muted: true,
                muted_until: (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
            },
        ))
        .await?;
    put_settings(&mut client, eve, false, false, 600).await?;

    let m1 = send(c, ann, &conv, "first <b>route</b> at 9").await?;
    let m2 = send(c, ann, &conv, "second").await?;
    let bob_token = subs["bob"].token.clone();
    s.push
        .wait_for(WAIT, "bob's two pushes", |r| {
            r.iter().filter(|x| x.token == bob_token).count() >= 2
        })
        .await?;
    wait_pushes_final(s.pool()).await?;

    let got = s.push.received_by(&bob_token);
    ensure!(got.len() == 2, "bob got {} pushes", got.len());
    // In order: with one Topic per conversation the push service keeps the
    // last push it received, so "second" must arrive after "first".
    let order: Vec<Option<i64>> = got
        .iter()
        .map(|r| r.payload.as_ref().and_then(|p| p["seq"].as_i64()))
        .collect();
    ensure!(
        order == [Some(m1.seq), Some(m2.seq)],
        "bob's pushes arrived as seqs {order:?}, not first ({}) then second ({})",
        m1.seq,
        m2.seq
    );
    for (r, m) in got.iter().zip([&m1, &m2]) {
        ensure!(r.problems.is_empty(), "push problems: {:?}", r.problems);
        ensure!(r.status == 201);
        let p = r.payload.as_ref().context("no payload")?;
        let expected = serde_json::json!({
            "type": "message",
            "conversation_id": conv,
            "message_id": m.message_id.to_string(),
            "seq": m.seq,
            "sender_id": ann.to_string(),
            "title": "ann display in Climbing",
            "body": if m.seq == m1.seq { "first <b>route</b> at 9" } else { "second" },
        });
        ensure!(*p == expected, "payload {p} != {expected}");
        let conv_id: uuid::Uuid = conv.parse()?;
        ensure!(r.topic.as_deref() == Some(conv_id.simple().to_string().as_str()));
        ensure!(r.ttl.as_deref() == Some("86400"));
        ensure!(r.urgency.as_deref() == Some("normal"));
    }
    for name in ["ann", "cat", "dan", "eve"] {
        let n = s.push.received_by(&subs[name].token).len();
        ensure!(n == 0, "{name} got {n} pushes");
    }
    // The dedupe rows agree: bob's two, nobody else's.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM push_deliveries WHERE state = 'sent'")
        .fetch_one(s.pool())
        .await?;
    ensure!(rows == 2, "{rows} sent rows");
    // Unmuted and offline again, dan gets the next one.
    client
        .set_conversation_mute(as_user(
            &dan.to_string(),
            pb::SetConversationMuteRequest {
                conversation_id: conv.clone(),
                muted: false,
                muted_until: String::new(),
            },
        ))
        .await?;
    send(c, ann, &conv, "third").await?;
    let dan_token = subs["dan"].token.clone();
    s.push
        .wait_for(WAIT, "dan's push after unmuting", |r| {
            r.iter().any(|x| x.token == dan_token)
        })
        .await?;
    let _ = redis.quit().await;
    s.stop().await
}

/// Pushes of one conversation reach each subscription in the conversation's
/// order, all of them, once each: a burst into a group (four members, one
/// with two browsers) interleaved with a direct conversation of one member,
/// while the push service answers every request after a random delay (so
/// concurrent requests overtake each other). Lanes (subscription,
/// conversation) go in parallel; within one, a push leaves only after the
/// previous one was answered.
#[tokio::test]
async fn pushes_arrive_in_conversation_order_per_subscription() -> Result<()> {
    let s = Stack::start(&[]).await?;
    let c = &s.svc.commands;
    let mut client = s.client().await?;
    s.push.set_jitter(Duration::from_millis(25));
    let (owner, _) = register(c, "own").await?;
    let mut members = Vec::new();
    // Each member's tokens.
    let mut tokens: Vec<Vec<String>> = Vec::new();
    for i in 0..4 {
        let (u, _) = register(c, &format!("m{i}")).await?;
        let mut mine = Vec::new();
        for _ in 0..if i == 0 { 2 } else { 1 } {
            let sub = s.push.subscribe()?;
            subscribe(&mut client, u, &sub).await?;
            mine.push(sub.token.clone());
        }
        tokens.push(mine);
        members.push(u);
    }
    let conv = group(c, owner, "Order", &members).await?;
    let direct = c
        .open_direct(owner, &members[0].to_string(), &meta(owner))
        .await?
        .0
        .to_string();
    // The seqs sent per conversation, in sending order.
    let mut sent: HashMap<String, Vec<i64>> = HashMap::new();
    for i in 0..48 {
        let to = if i % 4 == 3 { &direct } else { &conv };
        let m = send(c, owner, to, &format!("burst {i}")).await?;
        sent.entry(to.clone()).or_default().push(m.seq);
    }
    // What each (token, conversation) lane must receive, in this order.
    let mut expected: HashMap<(String, String), Vec<i64>> = HashMap::new();
    for (i, mine) in tokens.iter().enumerate() {
        for t in mine {
            expected.insert((t.clone(), conv.clone()), sent[&conv].clone());
            if i == 0 {
                expected.insert((t.clone(), direct.clone()), sent[&direct].clone());
            }
        }
    }
    let total: usize = expected.values().map(Vec::len).sum();
    s.push
        .wait_for(WAIT, "every push of the burst", |r| r.len() >= total)
        .await?;
    wait_pushes_final(s.pool()).await?;
    let mut got: HashMap<(String, String), Vec<i64>> = HashMap::new();
    for r in s.push.received() {
        ensure!(r.problems.is_empty(), "push problems: {:?}", r.problems);
        ensure!(r.status == 201, "status {}", r.status);
        let p = r.payload.as_ref().context("no payload")?;
        let conversation = p["conversation_id"].as_str().context("conversation_id")?;
        let seq = p["seq"].as_i64().context("seq")?;
        got.entry((r.token.clone(), conversation.to_owned()))
            .or_default()
            .push(seq);
    }
    for (lane, seqs) in &got {
        ensure!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "lane {lane:?} received seqs out of order: {seqs:?}"
        );
    }
    ensure!(
        got == expected,
        "received per lane {got:?}, expected {expected:?}"
    );
    s.stop().await
}

#[tokio::test]
async fn gone_subscriptions_are_deleted_and_unavailable_ones_retried_once() -> Result<()> {
    let s = Stack::start(&[]).await?;
    let c = &s.svc.commands;
    let mut client = s.client().await?;
    let (ann, _) = register(c, "ann").await?;
    let (bob, _) = register(c, "bob").await?;
    let conv = c
        .open_direct(ann, &bob.to_string(), &meta(ann))
        .await?
        .0
        .to_string();
    let gone = s.push.subscribe()?;
    let flaky = s.push.subscribe()?;
    s.push.script(&gone.token, &[(410, None)]);
    s.push.script(&flaky.token, &[(503, Some(1))]);
    let gone_id = subscribe(&mut client, bob, &gone).await?;
    let flaky_id = subscribe(&mut client, bob, &flaky).await?;

    let m = send(c, ann, &conv, "hello").await?;
    let flaky_token = flaky.token.clone();
    s.push
        .wait_for(WAIT, "the retried push", |r| {
            r.iter().filter(|x| x.token == flaky_token).count() >= 2
        })
        .await?;
    wait_pushes_final(s.pool()).await?;
    let tries = s.push.received_by(&flaky.token);
    ensure!(
        tries.len() == 2,
        "{} requests to the flaky endpoint",
        tries.len()
    );
    ensure!(tries[0].status == 503 && tries[1].status == 201);
    let gap = tries[1].at.duration_since(tries[0].at);
    ensure!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 not honoured ({gap:?})"
    );
    for t in &tries {
        ensure!(t.problems.is_empty(), "{:?}", t.problems);
        ensure!(
            t.payload.as_ref().map(|p| p["message_id"].clone())
                == Some(m.message_id.to_string().into())
        );
    }
    ensure!(s.push.received_by(&gone.token).len() == 1);
    let listed = client
        .list_subscriptions(as_user(&bob.to_string(), pb::ListSubscriptionsRequest {}))
        .await?
        .into_inner()
        .subscriptions;
    let ids: Vec<&str> = listed.iter().map(|s| s.subscription_id.as_str()).collect();
    ensure!(
        ids == vec![flaky_id.as_str()],
        "after 410: {ids:?} (gone was {gone_id})"
    );

    // The next message goes to the remaining subscription only.
    send(c, ann, &conv, "again").await?;
    s.push
        .wait_for(WAIT, "the second push", |r| {
            r.iter().filter(|x| x.token == flaky_token).count() >= 3
        })
        .await?;
    wait_pushes_final(s.pool()).await?;
    ensure!(s.push.received_by(&gone.token).len() == 1);
    s.stop().await
}

#[tokio::test]
async fn retries_are_bounded_then_dead_lettered() -> Result<()> {
    let s = Stack::start(&["--push-max-attempts", "3"]).await?;
    let c = &s.svc.commands;
    let mut client = s.client().await?;
    let (ann, _) = register(c, "ann").await?;
    let (bob, _) = register(c, "bob").await?;
    let conv = c
        .open_direct(ann, &bob.to_string(), &meta(ann))
        .await?
        .0
        .to_string();
    let down = s.push.subscribe()?;
    s.push.script(
        &down.token,
        &[(500, None), (429, None), (503, None), (201, None)],
    );
    subscribe(&mut client, bob, &down).await?;
    send(c, ann, &conv, "hello").await?;
    let dead = read_raw(
        s.opts.dead_letter_topic.as_deref().context("topic")?,
        1,
        WAIT,
    )
    .await?;
    ensure!(dead[0].headers.get("dlq_reason").map(String::as_str) == Some("push_failed"));
    let value = String::from_utf8_lossy(dead[0].value.as_deref().unwrap_or_default()).into_owned();
    ensure!(
        !value.contains(&down.endpoint)
            && !value.contains(&down.auth)
            && !value.contains(&down.p256dh),
        "secrets in the dead letter: {value}"
    );
    wait_pushes_final(s.pool()).await?;
    ensure!(
        s.push.received_by(&down.token).len() == 3,
        "exactly max-attempts requests"
    );
    s.stop().await
}

#[tokio::test]
async fn settings_and_subscriptions_over_grpc() -> Result<()> {
    let s = Stack::start(&[]).await?;
    let mut client = s.client().await?;
    let user = uuid::Uuid::now_v7().to_string();
    let code = |st: &tonic::Status| {
        st.metadata()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let key = client
        .get_vapid_public_key(as_user(&user, pb::GetVapidPublicKeyRequest {}))
        .await?
        .into_inner()
        .public_key;
    let raw = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &key)?;
    ensure!(raw.len() == 65 && raw[0] == 4, "not an uncompressed point");

    let d = client
        .get_settings(as_user(&user, pb::GetSettingsRequest {}))
        .await?
        .into_inner();
    ensure!(
        d.push && d.email && d.email_delay_seconds == 600,
        "defaults: {d:?}"
    );
    client
        .put_settings(as_user(
            &user,
            pb::NotificationSettings {
                push: false,
                email: true,
                email_delay_seconds: 60,
            },
        ))
        .await?;
    let d = client
        .get_settings(as_user(&user, pb::GetSettingsRequest {}))
        .await?
        .into_inner();
    ensure!(!d.push && d.email && d.email_delay_seconds == 60);
    let e = client
        .put_settings(as_user(
            &user,
            pb::NotificationSettings {
                push: true,
                email: true,
                email_delay_seconds: 10_000_000,
            },
        ))
        .await
        .err()
        .context("out-of-range delay accepted")?;
    ensure!(code(&e).as_deref() == Some("validation_failed"));

    let sub = s.push.subscribe()?;
    let id = subscribe(&mut client, user.parse::<uuid::Uuid>().map(UserId)?, &sub).await?;
    let again = subscribe(&mut client, user.parse::<uuid::Uuid>().map(UserId)?, &sub).await?;
    ensure!(id == again, "same endpoint, same subscription");
    for (endpoint, p256dh, auth) in [
        ("ftp://x/y", sub.p256dh.as_str(), sub.auth.as_str()),
        (sub.endpoint.as_str(), "AAAA", sub.auth.as_str()),
        (sub.endpoint.as_str(), sub.p256dh.as_str(), "AAAA"),
    ] {
        let e = client
            .create_subscription(as_user(
                &user,
                pb::CreateSubscriptionRequest {
                    endpoint: endpoint.into(),
                    p256dh: p256dh.into(),
                    auth: auth.into(),
                },
            ))
            .await
            .err()
            .context("bad subscription accepted")?;
        ensure!(code(&e).as_deref() == Some("validation_failed"));
    }
    let other = uuid::Uuid::now_v7().to_string();
    let e = client
        .delete_subscription(as_user(
            &other,
            pb::DeleteSubscriptionRequest {
                subscription_id: id.clone(),
            },
        ))
        .await
        .err()
        .context("deleted another user's subscription")?;
    ensure!(code(&e).as_deref() == Some("subscription_not_found"));
    let listed = client
        .list_subscriptions(as_user(&user, pb::ListSubscriptionsRequest {}))
        .await?
        .into_inner()
        .subscriptions;
    ensure!(listed.len() == 1 && listed[0].endpoint == sub.endpoint);
    client
        .delete_subscription(as_user(
            &user,
            pb::DeleteSubscriptionRequest {
                subscription_id: id,
            },
        ))
        .await?;
    let e = client
        .set_conversation_mute(as_user(
            &user,
            pb::SetConversationMuteRequest {
                conversation_id: uuid::Uuid::now_v7().to_string(),
                muted: true,
                muted_until: String::new(),
            },
        ))
        .await
        .err()
        .context("muted a conversation of which the caller is no member")?;
    ensure!(code(&e).as_deref() == Some("conversation_not_found"));
    let e = client
        .get_settings(tonic::Request::new(pb::GetSettingsRequest {}))
        .await
        .err()
        .context("no caller accepted")?;
    ensure!(code(&e).as_deref() == Some("unauthenticated"));
    s.stop().await
}

/// Waits (polling, with a deadline) until `sql` (a count for the bound
/// user) returns `want`.
async fn wait_count(pool: &PgPool, sql: &str, user: UserId, want: i64, what: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = count(pool, sql, user).await?;
        if n == want {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: {n}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_burst_while_away_yields_one_digest_and_reading_yields_none() -> Result<()> {
    let s = Stack::start(&[]).await?;
    let c = &s.svc.commands;
    let mut client = s.client().await?;
    let (ann, _) = register(c, "ann").await?;
    let (bob, bob_mail) = register(c, "bob").await?;
    let (cat, cat_mail) = register(c, "cat").await?;
    // A delay no run of this test reaches: the items become due when the
    // test says the delay has passed (below), once every message is queued.
    // (With a real 2 s, then 5 s delay, the digest went out before the
    // burst was all queued whenever the machine was loaded: "7 unread
    // messages in 1 conversation".)
    for u in [bob, cat] {
        put_settings(&mut client, u, true, true, 600).await?;
    }
    let convs = [
        group(c, ann, "Alpha", &[bob, cat]).await?,
        group(c, ann, "Beta", &[bob, cat]).await?,
        group(c, ann, "Gamma", &[bob, cat]).await?,
    ];
    let mut last = HashMap::new();
    for i in 0..20 {
        let conv = &convs[i % 3];
        let m = send(c, ann, conv, &format!("message number {i}")).await?;
        last.insert(conv.clone(), m.seq);
    }
    // cat reads everything at once, well before the delay.
    for (conv, seq) in &last {
        c.mark_read(cat, conv, *seq, &meta(cat)).await?;
    }
    // The whole burst is pending for the digest worker: one row per
    // conversation, none per recipient or message.
    let ids: Vec<uuid::Uuid> = convs.iter().map(|c| c.parse()).collect::<Result<_, _>>()?;
    let want: i64 = last.values().sum();
    let deadline = Instant::now() + WAIT;
    loop {
        let (rows, seqs): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), sum(last_seq)::bigint FROM digest_pending WHERE conversation_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_one(s.pool())
        .await?;
        if seqs == Some(want) {
            ensure!(rows == 3, "{rows} pending rows for 3 conversations");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "burst not pending: {rows} rows, {seqs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tests::projector_support::wait_caught_up(s.pool(), WAIT).await?;
    ensure!(
        count(
            s.pool(),
            "SELECT count(*) FROM digests_sent WHERE user_id = $1",
            bob
        )
        .await?
            == 0,
        "bob was mailed before his delay"
    );
    // The delay passes: digests follow the settings as they are at digest
    // time.
    for u in [bob, cat] {
        put_settings(&mut client, u, true, true, 0).await?;
    }
    // The worker mails before it commits (at-least-once): wait for the
    // commit, which records the digest and raises the watermark together.
    wait_count(
        s.pool(),
        "SELECT count(*) FROM digests_sent WHERE user_id = $1",
        bob,
        1,
        "bob's digests",
    )
    .await?;
    let deadline = Instant::now() + WAIT;
    let mails = loop {
        let m = mail_to(&bob_mail).await?;
        if !m.is_empty() {
            break m;
        }
        ensure!(Instant::now() < deadline, "no digest for bob");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let subject = mails[0].subject.clone().unwrap_or_default();
    ensure!(
        subject == "20 unread messages in 3 conversations",
        "subject {subject:?}"
    );
    let raw = &mails[0].raw;
    for t in [
        "Alpha",
        "Beta",
        "Gamma",
        "text/plain",
        "text/html",
        "message number 19",
    ] {
        ensure!(raw.contains(t), "{t:?} missing from the digest");
    }
    // Nothing is left pending: bob's watermark covers the burst and cat
    // read it, so the worker drops the conversations' rows. It does so
    // only after a round in which nobody had anything left to mail, so
    // once they are gone cat's missing digest is a result, not a race.
    let deadline = Instant::now() + WAIT;
    loop {
        let rows: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM digest_pending WHERE conversation_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_one(s.pool())
        .await?;
        if rows == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{rows} conversations still pending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(mail_to(&bob_mail).await?.len() == 1, "more than one digest");
    let sent = count(
        s.pool(),
        "SELECT count(*) FROM digests_sent WHERE user_id = $1",
        cat,
    )
    .await?;
    ensure!(
        sent == 0 && mail_to(&cat_mail).await?.is_empty(),
        "cat got a digest"
    );
    // One more message: bob's next digest lists it alone, the watermark
    // keeps the burst out of it; cat, who has not read it, gets it too.
    send(c, ann, &convs[0], "after the digest").await?;
    for (user, mail, want) in [(bob, &bob_mail, 2), (cat, &cat_mail, 1)] {
        wait_count(
            s.pool(),
            "SELECT count(*) FROM digests_sent WHERE user_id = $1",
            user,
            want,
            "digests after the next message",
        )
        .await?;
        let deadline = Instant::now() + WAIT;
        loop {
            let subjects: Vec<String> = mail_to(mail)
                .await?
                .into_iter()
                .filter_map(|m| m.subject)
                .collect();
            if subjects.len() == want as usize {
                ensure!(
                    subjects
                        .iter()
                        .any(|s| s == "1 unread message in 1 conversation"),
                    "{subjects:?}"
                );
                break;
            }
            ensure!(Instant::now() < deadline, "mails: {subjects:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    s.stop().await
}

#[tokio::test]
async fn poison_is_dead_lettered_and_the_notifier_carries_on() -> Result<()> {
    let s = Stack::start(&[]).await?;
    let c = &s.svc.commands;
    let mut client = s.client().await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack().kafka_brokers)
        .create()?;
    producer
        .send(
            FutureRecord::to(&s.svc.topic)
                .key("k")
                .payload("{not an envelope"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    let (ann, _) = register(c, "ann").await?;
    let (bob, _) = register(c, "bob").await?;
    let sub = s.push.subscribe()?;
    subscribe(&mut client, bob, &sub).await?;
    let conv = c
        .open_direct(ann, &bob.to_string(), &meta(ann))
        .await?
        .0
        .to_string();
    send(c, ann, &conv, "after the poison").await?;
    let token = sub.token.clone();
    s.push
        .wait_for(WAIT, "the push after the poison", |r| {
            r.iter().any(|x| x.token == token)
        })
        .await?;
    let dead = read_raw(
        s.opts.dead_letter_topic.as_deref().context("topic")?,
        1,
        WAIT,
    )
    .await?;
    ensure!(dead[0].headers.get("dlq_reason").map(String::as_str) == Some("undecodable"));
    ensure!(dead[0].value.as_deref() == Some(b"{not an envelope".as_slice()));
    s.stop().await
}

/// A crash mid-burst: every (message, subscription) is delivered, and the
/// only repeats are requests that were in flight at the crash (claimed,
/// unanswered rows: the HTTP hop's unavoidable at-least-once window). The
/// Kafka batches redelivered after the restart queue nothing twice.
#[tokio::test]
async fn killing_the_notifier_mid_burst_delivers_every_notification_once() -> Result<()> {
    let mut s = Stack::start(&["--push-per-origin", "4"]).await?;
    let c = &s.svc.commands;
    let mut client = s.client().await?;
    s.push.set_delay(Duration::from_millis(15));
    let (owner, _) = register(c, "own").await?;
    let mut members = Vec::new();
    let mut tokens = HashSet::new();
    for i in 0..8 {
        let (u, _) = register(c, &format!("m{i}")).await?;
        let sub = s.push.subscribe()?;
        subscribe(&mut client, u, &sub).await?;
        tokens.insert(sub.token.clone());
        members.push(u);
    }
    let conv = group(c, owner, "Burst", &members).await?;
    let mut messages = Vec::new();
    for i in 0..30 {
        messages.push(
            send(c, owner, &conv, &format!("burst {i}"))
                .await?
                .message_id
                .to_string(),
        );
    }
    let expected: HashSet<(String, String)> = tokens
        .iter()
        .flat_map(|t| messages.iter().map(move |m| (t.clone(), m.clone())))
        .collect();
    // Kill once a third has arrived.
    s.push
        .wait_for(WAIT, "a third of the burst", |r| {
            r.len() >= expected.len() / 3
        })
        .await?;
    let notifier = s.notifier.take().context("notifier")?;
    notifier.kill().await;
    let at_kill = s.push.received().len();
    // Rows claimed but not closed at the crash: the only ambiguity.
    let in_flight: HashSet<(String, String)> = sqlx::query_as::<_, (uuid::Uuid, String)>(
        "SELECT d.message_id, s.endpoint FROM push_deliveries d \
         JOIN push_subscriptions s USING (subscription_id) WHERE d.state = 'sending'",
    )
    .fetch_all(s.pool())
    .await?
    .into_iter()
    .map(|(m, e)| {
        (
            e.rsplit('/').next().unwrap_or_default().to_owned(),
            m.to_string(),
        )
    })
    .collect();
    ensure!(
        at_kill < expected.len(),
        "the burst was over before the kill"
    );
    // Restart on the same consumer group.
    s.notifier = Some(RunningNotifier::start(&s.svc, &s.opts).await?);
    s.push
        .wait_for(WAIT, "the whole burst", |r| {
            delivered(r).is_superset(&expected)
        })
        .await?;
    wait_pushes_final(s.pool()).await?;
    let got = s.push.received();
    let mut per: HashMap<(String, String), usize> = HashMap::new();
    for r in got.iter().filter(|r| r.status == 201) {
        ensure!(r.problems.is_empty(), "{:?}", r.problems);
        let m = r
            .payload
            .as_ref()
            .and_then(|p| p["message_id"].as_str())
            .context("payload")?;
        *per.entry((r.token.clone(), m.to_owned())).or_default() += 1;
    }
    ensure!(
        per.keys().cloned().collect::<HashSet<_>>() == expected,
        "delivered set differs"
    );
    let repeats: Vec<_> = per
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k.clone())
        .collect();
    for k in &repeats {
        ensure!(
            in_flight.contains(k),
            "{k:?} repeated but was not in flight at the crash"
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM push_deliveries WHERE state = 'sent'")
        .fetch_one(s.pool())
        .await?;
    ensure!(
        rows as usize == expected.len(),
        "{rows} dedupe rows for {} notifications",
        expected.len()
    );
    tracing::info!(
        at_kill,
        in_flight = in_flight.len(),
        repeats = repeats.len(),
        "crash mid-burst"
    );
    s.stop().await
}

/// Figures for the report (not a gate): a burst into a 100-member group
/// where every member has two push subscriptions. Prints notifications/s,
/// send-to-arrival p50/p99 and the test process's RSS (command-service,
/// projector, notifier and push service all run in it, so it bounds the
/// notifier's). Run:
/// `cargo nextest run -p tests --test notifier --run-ignored only -E 'test(push_burst_figures)' --no-capture`
#[tokio::test]
#[ignore = "benchmark; run explicitly"]
async fn push_burst_figures() -> Result<()> {
    let messages: usize = std::env::var("BURST_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let s = Stack::start(&["--push-per-origin", "64", "--push-concurrency", "256"]).await?;
    let c = &s.svc.commands;
    let mut client = s.client().await?;
    let (owner, _) = register(c, "own").await?;
    for _ in 0..2 {
        subscribe(&mut client, owner, &s.push.subscribe()?).await?;
    }
    let mut members = Vec::new();
    for i in 0..99 {
        let (u, _) = register(c, &format!("m{i}")).await?;
        for _ in 0..2 {
            subscribe(&mut client, u, &s.push.subscribe()?).await?;
        }
        members.push(u);
    }
    let conv = group(c, owner, "Everyone", &members).await?;
    tests::projector_support::wait_caught_up(s.pool(), WAIT).await?;
    let rss_before = rss_kib("VmRSS");
    let expected = messages * 99 * 2;
    let start = Instant::now();
    let mut sent_at = HashMap::new();
    for i in 0..messages {
        let t = Instant::now();
        let m = send(c, owner, &conv, &format!("burst message {i}")).await?;
        sent_at.insert(m.message_id.to_string(), t);
    }
    let send_time = start.elapsed();
    let got = s
        .push
        .wait_for(Duration::from_secs(600), "the whole burst", |r| {
            r.iter().filter(|x| x.status == 201).count() >= expected
        })
        .await?;
    let elapsed = start.elapsed();
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    // The push service runs in this process too: its handling time is
    // measured apart so the figure is not mistaken for the notifier's.
    let mut handled = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut handled_total = Duration::ZERO;
    for r in got.iter().filter(|r| r.status == 201) {
        ensure!(r.problems.is_empty(), "{:?}", r.problems);
        handled.record(r.handled_in.as_micros() as u64)?;
        handled_total += r.handled_in;
        let m = r
            .payload
            .as_ref()
            .and_then(|p| p["message_id"].as_str())
            .context("payload")?;
        let t0 = sent_at.get(m).context("unknown message")?;
        hist.record(r.at.duration_since(*t0).as_micros() as u64)?;
    }
    let rss_peak = rss_kib("VmHWM");
    #[allow(clippy::print_stdout)]
    {
        println!(
            "push burst: {messages} messages x 198 subscriptions = {expected} pushes in {:.2} s (sends took {:.2} s) = {:.0} notifications/s; \
             send-to-arrival p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; test-process RSS {} MiB before, peak {} MiB; \
             push service's own handling (VAPID check, decryption) p50 {:.2} ms, p99 {:.2} ms, {:.2} s in all",
            elapsed.as_secs_f64(),
            send_time.as_secs_f64(),
            expected as f64 / elapsed.as_secs_f64(),
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            hist.max() as f64 / 1000.0,
            rss_before / 1024,
            rss_peak / 1024,
            handled.value_at_quantile(0.5) as f64 / 1000.0,
            handled.value_at_quantile(0.99) as f64 / 1000.0,
            handled_total.as_secs_f64(),
        );
    }
    s.stop().await
}

/// A field of /proc/self/status in KiB (0 where unavailable).
fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The `x-error-code` of a failed call.
fn error_code(e: &tonic::Status) -> Option<String> {
    proto::meta::error_code(e).map(str::to_owned)
}

/// Push endpoints are a way into the network (SSRF, security review H-1).
/// A user has at most `--max-subscriptions-per-user` (the oldest goes).
/// Registration refuses every endpoint that is not https on an allowed
/// push-service host resolving only to public addresses; and subscriptions
/// that point inside anyway (stored before a policy was narrowed, or a name
/// that re-resolved inside: DNS rebinding) are never contacted: the worker
/// checks the URL and the client resolves through the address filter.
#[tokio::test]
async fn push_endpoints_inside_the_network_are_refused_and_never_contacted() -> Result<()> {
    let mut s = Stack::start(&[
        "--push-max-attempts",
        "1",
        "--max-subscriptions-per-user",
        "3",
    ])
    .await?;
    let c = &s.svc.commands;
    let (ann, _) = register(c, "ann").await?;
    let (bob, _) = register(c, "bob").await?;
    let bob_s = bob.to_string();

    // The cap: a fourth subscription replaces the oldest.
    let mut client = s.client().await?;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(subscribe(&mut client, bob, &s.push.subscribe()?).await?);
    }
    let listed: Vec<String> = client
        .list_subscriptions(as_user(&bob_s, pb::ListSubscriptionsRequest {}))
        .await?
        .into_inner()
        .subscriptions
        .into_iter()
        .map(|x| x.subscription_id)
        .collect();
    ensure!(listed == ids[1..], "kept {listed:?} of {ids:?}");
    sqlx::query("DELETE FROM push_subscriptions WHERE user_id = $1")
        .bind(bob.0)
        .execute(s.pool())
        .await?;

    // The production address rule: the hosts below are allow-listed (so
    // only the address check stands between them and the notifier), no
    // private network is.
    s.notifier.take().context("notifier")?.stop().await?;
    let mut config = tests::notifier_support::config(&s.svc, &s.opts)?;
    config.push_allowed_hosts = [
        "localhost:*",
        "127.0.0.1:*",
        "[::1]:*",
        "10.1.2.3:*",
        "169.254.169.254:*",
    ]
    .map(String::from)
    .to_vec();
    config.push_allowed_networks = Vec::new();
    s.notifier = Some(RunningNotifier::start_with(config).await?);
    let mut client = s.client().await?;

    let (b1, b2) = (s.push.subscribe()?, s.push.subscribe()?);
    let port = b1
        .endpoint
        .strip_prefix("https://localhost:")
        .and_then(|r| r.split('/').next())
        .context("push endpoint shape")?
        .to_owned();
    let inside = format!("https://127.0.0.1:{port}/push/{}", b2.token);
    for endpoint in [
        b1.endpoint.clone(),
        inside.clone(),
        format!("https://[::1]:{port}/push/x"),
        "https://10.1.2.3/push/x".into(),
        "https://169.254.169.254/latest/meta-data".into(),
        "http://fcm.googleapis.com/fcm/send/x".into(),
        "https://push.evil.test/x".into(),
    ] {
        let e = client
            .create_subscription(as_user(
                &bob_s,
                pb::CreateSubscriptionRequest {
                    endpoint: endpoint.clone(),
                    p256dh: b1.p256dh.clone(),
                    auth: b1.auth.clone(),
                },
            ))
            .await
            .err()
            .with_context(|| format!("{endpoint} accepted"))?;
        ensure!(
            error_code(&e).as_deref() == Some("validation_failed"),
            "{endpoint}: {e:?}"
        );
    }
    ensure!(s.push.received().is_empty(), "registration contacted them");

    // Stored anyway: by name (the resolver filters) and by IP literal (the
    // worker's check refuses).
    for (endpoint, b) in [(&b1.endpoint, &b1), (&inside, &b2)] {
        sqlx::query(
            "INSERT INTO push_subscriptions (subscription_id, user_id, endpoint, p256dh, auth) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(bob.0)
        .bind(endpoint)
        .bind(b.p256dh.trim_end_matches('='))
        .bind(b.auth.trim_end_matches('='))
        .execute(s.pool())
        .await?;
    }
    let conv = group(c, ann, "Inside", &[bob]).await?;
    send(c, ann, &conv, "knock knock").await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = count(
            s.pool(),
            "SELECT count(*) FROM push_deliveries WHERE user_id = $1",
            bob,
        )
        .await?;
        if rows == 2 {
            break;
        }
        ensure!(Instant::now() < deadline, "{rows} pushes queued for bob");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_pushes_final(s.pool()).await?;
    let failed = count(
        s.pool(),
        "SELECT count(*) FROM push_deliveries WHERE user_id = $1 AND state = 'failed'",
        bob,
    )
    .await?;
    ensure!(failed == 2, "{failed} of bob's 2 pushes failed");
    ensure!(
        s.push.received().is_empty(),
        "the notifier reached the push service on loopback: {:?}",
        s.push.received().len()
    );
    s.stop().await
}
