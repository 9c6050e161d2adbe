//! command-service against the real stack: PostgreSQL event store, mutual
//! TLS gRPC, outbox relay to the Kafka-protocol broker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use proto::command::v1 as pb;
use proto::command::v1::command_service_client::CommandServiceClient;
use sqlx::{PgPool, Row};
use tests::harness::{as_user, stack, CommandService, CommandServiceOptions};
use tests::kafka;
use tonic::transport::Channel;
use tonic::Code;

type Client = CommandServiceClient<Channel>;

async fn register(c: &mut Client, name: &str) -> Result<String> {
    let r = c
        .register_user(pb::RegisterUserRequest {
            email: format!("{name}@example.org"),
            username: name.into(),
            password: format!("{name}-password"),
            display_name: None,
        })
        .await?;
    Ok(r.into_inner().user_id)
}

async fn group(c: &mut Client, owner: &str, members: &[&str]) -> Result<String> {
    let r = c
        .create_group(as_user(
            owner,
            pb::CreateGroupRequest {
                title: "team".into(),
                member_ids: members.iter().map(|s| s.to_string()).collect(),
            },
        ))
        .await?;
    Ok(r.into_inner().conversation_id)
}

async fn send(
    c: &mut Client,
    user: &str,
    conv: &str,
    cmid: &str,
    body: &str,
) -> Result<pb::SendMessageResponse, tonic::Status> {
    c.send_message(as_user(
        user,
        pb::SendMessageRequest {
            conversation_id: conv.into(),
            client_msg_id: cmid.into(),
            body: body.into(),
        },
    ))
    .await
    .map(|r| r.into_inner())
}

async fn event_count(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?)
}

/// Event types of one stream, in sequence order, checking sequences are 1..n.
async fn stream_types(pool: &PgPool, aggregate_type: &str, id: &str) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT sequence, event_type FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence")
        .bind(aggregate_type)
        .bind(id)
        .fetch_all(pool)
        .await?;
    let mut out = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        ensure!(
            r.try_get::<i64, _>("sequence")? == i as i64 + 1,
            "gap in {aggregate_type}/{id}"
        );
        out.push(r.try_get("event_type")?);
    }
    Ok(out)
}

