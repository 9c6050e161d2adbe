//! The gateway's REST endpoints for conversations, messages and the audit
//! log, and its OpenAPI document, over real HTTPS against the whole
//! platform in-process (command-service + relay, projector, query-service,
//! gateway).
//!
//! Reads go through the projector, so after a write a test polls the GET
//! until it reflects the write (with a deadline), never sleeps.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tests::gateway_support::{gateway_config, Gateway, Platform, PlatformOptions, TestUser};
use tests::notifier_support::{NotifierOptions, PushServer, RunningNotifier};

const DEADLINE: Duration = Duration::from_secs(20);

/// A response: status, content type, JSON body (`Null` when empty).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Reply {
    /// Asserts the status, returning the body.
    fn expect(self, status: u16, what: &str) -> Result<Value> {
        ensure!(
            self.status.as_u16() == status,
            "{what}: expected {status}, got {} {}",
            self.status,
            self.body
        );
        Ok(self.body)
    }

    /// Asserts a problem document with this status and code.
    fn problem(self, status: u16, code: &str, what: &str) -> Result<Value> {
        ensure!(
            self.status.as_u16() == status,
            "{what}: expected {status} {code}, got {} {}",
            self.status,
            self.body
        );
        ensure!(
            self.content_type == "application/problem+json",
            "{what}: content type {}",
            self.content_type
        );
        ensure!(
            self.body["code"] == code && self.body["status"] == status,
            "{what}: expected code {code}, got {}",
            self.body
        );
        Ok(self.body)
    }
}

async fn call(
    p: &Platform,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Reply> {
    let mut rb = p.http.request(method, p.url(path));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    into_reply(rb.send().await?).await
}

async fn into_reply(r: reqwest::Response) -> Result<Reply> {
    let status = r.status();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = r.bytes().await?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{status}: not JSON: {}", String::from_utf8_lossy(&bytes)))?
    };
    Ok(Reply {
        status,
        content_type,
        body,
    })
}

async fn get(p: &Platform, path: &str, u: &TestUser) -> Result<Reply> {
    call(p, Method::GET, path, Some(&u.access_token), None).await
}

async fn post(p: &Platform, path: &str, u: &TestUser, body: Value) -> Result<Reply> {
    call(p, Method::POST, path, Some(&u.access_token), Some(body)).await
}

async fn put(p: &Platform, path: &str, u: &TestUser, body: Value) -> Result<Reply> {
    call(p, Method::PUT, path, Some(&u.access_token), Some(body)).await
}

async fn patch(p: &Platform, path: &str, u: &TestUser, body: Value) -> Result<Reply> {
    call(p, Method::PATCH, path, Some(&u.access_token), Some(body)).await
}

async fn delete(p: &Platform, path: &str, u: &TestUser) -> Result<Reply> {
    call(p, Method::DELETE, path, Some(&u.access_token), None).await
}

/// Polls `check` until it yields `Some`, within [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET path` as `u` until `pred` holds for a 200 body.
async fn get_until(
    p: &Platform,
    path: &str,
    u: &TestUser,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    eventually(what, || async {
        let r = get(p, path, u).await?;
        Ok((r.status == StatusCode::OK && pred(&r.body)).then_some(r.body))
    })
    .await
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
}

fn member_role(details: &Value, user: &str) -> Option<String> {
    details["members"]
        .as_array()?
        .iter()
        .find(|m| m["user_id"] == user)
        .map(|m| s(&m["role"]))
}

async fn create_group(
    p: &Platform,
    owner: &TestUser,
    title: &str,
    members: &[&TestUser],
) -> Result<String> {
    let ids: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
    let body = post(
        p,
        "/v1/conversations",
        owner,
        json!({"title": title, "member_ids": ids}),
    )
    .await?
    .expect(201, "create group")?;
    let id = s(&body["conversation_id"]);
    ensure!(uuid::Uuid::parse_str(&id).is_ok(), "conversation_id {body}");
    Ok(id)
}

