//! query-service against the real stack: PostgreSQL read models and event
//! store, Redis cache, mutual TLS gRPC.
//!
//! The projector is not needed: [`ReadModel`] writes the `rm_*` tables the
//! way it would, and [`Redis::bump`] plays its part in the cache scheme
//! (generation increments after each commit). Audit and replay tests append
//! real events through command-service.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use command_service::store::CommandMeta;
use proto::query::v1 as pb;
use proto::query::v1::query_service_client::QueryServiceClient;
use serde_json::Value;
use sqlx::Row;
use tests::harness::{as_user, fresh_database, CommandService};
use tests::query_support::{
    command_service_without_kafka, wait_positioned, Positioner, QueryService, QueryServiceOptions,
    ReadModel, Redis,
};
use tonic::transport::Channel;
use tonic::{Code, Status};
use uuid::Uuid;

type Client = QueryServiceClient<Channel>;

/// A fresh database with the migrations, a read-model builder, a running
/// query-service with its own Redis prefix, a client, and the projector's
/// Redis handle for that prefix.
struct Setup {
    rm: ReadModel,
    qs: QueryService,
    c: Client,
    redis: Redis,
}

async fn setup() -> Result<Setup> {
    let (url, pool) = fresh_database().await?;
    let qs = QueryService::start(&url, QueryServiceOptions::default()).await?;
    let c = qs.client().await?;
    let redis = Redis::connect(&qs.prefix).await?;
    Ok(Setup {
        rm: ReadModel::new(pool),
        qs,
        c,
        redis,
    })
}

fn req<T>(user: Uuid, msg: T) -> tonic::Request<T> {
    as_user(&user.to_string(), msg)
}

fn code_of(s: &Status) -> (Code, String) {
    (
        s.code(),
        s.metadata()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    )
}

fn not_found() -> (Code, String) {
    (Code::NotFound, "conversation_not_found".into())
}

async fn list(
    c: &mut Client,
    user: Uuid,
    limit: Option<u32>,
    cursor: Option<String>,
) -> Result<pb::ListConversationsResponse, Status> {
    c.list_conversations(req(user, pb::ListConversationsRequest { limit, cursor }))
        .await
        .map(|r| r.into_inner())
}

async fn details(
    c: &mut Client,
    user: Uuid,
    conv: Uuid,
) -> Result<pb::ConversationDetails, Status> {
    c.get_conversation(req(
        user,
        pb::GetConversationRequest {
            conversation_id: conv.to_string(),
        },
    ))
    .await
    .map(|r| r.into_inner())
}

async fn messages(
    c: &mut Client,
    user: Uuid,
    conv: Uuid,
    before_seq: Option<i64>,
    after_seq: Option<i64>,
    limit: Option<u32>,
) -> Result<pb::ListMessagesResponse, Status> {
    c.list_messages(req(
        user,
        pb::ListMessagesRequest {
            conversation_id: conv.to_string(),
            before_seq,
            after_seq,
            limit,
        },
    ))
    .await
    .map(|r| r.into_inner())
}

fn seqs(page: &pb::ListMessagesResponse) -> Vec<i64> {
    page.messages.iter().map(|m| m.seq).collect()
}

/// Every message `user` can reach by paging backwards from the newest.
async fn all_backwards(c: &mut Client, user: Uuid, conv: Uuid, limit: u32) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = messages(c, user, conv, before, None, Some(limit)).await?;
        out.extend(seqs(&page));
        if !page.has_more {
            return Ok(out);
        }
        before = page.messages.last().map(|m| m.seq);
        ensure!(out.len() < 100_000, "paging does not end");
    }
}

/// Every message `user` can reach by paging forwards from `after`.
async fn all_forwards(
    c: &mut Client,
    user: Uuid,
    conv: Uuid,
    after: i64,
    limit: u32,
) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let page = messages(c, user, conv, None, Some(after), Some(limit)).await?;
        out.extend(seqs(&page));
        match page.messages.last() {
            Some(m) if page.has_more => after = m.seq,
            _ => return Ok(out),
        }
        ensure!(out.len() < 100_000, "paging does not end");
    }
}

// ------------------------------------------------------------ happy paths