/// Reads the service's topic until every stored event is there; checks
/// per-stream order, and the record headers (present and matching the
/// value with `headers`, absent without), and returns the records.
async fn all_on_kafka(svc: &CommandService, headers: bool) -> Result<Vec<kafka::Record>> {
    let expected = event_count(&svc.pool).await? as usize;
    let consumer = kafka::consumer(&stack().kafka_brokers, &svc.topic)?;
    let records = kafka::read_until(&consumer, Duration::from_secs(60), |r| {
        r.iter()
            .filter_map(|x| x.value["event_id"].as_str())
            .collect::<HashSet<_>>()
            .len()
            >= expected
    })
    .await?;
    // Per stream, sequences arrive in increasing order (duplicates allowed:
    // at least once; but never backwards past a newer one except as a redelivery).
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    for r in &records {
        let key = (
            r.value["aggregate_type"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            r.value["aggregate_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        ensure!(r.key == key.1, "record key is the aggregate id");
        let seq = r.value["sequence"].as_i64().context("sequence")?;
        let prev = last.insert(key.clone(), seq).unwrap_or(0);
        ensure!(seq == prev + 1, "stream {key:?}: {seq} after {prev}");
        if !headers {
            ensure!(r.headers.is_empty(), "headers are off by default");
            continue;
        }
        for h in [
            "event_type",
            "event_version",
            "sequence",
            "position",
            "aggregate_type",
        ] {
            ensure!(r.headers.contains_key(h), "header {h} missing");
        }
        ensure!(r.headers["sequence"] == seq.to_string());
        ensure!(r.headers["event_type"] == r.value["event_type"].as_str().unwrap_or_default());
    }
    Ok(records)
}

#[tokio::test]
async fn every_command_over_mtls_lands_in_the_store_and_on_kafka_in_order() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions {
        extra_args: vec!["--relay-headers".into(), "true".into()],
        ..Default::default()
    })
    .await?;
    let mut c = svc.client().await?;
    let ann = register(&mut c, "ann").await?;
    let bob = register(&mut c, "bob").await?;
    let cat = register(&mut c, "cat").await?;

    let g = group(&mut c, &ann, &[&bob]).await?;
    c.add_member(as_user(
        &ann,
        pb::AddMemberRequest {
            conversation_id: g.clone(),
            user_id: cat.clone(),
            role: None,
        },
    ))
    .await?;
    c.change_role(as_user(
        &ann,
        pb::ChangeRoleRequest {
            conversation_id: g.clone(),
            user_id: bob.clone(),
            role: "admin".into(),
        },
    ))
    .await?;
    c.rename_conversation(as_user(
        &bob,
        pb::RenameConversationRequest {
            conversation_id: g.clone(),
            title: "new title".into(),
        },
    ))
    .await?;
    let sent = send(&mut c, &cat, &g, "m1", "hello").await?;
    assert_eq!(sent.seq, 5);
    assert!(!sent.duplicate);
    c.edit_message(as_user(
        &cat,
        pb::EditMessageRequest {
            conversation_id: g.clone(),
            message_id: sent.message_id.clone(),
            body: "hello!".into(),
        },
    ))
    .await?;
    c.delete_message(as_user(
        &bob,
        pb::DeleteMessageRequest {
            conversation_id: g.clone(),
            message_id: sent.message_id.clone(),
        },
    ))
    .await?;
    c.mark_read(as_user(
        &ann,
        pb::MarkReadRequest {
            conversation_id: g.clone(),
            seq: 7,
        },
    ))
    .await?;
    c.remove_member(as_user(
        &cat,
        pb::RemoveMemberRequest {
            conversation_id: g.clone(),
            user_id: cat.clone(),
        },
    ))
    .await?;

    let d1 = c
        .open_direct(as_user(
            &ann,
            pb::OpenDirectRequest {
                user_id: bob.clone(),
            },
        ))
        .await?
        .into_inner();
    let d2 = c
        .open_direct(as_user(
            &bob,
            pb::OpenDirectRequest {
                user_id: ann.clone(),
            },
        ))
        .await?
        .into_inner();
    assert!(d1.created && !d2.created);
    assert_eq!(d1.conversation_id, d2.conversation_id);

    let me = c
        .verify_password(pb::VerifyPasswordRequest {
            login: "ANN@example.org".into(),
            password: "ann-password".into(),
        })
        .await?;
    assert_eq!(me.into_inner().user_id, ann);
    c.change_password(as_user(
        &ann,
        pb::ChangePasswordRequest {
            current_password: "ann-password".into(),
            new_password: "ann-password-2".into(),
        },
    ))
    .await?;
    c.change_display_name(as_user(
        &ann,
        pb::ChangeDisplayNameRequest {
            display_name: "Ann A.".into(),
        },
    ))
    .await?;
    let reset = c
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: "bob@example.org".into(),
        })
        .await?
        .into_inner();
    let token = reset.token.context("known email gets a token")?;
    c.complete_password_reset(pb::CompletePasswordResetRequest {
        token: token.clone(),
        new_password: "bob-password-2".into(),
    })
    .await?;
    svc.operator()
        .await?
        .grant_role(pb::GrantRoleRequest {
            user_id: cat.clone(),
            role: "auditor".into(),
        })
        .await?;

    assert_eq!(
        stream_types(&svc.pool, "conversation", &g).await?,
        [
            "ConversationCreated",
            "MemberAdded",
            "MemberRoleChanged",
            "ConversationRenamed",
            "MessageSent",
            "MessageEdited",
            "MessageDeleted",
            "MemberRemoved"
        ]
    );
    assert_eq!(
        stream_types(&svc.pool, "conversation", &d1.conversation_id).await?,
        ["ConversationCreated"]
    );
    assert_eq!(
        stream_types(&svc.pool, "user", &ann).await?,
        ["UserRegistered", "PasswordChanged", "DisplayNameChanged"]
    );
    assert_eq!(
        stream_types(&svc.pool, "user", &bob).await?,
        [
            "UserRegistered",
            "PasswordResetRequested",
            "PasswordChanged"
        ]
    );
    assert_eq!(
        stream_types(&svc.pool, "user", &cat).await?,
        ["UserRegistered", "RoleGranted"]
    );
    let markers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'read_marker'")
            .fetch_one(&svc.pool)
            .await?;
    assert_eq!(markers, 1);

    let records = all_on_kafka(&svc, true).await?;
    let types: Vec<&str> = records
        .iter()
        .filter(|r| r.key == g)
        .filter_map(|r| r.value["event_type"].as_str())
        .collect();
    assert_eq!(types[0], "ConversationCreated");
    assert_eq!(types.len(), 8);
    let sent_on_kafka = records
        .iter()
        .find(|r| r.value["event_type"] == "MessageSent")
        .context("MessageSent on Kafka")?;
    assert_eq!(sent_on_kafka.value["actor"], cat.as_str());
    assert_eq!(sent_on_kafka.value["payload"]["body"], "hello");
    assert_eq!(sent_on_kafka.value["event_version"], 1);

    // No secret anywhere in the log: passwords, their hashes, reset tokens.
    let everything: String =
        sqlx::query_scalar("SELECT string_agg(payload::text || metadata::text, '') FROM events")
            .fetch_one(&svc.pool)
            .await?;
    let hashes: Vec<String> = sqlx::query_scalar("SELECT password_hash FROM credentials")
        .fetch_all(&svc.pool)
        .await?;
    for secret in ["ann-password", "bob-password", "argon2", &token]
        .into_iter()
        .chain(hashes.iter().map(String::as_str))
    {
        assert!(
            !everything.contains(secret),
            "secret leaked into the event log"
        );
        assert!(
            records
                .iter()
                .all(|r| !r.value.to_string().contains(secret)),
            "secret leaked to Kafka"
        );
    }
    svc.stop().await
}

