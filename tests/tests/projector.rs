//! The projector against the real stack: command-service in-process on a
//! fresh database and topic produces the events; the projector runs
//! in-process on the same database and topic with its own consumer group,
//! Redis prefix and dead-letter topic.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use command_service::commands::{Commands, SentMessage};
use command_service::store::CommandMeta;
use domain::decode::Decoder;
use domain::values::UserId;
use fred::prelude::{ClientLike, KeysInterface};
use projector::engine::Engine;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use tests::harness::{stack, CommandService, CommandServiceOptions};
use tests::projector_support::{
    self as support, compare_dumps, dump, wait_caught_up, wait_relayed, ProjectorOptions,
    RunningProjector, Subscriber,
};

const WAIT: Duration = Duration::from_secs(60);

fn meta(actor: UserId) -> CommandMeta {
    CommandMeta::new(actor.to_string(), None)
}

async fn register(c: &Commands, name: &str) -> Result<UserId> {
    Ok(c.register(
        &format!("{name}@example.org"),
        name,
        &format!("{name}-password"),
        None,
        &CommandMeta::new(domain::envelope::SYSTEM_ACTOR, None),
    )
    .await?)
}

async fn send(
    c: &Commands,
    user: UserId,
    conv: &str,
    cmid: &str,
    body: &str,
) -> Result<SentMessage> {
    Ok(c.send_message(user, conv, cmid, body, &meta(user)).await?)
}

/// The scripted scenario of `read_models_follow_a_scripted_scenario`.
struct Scenario {
    ann: UserId,
    bob: UserId,
    cat: UserId,
    group: String,
    direct: String,
    m1: SentMessage,
    m2: SentMessage,
    m3: SentMessage,
    dm: SentMessage,
}

async fn scenario(svc: &CommandService) -> Result<Scenario> {
    let c = &svc.commands;
    let ann = register(c, "ann").await?;
    let bob = register(c, "bob").await?;
    let cat = register(c, "cat").await?;
    c.change_display_name(ann, "Ann A.", &meta(ann)).await?;
    c.set_role(
        &cat.to_string(),
        "auditor",
        true,
        &CommandMeta::new(domain::envelope::SYSTEM_ACTOR, None),
    )
    .await?;
    let group = c
        .create_group(ann, "team", &[bob.to_string()], &meta(ann))
        .await?
        .to_string(); // seq 1
    c.add_member(ann, &group, &cat.to_string(), None, &meta(ann))
        .await?; // 2
    c.rename(ann, &group, "renamed team", &meta(ann)).await?; // 3
    let m1 = send(c, ann, &group, "m1", "hello from ann").await?; // 4
    let m2 = send(c, bob, &group, "m2", "hello from bob").await?; // 5
    let m3 = send(c, cat, &group, "m3", "hi from cat").await?; // 6
    c.edit_message(
        cat,
        &group,
        &m3.message_id.to_string(),
        "hi from cat (edited)",
        &meta(cat),
    )
    .await?; // 7
    c.delete_message(ann, &group, &m2.message_id.to_string(), &meta(ann))
        .await?; // 8 (owner deletes bob's message)
    c.mark_read(bob, &group, m1.seq, &meta(bob)).await?;
    c.remove_member(ann, &group, &cat.to_string(), &meta(ann))
        .await?; // 9
    let (direct, created) = c.open_direct(ann, &bob.to_string(), &meta(ann)).await?;
    ensure!(created);
    let direct = direct.to_string();
    let dm = send(c, bob, &direct, "d1", "psst").await?; // direct 2
    Ok(Scenario {
        ann,
        bob,
        cat,
        group,
        direct,
        m1,
        m2,
        m3,
        dm,
    })
}

/// Every member's unread count equals its definition, recomputed from
/// scratch, and every member has exactly one list row.
async fn assert_unread_consistent(pool: &PgPool) -> Result<()> {
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rm_user_conversations uc \
         JOIN rm_members mb USING (conversation_id, user_id) \
         WHERE uc.unread_count <> ( \
           SELECT count(*) FROM rm_messages m \
           WHERE m.conversation_id = uc.conversation_id \
             AND m.seq > GREATEST(uc.read_seq, mb.joined_seq) \
             AND m.sender_id <> uc.user_id AND NOT m.deleted)",
    )
    .fetch_one(pool)
    .await?;
    ensure!(
        wrong == 0,
        "{wrong} unread counts disagree with their definition"
    );
    let (lists, members): (i64, i64) = (
        sqlx::query_scalar("SELECT count(*) FROM rm_user_conversations")
            .fetch_one(pool)
            .await?,
        sqlx::query_scalar("SELECT count(*) FROM rm_members")
            .fetch_one(pool)
            .await?,
    );
    ensure!(lists == members, "{lists} list rows for {members} members");
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rm_user_conversations uc \
         LEFT JOIN rm_members mb USING (conversation_id, user_id) WHERE mb.user_id IS NULL",
    )
    .fetch_one(pool)
    .await?;
    ensure!(orphans == 0, "{orphans} list rows of non-members");
    Ok(())
}