#[tokio::test]
async fn the_conversation_list_pages_by_activity_with_an_opaque_cursor() -> Result<()> {
    let Setup { rm, qs, mut c, .. } = setup().await?;
    let ann = rm.user("ann").await?;
    let bob = rm.user("bob").await?;
    let cat = rm.user("cat").await?;
    let direct = rm.direct(ann, bob).await?;
    let mut groups = Vec::new();
    for i in 0..7 {
        groups.push(rm.group(ann, &format!("g{i}"), &[bob]).await?);
    }
    let elsewhere = rm.group(cat, "not ann's", &[bob]).await?;
    rm.send(elsewhere, cat, "hidden").await?;
    // Activity order (newest first): g4, g2, g5, g1, g6, g0, g3, then the
    // silent direct conversation.
    for i in [3, 0, 6, 1, 5, 2, 4] {
        rm.send(groups[i], bob, &format!("hello g{i}")).await?;
    }
    let expected: Vec<String> = [4, 2, 5, 1, 6, 0, 3]
        .iter()
        .map(|i| groups[*i].to_string())
        .chain(std::iter::once(direct.to_string()))
        .collect();

    let all = list(&mut c, ann, None, None).await?;
    assert_eq!(
        all.conversations
            .iter()
            .map(|s| s.conversation_id.clone())
            .collect::<Vec<_>>(),
        expected
    );
    assert!(all.next_cursor.is_none());
    let top = &all.conversations[0];
    assert_eq!(
        (top.kind.as_str(), top.title.as_deref()),
        ("group", Some("g4"))
    );
    assert_eq!((top.unread_count, top.last_seq), (1, 2));
    let last = top.last_message.as_ref().context("last message")?;
    assert_eq!(
        (
            last.body.as_deref(),
            last.sender_id.clone(),
            last.seq,
            last.deleted
        ),
        (Some("hello g4"), bob.to_string(), 2, false)
    );
    let silent = &all.conversations[7];
    assert_eq!(
        (silent.kind.as_str(), silent.title.as_deref()),
        ("direct", None)
    );
    assert!(silent.last_message.is_none());
    assert_eq!(silent.unread_count, 0);

    // Pages of 3: 3 + 3 + 2, each item once, in order.
    let mut paged = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = list(&mut c, ann, Some(3), cursor.clone()).await?;
        pages += 1;
        paged.extend(page.conversations.iter().map(|s| s.conversation_id.clone()));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!((pages, paged), (3, expected.clone()));

    // Ties on the activity time are broken by id, still each item once.
    // (The list's activity is GREATEST(conversation activity, own join).)
    sqlx::query(
        "WITH t AS (SELECT min(last_activity_at) AS at FROM rm_user_conversations WHERE user_id = $1), \
              c AS (UPDATE rm_conversations SET last_activity_at = (SELECT at FROM t) \
                    WHERE conversation_id IN (SELECT conversation_id FROM rm_members WHERE user_id = $1)) \
         UPDATE rm_members SET joined_at = (SELECT at FROM t) WHERE user_id = $1",
    )
    .bind(ann)
    .execute(&rm.pool)
    .await?;
    let mut tied = Vec::new();
    let mut cursor = None;
    loop {
        let page = list(&mut c, ann, Some(1), cursor.clone()).await?;
        tied.extend(page.conversations.iter().map(|s| s.conversation_id.clone()));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut by_id = expected.clone();
    by_id.sort_by(|a, b| b.cmp(a));
    assert_eq!(tied, by_id, "ties ordered by conversation id, descending");

    // Bad input.
    let bad = list(&mut c, ann, None, Some("garbage".into()))
        .await
        .err()
        .context("bad cursor")?;
    assert_eq!(
        code_of(&bad),
        (Code::InvalidArgument, "validation_failed".into())
    );
    assert_eq!(
        bad.metadata()
            .get("x-error-field")
            .and_then(|v| v.to_str().ok()),
        Some("cursor")
    );
    let zero = list(&mut c, ann, Some(0), None)
        .await
        .err()
        .context("limit 0")?;
    assert_eq!(zero.code(), Code::InvalidArgument);
    assert_eq!(
        list(&mut c, ann, Some(10_000), None)
            .await?
            .conversations
            .len(),
        8
    );
    qs.stop().await
}

#[tokio::test]
async fn conversation_details_list_members_with_roles_and_the_last_sequence() -> Result<()> {
    let Setup { rm, qs, mut c, .. } = setup().await?;
    let ann = rm.user("ann").await?;
    let bob = rm.user("bob").await?;
    let cat = rm.user("cat").await?;
    let g = rm.group(ann, "team", &[bob]).await?;
    let joined = rm.add_member(g, cat, "admin").await?;
    rm.send(g, bob, "hi").await?;
    let d = details(&mut c, cat, g).await?;
    assert_eq!(d.conversation_id, g.to_string());
    assert_eq!(
        (d.kind.as_str(), d.title.as_deref()),
        ("group", Some("team"))
    );
    assert_eq!(d.created_by, ann.to_string());
    assert_eq!(d.last_seq, 3);
    let members: Vec<(String, String, i64)> = d
        .members
        .iter()
        .map(|m| (m.user_id.clone(), m.role.clone(), m.joined_seq))
        .collect();
    let mut expected = vec![
        (ann.to_string(), "owner".to_string(), 1),
        (bob.to_string(), "member".to_string(), 1),
    ];
    expected.sort();
    expected.push((cat.to_string(), "admin".to_string(), joined));
    assert_eq!(members, expected);
    for m in &d.members {
        chrono::DateTime::parse_from_rfc3339(&m.joined_at)?;
    }
    chrono::DateTime::parse_from_rfc3339(&d.created_at)?;
    let bad = c
        .get_conversation(req(
            ann,
            pb::GetConversationRequest {
                conversation_id: "nope".into(),
            },
        ))
        .await
        .err()
        .context("malformed id")?;
    assert_eq!(
        code_of(&bad),
        (Code::InvalidArgument, "validation_failed".into())
    );
    qs.stop().await
}

#[tokio::test]
async fn history_pages_backwards_and_forwards_and_hides_deleted_bodies() -> Result<()> {
    let Setup { rm, qs, mut c, .. } = setup().await?;
    let ann = rm.user("ann").await?;
    let bob = rm.user("bob").await?;
    let g = rm.group(ann, "team", &[bob]).await?;
    let mut sent = Vec::new();
    for i in 0..120 {
        let who = if i % 2 == 0 { ann } else { bob };
        sent.push(rm.send(g, who, &format!("message {i}")).await?);
    }
    rm.edit(g, sent[5].message_id, "edited").await?;
    rm.delete(g, sent[7].message_id).await?;
    let all: Vec<i64> = sent.iter().map(|s| s.seq).collect();
    assert_eq!(all, (2..=121).collect::<Vec<_>>());

    let newest = messages(&mut c, bob, g, None, None, None).await?;
    assert_eq!(seqs(&newest), (72..=121).rev().collect::<Vec<_>>());
    assert!(newest.has_more);
    let m = &newest.messages[0];
    assert_eq!(m.conversation_id, g.to_string());
    assert_eq!(m.message_id, sent[119].message_id.to_string());
    assert_eq!(
        (m.body.as_deref(), m.sender_id.clone()),
        (Some("message 119"), bob.to_string())
    );
    chrono::DateTime::parse_from_rfc3339(&m.sent_at)?;

    let mut backwards = all.clone();
    backwards.reverse();
    assert_eq!(all_backwards(&mut c, bob, g, 50).await?, backwards);
    assert_eq!(all_backwards(&mut c, bob, g, 7).await?, backwards);
    assert_eq!(all_forwards(&mut c, bob, g, 0, 30).await?, all);
    assert_eq!(
        all_forwards(&mut c, bob, g, 100, 9).await?,
        (101..=121).collect::<Vec<_>>()
    );

    let early = messages(&mut c, bob, g, None, Some(0), Some(10)).await?;
    let edited = &early.messages[5];
    assert_eq!(
        (edited.body.as_deref(), edited.deleted),
        (Some("edited"), false)
    );
    assert!(edited.edited_at.is_some());
    let deleted = &early.messages[7];
    assert_eq!((deleted.body.as_deref(), deleted.deleted), (None, true));
    assert!(early.messages[0].edited_at.is_none());

    // Limits are clamped to 200; both bounds at once are refused.
    let big = messages(&mut c, bob, g, None, None, Some(1000)).await?;
    assert_eq!((big.messages.len(), big.has_more), (120, false));
    let both = messages(&mut c, bob, g, Some(10), Some(2), None)
        .await
        .err()
        .context("both")?;
    assert_eq!(
        code_of(&both),
        (Code::InvalidArgument, "validation_failed".into())
    );
    let below = messages(&mut c, bob, g, Some(2), None, None).await?;
    assert!(below.messages.is_empty() && !below.has_more);
    qs.stop().await
}

#[tokio::test]
async fn users_are_found_by_id_and_case_insensitive_prefix_and_me_shows_roles() -> Result<()> {
    let Setup { rm, qs, mut c, .. } = setup().await?;
    let ab_c = rm.user("ab_c").await?;
    let abxc = rm.user("abxc").await?;
    let abby = rm.user_with(Uuid::now_v7(), "abby", &["auditor"]).await?;
    rm.user("zed").await?;

    let u = c
        .get_user(req(
            ab_c,
            pb::GetUserRequest {
                user_id: abxc.to_string(),
            },
        ))
        .await?
        .into_inner();
    assert_eq!(
        (u.user_id, u.username, u.display_name),
        (abxc.to_string(), "abxc".into(), "abxc (display)".into())
    );
    let missing = c
        .get_user(req(
            ab_c,
            pb::GetUserRequest {
                user_id: Uuid::now_v7().to_string(),
            },
        ))
        .await
        .err()
        .context("unknown user")?;
    assert_eq!(code_of(&missing), (Code::NotFound, "user_not_found".into()));
    let malformed = c
        .get_user(req(
            ab_c,
            pb::GetUserRequest {
                user_id: "x".into(),
            },
        ))
        .await
        .err()
        .context("malformed")?;
    assert_eq!(malformed.code(), Code::InvalidArgument);

    let search = |prefix: &str, limit: Option<u32>| pb::SearchUsersRequest {
        username_prefix: prefix.into(),
        limit,
    };
    let names =
        |r: pb::SearchUsersResponse| r.users.into_iter().map(|u| u.username).collect::<Vec<_>>();
    assert_eq!(
        names(
            c.search_users(req(ab_c, search("AB", None)))
                .await?
                .into_inner()
        ),
        ["ab_c", "abby", "abxc"]
    );
    assert_eq!(
        names(
            c.search_users(req(ab_c, search("ab_", None)))
                .await?
                .into_inner()
        ),
        ["ab_c"],
        "_ is literal"
    );
    assert_eq!(
        names(
            c.search_users(req(ab_c, search("ab", Some(1))))
                .await?
                .into_inner()
        ),
        ["ab_c"]
    );
    assert!(names(
        c.search_users(req(ab_c, search("q", None)))
            .await?
            .into_inner()
    )
    .is_empty());
    let empty = c
        .search_users(req(ab_c, search("", None)))
        .await
        .err()
        .context("empty prefix")?;
    assert_eq!(
        code_of(&empty),
        (Code::InvalidArgument, "validation_failed".into())
    );

    let me = c.get_me(req(abby, pb::GetMeRequest {})).await?.into_inner();
    assert_eq!(
        (me.user_id, me.email, me.username, me.roles),
        (
            abby.to_string(),
            "abby@example.org".into(),
            "abby".into(),
            vec!["auditor".to_string()]
        )
    );
    let nobody = c
        .get_me(req(Uuid::now_v7(), pb::GetMeRequest {}))
        .await
        .err()
        .context("no profile")?;
    assert_eq!(nobody.code(), Code::NotFound);
    let anonymous = c
        .get_me(pb::GetMeRequest {})
        .await
        .err()
        .context("no x-user-id")?;
    assert_eq!(
        code_of(&anonymous),
        (Code::Unauthenticated, "unauthenticated".into())
    );
    qs.stop().await
}

#[tokio::test]
async fn the_read_marker_reports_the_read_sequence_and_unread_count() -> Result<()> {
    let Setup { rm, qs, mut c, .. } = setup().await?;
    let ann = rm.user("ann").await?;
    let bob = rm.user("bob").await?;
    let eve = rm.user("eve").await?;
    let g = rm.group(ann, "team", &[bob]).await?;
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(rm.send(g, bob, &format!("m{i}")).await?);
    }
    let marker = |u| {
        req(
            u,
            pb::GetReadMarkerRequest {
                conversation_id: g.to_string(),
            },
        )
    };
    let before = c.get_read_marker(marker(ann)).await?.into_inner();
    assert_eq!((before.seq, before.unread_count), (0, 3));
    rm.mark_read(g, ann, sent[1].seq).await?;
    let after = c.get_read_marker(marker(ann)).await?.into_inner();
    assert_eq!(
        (after.conversation_id, after.seq, after.unread_count),
        (g.to_string(), sent[1].seq, 1)
    );
    let denied = c
        .get_read_marker(marker(eve))
        .await
        .err()
        .context("non-member")?;
    assert_eq!(code_of(&denied), not_found());
    qs.stop().await
}