#[tokio::test]
async fn concurrent_sends_into_one_conversation_have_contiguous_sequences() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let mut c = svc.client().await?;
    let ann = register(&mut c, "ann").await?;
    let g = group(&mut c, &ann, &[]).await?;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut c = svc.client().await?;
        let (ann, g) = (ann.clone(), g.clone());
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..200 {
                let r = send(&mut c, &ann, &g, &format!("t{t}-{i}"), "hi").await?;
                seqs.push(r.seq);
            }
            Ok::<_, anyhow::Error>(seqs)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (2..=1601).collect::<Vec<i64>>(),
        "1600 sends take sequences 2..=1601 after the creation"
    );
    assert_eq!(
        stream_types(&svc.pool, "conversation", &g).await?.len(),
        1601
    );
    let records = all_on_kafka(&svc, false).await?;
    let on_kafka = records
        .iter()
        .filter(|r| r.key == g && r.value["event_type"] == "MessageSent")
        .count();
    assert!(on_kafka >= 1600);
    svc.stop().await
}

#[tokio::test]
async fn idempotent_send_appends_once_and_returns_the_first_result() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let mut c = svc.client().await?;
    let ann = register(&mut c, "ann").await?;
    let g = group(&mut c, &ann, &[]).await?;
    let first = send(&mut c, &ann, &g, "same-id", "hello").await?;
    let again = send(&mut c, &ann, &g, "same-id", "hello again").await?;
    assert_eq!(first.message_id, again.message_id);
    assert_eq!(first.seq, again.seq);
    assert_eq!(first.sent_at, again.sent_at);
    assert!(again.duplicate && !first.duplicate);
    // A fresh instance (cold cache) also recognises it.
    svc.commands.conversations.clear_cache();
    let third = send(&mut c, &ann, &g, "same-id", "x").await?;
    assert_eq!(third.message_id, first.message_id);
    assert_eq!(
        stream_types(&svc.pool, "conversation", &g).await?,
        ["ConversationCreated", "MessageSent"]
    );
    svc.stop().await
}