#[tokio::test]
async fn conversations_messages_and_read_markers() -> Result<()> {
    let p = Platform::start().await?;
    let alice = p.user("alice").await?;
    let bob = p.user("bob").await?;
    let carol = p.user("carol").await?;

    // Create a group; its creator is the owner.
    let g = create_group(&p, &alice, "Team", &[&bob]).await?;
    let conv = format!("/v1/conversations/{g}");
    let details = get_until(&p, &conv, &alice, "group details", |v| {
        v["members"].as_array().is_some_and(|m| m.len() == 2)
    })
    .await?;
    ensure!(details["conversation_id"] == g.as_str(), "{details}");
    ensure!(
        details["kind"] == "group" && details["title"] == "Team",
        "{details}"
    );
    ensure!(is_rfc3339(&details["created_at"]), "{details}");
    ensure!(
        details["last_seq"].as_i64().is_some_and(|s| s >= 1),
        "{details}"
    );
    ensure!(
        member_role(&details, &alice.user_id).as_deref() == Some("owner"),
        "{details}"
    );
    ensure!(
        member_role(&details, &bob.user_id).as_deref() == Some("member"),
        "{details}"
    );
    for m in details["members"].as_array().context("members")? {
        ensure!(is_rfc3339(&m["joined_at"]), "joined_at of {m}");
    }

    // Rename; add carol as admin.
    patch(&p, &conv, &alice, json!({"title": "Team 2"}))
        .await?
        .expect(204, "rename")?;
    post(
        &p,
        &format!("{conv}/members"),
        &alice,
        json!({"user_id": carol.user_id, "role": "admin"}),
    )
    .await?
    .expect(204, "add member")?;
    get_until(&p, &conv, &alice, "rename and carol as admin", |v| {
        v["title"] == "Team 2" && member_role(v, &carol.user_id).as_deref() == Some("admin")
    })
    .await?;

    // Send; the same client_msg_id again returns the first result (200).
    let msgs = format!("{conv}/messages");
    let sent = post(
        &p,
        &msgs,
        &alice,
        json!({"client_msg_id": "c-1", "body": "hello"}),
    )
    .await?
    .expect(201, "send")?;
    ensure!(
        sent["seq"].as_i64().is_some_and(|s| s > 0) && is_rfc3339(&sent["sent_at"]),
        "{sent}"
    );
    let again = post(
        &p,
        &msgs,
        &alice,
        json!({"client_msg_id": "c-1", "body": "hello"}),
    )
    .await?
    .expect(200, "resend")?;
    ensure!(
        again == sent,
        "a resend returns the first result: {again} vs {sent}"
    );
    let first_id = s(&sent["message_id"]);
    let reply = post(
        &p,
        &msgs,
        &bob,
        json!({"client_msg_id": "c-1", "body": "hi alice"}),
    )
    .await?
    .expect(201, "bob's send with the same client id is his own")?;
    let reply_id = s(&reply["message_id"]);
    ensure!(reply_id != first_id, "distinct senders, distinct messages");

    // History: newest first by default, oldest first with after_seq.
    let page = get_until(&p, &msgs, &carol, "two messages in history", |v| {
        v["messages"].as_array().is_some_and(|m| m.len() == 2)
    })
    .await?;
    let list = page["messages"].as_array().context("messages")?;
    ensure!(
        list[0]["message_id"] == reply_id.as_str(),
        "newest first: {page}"
    );
    ensure!(page["has_more"] == false, "{page}");
    let m = &list[1];
    for key in [
        "message_id",
        "conversation_id",
        "seq",
        "sender_id",
        "body",
        "sent_at",
        "edited_at",
        "deleted",
    ] {
        ensure!(m.get(key).is_some(), "message lacks {key}: {m}");
    }
    ensure!(
        m["message_id"] == first_id.as_str() && m["conversation_id"] == g.as_str(),
        "{m}"
    );
    ensure!(
        m["seq"] == sent["seq"] && m["sender_id"] == alice.user_id.as_str(),
        "{m}"
    );
    ensure!(
        m["body"] == "hello" && m["sent_at"] == sent["sent_at"],
        "{m}"
    );
    ensure!(m["edited_at"].is_null() && m["deleted"] == false, "{m}");
    let asc = get(&p, &format!("{msgs}?after_seq=0"), &carol)
        .await?
        .expect(200, "after_seq")?;
    ensure!(
        asc["messages"][0]["message_id"] == first_id.as_str(),
        "oldest first: {asc}"
    );
    let one = get(&p, &format!("{msgs}?limit=1"), &carol)
        .await?
        .expect(200, "limit")?;
    ensure!(
        one["messages"].as_array().map(Vec::len) == Some(1) && one["has_more"] == true,
        "{one}"
    );
    let before = get(
        &p,
        &format!("{msgs}?before_seq={}&limit=5", reply["seq"]),
        &carol,
    )
    .await?
    .expect(200, "before_seq")?;
    ensure!(
        before["messages"].as_array().map(Vec::len) == Some(1)
            && before["messages"][0]["message_id"] == first_id.as_str(),
        "{before}"
    );
    get(&p, &format!("{msgs}?before_seq=5&after_seq=1"), &carol)
        .await?
        .problem(422, "validation_failed", "both bounds")?;

    // Edits: author only.
    let first = format!("{msgs}/{first_id}");
    patch(&p, &first, &bob, json!({"body": "hijack"}))
        .await?
        .problem(403, "not_author", "edit by another member")?;
    patch(&p, &first, &alice, json!({"body": "hello, edited"}))
        .await?
        .expect(204, "edit")?;
    get_until(&p, &msgs, &bob, "the edit", |v| {
        v["messages"].as_array().is_some_and(|l| {
            l.iter().any(|m| {
                m["message_id"] == first_id.as_str()
                    && m["body"] == "hello, edited"
                    && is_rfc3339(&m["edited_at"])
            })
        })
    })
    .await?;

    // Deletes: author or owner/admin; a plain member may not delete others'.
    delete(&p, &first, &bob)
        .await?
        .problem(403, "forbidden", "delete by a plain member")?;
    delete(&p, &format!("{msgs}/{reply_id}"), &carol)
        .await?
        .expect(204, "delete by an admin")?;
    delete(&p, &first, &alice)
        .await?
        .expect(204, "delete by the author")?;
    let gone = get_until(&p, &msgs, &bob, "both deletions", |v| {
        v["messages"]
            .as_array()
            .is_some_and(|l| l.len() == 2 && l.iter().all(|m| m["deleted"] == true))
    })
    .await?;
    for m in gone["messages"].as_array().context("messages")? {
        ensure!(m["body"].is_null(), "a deleted body is gone: {m}");
        ensure!(!m.to_string().contains("hello"), "{m}");
    }

    // The list: shape, unread counts, read marker.
    let last = post(
        &p,
        &msgs,
        &bob,
        json!({"client_msg_id": "c-2", "body": "still here"}),
    )
    .await?
    .expect(201, "send")?;
    let listed = get_until(
        &p,
        "/v1/conversations",
        &alice,
        "the last message in the list",
        |v| v["conversations"][0]["last_message"]["message_id"] == last["message_id"],
    )
    .await?;
    let c = &listed["conversations"][0];
    ensure!(
        c["conversation_id"] == g.as_str() && c["kind"] == "group" && c["title"] == "Team 2",
        "{c}"
    );
    ensure!(
        c["last_message"]["body"] == "still here"
            && c["last_message"]["sender_id"] == bob.user_id.as_str(),
        "{c}"
    );
    ensure!(c["unread_count"].as_i64().is_some_and(|n| n >= 1), "{c}");
    ensure!(
        c["last_seq"]
            .as_i64()
            .is_some_and(|n| n >= last["seq"].as_i64().unwrap_or(i64::MAX)),
        "{c}"
    );
    ensure!(listed["next_cursor"].is_null(), "{listed}");
    put(
        &p,
        &format!("{conv}/read"),
        &alice,
        json!({"seq": c["last_seq"]}),
    )
    .await?
    .expect(204, "mark read")?;
    get_until(&p, "/v1/conversations", &alice, "unread count 0", |v| {
        v["conversations"][0]["unread_count"] == 0
    })
    .await?;

    // Direct: 201 when created, 200 when it exists (from either side).
    let d = post(
        &p,
        "/v1/conversations/direct",
        &alice,
        json!({"user_id": bob.user_id}),
    )
    .await?
    .expect(201, "open direct")?;
    let d2 = post(
        &p,
        "/v1/conversations/direct",
        &alice,
        json!({"user_id": bob.user_id}),
    )
    .await?
    .expect(200, "reopen direct")?;
    let d3 = post(
        &p,
        "/v1/conversations/direct",
        &bob,
        json!({"user_id": alice.user_id}),
    )
    .await?
    .expect(200, "open the same pair from the other side")?;
    ensure!(d == d2 && d == d3, "{d} {d2} {d3}");
    let direct = s(&d["conversation_id"]);
    get_until(
        &p,
        &format!("/v1/conversations/{direct}"),
        &bob,
        "the direct conversation",
        |v| v["kind"] == "direct",
    )
    .await?;
    // A page of one has a cursor leading to the other.
    let page1 = get_until(&p, "/v1/conversations?limit=1", &alice, "a cursor", |v| {
        !v["next_cursor"].is_null()
    })
    .await?;
    let cursor = s(&page1["next_cursor"]);
    let page2 = p
        .http
        .get(p.url("/v1/conversations"))
        .query(&[("limit", "1"), ("cursor", cursor.as_str())])
        .bearer_auth(&alice.access_token)
        .send()
        .await?;
    let page2 = into_reply(page2).await?.expect(200, "page 2")?;
    let ids: BTreeSet<String> = [&page1, &page2]
        .iter()
        .map(|v| s(&v["conversations"][0]["conversation_id"]))
        .collect();
    ensure!(
        ids == BTreeSet::from([g.clone(), direct.clone()]),
        "{page1} {page2}"
    );

    // Removal and leaving; a former member sees nothing.
    delete(&p, &format!("{conv}/members/{}", carol.user_id), &alice)
        .await?
        .expect(204, "remove carol")?;
    delete(&p, &format!("{conv}/members/{}", bob.user_id), &bob)
        .await?
        .expect(204, "bob leaves")?;
    get_until(&p, &conv, &alice, "only alice left", |v| {
        v["members"].as_array().map(Vec::len) == Some(1)
    })
    .await?;
    eventually("bob no longer sees the group", || async {
        let r = get(&p, &conv, &bob).await?;
        Ok((r.status == StatusCode::NOT_FOUND).then_some(r))
    })
    .await?
    .problem(404, "conversation_not_found", "a former member")?;
    p.stop().await
}