#[tokio::test]
async fn read_models_follow_a_scripted_scenario() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let proj = RunningProjector::start(&svc, ProjectorOptions::default()).await?;
    let s = scenario(&svc).await?;
    wait_caught_up(&svc.pool, WAIT).await?;
    let pool = &svc.pool;

    // Users.
    let users = sqlx::query(
        "SELECT user_id, username, display_name, email, roles FROM rm_users ORDER BY username",
    )
    .fetch_all(pool)
    .await?;
    let users: Vec<(uuid::Uuid, String, String, String, Vec<String>)> = users
        .iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?;
    assert_eq!(
        users,
        vec![
            (
                s.ann.0,
                "ann".into(),
                "Ann A.".into(),
                "ann@example.org".into(),
                vec![]
            ),
            (
                s.bob.0,
                "bob".into(),
                "bob".into(),
                "bob@example.org".into(),
                vec![]
            ),
            (
                s.cat.0,
                "cat".into(),
                "cat".into(),
                "cat@example.org".into(),
                vec!["auditor".to_string()]
            ),
        ]
    );

    // Conversations.
    let conv = |id: &str| {
        let id = id.to_owned();
        async move {
            let r = sqlx::query(
                "SELECT kind, title, created_by, last_seq, last_message_seq FROM rm_conversations \
                 WHERE conversation_id = $1::uuid",
            )
            .bind(id)
            .fetch_one(pool)
            .await?;
            Ok::<_, anyhow::Error>((
                r.try_get::<String, _>(0)?,
                r.try_get::<Option<String>, _>(1)?,
                r.try_get::<uuid::Uuid, _>(2)?,
                r.try_get::<i64, _>(3)?,
                r.try_get::<Option<i64>, _>(4)?,
            ))
        }
    };
    assert_eq!(
        conv(&s.group).await?,
        (
            "group".into(),
            Some("renamed team".into()),
            s.ann.0,
            9,
            Some(6)
        )
    );
    assert_eq!(
        conv(&s.direct).await?,
        ("direct".into(), None, s.ann.0, 2, Some(2))
    );

    // Members and membership periods.
    let members: Vec<(uuid::Uuid, String, i64)> = sqlx::query(
        "SELECT user_id, role, joined_seq FROM rm_members WHERE conversation_id = $1::uuid ORDER BY role DESC",
    )
    .bind(&s.group)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
    .collect::<Result<_, sqlx::Error>>()?;
    assert_eq!(
        members,
        vec![(s.ann.0, "owner".into(), 1), (s.bob.0, "member".into(), 1)]
    );
    let cat_period: (i64, Option<i64>) = sqlx::query(
        "SELECT joined_seq, left_seq FROM rm_member_periods WHERE conversation_id = $1::uuid AND user_id = $2",
    )
    .bind(&s.group)
    .bind(s.cat.0)
    .fetch_one(pool)
    .await
    .map(|r| (r.get(0), r.get(1)))?;
    assert_eq!(cat_period, (2, Some(9)));

    // Messages: edit replaces the body, delete removes it.
    let messages: Vec<(i64, uuid::Uuid, Option<String>, bool, bool)> = sqlx::query(
        "SELECT seq, message_id, body, deleted, edited_at IS NOT NULL FROM rm_messages \
         WHERE conversation_id = $1::uuid ORDER BY seq",
    )
    .bind(&s.group)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
        ))
    })
    .collect::<Result<_, sqlx::Error>>()?;
    assert_eq!(
        messages,
        vec![
            (
                s.m1.seq,
                s.m1.message_id.0,
                Some("hello from ann".into()),
                false,
                false
            ),
            (s.m2.seq, s.m2.message_id.0, None, true, false),
            (
                s.m3.seq,
                s.m3.message_id.0,
                Some("hi from cat (edited)".into()),
                false,
                true
            ),
        ]
    );

    // Per-user lists: activity order and unread counts.
    let list = |u: UserId| async move {
        let rows = sqlx::query(
            "SELECT conversation_id::text, unread_count, read_seq FROM rm_user_conversations \
             WHERE user_id = $1 ORDER BY last_activity_at DESC, conversation_id DESC",
        )
        .bind(u.0)
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<(String, i64, i64)>, sqlx::Error>>()
    };
    // ann: the direct chat is newest; in the group only cat's message
    // counts (bob's was deleted); in the direct chat bob's.
    assert_eq!(
        list(s.ann).await?,
        vec![(s.direct.clone(), 1, 0), (s.group.clone(), 1, 0)]
    );
    // bob read up to m1: cat's message remains; his own do not count.
    assert_eq!(
        list(s.bob).await?,
        vec![(s.direct.clone(), 0, 0), (s.group.clone(), 1, s.m1.seq)]
    );
    assert_eq!(list(s.cat).await?, vec![], "cat left the group");
    let marker: i64 = sqlx::query_scalar(
        "SELECT seq FROM rm_read_markers WHERE conversation_id = $1::uuid AND user_id = $2",
    )
    .bind(&s.group)
    .bind(s.bob.0)
    .fetch_one(pool)
    .await?;
    assert_eq!(marker, s.m1.seq);
    assert_unread_consistent(pool).await?;

    // The analyst's projection counted every message sent (deleted too).
    let per_day: Vec<(uuid::Uuid, i64)> = sqlx::query(
        "SELECT user_id, count FROM rm_messages_per_user_day WHERE day = $1 ORDER BY count, user_id",
    )
    .bind(s.dm.sent_at.date_naive())
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let mut expected = vec![(s.ann.0, 1), (s.cat.0, 1), (s.bob.0, 2)];
    expected.sort_by_key(|(u, n)| (*n, *u));
    assert_eq!(per_day, expected);

    // Progress: the highest global position applied.
    let head = wait_relayed(pool, WAIT).await?;
    support::wait_sql(
        pool,
        WAIT,
        "SELECT COALESCE((SELECT last_position FROM rm_positions WHERE projection = $1), 0) = \
         (SELECT max(position) FROM events)",
        "core",
    )
    .await?;
    ensure!(head > 0);
    ensure!(proj.snapshot().dead_lettered == 0);
    proj.stop().await?;
    svc.stop().await
}

#[tokio::test]
async fn replaying_the_same_events_twice_leaves_every_read_model_unchanged() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let first = RunningProjector::start(&svc, ProjectorOptions::default()).await?;
    scenario(&svc).await?;
    wait_caught_up(&svc.pool, WAIT).await?;
    wait_relayed(&svc.pool, WAIT).await?;
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&svc.pool)
        .await?;
    first
        .wait_stats(WAIT, |s| s.records >= records as u64)
        .await?;
    first.stop().await?;
    let before = dump(&svc.pool).await?;
    ensure!(before["rm_messages"].len() == 4 && before["rm_users"].len() == 3);

    // 1. The whole topic again, through a second consumer group.
    let second = RunningProjector::start(&svc, ProjectorOptions::default()).await?;
    // Every (event, projection) pair processed: applied or skipped.
    let seen = second
        .wait_stats(WAIT, |s| s.applied + s.skipped >= 2 * records as u64)
        .await?;
    second.stop().await?;
    assert_eq!(seen.applied, 0, "nothing applied twice: {seen:?}");
    assert!(seen.skipped >= 2 * records as u64, "{seen:?}");
    compare_dumps(&before, &dump(&svc.pool).await?)?;

    // 2. Every stored event again, straight through the engine.
    let envelopes = {
        let mut conn = svc.pool.acquire().await?;
        projector::store::after_position(&mut conn, 0, 1_000_000).await?
    };
    ensure!(envelopes.len() as i64 == records);
    let decoder = Decoder::new();
    let events = envelopes
        .into_iter()
        .map(|e| decoder.decode(e))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tx = svc.pool.begin().await?;
    let outcome = Engine::new(decoder)
        .apply(
            &mut tx,
            projector::projections::builtin().all(),
            &events,
            None,
        )
        .await?;
    tx.commit().await?;
    assert_eq!(outcome.applied, 0);
    assert_eq!(outcome.skipped, 2 * records as u64);
    compare_dumps(&before, &dump(&svc.pool).await?)?;
    svc.stop().await
}