fn code_of(s: &tonic::Status) -> (Code, String) {
    (
        s.code(),
        s.metadata()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_appends_nothing() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let mut c = svc.client().await?;
    let ann = register(&mut c, "ann").await?;
    let bob = register(&mut c, "bob").await?;
    let g = group(&mut c, &ann, &[]).await?;
    let before = event_count(&svc.pool).await?;
    let unknown = uuid::Uuid::now_v7().to_string();
    let cases: Vec<(tonic::Status, Code, &str)> = vec![
        (
            send(&mut c, &ann, "not-a-uuid", "x", "hi")
                .await
                .err()
                .context("malformed id")?,
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            send(&mut c, &ann, &g, "x", "   ")
                .await
                .err()
                .context("empty body")?,
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            send(&mut c, &ann, &g, "x", &"a".repeat(4001))
                .await
                .err()
                .context("oversized body")?,
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            send(&mut c, &ann, &g, "", "hi")
                .await
                .err()
                .context("empty client_msg_id")?,
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            send(&mut c, &ann, &unknown, "x", "hi")
                .await
                .err()
                .context("unknown conversation")?,
            Code::NotFound,
            "conversation_not_found",
        ),
        (
            send(&mut c, &bob, &g, "x", "hi")
                .await
                .err()
                .context("non-member")?,
            Code::PermissionDenied,
            "not_a_member",
        ),
        (
            send(&mut c, &unknown, &g, "x", "hi")
                .await
                .err()
                .context("unknown sender")?,
            Code::PermissionDenied,
            "not_a_member",
        ),
        (
            c.create_group(as_user(
                &ann,
                pb::CreateGroupRequest {
                    title: "t".into(),
                    member_ids: vec![unknown.clone()],
                },
            ))
            .await
            .err()
            .context("unknown member")?,
            Code::NotFound,
            "user_not_found",
        ),
        (
            c.create_group(as_user(
                &ann,
                pb::CreateGroupRequest {
                    title: " ".into(),
                    member_ids: vec![],
                },
            ))
            .await
            .err()
            .context("empty title")?,
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            c.add_member(as_user(
                &bob,
                pb::AddMemberRequest {
                    conversation_id: g.clone(),
                    user_id: bob.clone(),
                    role: None,
                },
            ))
            .await
            .err()
            .context("non-member adds")?,
            Code::PermissionDenied,
            "not_a_member",
        ),
        (
            c.add_member(as_user(
                &ann,
                pb::AddMemberRequest {
                    conversation_id: g.clone(),
                    user_id: bob.clone(),
                    role: Some("emperor".into()),
                },
            ))
            .await
            .err()
            .context("bad role")?,
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            c.send_message(tonic::Request::new(pb::SendMessageRequest {
                conversation_id: g.clone(),
                client_msg_id: "x".into(),
                body: "hi".into(),
            }))
            .await
            .err()
            .context("no user")?,
            Code::Unauthenticated,
            "unauthenticated",
        ),
        (
            c.register_user(pb::RegisterUserRequest {
                email: "ANN@example.org".into(),
                username: "ann2".into(),
                password: "long enough".into(),
                display_name: None,
            })
            .await
            .err()
            .context("email taken")?,
            Code::AlreadyExists,
            "email_taken",
        ),
        (
            c.register_user(pb::RegisterUserRequest {
                email: "ann2@example.org".into(),
                username: "ANN".into(),
                password: "long enough".into(),
                display_name: None,
            })
            .await
            .err()
            .context("username taken")?,
            Code::AlreadyExists,
            "username_taken",
        ),
        (
            c.register_user(pb::RegisterUserRequest {
                email: "x@example.org".into(),
                username: "x y".into(),
                password: "long enough".into(),
                display_name: None,
            })
            .await
            .err()
            .context("bad username")?,
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            c.register_user(pb::RegisterUserRequest {
                email: "x@example.org".into(),
                username: "xavier".into(),
                password: "short".into(),
                display_name: None,
            })
            .await
            .err()
            .context("short password")?,
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            c.verify_password(pb::VerifyPasswordRequest {
                login: "ann".into(),
                password: "wrong-password".into(),
            })
            .await
            .err()
            .context("wrong password")?,
            Code::Unauthenticated,
            "invalid_credentials",
        ),
        (
            c.verify_password(pb::VerifyPasswordRequest {
                login: "nobody".into(),
                password: "ann-password".into(),
            })
            .await
            .err()
            .context("unknown login")?,
            Code::Unauthenticated,
            "invalid_credentials",
        ),
        (
            c.complete_password_reset(pb::CompletePasswordResetRequest {
                token: "forged".into(),
                new_password: "whatever-1".into(),
            })
            .await
            .err()
            .context("forged token")?,
            Code::FailedPrecondition,
            "invalid_token",
        ),
        (
            c.mark_read(as_user(
                &ann,
                pb::MarkReadRequest {
                    conversation_id: g.clone(),
                    seq: 99,
                },
            ))
            .await
            .err()
            .context("seq beyond end")?,
            Code::InvalidArgument,
            "validation_failed",
        ),
    ];
    for (i, (status, code, error_code)) in cases.iter().enumerate() {
        assert_eq!(
            code_of(status),
            (*code, error_code.to_string()),
            "case {i}: {status:?}"
        );
    }
    assert_eq!(
        event_count(&svc.pool).await?,
        before,
        "rejected commands append nothing"
    );
    // The unknown-email reset answers exactly like a known one minus the token.
    let r = c
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: "nobody@example.org".into(),
        })
        .await?
        .into_inner();
    assert!(r.token.is_none() && r.user_id.is_none());
    assert_eq!(event_count(&svc.pool).await?, before);
    svc.stop().await
}

#[tokio::test]
async fn reset_tokens_work_once() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let mut c = svc.client().await?;
    register(&mut c, "ann").await?;
    let t = c
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: "ann@example.org".into(),
        })
        .await?
        .into_inner()
        .token
        .context("token")?;
    c.complete_password_reset(pb::CompletePasswordResetRequest {
        token: t.clone(),
        new_password: "brand-new-pass".into(),
    })
    .await?;
    let again = c
        .complete_password_reset(pb::CompletePasswordResetRequest {
            token: t,
            new_password: "other-new-pass".into(),
        })
        .await
        .err()
        .context("second use")?;
    assert_eq!(
        code_of(&again),
        (Code::FailedPrecondition, "invalid_token".into())
    );
    c.verify_password(pb::VerifyPasswordRequest {
        login: "ann".into(),
        password: "brand-new-pass".into(),
    })
    .await?;
    svc.stop().await
}