#[tokio::test]
async fn errors_are_problem_documents() -> Result<()> {
    let p = Platform::start_with(PlatformOptions {
        command_args: vec!["--group-max-members".into(), "3".into()],
        ..Default::default()
    })
    .await?;
    let alice = p.user("alice").await?;
    let bob = p.user("bob").await?;
    let carol = p.user("carol").await?;
    let dave = p.user("dave").await?;
    let g = create_group(&p, &alice, "Private", &[&bob]).await?;
    let conv = format!("/v1/conversations/{g}");
    get_until(&p, &conv, &bob, "the group", |_| true).await?;

    // 401 without or with a bad token.
    for (method, path) in [
        (Method::GET, "/v1/conversations".to_owned()),
        (Method::POST, "/v1/conversations".to_owned()),
        (Method::GET, conv.clone()),
        (Method::GET, format!("{conv}/messages")),
        (Method::POST, format!("{conv}/messages")),
        (Method::GET, "/v1/audit/events".to_owned()),
    ] {
        call(&p, method.clone(), &path, None, Some(json!({})))
            .await?
            .problem(
                401,
                "unauthenticated",
                &format!("{method} {path} without a token"),
            )?;
        call(
            &p,
            method.clone(),
            &path,
            Some("v4.public.nonsense"),
            Some(json!({})),
        )
        .await?
        .problem(
            401,
            "invalid_token",
            &format!("{method} {path} with a bad token"),
        )?;
    }

    // Another user's conversation is not found.
    get(&p, &conv, &dave)
        .await?
        .problem(404, "conversation_not_found", "details")?;
    get(&p, &format!("{conv}/messages"), &dave).await?.problem(
        404,
        "conversation_not_found",
        "history",
    )?;
    post(
        &p,
        &format!("{conv}/messages"),
        &dave,
        json!({"client_msg_id": "x", "body": "hi"}),
    )
    .await?
    .problem(404, "conversation_not_found", "send")?;
    let unknown = format!("/v1/conversations/{}", uuid::Uuid::now_v7());
    get(&p, &unknown, &alice)
        .await?
        .problem(404, "conversation_not_found", "unknown id")?;

    // Member management without the role.
    patch(&p, &conv, &bob, json!({"title": "mine"}))
        .await?
        .problem(403, "forbidden", "rename by a member")?;
    post(
        &p,
        &format!("{conv}/members"),
        &bob,
        json!({"user_id": carol.user_id}),
    )
    .await?
    .problem(403, "forbidden", "add by a member")?;
    delete(&p, &format!("{conv}/members/{}", alice.user_id), &bob)
        .await?
        .problem(403, "forbidden", "remove by a member")?;

    // Validation.
    let msgs = format!("{conv}/messages");
    let e = post(
        &p,
        &msgs,
        &alice,
        json!({"client_msg_id": "e", "body": "   "}),
    )
    .await?
    .problem(422, "validation_failed", "blank body")?;
    ensure!(e["errors"].is_object(), "{e}");
    post(
        &p,
        &msgs,
        &alice,
        json!({"client_msg_id": "e", "body": "x".repeat(4001)}),
    )
    .await?
    .problem(422, "validation_failed", "body over 4000")?;
    post(
        &p,
        "/v1/conversations",
        &alice,
        json!({"title": "t".repeat(129), "member_ids": []}),
    )
    .await?
    .problem(422, "validation_failed", "title over 128")?;
    post(
        &p,
        "/v1/conversations",
        &alice,
        json!({"title": "", "member_ids": []}),
    )
    .await?
    .problem(422, "validation_failed", "empty title")?;
    patch(&p, &conv, &alice, json!({"title": "t".repeat(129)}))
        .await?
        .problem(422, "validation_failed", "rename over 128")?;
    let e = post(
        &p,
        &format!("{conv}/members"),
        &alice,
        json!({"user_id": carol.user_id, "role": "superuser"}),
    )
    .await?
    .problem(422, "validation_failed", "unknown role")?;
    ensure!(e["errors"]["role"].is_string(), "{e}");
    post(
        &p,
        "/v1/conversations",
        &alice,
        json!({"title": "Big", "member_ids": [bob.user_id, carol.user_id, dave.user_id]}),
    )
    .await?
    .problem(409, "group_full", "over the group limit")?;
    post(
        &p,
        "/v1/conversations/direct",
        &alice,
        json!({"user_id": uuid::Uuid::now_v7()}),
    )
    .await?
    .problem(404, "user_not_found", "direct with nobody")?;

    // Malformed input.
    let raw = |method: Method, path: &str, body: Vec<u8>| {
        p.http
            .request(method, p.url(path))
            .bearer_auth(&alice.access_token)
            .header("content-type", "application/json")
            .body(body)
    };
    into_reply(
        raw(Method::POST, &msgs, b"{\"client_msg_id\": ".to_vec())
            .send()
            .await?,
    )
    .await?
    .problem(400, "malformed_request", "truncated JSON")?;
    into_reply(
        raw(
            Method::POST,
            &msgs,
            b"{\"client_msg_id\":\"a\",\"body\":\"\xff\xfe\"}".to_vec(),
        )
        .send()
        .await?,
    )
    .await?
    .problem(400, "malformed_request", "invalid UTF-8")?;
    into_reply(raw(Method::POST, &msgs, Vec::new()).send().await?)
        .await?
        .problem(400, "malformed_request", "empty body")?;
    post(&p, &msgs, &alice, json!({"client_msg_id": 5, "body": "x"}))
        .await?
        .problem(422, "validation_failed", "wrong type")?;
    let e = post(
        &p,
        &msgs,
        &alice,
        json!({"client_msg_id": "a", "body": "x", "admin": true}),
    )
    .await?
    .problem(422, "validation_failed", "unknown field")?;
    ensure!(e["errors"]["admin"].is_string(), "{e}");
    post(&p, &msgs, &alice, json!({"body": "x"}))
        .await?
        .problem(422, "validation_failed", "missing field")?;
    put(&p, &format!("{conv}/read"), &alice, json!({"seq": "three"}))
        .await?
        .problem(422, "validation_failed", "seq of the wrong type")?;
    let big = json!({"client_msg_id": "big", "body": "x".repeat(70 * 1024)}).to_string();
    into_reply(raw(Method::POST, &msgs, big.into_bytes()).send().await?)
        .await?
        .problem(413, "payload_too_large", "oversized body")?;
    into_reply(
        p.http
            .post(p.url(&msgs))
            .bearer_auth(&alice.access_token)
            .header("content-type", "text/plain")
            .body("hello")
            .send()
            .await?,
    )
    .await?
    .problem(400, "malformed_request", "not JSON")?;
    get(&p, "/v1/conversations/not-a-uuid", &alice)
        .await?
        .problem(400, "malformed_request", "a malformed id")?;
    get(&p, "/v1/conversations/not-a-uuid/messages", &alice)
        .await?
        .problem(400, "malformed_request", "a malformed id in history")?;
    delete(&p, &format!("{msgs}/12"), &alice).await?.problem(
        400,
        "malformed_request",
        "a malformed message id",
    )?;
    get(&p, &format!("{msgs}?before_seq=abc"), &alice)
        .await?
        .problem(400, "malformed_request", "a non-numeric bound")?;
    get(&p, "/v1/conversations?limit=-1", &alice)
        .await?
        .problem(400, "malformed_request", "a negative limit")?;
    get(&p, "/v1/conversations?cursor=garbage", &alice)
        .await?
        .problem(422, "validation_failed", "a forged cursor")?;
    p.stop().await
}