// ----- a mixed workload ----------------------------------------------------

/// xorshift64*: reproducible and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

struct Msg {
    id: String,
    sender: UserId,
    deleted: bool,
}

struct Conv {
    id: String,
    direct: bool,
    owner: UserId,
    members: Vec<UserId>,
    admins: HashSet<UserId>,
    messages: Vec<Msg>,
    last_seq: i64,
    markers: HashMap<UserId, i64>,
}

/// One writer owning its conversations (so it knows their state exactly),
/// appending events until `budget` (shared by all writers) is spent.
/// Returns the number of events it appended.
async fn writer(
    cmds: Arc<Commands>,
    users: Arc<Vec<UserId>>,
    worker: usize,
    budget: Arc<AtomicI64>,
) -> Result<i64> {
    let c = &*cmds;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (worker as u64 + 1).wrapping_mul(0x1234_5678_9abc));
    let mut convs: Vec<Conv> = Vec::new();
    let mut appended = 0_i64;
    for g in 0..3 {
        let owner = rng.pick(&users);
        let mut members = vec![owner];
        while members.len() < 4 {
            let u = rng.pick(&users);
            if !members.contains(&u) {
                members.push(u);
            }
        }
        let others: Vec<String> = members[1..].iter().map(|u| u.to_string()).collect();
        let id = c
            .create_group(owner, &format!("w{worker} g{g}"), &others, &meta(owner))
            .await?
            .to_string();
        convs.push(Conv {
            id,
            direct: false,
            owner,
            members,
            admins: HashSet::new(),
            messages: Vec::new(),
            last_seq: 1,
            markers: HashMap::new(),
        });
        appended += 1;
    }
    // A direct chat between two users only this writer pairs.
    let (a, b) = (users[2 * worker], users[2 * worker + 1]);
    let (id, _) = c.open_direct(a, &b.to_string(), &meta(a)).await?;
    convs.push(Conv {
        id: id.to_string(),
        direct: true,
        owner: a,
        members: vec![a, b],
        admins: HashSet::new(),
        messages: Vec::new(),
        last_seq: 1,
        markers: HashMap::new(),
    });
    appended += 1;
    budget.fetch_sub(appended, Ordering::Relaxed);

    let mut n = 0_u64;
    while budget.load(Ordering::Relaxed) > 0 {
        n += 1;
        let ci = rng.below(convs.len());
        let conv = &mut convs[ci];
        let roll = rng.below(100);
        let mut events = 1;
        let live_msgs: Vec<usize> = (0..conv.messages.len())
            .filter(|&i| !conv.messages[i].deleted)
            .collect();
        let editable: Vec<usize> = live_msgs
            .iter()
            .copied()
            .filter(|&i| conv.members.contains(&conv.messages[i].sender))
            .collect();
        let non_members: Vec<UserId> = users
            .iter()
            .copied()
            .filter(|u| !conv.members.contains(u))
            .collect();
        let removable: Vec<UserId> = conv
            .members
            .iter()
            .copied()
            .filter(|u| *u != conv.owner)
            .collect();
        match roll {
            50..=59 if !editable.is_empty() => {
                let m = &conv.messages[rng.pick(&editable)];
                c.edit_message(
                    m.sender,
                    &conv.id,
                    &m.id,
                    &format!("edit {n}"),
                    &meta(m.sender),
                )
                .await?;
            }
            60..=65 if !live_msgs.is_empty() => {
                let i = rng.pick(&live_msgs);
                let actor = if conv.direct {
                    conv.messages[i].sender
                } else {
                    conv.owner
                };
                if !conv.members.contains(&actor) {
                    continue;
                }
                c.delete_message(actor, &conv.id, &conv.messages[i].id, &meta(actor))
                    .await?;
                conv.messages[i].deleted = true;
            }
            66..=73 if !conv.direct && conv.members.len() < 8 && !non_members.is_empty() => {
                let u = rng.pick(&non_members);
                c.add_member(
                    conv.owner,
                    &conv.id,
                    &u.to_string(),
                    None,
                    &meta(conv.owner),
                )
                .await?;
                conv.members.push(u);
            }
            74..=79 if !conv.direct && !removable.is_empty() => {
                let u = rng.pick(&removable);
                let actor = if rng.below(2) == 0 { conv.owner } else { u };
                c.remove_member(actor, &conv.id, &u.to_string(), &meta(actor))
                    .await?;
                conv.members.retain(|m| *m != u);
                conv.admins.remove(&u);
            }
            80..=94 => {
                let u = rng.pick(&conv.members);
                let seq = (conv.last_seq - rng.below(4) as i64).max(1);
                c.mark_read(u, &conv.id, seq, &meta(u)).await?;
                let marker = conv.markers.entry(u).or_insert(0);
                events = i64::from(seq > *marker);
                *marker = (*marker).max(seq);
                // Not an event of the conversation stream.
                budget.fetch_sub(events, Ordering::Relaxed);
                appended += events;
                continue;
            }
            95..=97 if !conv.direct => {
                c.rename(
                    conv.owner,
                    &conv.id,
                    &format!("title {n}"),
                    &meta(conv.owner),
                )
                .await?;
            }
            98..=99 if !conv.direct && !removable.is_empty() => {
                let u = rng.pick(&removable);
                let role = if conv.admins.contains(&u) {
                    conv.admins.remove(&u);
                    "member"
                } else {
                    conv.admins.insert(u);
                    "admin"
                };
                c.change_role(
                    conv.owner,
                    &conv.id,
                    &u.to_string(),
                    role,
                    &meta(conv.owner),
                )
                .await?;
            }
            _ => {
                let sender = rng.pick(&conv.members);
                let sent = send(
                    c,
                    sender,
                    &conv.id,
                    &format!("w{worker}-{n}"),
                    &format!("message {n}"),
                )
                .await?;
                conv.messages.push(Msg {
                    id: sent.message_id.to_string(),
                    sender,
                    deleted: false,
                });
            }
        }
        conv.last_seq += events;
        budget.fetch_sub(events, Ordering::Relaxed);
        appended += events;
    }
    Ok(appended)
}