/// Only the latest reset token works, and a password change spends the
/// open ones (security review L-3): a token mailed earlier must not
/// outlive a newer request or the password it was meant to replace.
#[tokio::test]
async fn newer_requests_and_password_changes_spend_open_reset_tokens() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let mut c = svc.client().await?;
    let ann = register(&mut c, "ann").await?;
    let request = || {
        let mut c = c.clone();
        async move {
            c.request_password_reset(pb::RequestPasswordResetRequest {
                email: "ann@example.org".into(),
            })
            .await?
            .into_inner()
            .token
            .context("token")
        }
    };
    let first = request().await?;
    let second = request().await?;
    let stale = c
        .complete_password_reset(pb::CompletePasswordResetRequest {
            token: first,
            new_password: "brand-new-pass".into(),
        })
        .await
        .err()
        .context("an older token still worked")?;
    assert_eq!(
        code_of(&stale),
        (Code::FailedPrecondition, "invalid_token".into())
    );
    let open = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM password_reset_tokens WHERE user_id = $1::uuid AND used_at IS NULL",
        )
        .bind(&ann)
        .fetch_one(&svc.pool)
        .await
    };
    assert_eq!(open().await?, 1, "only the latest token is open");
    c.change_password(as_user(
        &ann,
        pb::ChangePasswordRequest {
            current_password: "ann-password".into(),
            new_password: "ann-password-2".into(),
        },
    ))
    .await?;
    assert_eq!(open().await?, 0, "the change left a token open");
    let spent = c
        .complete_password_reset(pb::CompletePasswordResetRequest {
            token: second,
            new_password: "brand-new-pass".into(),
        })
        .await
        .err()
        .context("a token outlived the password change")?;
    assert_eq!(
        code_of(&spent),
        (Code::FailedPrecondition, "invalid_token".into())
    );
    svc.stop().await
}

#[tokio::test]
async fn clients_without_a_ca_signed_certificate_are_refused() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions {
        relay: false,
        ..Default::default()
    })
    .await?;
    // Signed by another CA.
    let untrusted = match svc.client_as("untrusted").await {
        Ok(mut c) => c
            .verify_password(pb::VerifyPasswordRequest {
                login: "a".into(),
                password: "b".into(),
            })
            .await
            .err()
            .map(|e| e.code()),
        Err(_) => Some(Code::Unavailable),
    };
    assert!(
        untrusted.is_some(),
        "a client with a foreign certificate must not get an answer"
    );
    assert_ne!(
        untrusted,
        Some(Code::Unauthenticated),
        "the handshake itself must fail, not the call"
    );
    // No client certificate at all.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(infra::tls::ca(tests::harness::pki())?)
        .domain_name("localhost");
    let no_cert = match tonic::transport::Endpoint::from_shared(format!(
        "https://localhost:{}",
        svc.addr.port()
    ))?
    .tls_config(tls)?
    .connect()
    .await
    {
        Ok(ch) => CommandServiceClient::new(ch)
            .verify_password(pb::VerifyPasswordRequest {
                login: "a".into(),
                password: "b".into(),
            })
            .await
            .err()
            .map(|e| e.code()),
        Err(_) => Some(Code::Unavailable),
    };
    assert!(no_cert.is_some() && no_cert != Some(Code::Unauthenticated));
    // And a trusted one gets through, with health and reflection served.
    let mut ok = svc.client().await?;
    let e = ok
        .verify_password(pb::VerifyPasswordRequest {
            login: "a".into(),
            password: "b".into(),
        })
        .await
        .err()
        .context("wrong login")?;
    assert_eq!(e.code(), Code::Unauthenticated);
    let ch =
        tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", svc.addr.port()))?
            .tls_config(infra::tls::client(
                tests::harness::pki(),
                "client",
                "localhost",
            )?)?
            .connect()
            .await?;
    let health = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "messenger.command.v1.CommandService".into(),
        })
        .await?;
    assert_eq!(
        health.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    svc.stop().await
}

/// `Ok` when the call was refused with PERMISSION_DENIED.
fn denied<T: std::fmt::Debug>(
    r: std::result::Result<tonic::Response<T>, tonic::Status>,
) -> Result<()> {
    match r {
        Err(e) if e.code() == Code::PermissionDenied => Ok(()),
        other => Err(anyhow::anyhow!("not refused: {other:?}")),
    }
}