#[tokio::test]
async fn audit_requires_the_auditor_role_and_pages_in_order() -> Result<()> {
    let p = Platform::start().await?;
    let alice = p.user("alice").await?;
    let bob = p.user("bob").await?;
    let g = create_group(&p, &alice, "Audited", &[&bob]).await?;
    post(
        &p,
        &format!("/v1/conversations/{g}/messages"),
        &bob,
        json!({"client_msg_id": "1", "body": "on the record"}),
    )
    .await?
    .expect(201, "send")?;
    let stream = format!("/v1/audit/streams/conversation/{g}");
    get(&p, "/v1/audit/events", &alice).await?.problem(
        403,
        "forbidden",
        "events without the role",
    )?;
    get(&p, &stream, &alice)
        .await?
        .problem(403, "forbidden", "stream without the role")?;

    p.commands
        .operator()
        .await?
        .grant_role(proto::command::v1::GrantRoleRequest {
            user_id: alice.user_id.clone(),
            role: "auditor".into(),
        })
        .await?;
    // Read the whole log in pages of 2 once the role is visible and the
    // log holds the grant: users, group, members, message, grant.
    let all = eventually("the full log, paged", || async {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let r = get(
                &p,
                &format!("/v1/audit/events?after_position={after}&limit=2"),
                &alice,
            )
            .await?;
            if r.status != StatusCode::OK {
                return Ok(None);
            }
            let page = r.body["events"].as_array().cloned().unwrap_or_default();
            ensure!(page.len() <= 2, "limit honoured: {}", r.body);
            let next = r.body["next_position"].as_i64().context("next_position")?;
            if page.is_empty() {
                ensure!(next == after, "an empty page keeps the position");
                break;
            }
            ensure!(
                next == page[page.len() - 1]["position"],
                "next_position is the last one"
            );
            events.extend(page);
            after = next;
        }
        let granted = events.iter().any(|e| {
            e["event_type"] == "RoleGranted"
                || e["event_type"].as_str().is_some_and(|t| t.contains("Role"))
        });
        Ok(granted.then_some(events))
    })
    .await?;
    let positions: Vec<i64> = all.iter().filter_map(|e| e["position"].as_i64()).collect();
    ensure!(positions.len() == all.len(), "every event has a position");
    ensure!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "global order: {positions:?}"
    );
    for e in &all {
        for key in [
            "event_id",
            "aggregate_type",
            "aggregate_id",
            "sequence",
            "event_type",
            "event_version",
            "occurred_at",
            "actor",
            "correlation_id",
            "causation_id",
            "position",
            "payload",
        ] {
            ensure!(e.get(key).is_some(), "envelope lacks {key}: {e}");
        }
        ensure!(
            e["payload"].is_object(),
            "payload is an object, not a string: {e}"
        );
    }
    let sent = all
        .iter()
        .find(|e| e["event_type"] == "MessageSent")
        .context("MessageSent in the log")?;
    ensure!(
        sent["payload"]["body"] == "on the record" && sent["aggregate_id"] == g.as_str(),
        "{sent}"
    );
    ensure!(
        all.iter()
            .filter(|e| e["event_type"] == "UserRegistered")
            .count()
            == 2,
        "two registrations"
    );

    // One stream, in sequence order, from a sequence.
    let whole = get(&p, &stream, &alice).await?.expect(200, "stream")?;
    let seqs: Vec<i64> = whole["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["sequence"].as_i64())
        .collect();
    ensure!(
        seqs.len() >= 2 && seqs == (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "{seqs:?}"
    );
    ensure!(
        whole["events"][0]["event_type"] == "ConversationCreated",
        "{whole}"
    );
    ensure!(whole["has_more"] == false, "{whole}");
    let from2 = get(&p, &format!("{stream}?from_sequence=2"), &alice)
        .await?
        .expect(200, "from 2")?;
    ensure!(from2["events"][0]["sequence"] == 2, "{from2}");
    ensure!(
        from2["events"].as_array().map(Vec::len) == Some(seqs.len() - 1),
        "{from2}"
    );
    get(&p, &format!("/v1/audit/streams/conversation/{g}x"), &alice)
        .await?
        .problem(400, "malformed_request", "a malformed stream id")?;
    get(&p, &format!("/v1/audit/streams/planet/{g}"), &alice)
        .await?
        .problem(422, "validation_failed", "an unknown aggregate type")?;
    p.stop().await
}

/// Every `METHOD /path` of API.md (read from the shared contract next to
/// the repository), with path parameters normalised to `{}` and the query
/// string dropped.
fn api_md_endpoints() -> Result<BTreeSet<(String, String)>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/API.md");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the API contract at {}", path.display()))?;
    let mut out = BTreeSet::new();
    for span in text.split('`').skip(1).step_by(2) {
        let Some((method, rest)) = span.split_once(' ') else {
            continue;
        };
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) || !rest.starts_with('/') {
            continue;
        }
        let route = rest.split('?').next().unwrap_or(rest);
        out.insert((method.to_lowercase(), normalise(route)));
    }
    Ok(out)
}