// ---------------------------------------------------------- authorization

#[tokio::test]
async fn non_members_get_not_found_exactly_like_for_a_missing_conversation() -> Result<()> {
    let Setup { rm, qs, mut c, .. } = setup().await?;
    let ann = rm.user("ann").await?;
    let bob = rm.user("bob").await?;
    let eve = rm.user("eve").await?;
    let g = rm.group(ann, "secret", &[bob]).await?;
    rm.send(g, ann, "for members only").await?;
    for conv in [g, Uuid::now_v7()] {
        assert_eq!(
            code_of(&details(&mut c, eve, conv).await.err().context("details")?),
            not_found()
        );
        for (before, after, limit) in [
            (None, None, None),
            (Some(100), None, None),
            (None, Some(0), Some(10)),
        ] {
            let e = messages(&mut c, eve, conv, before, after, limit)
                .await
                .err()
                .context("history")?;
            assert_eq!(code_of(&e), not_found());
        }
    }
    assert!(list(&mut c, eve, None, None)
        .await?
        .conversations
        .is_empty());
    // The members themselves are fine.
    assert_eq!(
        messages(&mut c, bob, g, None, None, None)
            .await?
            .messages
            .len(),
        1
    );
    qs.stop().await
}

#[tokio::test]
async fn a_late_joiner_sees_history_from_joining_on() -> Result<()> {
    let Setup {
        rm,
        qs,
        mut c,
        redis,
    } = setup().await?;
    let ann = rm.user("ann").await?;
    let cat = rm.user("cat").await?;
    let g = rm.group(ann, "team", &[]).await?;
    for i in 0..60 {
        rm.send(g, ann, &format!("before {i}")).await?;
    }
    // ann's read warms the shared newest page in the cache first.
    let warm = messages(&mut c, ann, g, None, None, None).await?;
    assert_eq!(seqs(&warm).first(), Some(&61));
    let joined = rm.add_member(g, cat, "member").await?;
    assert_eq!(joined, 62);
    for i in 0..5 {
        rm.send(g, ann, &format!("after {i}")).await?;
    }
    // The projector bumps the generations after its commits.
    redis.bump("conv", g).await?;
    redis.bump("user", cat).await?;

    // Cached path (default page) and database path (other limits) agree.
    ann_reads_then(&mut c, ann, g).await?;
    let hits = qs.cache_counts().hits;
    let page = messages(&mut c, cat, g, None, None, None).await?;
    assert!(
        qs.cache_counts().hits > hits,
        "served from the shared cached page"
    );
    assert_eq!(seqs(&page), [67, 66, 65, 64, 63]);
    assert!(!page.has_more);
    let db = messages(&mut c, cat, g, None, None, Some(10)).await?;
    assert_eq!((seqs(&db), db.has_more), (vec![67, 66, 65, 64, 63], false));
    assert_eq!(
        all_backwards(&mut c, cat, g, 2).await?,
        [67, 66, 65, 64, 63]
    );
    assert_eq!(
        all_forwards(&mut c, cat, g, 0, 2).await?,
        [63, 64, 65, 66, 67]
    );
    let old = messages(&mut c, cat, g, Some(63), None, None).await?;
    assert!(old.messages.is_empty() && !old.has_more);
    // The owner still sees everything.
    assert_eq!(all_backwards(&mut c, ann, g, 50).await?.len(), 65);

    // In the list, a last message from before the joining is not shown.
    let quiet = rm.group(ann, "quiet", &[]).await?;
    rm.send(quiet, ann, "old news").await?;
    rm.add_member(quiet, cat, "member").await?;
    let entries = list(&mut c, cat, None, None).await?.conversations;
    let quiet_entry = entries
        .iter()
        .find(|e| e.conversation_id == quiet.to_string())
        .context("quiet listed")?;
    assert!(quiet_entry.last_message.is_none());
    let team_entry = entries
        .iter()
        .find(|e| e.conversation_id == g.to_string())
        .context("team listed")?;
    assert_eq!(team_entry.last_message.as_ref().map(|m| m.seq), Some(67));
    qs.stop().await
}

/// A member's read that keeps the newest page cached at the current generation.
async fn ann_reads_then(c: &mut Client, ann: Uuid, g: Uuid) -> Result<()> {
    let page = messages(c, ann, g, None, None, None).await?;
    ensure!(page.messages.len() == 50 && page.has_more);
    Ok(())
}