/// Every certificate of the CA completes the handshake, but only the
/// gateway's may act for a user or call the account RPCs, and only an
/// operator's may grant roles (security review H-2). The service
/// certificates are server-only: with one, a stolen projector or notifier
/// key cannot even connect as a client.
#[tokio::test]
async fn only_the_gateway_acts_for_users_and_only_operators_grant_roles() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions {
        relay: false,
        ..Default::default()
    })
    .await?;
    let mut gateway = svc.client().await?;
    let ann = register(&mut gateway, "ann").await?;
    let g = group(&mut gateway, &ann, &[]).await?;
    let before = event_count(&svc.pool).await?;

    // A client certificate of the CA that is not the gateway's: refused
    // per RPC, before any work.
    let mut tool = svc.client_as("client").await?;
    denied(
        tool.request_password_reset(pb::RequestPasswordResetRequest {
            email: "ann@example.org".into(),
        })
        .await,
    )?;
    denied(
        tool.register_user(pb::RegisterUserRequest {
            email: "mallory@example.org".into(),
            username: "mallory".into(),
            password: "mallory-password".into(),
            display_name: None,
        })
        .await,
    )?;
    denied(
        tool.verify_password(pb::VerifyPasswordRequest {
            login: "ann".into(),
            password: "ann-password".into(),
        })
        .await,
    )?;
    denied(
        tool.send_message(as_user(
            &ann,
            pb::SendMessageRequest {
                conversation_id: g.clone(),
                client_msg_id: uuid::Uuid::now_v7().to_string(),
                body: "forged".into(),
            },
        ))
        .await,
    )?;
    denied(
        tool.grant_role(pb::GrantRoleRequest {
            user_id: ann.clone(),
            role: "auditor".into(),
        })
        .await,
    )?;
    // The gateway acts for users but grants no role; the operator does.
    denied(
        gateway
            .grant_role(pb::GrantRoleRequest {
                user_id: ann.clone(),
                role: "auditor".into(),
            })
            .await,
    )?;
    assert_eq!(
        event_count(&svc.pool).await?,
        before,
        "a refused call wrote"
    );
    svc.operator()
        .await?
        .grant_role(pb::GrantRoleRequest {
            user_id: ann.clone(),
            role: "auditor".into(),
        })
        .await?;
    assert_eq!(event_count(&svc.pool).await?, before + 1);
    // The services' own certificates are not client certificates at all.
    for name in ["projector", "notifier", "query-service", "gateway-https"] {
        let refused = match svc.client_as(name).await {
            Ok(mut c) => c
                .request_password_reset(pb::RequestPasswordResetRequest {
                    email: "ann@example.org".into(),
                })
                .await
                .err()
                .map(|e| e.code()),
            Err(_) => Some(Code::Unavailable),
        };
        assert!(
            refused.is_some() && refused != Some(Code::PermissionDenied),
            "{name}: the handshake must fail, got {refused:?}"
        );
    }
    svc.stop().await
}

#[tokio::test]
async fn loading_a_long_conversation_replays_only_since_the_snapshot() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions {
        relay: false,
        extra_args: vec!["--snapshot-every".into(), "50".into()],
        ..Default::default()
    })
    .await?;
    let mut c = svc.client().await?;
    let ann = register(&mut c, "ann").await?;
    let g = group(&mut c, &ann, &[]).await?;
    let actor = domain::values::UserId::parse(&ann, "user_id")?;
    for i in 0..520 {
        svc.commands
            .send_message(
                actor,
                &g,
                &format!("m{i}"),
                "body",
                &command_service::store::CommandMeta::new(ann.clone(), None),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    svc.commands.conversations.clear_cache();
    let r = send(&mut c, &ann, &g, "after-restart", "hi").await?;
    assert_eq!(r.seq, 522);
    let stats = svc.commands.conversations.last_load();
    assert!(stats.from_snapshot, "a cold load starts from the snapshot");
    assert!(stats.replayed < 50, "replayed {} events", stats.replayed);
    // The snapshot is the true state: same members, same version as a full replay.
    let (state, version) = svc.commands.conversations.load(&g).await?;
    assert_eq!(version, 522);
    assert_eq!(state.version, 522);
    assert_eq!(state.members.len(), 1);
    svc.stop().await
}

/// Reads events by global position the way an auditor or projector tails.
async fn tail(pool: &PgPool, after: i64) -> Result<Vec<(i64, String)>> {
    let rows = sqlx::query("SELECT position, metadata->>'event_id' AS id FROM events WHERE position > $1 ORDER BY position LIMIT 200")
        .bind(after)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("position")?, r.try_get("id")?)))
        .collect()
}