fn normalise(route: &str) -> String {
    route
        .split('/')
        .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn openapi_document_lists_every_endpoint_of_the_contract() -> Result<()> {
    let expected = api_md_endpoints()?;
    ensure!(
        expected.len() >= 35,
        "parsed too few endpoints from API.md: {expected:?}"
    );
    let p = Platform::start().await?;
    let r = p.http.get(p.url("/v1/openapi.json")).send().await?;
    ensure!(r.status() == StatusCode::OK, "{}", r.status());
    let doc: Value = r.json().await?;
    ensure!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    ensure!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer",
        "bearer scheme"
    );
    ensure!(
        doc["components"]["schemas"]["Problem"].is_object(),
        "Problem schema"
    );
    let mut served = BTreeSet::new();
    for (route, item) in doc["paths"].as_object().context("paths")? {
        for method in item.as_object().context("path item")?.keys() {
            served.insert((method.clone(), normalise(route)));
        }
    }
    let missing: Vec<_> = expected.difference(&served).collect();
    ensure!(
        missing.is_empty(),
        "API.md endpoints missing from the OpenAPI document: {missing:?}"
    );
    // Protected operations declare the bearer scheme.
    let send = &doc["paths"]["/v1/conversations/{id}/messages"]["post"];
    ensure!(send["security"][0]["bearer"].is_array(), "{send}");
    ensure!(
        send["responses"]["201"].is_object() && send["responses"]["404"].is_object(),
        "{send}"
    );
    p.stop().await
}