#[tokio::test]
async fn a_removed_member_sees_nothing_after_removal() -> Result<()> {
    let Setup {
        rm,
        qs,
        mut c,
        redis,
    } = setup().await?;
    let ann = rm.user("ann").await?;
    let bob = rm.user("bob").await?;
    let g = rm.group(ann, "team", &[bob]).await?;
    for i in 0..3 {
        rm.send(g, ann, &format!("while member {i}")).await?; // 2, 3, 4
    }
    // bob reads (and so caches) while still a member.
    assert_eq!(
        seqs(&messages(&mut c, bob, g, None, None, None).await?),
        [4, 3, 2]
    );
    details(&mut c, bob, g).await?;
    let removed = rm.remove_member(g, bob).await?; // 5
    rm.send(g, ann, "after removal 1").await?; // 6
    rm.send(g, ann, "after removal 2").await?; // 7
    redis.bump("conv", g).await?;
    redis.bump("user", bob).await?;
    redis.bump("user", ann).await?;

    assert_eq!(
        code_of(&details(&mut c, bob, g).await.err().context("details")?),
        not_found()
    );
    let marker = c
        .get_read_marker(req(
            bob,
            pb::GetReadMarkerRequest {
                conversation_id: g.to_string(),
            },
        ))
        .await
        .err()
        .context("marker")?;
    assert_eq!(code_of(&marker), not_found());
    assert!(list(&mut c, bob, None, None)
        .await?
        .conversations
        .is_empty());
    // History: the period he was in, nothing from the removal on.
    let page = messages(&mut c, bob, g, None, None, None).await?;
    assert_eq!((seqs(&page), page.has_more), (vec![4, 3, 2], false));
    let later = messages(&mut c, bob, g, None, Some(removed - 1), None).await?;
    assert!(later.messages.is_empty() && !later.has_more);
    assert_eq!(all_forwards(&mut c, bob, g, 0, 1).await?, [2, 3, 4]);
    assert_eq!(
        seqs(&messages(&mut c, bob, g, Some(100), None, None).await?),
        [4, 3, 2]
    );

    // Re-added later: the gap stays invisible.
    rm.add_member(g, bob, "member").await?; // 8
    rm.send(g, ann, "welcome back").await?; // 9
    redis.bump("conv", g).await?;
    assert_eq!(all_backwards(&mut c, bob, g, 2).await?, [9, 4, 3, 2]);
    assert_eq!(
        seqs(&messages(&mut c, bob, g, None, None, None).await?),
        [9, 4, 3, 2]
    );
    assert_eq!(all_forwards(&mut c, bob, g, 0, 3).await?, [2, 3, 4, 9]);
    qs.stop().await
}

// -------------------------------------------------------- cache coherence

#[tokio::test]
async fn cached_reads_are_served_from_redis_until_the_generation_moves() -> Result<()> {
    let Setup {
        rm,
        qs,
        mut c,
        redis,
    } = setup().await?;
    let ann = rm.user("ann").await?;
    let bob = rm.user("bob").await?;
    let g = rm.group(ann, "before", &[bob]).await?;
    rm.send(g, bob, "first").await?;

    // Details: a miss fills the cache, the next read is a hit.
    let start = qs.cache_counts();
    assert_eq!(
        details(&mut c, ann, g).await?.title.as_deref(),
        Some("before")
    );
    assert!(redis.cached_now("conv", g, "details").await?);
    assert_eq!(
        details(&mut c, ann, g).await?.title.as_deref(),
        Some("before")
    );
    let after = qs.cache_counts();
    assert!(after.hits > start.hits && after.misses > start.misses);
    list(&mut c, ann, None, None).await?;
    assert!(redis.cached_now("user", ann, "conversations:50").await?);
    messages(&mut c, ann, g, None, None, None).await?;
    assert!(redis.cached_now("conv", g, "history").await?);

    // The database changes but nobody bumps: the cached values are served,
    // proving the reads come from Redis.
    rm.rename(g, "after").await?;
    rm.send(g, bob, "second").await?;
    assert_eq!(
        details(&mut c, ann, g).await?.title.as_deref(),
        Some("before")
    );
    let cached_list = list(&mut c, ann, None, None).await?;
    assert_eq!(
        cached_list.conversations[0].title.as_deref(),
        Some("before")
    );
    assert_eq!(
        seqs(&messages(&mut c, ann, g, None, None, None).await?),
        [2]
    );

    // The projector's bumps make the next reads current.
    redis.bump("conv", g).await?;
    let d = details(&mut c, ann, g).await?;
    assert_eq!((d.title.as_deref(), d.last_seq), (Some("after"), 4));
    assert_eq!(
        seqs(&messages(&mut c, ann, g, None, None, None).await?),
        [4, 2]
    );
    // The cached list is checked against the generations of ann's
    // conversations: the conversation's bump alone makes it current (the
    // projector no longer bumps every member on every message).
    let fresh = list(&mut c, ann, None, None).await?.conversations;
    assert_eq!(fresh[0].title.as_deref(), Some("after"));
    assert_eq!(
        fresh[0]
            .last_message
            .as_ref()
            .and_then(|m| m.body.as_deref()),
        Some("second")
    );
    qs.stop().await
}