#[tokio::test]
async fn a_reader_tailing_by_position_never_misses_an_event_under_concurrency() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions::default()).await?;
    let mut c = svc.client().await?;
    let ann = register(&mut c, "ann").await?;
    let mut convs = Vec::new();
    for _ in 0..6 {
        convs.push(group(&mut c, &ann, &[]).await?);
    }
    let writers: Vec<_> = convs
        .iter()
        .cloned()
        .map(|g| {
            let commands = svc.commands.clone();
            let ann = ann.clone();
            tokio::spawn(async move {
                let actor = domain::values::UserId::parse(&ann, "user_id")?;
                for i in 0..150 {
                    commands
                        .send_message(
                            actor,
                            &g,
                            &format!("m{i}"),
                            "x",
                            &command_service::store::CommandMeta::new(ann.clone(), None),
                        )
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    let mut seen: Vec<(i64, String)> = Vec::new();
    let mut last = 0;
    let mut writing = writers;
    loop {
        let batch = tail(&svc.pool, last).await?;
        if let Some((p, _)) = batch.last() {
            last = *p;
        }
        seen.extend(batch);
        writing.retain(|w| !w.is_finished());
        if writing.is_empty() {
            let total = event_count(&svc.pool).await?;
            let positioned: i64 = sqlx::query_scalar("SELECT count(position) FROM events")
                .fetch_one(&svc.pool)
                .await?;
            if positioned == total && last == total {
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    let all: Vec<(i64, String)> =
        sqlx::query("SELECT position, metadata->>'event_id' AS id FROM events ORDER BY position")
            .fetch_all(&svc.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("position")?, r.try_get("id")?)))
            .collect::<Result<_>>()?;
    assert_eq!(all.len(), 1 + 6 + 900);
    assert_eq!(
        seen, all,
        "the tailing reader saw every event exactly once, in position order"
    );
    assert!(
        all.iter().enumerate().all(|(i, (p, _))| *p == i as i64 + 1),
        "positions are 1..n without holes"
    );
    svc.stop().await
}

async fn insert_raw(conn: &mut sqlx::PgConnection, id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('user', $1, 1, 'RoleGranted', '1', '{\"role\":\"auditor\"}', $2)",
    )
    .bind(id)
    .bind(serde_json::json!({"event_id": uuid::Uuid::now_v7(), "actor": "system", "correlation_id": uuid::Uuid::now_v7(), "causation_id": null, "occurred_at": chrono::Utc::now()}))
    .execute(conn)
    .await?;
    Ok(())
}

#[tokio::test]
async fn transactions_committing_out_of_order_are_positioned_in_commit_order() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions {
        relay: false,
        ..Default::default()
    })
    .await?;
    let relay = command_service::relay::Relay::new(
        svc.pool.clone(),
        command_service::relay::RelayConfig {
            brokers: stack().kafka_brokers.clone(),
            topic: svc.topic.clone(),
            batch_size: 100,
            poll_interval: Duration::from_millis(100),
            linger_ms: 0,
            headers: false,
            extra: vec![],
        },
    )?;
    let (a, b) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    // A inserts first (lower id) but commits last.
    let mut tx_a = svc.pool.begin().await?;
    insert_raw(&mut tx_a, &a).await?;
    let mut tx_b = svc.pool.begin().await?;
    insert_raw(&mut tx_b, &b).await?;
    tx_b.commit().await?;
    let first = relay.assign().await?;
    assert_eq!(
        first
            .iter()
            .map(|e| e.aggregate_id.clone())
            .collect::<Vec<_>>(),
        vec![b.clone()]
    );
    let seen_before = tail(&svc.pool, 0).await?;
    assert_eq!(seen_before.len(), 1);
    tx_a.commit().await?;
    let second = relay.assign().await?;
    assert_eq!(
        second
            .iter()
            .map(|e| (e.aggregate_id.clone(), e.position))
            .collect::<Vec<_>>(),
        vec![(a.clone(), 2)]
    );
    // The reader that had checkpointed at position 1 still sees A.
    let after = tail(&svc.pool, seen_before[0].0).await?;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].0, 2);
    svc.stop().await
}