/// The platform with a notifier behind the gateway: a second gateway
/// (pointing at the notifier) replaces the one `Platform::start` made.
async fn platform_with_notifier() -> Result<(Platform, RunningNotifier)> {
    let mut p = Platform::start().await?;
    let notifier = RunningNotifier::start(
        &p.commands,
        &NotifierOptions {
            redis_prefix: Some(p.prefix.clone()),
            ..Default::default()
        },
    )
    .await?;
    let config = gateway_config(
        &p.commands,
        &p.queries,
        &p.prefix,
        &[
            "--notifier-url".into(),
            format!("https://localhost:{}", notifier.addr.port()),
        ],
    )?;
    let gateway = Gateway::start(config).await?;
    p.base = format!("https://localhost:{}", gateway.addr.port());
    std::mem::replace(&mut p.gateway, gateway).stop().await?;
    Ok((p, notifier))
}

#[tokio::test]
async fn notification_endpoints_reach_the_notifier() -> Result<()> {
    use base64::Engine as _;
    let (p, notifier) = platform_with_notifier().await?;
    let push = PushServer::start().await?;
    let alice = p.user("alice").await?;
    let bob = p.user("bob").await?;
    let dave = p.user("dave").await?;

    call(&p, Method::GET, "/v1/push/vapid-public-key", None, None)
        .await?
        .problem(401, "unauthenticated", "vapid key without a token")?;
    let key = get(&p, "/v1/push/vapid-public-key", &alice)
        .await?
        .expect(200, "vapid key")?;
    let point = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s(&key["public_key"]))
        .context("base64url")?;
    ensure!(
        point.len() == 65 && point[0] == 4,
        "uncompressed P-256 point"
    );

    // Settings: defaults, then replaced, validated.
    let defaults = get(&p, "/v1/me/notification-settings", &alice)
        .await?
        .expect(200, "settings")?;
    ensure!(
        defaults["push"] == true
            && defaults["email"] == true
            && defaults["email_delay_seconds"].is_u64(),
        "{defaults}"
    );
    let mine = json!({"push": true, "email": false, "email_delay_seconds": 60});
    put(&p, "/v1/me/notification-settings", &alice, mine.clone())
        .await?
        .expect(204, "put settings")?;
    let got = get(&p, "/v1/me/notification-settings", &alice)
        .await?
        .expect(200, "settings")?;
    ensure!(got == mine, "{got}");
    put(
        &p,
        "/v1/me/notification-settings",
        &alice,
        json!({"push": true, "email": true, "email_delay_seconds": 10_000_000}),
    )
    .await?
    .problem(422, "validation_failed", "delay out of range")?;
    put(
        &p,
        "/v1/me/notification-settings",
        &alice,
        json!({"push": true}),
    )
    .await?
    .problem(422, "validation_failed", "missing fields")?;

    // Subscriptions: the browser's PushSubscription JSON.
    let browser = push.subscribe()?;
    let body = json!({
        "endpoint": browser.endpoint,
        "expirationTime": null,
        "keys": {"p256dh": browser.p256dh, "auth": browser.auth},
    });
    let created = post(&p, "/v1/push/subscriptions", &alice, body.clone())
        .await?
        .expect(201, "subscribe")?;
    let sub = s(&created["subscription_id"]);
    let again = post(&p, "/v1/push/subscriptions", &alice, body)
        .await?
        .expect(200, "subscribe again")?;
    ensure!(again["subscription_id"] == sub.as_str(), "{again}");
    let list = get(&p, "/v1/push/subscriptions", &alice)
        .await?
        .expect(200, "list")?;
    let only = &list["subscriptions"][0];
    ensure!(
        list["subscriptions"].as_array().map(Vec::len) == Some(1)
            && only["subscription_id"] == sub.as_str()
            && only["endpoint"] == browser.endpoint.as_str()
            && is_rfc3339(&only["created_at"]),
        "{list}"
    );
    ensure!(
        !list.to_string().contains(&browser.auth),
        "keys are write-only"
    );
    post(
        &p,
        "/v1/push/subscriptions",
        &alice,
        json!({"endpoint": "not a url", "keys": {"p256dh": browser.p256dh, "auth": browser.auth}}),
    )
    .await?
    .problem(422, "validation_failed", "an endpoint that is not a URL")?;

    // A message from bob reaches alice's browser.
    let g = create_group(&p, &alice, "Pushy", &[&bob]).await?;
    get_until(
        &p,
        &format!("/v1/conversations/{g}"),
        &bob,
        "the group",
        |_| true,
    )
    .await?;
    post(
        &p,
        &format!("/v1/conversations/{g}/messages"),
        &bob,
        json!({"client_msg_id": "p1", "body": "ping"}),
    )
    .await?
    .expect(201, "send")?;
    let got = push
        .wait_for(DEADLINE * 2, "a push to alice", |r| {
            r.iter().any(|x| {
                x.token == browser.token
                    && x.payload
                        .as_ref()
                        .is_some_and(|v| v["conversation_id"] == g.as_str())
            })
        })
        .await?;
    let delivered = got
        .iter()
        .find(|x| x.token == browser.token)
        .context("the push")?;
    ensure!(delivered.problems.is_empty(), "{:?}", delivered.problems);

    // Mute: members only.
    put(
        &p,
        &format!("/v1/conversations/{g}/notifications"),
        &alice,
        json!({"muted": true, "muted_until": "2999-01-01T00:00:00Z"}),
    )
    .await?
    .expect(204, "mute")?;
    put(
        &p,
        &format!("/v1/conversations/{g}/notifications"),
        &alice,
        json!({"muted": false}),
    )
    .await?
    .expect(204, "unmute")?;
    put(
        &p,
        &format!("/v1/conversations/{g}/notifications"),
        &dave,
        json!({"muted": true}),
    )
    .await?
    .problem(404, "conversation_not_found", "mute by a non-member")?;
    put(
        &p,
        &format!("/v1/conversations/{g}/notifications"),
        &alice,
        json!({"muted": "yes"}),
    )
    .await?
    .problem(422, "validation_failed", "muted of the wrong type")?;

    // Deleting: once, and only one's own.
    delete(&p, &format!("/v1/push/subscriptions/{sub}"), &bob)
        .await?
        .problem(404, "subscription_not_found", "another user's subscription")?;
    delete(&p, &format!("/v1/push/subscriptions/{sub}"), &alice)
        .await?
        .expect(204, "unsubscribe")?;
    delete(&p, &format!("/v1/push/subscriptions/{sub}"), &alice)
        .await?
        .problem(404, "subscription_not_found", "unsubscribe twice")?;
    delete(&p, "/v1/push/subscriptions/nope", &alice)
        .await?
        .problem(400, "malformed_request", "a malformed id")?;
    let list = get(&p, "/v1/push/subscriptions", &alice)
        .await?
        .expect(200, "list")?;
    ensure!(list["subscriptions"] == json!([]), "{list}");

    p.stop().await?;
    notifier.stop().await
}