/// Registers `users` users, then runs `writers` writers until `events`
/// events (registrations included) are in the store.
async fn workload(svc: &CommandService, users: usize, writers: usize, events: i64) -> Result<i64> {
    let mut ids = Vec::with_capacity(users);
    for i in 0..users.max(2 * writers) {
        ids.push(register(&svc.commands, &format!("user{i:03}")).await?);
    }
    let ids = Arc::new(ids);
    let budget = Arc::new(AtomicI64::new(events - ids.len() as i64));
    let tasks: Vec<_> = (0..writers)
        .map(|w| tokio::spawn(writer(svc.commands.clone(), ids.clone(), w, budget.clone())))
        .collect();
    let mut total = ids.len() as i64;
    for t in tasks {
        total += t.await??;
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&svc.pool)
        .await?;
    ensure!(
        stored == total,
        "the writers counted {total} events, the store holds {stored}"
    );
    Ok(stored)
}

#[tokio::test]
async fn rebuild_after_10000_mixed_events_matches_the_live_tables_row_for_row() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let live = RunningProjector::start(&svc, ProjectorOptions::default()).await?;
    let started = Instant::now();
    let events = workload(&svc, 24, 4, 10_000).await?;
    ensure!(events >= 10_000);
    let written = started.elapsed();
    wait_relayed(&svc.pool, Duration::from_secs(300)).await?;
    let relayed = started.elapsed();
    wait_caught_up(&svc.pool, Duration::from_secs(300)).await?;
    let caught_up = started.elapsed();
    let stats = live.snapshot();
    let config = live.config.clone();
    live.stop().await?;
    let types: Vec<(String, i64)> =
        sqlx::query("SELECT event_type, count(*) FROM events GROUP BY 1 ORDER BY 1")
            .fetch_all(&svc.pool)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    for t in [
        "MessageSent",
        "MessageEdited",
        "MessageDeleted",
        "MemberAdded",
        "MemberRemoved",
        "MemberRoleChanged",
        "ConversationRenamed",
        "ReadMarkerMoved",
    ] {
        ensure!(
            types.iter().any(|(n, c)| n == t && *c > 10),
            "the workload lacks {t}: {types:?}"
        );
    }
    assert_unread_consistent(&svc.pool).await?;
    let live_tables = dump(&svc.pool).await?;

    wait_relayed(&svc.pool, WAIT).await?;
    let report = projector::rebuild(&config, None, false).await?;
    assert_eq!(report.events as i64, events);
    assert_eq!(report.projections, vec!["core", "messages_per_user_day"]);
    let rebuilt = dump(&svc.pool).await?;
    compare_dumps(&live_tables, &rebuilt)?;
    report_figures(events, [written, relayed, caught_up], &stats, &report);
    svc.stop().await
}

/// Shown with `--nocapture`; the numbers are for the closing note, not asserted.
#[allow(clippy::print_stderr)]
fn report_figures(
    events: i64,
    [written, relayed, caught_up]: [Duration; 3],
    live: &projector::live::StatsSnapshot,
    report: &projector::rebuild::RebuildReport,
) {
    eprintln!(
        "{events} events: written in {written:?}, on Kafka after {relayed:?}, projected live after \
         {caught_up:?} ({live:?}); rebuild {:?} ({:.0} events/s)",
        report.elapsed,
        report.rate()
    );
}

#[tokio::test]
async fn rebuild_during_live_consumption_and_writes_misses_nothing_and_repeats_nothing(
) -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let live = RunningProjector::start(&svc, ProjectorOptions::default()).await?;
    let first = workload(&svc, 12, 2, 1500).await?;
    wait_caught_up(&svc.pool, WAIT).await?;
    // More writes while a slow rebuild (small batches) runs beside the
    // live projector.
    let mut config = live.config.clone();
    config.rebuild_batch_size = 25;
    let writes = {
        let cmds = svc.commands.clone();
        let users: Vec<UserId> =
            sqlx::query_scalar("SELECT user_id FROM rm_users ORDER BY username")
                .fetch_all(&svc.pool)
                .await?
                .into_iter()
                .map(UserId)
                .collect();
        tokio::spawn(writer(
            cmds,
            Arc::new(users),
            2,
            Arc::new(AtomicI64::new(1500)),
        ))
    };
    let report = projector::rebuild(&config, None, false).await?;
    ensure!(report.events as i64 >= first);
    writes.await??;
    wait_caught_up(&svc.pool, WAIT).await?;
    let raced = live.snapshot();
    live.stop().await?;
    let after_race = dump(&svc.pool).await?;
    assert_unread_consistent(&svc.pool).await?;
    // A quiet rebuild from scratch is the reference.
    wait_relayed(&svc.pool, WAIT).await?;
    projector::rebuild(&live_config_with_big_batches(&config), None, false).await?;
    compare_dumps(&dump(&svc.pool).await?, &after_race)
        .with_context(|| format!("live counters during the race: {raced:?}"))?;
    svc.stop().await
}

fn live_config_with_big_batches(config: &projector::config::Config) -> projector::config::Config {
    let mut c = config.clone();
    c.rebuild_batch_size = 5000;
    c
}

// ----- poison, gaps -------------------------------------------------------

async fn produce(
    topic: &str,
    key: &str,
    value: &[u8],
    headers: &[(&str, &str)],
) -> Result<(i32, i64)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack().kafka_brokers)
        .set("message.timeout.ms", "10000")
        .create()?;
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload(value).headers(h),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok((delivery.partition, delivery.offset))
}