/// The cached list page depends on every conversation of the user, also
/// those not on the page: a message in one of them (its `conv` bump, no
/// bump of the members) or a new membership (the user's bump) is seen.
#[tokio::test]
async fn a_cached_list_follows_every_conversation_of_the_user() -> Result<()> {
    let Setup {
        rm,
        qs,
        mut c,
        redis,
    } = setup().await?;
    let ann = rm.user("ann").await?;
    let bob = rm.user("bob").await?;
    let older = rm.group(ann, "older", &[bob]).await?;
    let newer = rm.group(ann, "newer", &[bob]).await?;
    let top = |page: pb::ListConversationsResponse| {
        page.conversations
            .iter()
            .map(|s| s.conversation_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        top(list(&mut c, ann, Some(1), None).await?),
        [newer.to_string()]
    );
    assert!(redis.cached_now("user", ann, "conversations:1").await?);
    let hits = qs.cache_counts().hits;
    assert_eq!(
        top(list(&mut c, ann, Some(1), None).await?),
        [newer.to_string()]
    );
    assert!(qs.cache_counts().hits > hits, "the second read is a hit");

    // A message in the conversation that is not on the page moves it up.
    rm.send(older, bob, "news").await?;
    redis.bump("conv", older).await?;
    assert_eq!(
        top(list(&mut c, ann, Some(1), None).await?),
        [older.to_string()]
    );

    // A conversation ann joins appears once her own generation moves.
    let joined = rm.group(bob, "joined", &[]).await?;
    rm.add_member(joined, ann, "member").await?;
    redis.bump("user", ann).await?;
    assert_eq!(
        top(list(&mut c, ann, Some(1), None).await?),
        [joined.to_string()]
    );
    qs.stop().await
}

#[tokio::test]
async fn after_member_removed_or_renamed_no_read_returns_the_old_value_even_when_cached(
) -> Result<()> {
    let Setup {
        rm,
        qs,
        mut c,
        redis,
    } = setup().await?;
    let ann = rm.user("ann").await?;
    let bob = rm.user("bob").await?;
    let g = rm.group(ann, "old title", &[bob]).await?;
    rm.send(g, ann, "hello").await?;
    // Everything bob and ann read gets cached, twice to be sure of hits.
    for _ in 0..2 {
        details(&mut c, bob, g).await?;
        details(&mut c, ann, g).await?;
        messages(&mut c, bob, g, None, None, None).await?;
        list(&mut c, bob, None, None).await?;
        list(&mut c, ann, None, None).await?;
    }
    assert!(qs.cache_counts().hits >= 5);

    // MemberRemoved and ConversationRenamed, committed, then the bumps the
    // projector makes after its commit.
    rm.remove_member(g, bob).await?;
    rm.rename(g, "new title").await?;
    rm.send(g, ann, "bob must not see this").await?;
    for (scope, id) in [("conv", g), ("user", bob), ("user", ann)] {
        redis.bump(scope, id).await?;
    }

    assert_eq!(
        code_of(&details(&mut c, bob, g).await.err().context("bob details")?),
        not_found()
    );
    assert!(list(&mut c, bob, None, None)
        .await?
        .conversations
        .is_empty());
    let bobs = messages(&mut c, bob, g, None, None, None).await?;
    assert!(bobs
        .messages
        .iter()
        .all(|m| m.body.as_deref() != Some("bob must not see this")));
    assert_eq!(seqs(&bobs), [2]);
    let d = details(&mut c, ann, g).await?;
    assert_eq!(d.title.as_deref(), Some("new title"));
    assert_eq!(
        d.members
            .iter()
            .map(|m| m.user_id.clone())
            .collect::<Vec<_>>(),
        [ann.to_string()]
    );
    let anns = list(&mut c, ann, None, None).await?;
    assert_eq!(anns.conversations[0].title.as_deref(), Some("new title"));
    // And again, now from the cache at the new generation.
    assert_eq!(
        code_of(&details(&mut c, bob, g).await.err().context("bob details")?),
        not_found()
    );
    assert_eq!(
        details(&mut c, ann, g).await?.title.as_deref(),
        Some("new title")
    );
    qs.stop().await
}

#[tokio::test]
async fn a_value_read_before_a_commit_is_filed_under_the_generation_that_the_commit_retires(
) -> Result<()> {
    use query_service::cache::{Cache, Scope};
    let Setup {
        rm,
        qs,
        mut c,
        redis,
    } = setup().await?;
    let ann = rm.user("ann").await?;
    let g = rm.group(ann, "old", &[]).await?;
    // A slow reader: reads the generation, then the database (old state)...
    let cache = Cache::connect(
        tests::query_support::redis_url(),
        &qs.prefix,
        Duration::from_secs(60),
        Duration::from_millis(500),
        1,
    )?;
    ensure!(cache.wait_connected(Duration::from_secs(5)).await, "Redis");
    let generation = cache
        .generation(Scope::Conv, &g.to_string())
        .await?
        .context("generation")?;
    let stale = qs.reads.get_conversation(ann, &g.to_string()).await?;
    // ...meanwhile the projector commits the rename and bumps...
    rm.rename(g, "new").await?;
    redis.bump("conv", g).await?;
    // ...and only then does the slow reader store what it read.
    cache.put(Some(&generation), "details", &stale).await;
    assert_eq!(details(&mut c, ann, g).await?.title.as_deref(), Some("new"));
    assert_eq!(details(&mut c, ann, g).await?.title.as_deref(), Some("new"));
    cache.quit().await;
    qs.stop().await
}

#[tokio::test]
async fn without_redis_every_read_is_answered_from_postgres() -> Result<()> {
    let (url, pool) = fresh_database().await?;
    let started = Instant::now();
    let qs = QueryService::start(
        &url,
        QueryServiceOptions {
            // Nothing listens there.
            redis_url: Some("redis://127.0.0.1:1".into()),
            ..Default::default()
        },
    )
    .await?;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "starts without Redis"
    );
    let rm = ReadModel::new(pool);
    let mut c = qs.client().await?;
    let ann = rm.user("ann").await?;
    let g = rm.group(ann, "team", &[]).await?;
    rm.send(g, ann, "hi").await?;
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(
            details(&mut c, ann, g).await?.title.as_deref(),
            Some("team")
        );
        assert_eq!(
            seqs(&messages(&mut c, ann, g, None, None, None).await?),
            [2]
        );
        assert_eq!(list(&mut c, ann, None, None).await?.conversations.len(), 1);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "no waiting on the dead cache"
        );
    }
    rm.rename(g, "renamed").await?;
    assert_eq!(
        details(&mut c, ann, g).await?.title.as_deref(),
        Some("renamed")
    );
    assert_eq!(qs.cache_counts().hits, 0);
    qs.stop().await
}

// ------------------------------------------------------------- transport

#[tokio::test]
async fn only_ca_signed_clients_get_in_and_health_is_served() -> Result<()> {
    let Setup { rm, qs, mut c, .. } = setup().await?;
    let ann = rm.user("ann").await?;
    let untrusted = match qs.channel("untrusted").await {
        Ok(ch) => QueryServiceClient::new(ch)
            .get_me(req(ann, pb::GetMeRequest {}))
            .await
            .err()
            .map(|e| e.code()),
        Err(_) => Some(Code::Unavailable),
    };
    assert!(untrusted.is_some(), "a foreign certificate gets no answer");
    assert_ne!(
        untrusted,
        Some(Code::Unauthenticated),
        "refused in the handshake"
    );
    let no_cert = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(infra::tls::ca(tests::harness::pki())?)
        .domain_name("localhost");
    let refused = match tonic::transport::Endpoint::from_shared(format!(
        "https://localhost:{}",
        qs.addr.port()
    ))?
    .tls_config(no_cert)?
    .connect()
    .await
    {
        Ok(ch) => QueryServiceClient::new(ch)
            .get_me(req(ann, pb::GetMeRequest {}))
            .await
            .err()
            .map(|e| e.code()),
        Err(_) => Some(Code::Unavailable),
    };
    assert!(refused.is_some() && refused != Some(Code::Unauthenticated));
    assert_eq!(
        c.get_me(req(ann, pb::GetMeRequest {}))
            .await?
            .into_inner()
            .username,
        "ann"
    );
    let mut bad_id = tonic::Request::new(pb::GetMeRequest {});
    bad_id
        .metadata_mut()
        .insert("x-user-id", "not-a-uuid".parse()?);
    assert_eq!(
        c.get_me(bad_id).await.err().context("bad id")?.code(),
        Code::InvalidArgument
    );
    let health = tonic_health::pb::health_client::HealthClient::new(qs.channel("gateway").await?)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "messenger.query.v1.QueryService".into(),
        })
        .await?;
    assert_eq!(
        health.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    qs.stop().await
}

// ------------------------------------------------------------------ audit

/// command-service (relay off, positions assigned by a [`Positioner`])
/// plus query-service on its database.
struct Stack {
    svc: CommandService,
    positioner: Positioner,
    qs: QueryService,
    c: Client,
    rm: ReadModel,
}