/// Latency of the two hottest reads through the gateway over HTTPS (one
/// keep-alive connection, sequential requests, after a warm-up), with 20
/// conversations and 200 messages in the measured one. Prints p50/p90/p99.
/// Run: `cargo nextest run -p tests --test gateway_rest --run-ignored only read_latency --no-capture`
/// (`--release` for figures that mean something; `READ_LATENCY_N` requests
/// per endpoint, default 1000).
#[tokio::test]
#[ignore = "a measurement, not a test"]
#[allow(clippy::print_stdout)]
async fn read_latency() -> Result<()> {
    let n: usize = std::env::var("READ_LATENCY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let p = Platform::start().await?;
    let alice = p.user("alice").await?;
    let bob = p.user("bob").await?;
    let mut last = String::new();
    for i in 0..20 {
        last = create_group(&p, &alice, &format!("g{i}"), &[&bob]).await?;
    }
    let msgs = format!("/v1/conversations/{last}/messages");
    for i in 0..200 {
        post(
            &p,
            &msgs,
            &bob,
            json!({"client_msg_id": format!("m{i}"), "body": format!("message {i}")}),
        )
        .await?
        .expect(201, "send")?;
    }
    get_until(
        &p,
        &format!("{msgs}?after_seq=0&limit=200"),
        &alice,
        "200 messages",
        |v| v["messages"].as_array().map(Vec::len) == Some(200),
    )
    .await?;
    get_until(
        &p,
        "/v1/conversations?limit=50",
        &alice,
        "20 conversations",
        |v| v["conversations"].as_array().map(Vec::len) == Some(20),
    )
    .await?;
    for (label, path) in [
        ("GET /v1/conversations", "/v1/conversations".to_owned()),
        ("GET /v1/conversations/{id}/messages", msgs.clone()),
    ] {
        let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
        for i in 0..(n + 50) {
            let start = Instant::now();
            let r = p
                .http
                .get(p.url(&path))
                .bearer_auth(&alice.access_token)
                .send()
                .await?;
            ensure!(r.status() == StatusCode::OK, "{label}: {}", r.status());
            let _ = r.bytes().await?;
            if i >= 50 {
                hist.record(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX))?;
            }
        }
        println!(
            "{label}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
            hist.len(),
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.9) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            hist.max() as f64 / 1000.0,
        );
    }
    p.stop().await
}