fn envelope(conv: &str, seq: i64, event_type: &str, version: u32, payload: &Value) -> Vec<u8> {
    json!({
        "event_id": uuid::Uuid::now_v7(),
        "aggregate_type": "conversation",
        "aggregate_id": conv,
        "sequence": seq,
        "event_type": event_type,
        "event_version": version,
        "occurred_at": "2026-11-24T10:00:00Z",
        "actor": uuid::Uuid::now_v7(),
        "correlation_id": uuid::Uuid::now_v7(),
        "causation_id": null,
        "position": 1_000_000 + seq,
        "payload": payload,
    })
    .to_string()
    .into_bytes()
}

fn message_payload(sender: &str) -> Value {
    json!({
        "message_id": uuid::Uuid::now_v7(),
        "sender_id": sender,
        "body": "from nowhere",
        "client_msg_id": "x",
        "sent_at": "2026-11-24T10:00:00Z",
    })
}

async fn message_projected(pool: &PgPool, message_id: &str) -> Result<()> {
    support::wait_sql(
        pool,
        WAIT,
        "SELECT EXISTS (SELECT 1 FROM rm_messages WHERE message_id = $1::uuid)",
        message_id,
    )
    .await
}

#[tokio::test]
async fn poison_records_land_on_the_dead_letter_topic_and_the_next_event_is_projected() -> Result<()>
{
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let dlq = format!("test-dead-letter-{}", uuid::Uuid::now_v7().simple());
    tests::kafka::create_topic(&stack().kafka_brokers, &dlq, 1).await?;
    let opts = ProjectorOptions {
        dead_letter_topic: Some(dlq.clone()),
        group_id: Some(format!("projector-{}", uuid::Uuid::now_v7().simple())),
        ..Default::default()
    };
    let proj = RunningProjector::start(&svc, opts.clone()).await?;
    let c = &svc.commands;
    let ann = register(c, "ann").await?;
    let g = c
        .create_group(ann, "team", &[], &meta(ann))
        .await?
        .to_string();
    wait_caught_up(&svc.pool, WAIT).await?;

    // Keyed like the group's events: same partition, before the next one.
    let stranger = uuid::Uuid::now_v7().to_string();
    let poison: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "undecodable",
            g.clone(),
            b"{\"event_id\": not json".to_vec(),
        ),
        (
            "unknown_event_type",
            g.clone(),
            envelope(&g, 2, "ConversationTeleported", 1, &json!({"to": "mars"})),
        ),
        (
            "newer_version",
            g.clone(),
            envelope(&g, 2, "MessageSent", 99, &message_payload(&ann.to_string())),
        ),
        // Well-formed, but not from this platform's log: its stream has no
        // events 1..4 in the store to repair the gap with.
        (
            "unrepairable_gap",
            stranger.clone(),
            envelope(
                &stranger,
                5,
                "MessageSent",
                1,
                &message_payload(&ann.to_string()),
            ),
        ),
    ];
    let mut produced = Vec::new();
    for (reason, key, value) in &poison {
        let at = produce(&svc.topic, key, value, &[("event_type", "whatever")]).await?;
        produced.push((*reason, key.clone(), value.clone(), at));
    }
    let next = send(c, ann, &g, "after-poison", "still here").await?;
    message_projected(&svc.pool, &next.message_id.to_string()).await?;
    proj.wait_stats(WAIT, |s| s.dead_lettered == 4).await?;

    let letters = support::read_raw(&dlq, 4, WAIT).await?;
    for (reason, key, value, (partition, offset)) in &produced {
        let l = letters
            .iter()
            .find(|l| l.headers.get("dlq_reason").map(String::as_str) == Some(*reason))
            .with_context(|| format!("no dead letter with reason {reason}: {letters:?}"))?;
        assert_eq!(l.key.as_deref(), Some(key.as_bytes()), "{reason}: key kept");
        assert_eq!(
            l.value.as_deref(),
            Some(value.as_slice()),
            "{reason}: value kept"
        );
        assert_eq!(l.headers["dlq_source_topic"], svc.topic);
        assert_eq!(l.headers["dlq_partition"], partition.to_string());
        assert_eq!(l.headers["dlq_offset"], offset.to_string());
        assert_eq!(l.headers["event_type"], "whatever", "original headers kept");
        assert!(!l.headers["dlq_detail"].is_empty());
    }
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rm_messages")
            .fetch_one(&svc.pool)
            .await?,
        1,
        "no poison reached the read model"
    );
    proj.stop().await?;

    // Offsets were committed past the poison: a restarted projector in the
    // same group does not see it again.
    let again = RunningProjector::start(&svc, opts).await?;
    let later = send(c, ann, &g, "after-restart", "and again").await?;
    message_projected(&svc.pool, &later.message_id.to_string()).await?;
    let s = again.snapshot();
    assert_eq!(s.dead_lettered, 0, "{s:?}");
    again.stop().await?;
    svc.stop().await
}

#[tokio::test]
async fn a_gap_in_a_stream_is_repaired_from_the_event_store() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let c = &svc.commands;
    let ann = register(c, "ann").await?;
    let g = c
        .create_group(ann, "team", &[], &meta(ann))
        .await?
        .to_string();
    for i in 0..3 {
        send(c, ann, &g, &format!("m{i}"), &format!("message {i}")).await?;
    }
    wait_relayed(&svc.pool, WAIT).await?;
    // A topic that only ever saw the group's 4th event.
    let records = tests::kafka::read_until(
        &tests::kafka::consumer(&stack().kafka_brokers, &svc.topic)?,
        WAIT,
        |r| r.iter().any(|r| r.key == g && r.value["sequence"] == 4),
    )
    .await?;
    let fourth = records
        .iter()
        .find(|r| r.key == g && r.value["sequence"] == 4)
        .context("4th event")?;
    let topic = tests::harness::fresh_topic(1).await?;
    produce(&topic, &g, fourth.value.to_string().as_bytes(), &[]).await?;

    let prefix = format!("t-{}", uuid::Uuid::now_v7().simple());
    let proj = RunningProjector::start(
        &svc,
        ProjectorOptions {
            topic: Some(topic),
            redis_prefix: Some(prefix.clone()),
            ..Default::default()
        },
    )
    .await?;
    support::wait_sql(
        &svc.pool,
        WAIT,
        "SELECT COALESCE((SELECT last_sequence FROM rm_checkpoints WHERE projection = 'core' \
           AND aggregate_type = 'conversation' AND aggregate_id = $1), 0) = 4",
        &g,
    )
    .await?;
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM rm_messages WHERE conversation_id = $1::uuid ORDER BY seq",
    )
    .bind(&g)
    .fetch_all(&svc.pool)
    .await?;
    assert_eq!(bodies, ["message 0", "message 1", "message 2"]);
    // The repaired events count for the read fence too: the conversation
    // is marked projected up to the 4th event (frames are the relay's).
    let redis = support::redis().await?;
    support::wait_projected_head(&redis, &prefix, &g, 4, WAIT).await?;
    let _ = redis.quit().await;
    let s = proj.snapshot();
    assert_eq!(
        s.repaired, 6,
        "3 events for each of the 2 projections: {s:?}"
    );
    proj.stop().await?;
    svc.stop().await
}