async fn stack() -> Result<Stack> {
    let (svc, positioner) = command_service_without_kafka().await?;
    let qs = QueryService::start(&svc.database_url, QueryServiceOptions::default()).await?;
    let c = qs.client().await?;
    let rm = ReadModel::new(svc.pool.clone());
    Ok(Stack {
        svc,
        positioner,
        qs,
        c,
        rm,
    })
}

fn meta(actor: Uuid) -> CommandMeta {
    CommandMeta::new(actor.to_string(), None)
}

fn uid(id: Uuid) -> domain::values::UserId {
    domain::values::UserId(id)
}

async fn register(svc: &CommandService, name: &str) -> Result<Uuid> {
    let id = svc
        .commands
        .register(
            &format!("{name}@example.org"),
            name,
            &format!("{name}-password"),
            None,
            &CommandMeta::new(domain::envelope::SYSTEM_ACTOR, None),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(id.0)
}

async fn create_group(svc: &CommandService, owner: Uuid, members: &[Uuid]) -> Result<Uuid> {
    let ids: Vec<String> = members.iter().map(Uuid::to_string).collect();
    let id = svc
        .commands
        .create_group(uid(owner), "team", &ids, &meta(owner))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Uuid::parse_str(&id.to_string())?)
}

async fn send_cmd(
    svc: &CommandService,
    who: Uuid,
    g: Uuid,
    cmid: &str,
    body: &str,
) -> Result<(Uuid, i64)> {
    let r = svc
        .commands
        .send_message(uid(who), &g.to_string(), cmid, body, &meta(who))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((Uuid::parse_str(&r.message_id.to_string())?, r.seq))
}

#[tokio::test]
async fn the_audit_log_is_for_auditors_and_carries_the_stored_envelopes() -> Result<()> {
    let Stack {
        svc,
        positioner,
        qs,
        mut c,
        rm,
    } = stack().await?;
    let ann = register(&svc, "ann").await?;
    let bob = register(&svc, "bob").await?;
    rm.user_with(ann, "ann", &["auditor"]).await?;
    rm.user_with(bob, "bob", &[]).await?;
    let g = create_group(&svc, ann, &[bob]).await?;
    for i in 0..5 {
        send_cmd(&svc, bob, g, &format!("m{i}"), "hello").await?;
    }
    let total = wait_positioned(&svc.pool, Duration::from_secs(30)).await?;
    assert_eq!(total, 2 + 1 + 5);

    for who in [bob, Uuid::now_v7()] {
        let e = c
            .list_events(req(
                who,
                pb::ListEventsRequest {
                    after_position: 0,
                    limit: None,
                },
            ))
            .await
            .err()
            .context("non-auditor")?;
        assert_eq!(code_of(&e), (Code::PermissionDenied, "forbidden".into()));
        let e = c
            .get_stream(req(
                who,
                pb::GetStreamRequest {
                    aggregate_type: "conversation".into(),
                    aggregate_id: g.to_string(),
                    from_sequence: None,
                    limit: None,
                },
            ))
            .await
            .err()
            .context("non-auditor stream")?;
        assert_eq!(code_of(&e), (Code::PermissionDenied, "forbidden".into()));
    }

    let page = c
        .list_events(req(
            ann,
            pb::ListEventsRequest {
                after_position: 0,
                limit: None,
            },
        ))
        .await?
        .into_inner();
    assert_eq!(page.events.len() as i64, total);
    assert_eq!(page.next_position, total);
    let rows = sqlx::query(
        "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
                payload::text AS payload, metadata::text AS metadata \
         FROM events ORDER BY position",
    )
    .fetch_all(&svc.pool)
    .await?;
    for (e, row) in page.events.iter().zip(&rows) {
        let metadata: Value = serde_json::from_str(&row.try_get::<String, _>("metadata")?)?;
        assert_eq!(e.position, row.try_get::<i64, _>("position")?);
        assert_eq!(
            e.aggregate_type,
            row.try_get::<String, _>("aggregate_type")?
        );
        assert_eq!(e.aggregate_id, row.try_get::<String, _>("aggregate_id")?);
        assert_eq!(e.sequence, row.try_get::<i64, _>("sequence")?);
        assert_eq!(e.event_type, row.try_get::<String, _>("event_type")?);
        assert_eq!(
            e.event_version.to_string(),
            row.try_get::<String, _>("event_version")?
        );
        assert_eq!(
            e.event_id,
            metadata["event_id"].as_str().unwrap_or_default()
        );
        assert_eq!(e.actor, metadata["actor"].as_str().unwrap_or_default());
        assert_eq!(
            e.correlation_id,
            metadata["correlation_id"].as_str().unwrap_or_default()
        );
        assert_eq!(e.causation_id.as_deref(), metadata["causation_id"].as_str());
        assert_eq!(
            e.occurred_at,
            metadata["occurred_at"].as_str().unwrap_or_default()
        );
        let stored: Value = serde_json::from_str(&row.try_get::<String, _>("payload")?)?;
        assert_eq!(serde_json::from_str::<Value>(&e.payload_json)?, stored);
    }
    // Rebuilt as the domain's envelope, it parses (the gateway's JSON).
    let first = &page.events[0];
    let envelope = domain::envelope::Envelope::<Value> {
        event_id: first.event_id.parse()?,
        aggregate_type: first.aggregate_type.clone(),
        aggregate_id: first.aggregate_id.clone(),
        sequence: first.sequence,
        event_type: first.event_type.clone(),
        event_version: first.event_version,
        occurred_at: first.occurred_at.parse()?,
        actor: first.actor.clone(),
        correlation_id: first.correlation_id.parse()?,
        causation_id: first.causation_id.as_deref().map(str::parse).transpose()?,
        position: Some(first.position),
        payload: serde_json::from_str(&first.payload_json)?,
    };
    assert_eq!(envelope.event_type, "UserRegistered");

    // Paging by position with a small limit, then the empty tail.
    let second = c
        .list_events(req(
            ann,
            pb::ListEventsRequest {
                after_position: 3,
                limit: Some(2),
            },
        ))
        .await?
        .into_inner();
    assert_eq!(
        second.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [4, 5]
    );
    assert_eq!(second.next_position, 5);
    let tail = c
        .list_events(req(
            ann,
            pb::ListEventsRequest {
                after_position: total,
                limit: None,
            },
        ))
        .await?
        .into_inner();
    assert!(tail.events.is_empty());
    assert_eq!(tail.next_position, total);

    // One stream, by sequence.
    let stream = |from, limit| {
        req(
            ann,
            pb::GetStreamRequest {
                aggregate_type: "conversation".into(),
                aggregate_id: g.to_string(),
                from_sequence: from,
                limit,
            },
        )
    };
    let whole = c.get_stream(stream(None, None)).await?.into_inner();
    assert_eq!(
        whole.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(whole.events[0].event_type, "ConversationCreated");
    assert!(!whole.has_more);
    let part = c.get_stream(stream(Some(3), Some(2))).await?.into_inner();
    assert_eq!(
        part.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [3, 4]
    );
    assert!(part.has_more);
    assert_eq!(part.next_sequence, 5);
    let none = c
        .get_stream(req(
            ann,
            pb::GetStreamRequest {
                aggregate_type: "user".into(),
                aggregate_id: Uuid::now_v7().to_string(),
                from_sequence: None,
                limit: None,
            },
        ))
        .await?
        .into_inner();
    assert!(none.events.is_empty());
    qs.stop().await?;
    positioner.stop().await?;
    svc.stop().await
}

#[tokio::test]
async fn paging_the_audit_log_while_appends_continue_yields_every_event_once_in_order() -> Result<()>
{
    let Stack {
        svc,
        positioner,
        qs,
        mut c,
        rm,
    } = stack().await?;
    let ann = register(&svc, "ann").await?;
    rm.user_with(ann, "ann", &["auditor"]).await?;
    let mut groups = Vec::new();
    for _ in 0..4 {
        groups.push(create_group(&svc, ann, &[]).await?);
    }
    const PER_WRITER: usize = 2_500;
    let writers: Vec<_> = groups
        .iter()
        .copied()
        .map(|g| {
            let commands = svc.commands.clone();
            tokio::spawn(async move {
                for i in 0..PER_WRITER {
                    commands
                        .send_message(uid(ann), &g.to_string(), &format!("m{i}"), "x", &meta(ann))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    let mut seen: Vec<(i64, String)> = Vec::new();
    let mut after = 0;
    let mut pages_during_appends = 0;
    let mut writing = writers;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let page = c
            .list_events(req(
                ann,
                pb::ListEventsRequest {
                    after_position: after,
                    limit: Some(500),
                },
            ))
            .await?
            .into_inner();
        ensure!(
            page.next_position >= after,
            "next_position went back from {after} to {}",
            page.next_position
        );
        after = page.next_position;
        let got = page.events.len();
        seen.extend(page.events.into_iter().map(|e| (e.position, e.event_id)));
        writing.retain(|w| !w.is_finished());
        if !writing.is_empty() {
            if got > 0 {
                pages_during_appends += 1;
            }
        } else if got == 0 {
            let (total, positioned): (i64, i64) =
                sqlx::query_as("SELECT count(*), count(position) FROM events")
                    .fetch_one(&svc.pool)
                    .await?;
            if total == positioned && after == total {
                break;
            }
        }
        ensure!(Instant::now() < deadline, "appends did not finish in time");
        if got == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let all: Vec<(i64, String)> =
        sqlx::query("SELECT position, metadata->>'event_id' AS id FROM events ORDER BY position")
            .fetch_all(&svc.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("position")?, r.try_get("id")?)))
            .collect::<Result<_>>()?;
    assert!(all.len() > 10_000 + 4, "{} events", all.len());
    assert_eq!(seen.len(), all.len(), "every event once");
    assert_eq!(seen, all, "in position order, none skipped or repeated");
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, (p, _))| *p == i as i64 + 1));
    let unique: HashSet<&String> = seen.iter().map(|(_, id)| id).collect();
    assert_eq!(unique.len(), seen.len());
    assert!(
        pages_during_appends > 1,
        "the reader paged while appends ran ({pages_during_appends} pages)"
    );
    qs.stop().await?;
    positioner.stop().await?;
    svc.stop().await
}

// ----------------------------------------------------------------- replay

/// The conversation row as the projector would have it after applying the
/// stream up to `last_seq`.
async fn projected(rm: &ReadModel, g: Uuid, owner: Uuid, last_seq: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO rm_conversations (conversation_id, kind, title, created_by, created_at, last_seq, last_message_seq, last_activity_at) \
         VALUES ($1, 'group', 'team', $2, now(), $3, NULL, now())",
    )
    .bind(g)
    .bind(owner)
    .bind(last_seq)
    .execute(&rm.pool)
    .await?;
    Ok(())
}