#[tokio::test]
async fn relay_crash_between_publish_and_mark_loses_nothing() -> Result<()> {
    let svc = CommandService::start(CommandServiceOptions {
        relay: false,
        ..Default::default()
    })
    .await?;
    let mut c = svc.client().await?;
    let ann = register(&mut c, "ann").await?;
    let g = group(&mut c, &ann, &[]).await?;
    for i in 0..20 {
        send(&mut c, &ann, &g, &format!("m{i}"), "x").await?;
    }
    let config = command_service::relay::RelayConfig {
        brokers: stack().kafka_brokers.clone(),
        topic: svc.topic.clone(),
        batch_size: 10,
        poll_interval: Duration::from_millis(100),
        linger_ms: 0,
        headers: false,
        extra: vec![],
    };
    {
        let doomed = command_service::relay::Relay::new(svc.pool.clone(), config.clone())?;
        let batch = doomed.assign().await?;
        assert_eq!(batch.len(), 10);
        doomed.publish(&batch).await?;
        // Crash: dropped before mark_published.
    }
    let published: i64 = sqlx::query_scalar("SELECT published_position FROM relay_state")
        .fetch_one(&svc.pool)
        .await?;
    assert_eq!(published, 0);
    let restarted = command_service::relay::Relay::new(svc.pool.clone(), config)?;
    assert_eq!(
        restarted.pending().await?.len(),
        10,
        "the unconfirmed batch is pending"
    );
    let stop = infra::shutdown::Shutdown::new();
    let run = tokio::spawn(restarted.run(stop.clone()));
    let records = all_on_kafka_with_duplicates(&svc, 10).await?;
    stop.trigger();
    run.await??;
    let ids: HashSet<&str> = records
        .iter()
        .filter_map(|r| r.value["event_id"].as_str())
        .collect();
    assert_eq!(
        ids.len() as i64,
        event_count(&svc.pool).await?,
        "every event is on Kafka at least once"
    );
    assert!(
        records.len() >= ids.len() + 10,
        "the crashed batch was published again"
    );
    svc.stop().await
}

/// Like `all_on_kafka` but tolerant of the redelivered prefix; checks that
/// each stream's first occurrences are in order.
async fn all_on_kafka_with_duplicates(
    svc: &CommandService,
    redelivered: usize,
) -> Result<Vec<kafka::Record>> {
    let expected = event_count(&svc.pool).await? as usize;
    let consumer = kafka::consumer(&stack().kafka_brokers, &svc.topic)?;
    // Every event, plus the redelivered batch (records span partitions, so
    // the copies can arrive after the last new event).
    let records = kafka::read_until(&consumer, Duration::from_secs(60), |r| {
        r.iter()
            .filter_map(|x| x.value["event_id"].as_str())
            .collect::<HashSet<_>>()
            .len()
            >= expected
            && r.len() >= expected + redelivered
    })
    .await?;
    let mut highest: BTreeMap<String, i64> = BTreeMap::new();
    for r in &records {
        let seq = r.value["sequence"].as_i64().context("sequence")?;
        let h = highest.entry(r.key.clone()).or_insert(0);
        ensure!(
            seq <= *h + 1,
            "stream {} skipped from {} to {seq}",
            r.key,
            *h
        );
        *h = (*h).max(seq);
    }
    Ok(records)
}

/// gRPC server reflection describes the whole internal API to any holder of
/// a client certificate, so the shared server bring-up
/// (`infra::grpc::GrpcServer`) serves it only when the operator asks
/// (`MESSENGER_GRPC_REFLECTION`, here `--grpc-reflection true`).
#[tokio::test]
async fn grpc_reflection_is_served_only_when_turned_on() -> Result<()> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    async fn services(svc: &CommandService) -> Result<std::result::Result<Vec<String>, Code>> {
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "https://localhost:{}",
            svc.addr.port()
        ))?
        .tls_config(infra::tls::client(
            tests::harness::pki(),
            "client",
            "localhost",
        )?)?
        .connect()
        .await?;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let reply = ServerReflectionClient::new(channel)
            .server_reflection_info(futures::stream::iter([request]))
            .await;
        let mut stream = match reply {
            Ok(r) => r.into_inner(),
            Err(s) => return Ok(Err(s.code())),
        };
        let first = match stream.message().await {
            Ok(m) => m.context("no reflection reply")?,
            Err(s) => return Ok(Err(s.code())),
        };
        match first.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                Ok(Ok(list.service.into_iter().map(|s| s.name).collect()))
            }
            other => anyhow::bail!("unexpected reflection reply {other:?}"),
        }
    }

    let off = CommandService::start(CommandServiceOptions::default()).await?;
    assert_eq!(services(&off).await?, Err(Code::Unimplemented));
    off.stop().await?;

    let on = CommandService::start(CommandServiceOptions {
        extra_args: vec!["--grpc-reflection".into(), "true".into()],
        ..CommandServiceOptions::default()
    })
    .await?;
    let listed = services(&on).await?.map_err(|c| anyhow::anyhow!("{c:?}"))?;
    assert!(
        listed
            .iter()
            .any(|s| s == "messenger.command.v1.CommandService"),
        "{listed:?}"
    );
    on.stop().await
}