// ----- Redis: live frames (the relay's), the read fence, generations -----

#[tokio::test]
async fn frames_are_published_once_durable_and_the_read_fence_then_holds() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let proj = RunningProjector::start(&svc, ProjectorOptions::default()).await?;
    let prefix = svc.redis_prefix.clone();
    assert_eq!(proj.config.redis.redis_prefix, prefix);
    let c = &svc.commands;
    let ann = register(c, "ann").await?;
    let bob = register(c, "bob").await?;
    let mut sub = Subscriber::connect().await?;
    let bob_channel = infra::keys::user_channel(&prefix, &bob.to_string());
    sub.subscribe(&bob_channel).await?;
    let g = c
        .create_group(ann, "team", &[bob.to_string()], &meta(ann))
        .await?
        .to_string();
    let created = sub.next_matching(&bob_channel, WAIT, |_| true).await?;
    assert_eq!(created["event"]["event_type"], "ConversationCreated");
    assert_eq!(created["event"]["conversation_id"], g.as_str());
    assert_eq!(created["event"]["data"]["kind"], "group");
    assert_eq!(
        created["event"]["data"]["members"][1]["user_id"],
        bob.to_string()
    );

    let conv_channel = infra::keys::conv_channel(&prefix, &g);
    sub.subscribe(&conv_channel).await?;
    let redis = support::redis().await?;
    let mut last_gen = support::generation(&redis, &prefix, "conv", &g).await?;
    for i in 0..20 {
        let sent = send(c, ann, &g, &format!("c{i}"), &format!("hello {i}")).await?;
        let f = sub
            .next_matching(&conv_channel, WAIT, |f| f["event"]["seq"] == sent.seq)
            .await?;
        // The frame comes once the event is durable and positioned, after
        // the fence was raised to it.
        let position: i64 = sqlx::query_scalar(
            "SELECT position FROM events WHERE aggregate_type = 'conversation' \
             AND aggregate_id = $1 AND sequence = $2",
        )
        .bind(&g)
        .bind(sent.seq)
        .fetch_one(&svc.pool)
        .await?;
        let live = support::head(&redis, &prefix, "live", &g).await?;
        ensure!(
            live >= sent.seq,
            "live head {live} below the frame's {}",
            sent.seq
        );
        // Read-your-writes through the fence: once the projected head
        // reaches the frame, the read model has it ...
        support::wait_projected_head(&redis, &prefix, &g, sent.seq, WAIT).await?;
        let body: Option<String> = sqlx::query_scalar(
            "SELECT body FROM rm_messages WHERE conversation_id = $1::uuid AND message_id = $2",
        )
        .bind(&g)
        .bind(sent.message_id.0)
        .fetch_optional(&svc.pool)
        .await?;
        assert_eq!(body.as_deref(), Some(format!("hello {i}").as_str()));
        // ... and the caches were invalidated.
        let gen = support::generation(&redis, &prefix, "conv", &g).await?;
        ensure!(
            gen > last_gen,
            "generation {gen} not bumped before the projected head"
        );
        last_gen = gen;
        assert_eq!(f["type"], "event");
        assert_eq!(f["cursor"], position.to_string());
        let e = &f["event"];
        assert_eq!(e["event_type"], "MessageSent");
        assert_eq!(e["event_version"], 1);
        assert_eq!(e["conversation_id"], g.as_str());
        assert_eq!(e["actor"], ann.to_string());
        ensure!(e["event_id"].is_string() && e["occurred_at"].is_string());
        let d = &e["data"];
        assert_eq!(d["message_id"], sent.message_id.to_string());
        assert_eq!(d["sender_id"], ann.to_string());
        assert_eq!(d["body"], format!("hello {i}"));
        assert_eq!(d["client_msg_id"], format!("c{i}"));
        let sent_at: chrono::DateTime<chrono::Utc> = serde_json::from_value(d["sent_at"].clone())?;
        assert_eq!(sent_at, sent.sent_at);
    }
    // A read marker goes to the reader's own channel.
    c.mark_read(bob, &g, 3, &meta(bob)).await?;
    let moved = sub
        .next_matching(&bob_channel, WAIT, |f| {
            f["event"]["event_type"] == "ReadMarkerMoved"
        })
        .await?;
    assert_eq!(moved["event"]["conversation_id"], g.as_str());
    assert_eq!(moved["event"]["data"]["seq"], 3);
    support::wait_projected_head(&redis, &prefix, &g, 21, WAIT).await?;
    proj.wait_stats(WAIT, |s| s.marked >= 1).await?;
    proj.stop().await?;
    sub.quit().await;
    let _ = redis.quit().await;
    svc.stop().await
}