/// Membership periods as the projector would derive them from the events.
async fn period(rm: &ReadModel, g: Uuid, user: Uuid, joined: i64, left: Option<i64>) -> Result<()> {
    sqlx::query("INSERT INTO rm_member_periods (conversation_id, user_id, joined_seq, left_seq) VALUES ($1, $2, $3, $4)")
        .bind(g)
        .bind(user)
        .bind(joined)
        .bind(left)
        .execute(&rm.pool)
        .await?;
    Ok(())
}

async fn replay(
    c: &mut Client,
    user: Uuid,
    after: i64,
    limit: Option<u32>,
    up_to: Option<i64>,
) -> Result<pb::ListEventsForUserResponse> {
    Ok(c.list_events_for_user(req(
        user,
        pb::ListEventsForUserRequest {
            after_position: after,
            limit,
            up_to_position: up_to,
        },
    ))
    .await?
    .into_inner())
}

/// All frames from `after` on, paging until `has_more` is false.
async fn replay_all(c: &mut Client, user: Uuid, after: i64, limit: u32) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let page = replay(c, user, after, Some(limit), None).await?;
        for e in &page.events {
            out.push(serde_json::from_str::<Value>(&e.frame_json)?);
        }
        ensure!(
            !page.waiting_for_projection,
            "the read models are complete here"
        );
        after = page.next_position;
        if !page.has_more {
            return Ok(out);
        }
    }
}

fn frame_keys(frames: &[Value]) -> Vec<(String, i64, String)> {
    frames
        .iter()
        .map(|f| {
            (
                f["event"]["conversation_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                f["event"]["seq"].as_i64().unwrap_or_default(),
                f["event"]["event_type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_replay_sends_each_user_the_events_of_their_membership_periods_in_position_order(
) -> Result<()> {
    let Stack {
        svc,
        positioner,
        qs,
        mut c,
        rm,
    } = stack().await?;
    let ann = register(&svc, "ann").await?;
    let bob = register(&svc, "bob").await?;
    let cat = register(&svc, "cat").await?;
    let g = create_group(&svc, ann, &[bob]).await?; // 1 ConversationCreated
    let (m1, _) = send_cmd(&svc, ann, g, "m1", "first").await?; // 2
    send_cmd(&svc, bob, g, "m2", "second").await?; // 3
    svc.commands
        .add_member(uid(ann), &g.to_string(), &cat.to_string(), None, &meta(ann))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?; // 4 MemberAdded
    let (m3, _) = send_cmd(&svc, ann, g, "m3", "third").await?; // 5
    svc.commands
        .remove_member(uid(ann), &g.to_string(), &bob.to_string(), &meta(ann))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?; // 6 MemberRemoved
    send_cmd(&svc, ann, g, "m4", "fourth").await?; // 7
    svc.commands
        .edit_message(
            uid(ann),
            &g.to_string(),
            &m3.to_string(),
            "third, edited",
            &meta(ann),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?; // 8
    svc.commands
        .delete_message(uid(ann), &g.to_string(), &m1.to_string(), &meta(ann))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?; // 9
    svc.commands
        .mark_read(uid(cat), &g.to_string(), 7, &meta(cat))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?; // cat's read-marker stream
    let h = create_group(&svc, ann, &[]).await?; // ann alone
    send_cmd(&svc, ann, h, "h1", "private").await?;
    wait_positioned(&svc.pool, Duration::from_secs(30)).await?;
    // The read models the projector would have written.
    projected(&rm, g, ann, 9).await?;
    projected(&rm, h, ann, 2).await?;
    period(&rm, g, ann, 1, None).await?;
    period(&rm, g, bob, 1, Some(6)).await?;
    period(&rm, g, cat, 4, None).await?;
    period(&rm, h, ann, 1, None).await?;
    sqlx::query(
        "INSERT INTO rm_messages (conversation_id, seq, message_id, sender_id, client_msg_id, body, sent_at, deleted) \
         VALUES ($1, 2, $2, $3, 'm1', NULL, now(), true)",
    )
    .bind(g)
    .bind(m1)
    .bind(ann)
    .execute(&rm.pool)
    .await?;

    let gs = g.to_string();
    let hs = h.to_string();
    let bobs = replay_all(&mut c, bob, 0, 100).await?;
    assert_eq!(
        frame_keys(&bobs),
        [
            (gs.clone(), 1, "ConversationCreated".to_string()),
            (gs.clone(), 2, "MessageSent".into()),
            (gs.clone(), 3, "MessageSent".into()),
            (gs.clone(), 4, "MemberAdded".into()),
            (gs.clone(), 5, "MessageSent".into()),
            (gs.clone(), 6, "MemberRemoved".into()),
        ],
        "bob: up to and including his removal"
    );
    let cats = replay_all(&mut c, cat, 0, 100).await?;
    let (markers, cat_conv): (Vec<_>, Vec<_>) = frame_keys(&cats)
        .into_iter()
        .partition(|(_, _, t)| t == "ReadMarkerMoved");
    assert_eq!(
        cat_conv.iter().map(|(_, s, _)| *s).collect::<Vec<_>>(),
        [4, 5, 6, 7, 8, 9],
        "cat: from his joining"
    );
    assert_eq!(
        markers,
        [(gs.clone(), 1, "ReadMarkerMoved".to_string())],
        "his own read marker"
    );
    assert_eq!(
        cats.last().map(|f| f["event"]["data"]["seq"].clone()),
        Some(Value::from(7))
    );
    let anns = replay_all(&mut c, ann, 0, 100).await?;
    let ann_keys = frame_keys(&anns);
    assert_eq!(
        ann_keys
            .iter()
            .filter(|(cid, _, _)| *cid == gs)
            .map(|(_, s, _)| *s)
            .collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    assert_eq!(ann_keys.iter().filter(|(cid, _, _)| *cid == hs).count(), 2);
    assert!(
        ann_keys
            .iter()
            .chain(frame_keys(&bobs).iter())
            .all(|(_, _, t)| t != "ReadMarkerMoved"),
        "not someone else's marker"
    );
    let cursors: Vec<i64> = anns
        .iter()
        .map(|f| {
            f["cursor"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .unwrap_or(-1)
        })
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "position order");

    // The frame is API.md's WebSocket event frame.
    let sent = &bobs[2];
    assert_eq!(sent["type"], "event");
    let event = &sent["event"];
    for key in [
        "event_id",
        "event_type",
        "event_version",
        "conversation_id",
        "seq",
        "occurred_at",
        "actor",
        "data",
    ] {
        assert!(!event[key].is_null(), "{key} present");
    }
    assert_eq!(event["actor"], bob.to_string());
    assert_eq!(event["data"]["body"], "second");
    assert_eq!(event["data"]["sender_id"], bob.to_string());
    assert_eq!(event["event_version"], 1);
    let position: i64 = sent["cursor"].as_str().context("cursor")?.parse()?;
    let stored: String =
        sqlx::query_scalar("SELECT metadata->>'event_id' FROM events WHERE position = $1")
            .bind(position)
            .fetch_one(&svc.pool)
            .await?;
    assert_eq!(event["event_id"], stored);
    // The deleted message's body is not resent.
    assert!(bobs[1]["event"]["data"]["body"].is_null());
    assert_eq!(bobs[1]["event"]["data"]["message_id"], m1.to_string());

    // Pages of one give the same frames; resuming mid-way gives the rest.
    assert_eq!(replay_all(&mut c, ann, 0, 1).await?, anns);
    let mid = cursors[4];
    assert_eq!(replay_all(&mut c, ann, mid, 100).await?, anns[5..].to_vec());
    // An upper bound stops the page there.
    let bounded = replay(&mut c, ann, 0, None, Some(mid)).await?;
    assert_eq!(bounded.events.len(), 5);
    assert_eq!((bounded.next_position, bounded.has_more), (mid, false));
    // A stranger gets nothing; the position still advances to the head.
    let eve = Uuid::now_v7();
    let nothing = replay(&mut c, eve, 0, None, None).await?;
    let head: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&svc.pool)
        .await?;
    assert!(nothing.events.is_empty());
    assert_eq!((nothing.next_position, nothing.has_more), (head, false));
    // A cursor at the head is the end of the log; one beyond it was never
    // given to anyone and is refused, not answered as a valid position.
    let at_head = replay(&mut c, ann, head, None, None).await?;
    assert!(at_head.events.is_empty());
    assert_eq!((at_head.next_position, at_head.has_more), (head, false));
    for ahead in [head + 1, i64::MAX] {
        let refused = replay(&mut c, ann, ahead, None, None)
            .await
            .err()
            .and_then(|e| e.downcast::<Status>().ok())
            .context("a cursor beyond the head must be refused")?;
        assert_eq!(
            code_of(&refused),
            (Code::OutOfRange, "cursor_ahead".into()),
            "cursor {ahead}"
        );
    }

    // The projector lags: g is applied up to seq 5, so bob's removal (6)
    // is not in the read models and his period still looks open. The
    // replay stops before seq 6 instead of leaking seq 7 and later.
    sqlx::query("UPDATE rm_conversations SET last_seq = 5 WHERE conversation_id = $1")
        .bind(g)
        .execute(&rm.pool)
        .await?;
    sqlx::query(
        "UPDATE rm_member_periods SET left_seq = NULL WHERE conversation_id = $1 AND user_id = $2",
    )
    .bind(g)
    .bind(bob)
    .execute(&rm.pool)
    .await?;
    let removal: i64 = sqlx::query_scalar(
        "SELECT position FROM events WHERE aggregate_type = 'conversation' AND aggregate_id = $1 AND sequence = 6",
    )
    .bind(&gs)
    .fetch_one(&svc.pool)
    .await?;
    let lagging = replay(&mut c, bob, 0, None, None).await?;
    assert_eq!(
        lagging.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(lagging.waiting_for_projection && lagging.has_more);
    assert_eq!(lagging.next_position, removal - 1);
    let still = replay(&mut c, bob, lagging.next_position, None, None).await?;
    assert!(still.events.is_empty() && still.waiting_for_projection);
    assert_eq!(still.next_position, lagging.next_position);
    // Projected: the replay resumes where it stopped, and ends at the removal.
    sqlx::query(
        "UPDATE rm_member_periods SET left_seq = 6 WHERE conversation_id = $1 AND user_id = $2",
    )
    .bind(g)
    .bind(bob)
    .execute(&rm.pool)
    .await?;
    sqlx::query("UPDATE rm_conversations SET last_seq = 9 WHERE conversation_id = $1")
        .bind(g)
        .execute(&rm.pool)
        .await?;
    let rest = replay(&mut c, bob, lagging.next_position, None, None).await?;
    assert_eq!(
        rest.events
            .iter()
            .map(|e| (e.seq, e.position))
            .collect::<Vec<_>>(),
        [(6, removal)]
    );
    assert!(!rest.waiting_for_projection && !rest.has_more);
    qs.stop().await?;
    positioner.stop().await?;
    svc.stop().await
}