#[tokio::test]
async fn generations_are_bumped_after_member_removed_and_conversation_renamed() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let proj = RunningProjector::start(&svc, ProjectorOptions::default()).await?;
    let p = svc.redis_prefix.clone();
    let c = &svc.commands;
    let ann = register(c, "ann").await?;
    let bob = register(c, "bob").await?;
    let cat = register(c, "cat").await?;
    // The registrations are projected (and their user generations bumped)
    // before the group exists: user streams may sit on another partition
    // than the conversation, and a late registration would move a user's
    // generation in the middle of the checks below.
    let redis = support::redis().await?;
    let deadline = std::time::Instant::now() + WAIT;
    for u in [ann, bob, cat] {
        while support::generation(&redis, &p, "user", &u.to_string()).await? < 1 {
            ensure!(
                std::time::Instant::now() < deadline,
                "registration of {u} not projected"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let mut sub = Subscriber::connect().await?;
    let ann_channel = infra::keys::user_channel(&p, &ann.to_string());
    sub.subscribe(&ann_channel).await?;
    let cat_channel = infra::keys::user_channel(&p, &cat.to_string());
    sub.subscribe(&cat_channel).await?;
    let g = c
        .create_group(
            ann,
            "before",
            &[bob.to_string(), cat.to_string()],
            &meta(ann),
        )
        .await?
        .to_string();
    sub.next_matching(&ann_channel, WAIT, |_| true).await?;
    let conv_channel = infra::keys::conv_channel(&p, &g);
    sub.subscribe(&conv_channel).await?;

    let gens = |redis: fred::prelude::Client, p: String, g: String| async move {
        let mut out = Vec::new();
        out.push(support::generation(&redis, &p, "conv", &g).await?);
        for u in [ann, bob, cat] {
            out.push(support::generation(&redis, &p, "user", &u.to_string()).await?);
        }
        Ok::<_, anyhow::Error>(out)
    };
    let base = gens(redis.clone(), p.clone(), g.clone()).await?;
    ensure!(base.iter().all(|g| *g >= 1), "created: {base:?}");

    // A reader caches the title under the generation it saw.
    let cached_key = infra::keys::cached(&p, "conv", &g, "details", base[0]);
    let () = redis.set(&cached_key, "before", None, None, false).await?;

    c.rename(ann, &g, "after", &meta(ann)).await?;
    sub.next_matching(&conv_channel, WAIT, |f| f["event"]["seq"] == 2)
        .await?;
    // The projected head is set after the INCRs (one pipeline, in order).
    support::wait_projected_head(&redis, &p, &g, 2, WAIT).await?;
    // The conversation's generation moves; the members' own do not (a
    // cached list checks its conversations' generations: ADR 0007), so
    // an event costs one INCR whatever the number of members.
    let renamed = gens(redis.clone(), p.clone(), g.clone()).await?;
    ensure!(
        renamed[0] > base[0] && renamed[1..] == base[1..],
        "the rename bumped {base:?} -> {renamed:?}"
    );
    // The cached value is no longer reachable: the reader now asks for
    // another key and falls back to the database, which has the new title.
    let now_key = infra::keys::cached(&p, "conv", &g, "details", renamed[0]);
    ensure!(now_key != cached_key);
    let fresh: Option<String> = redis.get(&now_key).await?;
    ensure!(fresh.is_none());
    let title: Option<String> =
        sqlx::query_scalar("SELECT title FROM rm_conversations WHERE conversation_id = $1::uuid")
            .bind(&g)
            .fetch_one(&svc.pool)
            .await?;
    assert_eq!(title.as_deref(), Some("after"));

    c.remove_member(ann, &g, &cat.to_string(), &meta(ann))
        .await?;
    sub.next_matching(&conv_channel, WAIT, |f| f["event"]["seq"] == 3)
        .await?;
    support::wait_projected_head(&redis, &p, &g, 3, WAIT).await?;
    // The removed member learns it on their own channel (to unsubscribe);
    // it is published right after the conversation's frame.
    let gone = sub
        .next_matching(&cat_channel, WAIT, |f| {
            f["event"]["event_type"] == "MemberRemoved"
        })
        .await?;
    assert_eq!(gone["event"]["data"]["user_id"], cat.to_string());
    // The conversation's and the removed member's generations move (cat's
    // list loses the conversation); ann's and bob's do not.
    let removed = gens(redis.clone(), p.clone(), g.clone()).await?;
    ensure!(
        removed[0] > renamed[0] && removed[3] > renamed[3] && removed[1..3] == renamed[1..3],
        "the removal bumped {renamed:?} -> {removed:?}"
    );
    let members: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT user_id FROM rm_members WHERE conversation_id = $1::uuid")
            .bind(&g)
            .fetch_all(&svc.pool)
            .await?;
    ensure!(!members.contains(&cat.0) && members.len() == 2);
    let _ = redis.quit().await;
    proj.stop().await?;
    sub.quit().await;
    svc.stop().await
}

// ----- figures ---------------------------------------------------------------

/// Throughput and latency figures for the closing note. Not a gate: run
/// it on purpose, in release:
/// `cargo test --release -p tests --test projector -- --ignored --nocapture`.
///
/// 1. `PROJECTOR_BENCH_EVENTS` (default 100,000) mixed events appended with
///    the relay off (tansu 0.6's idempotent-produce path panics under this
///    write load, see the report); then the live path without the broker:
///    the events as 500-record batches of their Kafka JSON through
///    `Application::project` (decode, transaction with dedupe, Redis
///    fan-out) into emptied read models;
/// 2. rebuild of every projection from the event store;
/// 3. commit to pub/sub latency, p50/p99, over 500 sequential sends through
///    the whole chain (relay, broker, projector, Redis).
///
/// The live path with the broker is measured by
/// `rebuild_after_10000_mixed_events_matches_the_live_tables_row_for_row`.
#[tokio::test]
#[ignore = "benchmark: minutes of load; run explicitly in release"]
#[allow(clippy::print_stderr)]
async fn figures_projector_throughput_and_latency() -> Result<()> {
    use hdrhistogram::Histogram;
    let target: i64 = std::env::var("PROJECTOR_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let svc = CommandService::start(CommandServiceOptions {
        relay: false,
        ..Default::default()
    })
    .await?;
    let started = Instant::now();
    let events = workload(&svc, 32, 8, target).await?;
    let written = started.elapsed();
    // The relay would give positions; without it, give them here, in
    // insertion order, as it does.
    sqlx::query(
        "WITH o AS (SELECT id, row_number() OVER (ORDER BY id) AS p FROM events) \
         UPDATE events e SET position = o.p FROM o WHERE e.id = o.id",
    )
    .execute(&svc.pool)
    .await?;
    eprintln!(
        "{events} events appended in {written:?} ({:.0}/s)",
        events as f64 / written.as_secs_f64()
    );

    // 1. The live path without the broker.
    let opts = ProjectorOptions::default();
    let config = support::config(&svc.database_url, &svc.topic, &svc.redis_prefix, &opts)?;
    let app = projector::Application::build(&config).await?;
    let envelopes = {
        let mut conn = svc.pool.acquire().await?;
        projector::store::after_position(&mut conn, 0, i64::MAX).await?
    };
    let records: Vec<Vec<u8>> = envelopes
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()?;
    let decoder = Decoder::new();
    let t = Instant::now();
    for chunk in records.chunks(500) {
        let batch = chunk
            .iter()
            .map(|r| decoder.decode_bytes(r))
            .collect::<Result<Vec<_>, _>>()?;
        app.project(&batch).await?;
    }
    let path = t.elapsed();
    drop(app);
    assert_unread_consistent(&svc.pool).await?;
    let live_tables = dump(&svc.pool).await?;
    eprintln!(
        "1. live path without the broker: {} events in {path:?} = {:.0} events/s",
        records.len(),
        records.len() as f64 / path.as_secs_f64()
    );

    // 2. Rebuild from the store.
    let report = projector::rebuild(&config, None, false).await?;
    compare_dumps(&live_tables, &dump(&svc.pool).await?)?;
    eprintln!(
        "2. rebuild: {} events in {:?} = {:.0} events/s",
        report.events,
        report.elapsed,
        report.rate()
    );
    svc.stop().await?;

    // 3. Commit to pub/sub, through the whole chain.
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let live = RunningProjector::start(&svc, ProjectorOptions::default()).await?;
    let c = &svc.commands;
    let ann = register(c, "latency_ann").await?;
    let g = c
        .create_group(ann, "latency", &[], &meta(ann))
        .await?
        .to_string();
    let mut sub = Subscriber::connect().await?;
    let channel = infra::keys::conv_channel(&live.config.redis.redis_prefix, &g);
    sub.subscribe(&channel).await?;
    // A plain consumer timestamps each record's arrival on Kafka, to split
    // the total into relay + broker and projector + Redis.
    let arrivals: Arc<std::sync::Mutex<HashMap<i64, Instant>>> = Arc::default();
    let watcher = {
        use futures::StreamExt;
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::Message;
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &stack().kafka_brokers)
            .set(
                "group.id",
                format!("watch-{}", uuid::Uuid::now_v7().simple()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "2")
            .create()?;
        consumer.subscribe(&[&svc.topic])?;
        let (arrivals, g) = (arrivals.clone(), g.clone());
        tokio::spawn(async move {
            let mut stream = consumer.stream();
            while let Some(Ok(m)) = stream.next().await {
                if m.key() == Some(g.as_bytes()) {
                    if let Some(seq) = m
                        .headers()
                        .and_then(|h| {
                            use rdkafka::message::Headers;
                            h.iter().find(|h| h.key == "sequence").and_then(|h| h.value)
                        })
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                    {
                        if let Ok(mut a) = arrivals.lock() {
                            a.insert(seq, Instant::now());
                        }
                    }
                }
            }
        })
    };
    let mut total = Histogram::<u64>::new(3)?;
    let mut to_kafka = Histogram::<u64>::new(3)?;
    let mut to_redis = Histogram::<u64>::new(3)?;
    for i in 0..500 {
        let sent = send(c, ann, &g, &format!("l{i}"), "ping").await?;
        // The send returns right after its transaction commits.
        let committed = Instant::now();
        sub.next_matching(&channel, WAIT, |f| f["event"]["seq"] == sent.seq)
            .await?;
        let received = Instant::now();
        total.record((received - committed).as_micros() as u64)?;
        let arrived = arrivals.lock().ok().and_then(|a| a.get(&sent.seq).copied());
        if let Some(arrived) = arrived {
            to_kafka.record(arrived.saturating_duration_since(committed).as_micros() as u64)?;
            to_redis.record(received.saturating_duration_since(arrived).as_micros() as u64)?;
        }
    }
    watcher.abort();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    eprintln!(
        "3. commit to pub/sub: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (500 sequential sends); \
         of which commit to Kafka consumer p50 {:.1} / p99 {:.1} ms, \
         Kafka arrival to pub/sub p50 {:.1} / p99 {:.1} ms ({} samples)",
        ms(&total, 0.5),
        ms(&total, 0.99),
        total.max() as f64 / 1000.0,
        ms(&to_kafka, 0.5),
        ms(&to_kafka, 0.99),
        ms(&to_redis, 0.5),
        ms(&to_redis, 0.99),
        to_kafka.len()
    );
    live.stop().await?;
    sub.quit().await;
    svc.stop().await
}

/// Offsets live in PostgreSQL (ADR 0005): one instance of a group consumes
/// while a second stands by; when the first stops, the second takes over
/// exactly where the first's last transaction left off.
#[tokio::test]
async fn a_second_instance_of_the_group_stands_by_and_takes_over_where_the_first_stopped(
) -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let opts = ProjectorOptions {
        group_id: Some(format!("projector-{}", uuid::Uuid::now_v7().simple())),
        ..Default::default()
    };
    let first = RunningProjector::start(&svc, opts.clone()).await?;
    let second = RunningProjector::start(&svc, opts.clone()).await?;
    let c = &svc.commands;
    let ann = register(c, "ann").await?;
    let g = c
        .create_group(ann, "team", &[], &meta(ann))
        .await?
        .to_string();
    let before = send(c, ann, &g, "before", "to the first").await?;
    message_projected(&svc.pool, &before.message_id.to_string()).await?;
    first.wait_stats(WAIT, |s| s.records >= 3).await?;
    assert_eq!(second.snapshot().records, 0, "the standby consumed nothing");
    let consumed_by_first = first.snapshot().records;
    first.stop().await?;

    let after = send(c, ann, &g, "after", "to the second").await?;
    message_projected(&svc.pool, &after.message_id.to_string()).await?;
    let s = second.snapshot();
    assert_eq!(
        s.records, 1,
        "the second resumed after the first's last batch, no replay: {s:?} (first saw {consumed_by_first})"
    );
    assert_eq!(s.skipped, 0, "{s:?}");
    let stored: i64 = sqlx::query_scalar(
        "SELECT sum(next_offset)::bigint FROM consumer_offsets WHERE group_id = $1",
    )
    .bind(opts.group_id.as_deref())
    .fetch_one(&svc.pool)
    .await?;
    assert_eq!(
        stored,
        consumed_by_first as i64 + 1,
        "offsets of every record are stored"
    );
    second.stop().await?;
    svc.stop().await
}
