//! The OpenAPI document a running gateway serves states what the server
//! enforces: each constraint below (lengths, patterns, ranges, enums,
//! formats, required fields) and each status an operation can answer, with
//! every error as an `application/problem+json` `Problem`.
//!
//! The expected numbers come from where the server takes them
//! (`domain::Limits::default()`, the query-service's page limits, the
//! notifier's delay bound), so a limit changed there and not in the
//! annotations fails here. `tests/tests/fuzz_rest.rs` checks the other
//! direction: that the server answers as the document says.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::gateway_support::Platform;

/// Statuses every operation of a kind can answer, as the extractors and
/// layers produce them (see `gateway/src/openapi.rs`).
const BODY: &[u16] = &[400, 413, 422];
const AUTH: &[u16] = &[401, 503];
const PARAMS: &[u16] = &[400];

/// `METHOD`, path, the kinds of statuses it shares, its own statuses.
type Expected = (
    &'static str,
    &'static str,
    &'static [&'static [u16]],
    &'static [u16],
);

/// `METHOD path` → the statuses it can answer.
fn expected_statuses() -> BTreeMap<(&'static str, &'static str), Vec<u16>> {
    let ops: &[Expected] = &[
        ("get", "/healthz", &[], &[200]),
        ("get", "/readyz", &[], &[200, 503]),
        ("get", "/metrics", &[], &[200]),
        ("get", "/v1/openapi.json", &[], &[200]),
        ("post", "/v1/auth/register", &[BODY], &[201, 409, 429, 503]),
        ("post", "/v1/auth/login", &[BODY], &[200, 401, 429, 503]),
        ("post", "/v1/auth/refresh", &[BODY], &[200, 401, 503]),
        ("post", "/v1/auth/logout", &[AUTH], &[204]),
        ("get", "/v1/auth/sessions", &[AUTH], &[200]),
        (
            "delete",
            "/v1/auth/sessions/{session_id}",
            &[AUTH, PARAMS],
            &[204, 404],
        ),
        (
            "post",
            "/v1/auth/password/forgot",
            &[BODY],
            &[202, 429, 503],
        ),
        ("post", "/v1/auth/password/reset", &[BODY], &[204, 409, 503]),
        (
            "post",
            "/v1/auth/password/change",
            &[BODY, AUTH],
            &[204, 403, 409, 429],
        ),
        ("get", "/v1/me", &[AUTH], &[200, 404]),
        ("get", "/v1/users/{user_id}", &[AUTH, PARAMS], &[200, 404]),
        ("get", "/v1/users", &[AUTH, PARAMS], &[200, 422]),
        ("get", "/v1/ws", &[], &[101, 401, 426, 503]),
        ("post", "/v1/conversations", &[BODY, AUTH], &[201, 404, 409]),
        (
            "post",
            "/v1/conversations/direct",
            &[BODY, AUTH],
            &[200, 201, 404, 409],
        ),
        ("get", "/v1/conversations", &[AUTH, PARAMS], &[200, 422]),
        (
            "get",
            "/v1/conversations/{id}",
            &[AUTH, PARAMS],
            &[200, 404],
        ),
        (
            "patch",
            "/v1/conversations/{id}",
            &[BODY, AUTH, PARAMS],
            &[204, 403, 404, 409],
        ),
        (
            "post",
            "/v1/conversations/{id}/members",
            &[BODY, AUTH, PARAMS],
            &[204, 403, 404, 409],
        ),
        (
            "delete",
            "/v1/conversations/{id}/members/{user_id}",
            &[AUTH, PARAMS],
            &[204, 403, 404, 409],
        ),
        (
            "put",
            "/v1/conversations/{id}/read",
            &[BODY, AUTH, PARAMS],
            &[204, 404, 409],
        ),
        (
            "put",
            "/v1/conversations/{id}/notifications",
            &[BODY, AUTH, PARAMS],
            &[204, 404],
        ),
        (
            "post",
            "/v1/conversations/{id}/messages",
            &[BODY, AUTH, PARAMS],
            &[200, 201, 404, 409],
        ),
        (
            "get",
            "/v1/conversations/{id}/messages",
            &[AUTH, PARAMS],
            &[200, 404, 422],
        ),
        (
            "patch",
            "/v1/conversations/{id}/messages/{message_id}",
            &[BODY, AUTH, PARAMS],
            &[204, 403, 404, 409],
        ),
        (
            "delete",
            "/v1/conversations/{id}/messages/{message_id}",
            &[AUTH, PARAMS],
            &[204, 403, 404, 409],
        ),
        ("get", "/v1/audit/events", &[AUTH, PARAMS], &[200, 403, 422]),
        (
            "get",
            "/v1/audit/streams/{aggregate_type}/{aggregate_id}",
            &[AUTH, PARAMS],
            &[200, 403, 422],
        ),
        ("get", "/v1/push/vapid-public-key", &[AUTH], &[200]),
        ("post", "/v1/push/subscriptions", &[BODY, AUTH], &[200, 201]),
        ("get", "/v1/push/subscriptions", &[AUTH], &[200]),
        (
            "delete",
            "/v1/push/subscriptions/{id}",
            &[AUTH, PARAMS],
            &[204, 404],
        ),
        ("get", "/v1/me/notification-settings", &[AUTH], &[200]),
        ("put", "/v1/me/notification-settings", &[BODY, AUTH], &[204]),
    ];
    ops.iter()
        .map(|(method, path, kinds, own)| {
            let mut all: BTreeSet<u16> = own.iter().copied().collect();
            for kind in *kinds {
                all.extend(kind.iter().copied());
            }
            ((*method, *path), all.into_iter().collect())
        })
        .collect()
}

/// A schema with `$ref`s resolved (one level at a time, as often as needed).
fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> Result<&'a Value> {
    for _ in 0..8 {
        let Some(r) = schema["$ref"].as_str() else {
            return Ok(schema);
        };
        let name = r
            .strip_prefix("#/components/schemas/")
            .with_context(|| format!("unexpected $ref {r}"))?;
        schema = &doc["components"]["schemas"][name];
        ensure!(schema.is_object(), "$ref {r} names no schema");
    }
    anyhow::bail!("$ref chain too long")
}

/// The schema of a property, through `$ref` and the `oneOf: [null, ...]`
/// utoipa writes for optional references.
fn property<'a>(doc: &'a Value, schema: &str, name: &str) -> Result<&'a Value> {
    let s = &doc["components"]["schemas"][schema];
    ensure!(s.is_object(), "no schema {schema}");
    let p = &s["properties"][name];
    ensure!(p.is_object(), "{schema} has no property {name}: {s}");
    if let Some(alternatives) = p["oneOf"].as_array() {
        if let Some(non_null) = alternatives.iter().find(|a| a["type"] != "null") {
            return resolve(doc, non_null);
        }
    }
    resolve(doc, p)
}

/// The schema of a parameter of an operation.
fn parameter<'a>(doc: &'a Value, method: &str, path: &str, name: &str) -> Result<&'a Value> {
    let op = &doc["paths"][path][method];
    let p = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .with_context(|| format!("{method} {path} has no parameter {name}"))?;
    resolve(doc, &p["schema"])
}

/// Asserts that `schema` carries every keyword of `want` with that value.
fn has(what: &str, schema: &Value, want: &Value) -> Result<()> {
    for (k, v) in want.as_object().context("want is an object")? {
        ensure!(
            schema.get(k) == Some(v),
            "{what}: expected `{k}: {v}`, the document says {}",
            schema
                .get(k)
                .map_or_else(|| "nothing".to_owned(), Value::to_string)
        );
    }
    Ok(())
}

async fn document() -> Result<(Platform, Value)> {
    let p = Platform::start().await?;
    let r = p.http.get(p.url("/v1/openapi.json")).send().await?;
    ensure!(r.status().as_u16() == 200, "{}", r.status());
    let doc: Value = r.json().await?;
    Ok((p, doc))
}

#[tokio::test]
async fn the_document_states_the_limits_the_server_enforces() -> Result<()> {
    let (p, doc) = document().await?;
    let l = domain::Limits::default();
    let username = json!({
        "minLength": l.username_min, "maxLength": l.username_max, "pattern": "^[A-Za-z0-9_]+$",
    });
    let password = json!({"minLength": l.password_min, "maxLength": l.password_max});
    let email = json!({"format": "email", "maxLength": 254});
    let body = json!({"minLength": 1, "maxLength": l.body_max});
    let title = json!({"minLength": 1, "maxLength": l.title_max});
    let checks: Vec<(&str, &str, Value)> = vec![
        ("RegisterBody", "username", username),
        ("RegisterBody", "password", password.clone()),
        ("RegisterBody", "email", email.clone()),
        (
            "RegisterBody",
            "display_name",
            json!({"minLength": 1, "maxLength": l.display_name_max}),
        ),
        ("ForgotBody", "email", email),
        ("ResetBody", "new_password", password.clone()),
        ("ChangePasswordBody", "new_password", password),
        ("SendBody", "body", body.clone()),
        (
            "SendBody",
            "client_msg_id",
            json!({"minLength": 1, "maxLength": l.client_msg_id_max, "pattern": "^[!-~]+$"}),
        ),
        ("EditBody", "body", body),
        ("CreateGroupBody", "title", title.clone()),
        ("RenameBody", "title", title),
        (
            "MarkReadBody",
            "seq",
            json!({"type": "integer", "minimum": 1}),
        ),
        ("AddMemberBody", "user_id", json!({"format": "uuid"})),
        (
            "AddMemberBody",
            "role",
            json!({"type": "string", "enum": ["admin", "member"]}),
        ),
        ("OpenDirectBody", "user_id", json!({"format": "uuid"})),
        (
            "Settings",
            "email_delay_seconds",
            json!({"minimum": 0, "maximum": notifier::prefs::MAX_EMAIL_DELAY}),
        ),
        ("SubscriptionBody", "endpoint", json!({"maxLength": 2048})),
        (
            "ConversationSummary",
            "kind",
            json!({"enum": ["direct", "group"]}),
        ),
        (
            "ConversationDetails",
            "kind",
            json!({"enum": ["direct", "group"]}),
        ),
        (
            "MemberView",
            "role",
            json!({"enum": ["owner", "admin", "member"]}),
        ),
    ];
    for (schema, field, want) in &checks {
        has(
            &format!("{schema}.{field}"),
            property(&doc, schema, field)?,
            want,
        )?;
    }
    // The "not only whitespace" pattern of trimmed fields: a character
    // `str::trim` keeps.
    for (schema, field) in [
        ("SendBody", "body"),
        ("EditBody", "body"),
        ("CreateGroupBody", "title"),
        ("RenameBody", "title"),
        ("RegisterBody", "display_name"),
    ] {
        let pattern = property(&doc, schema, field)?["pattern"]
            .as_str()
            .with_context(|| format!("{schema}.{field} has no pattern"))?;
        ensure!(
            pattern.starts_with("[^") && pattern.contains(r"\u3000"),
            "{schema}.{field}: {pattern}"
        );
    }

    // Required fields and closed objects (serde's deny_unknown_fields).
    let required: &[(&str, &[&str])] = &[
        ("RegisterBody", &["email", "username", "password"]),
        ("LoginBody", &["login", "password"]),
        ("RefreshBody", &["refresh_token"]),
        ("ForgotBody", &["email"]),
        ("ResetBody", &["token", "new_password"]),
        ("ChangePasswordBody", &["current_password", "new_password"]),
        ("CreateGroupBody", &["title"]),
        ("OpenDirectBody", &["user_id"]),
        ("RenameBody", &["title"]),
        ("AddMemberBody", &["user_id"]),
        ("MarkReadBody", &["seq"]),
        ("SendBody", &["client_msg_id", "body"]),
        ("EditBody", &["body"]),
        ("SubscriptionBody", &["endpoint", "keys"]),
        ("PushKeys", &["p256dh", "auth"]),
        ("Settings", &["push", "email", "email_delay_seconds"]),
        ("MuteBody", &["muted"]),
        ("Problem", &["type", "title", "status", "code"]),
    ];
    for (schema, fields) in required {
        let s = &doc["components"]["schemas"][schema];
        let got: BTreeSet<&str> = s["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let want: BTreeSet<&str> = fields.iter().copied().collect();
        ensure!(got == want, "{schema}: required {got:?}, expected {want:?}");
        if *schema != "Problem" {
            ensure!(
                s["additionalProperties"] == false,
                "{schema} does not say that unknown fields are refused"
            );
        }
    }

    // Page sizes: at least 1 (0 is refused), at most what query-service
    // serves.
    use query_service::reads::{audit, conversations, messages, users};
    let limits: &[(&str, &str, u32)] = &[
        ("get", "/v1/users", users::MAX_SEARCH_LIMIT),
        ("get", "/v1/conversations", conversations::MAX_LIMIT),
        (
            "get",
            "/v1/conversations/{id}/messages",
            messages::MAX_LIMIT,
        ),
        ("get", "/v1/audit/events", audit::MAX_EVENTS_LIMIT),
        (
            "get",
            "/v1/audit/streams/{aggregate_type}/{aggregate_id}",
            audit::MAX_EVENTS_LIMIT,
        ),
    ];
    for (method, path, max) in limits {
        has(
            &format!("{method} {path} limit"),
            parameter(&doc, method, path, "limit")?,
            &json!({"type": "integer", "minimum": 1, "maximum": max}),
        )?;
    }
    let params: &[(&str, &str, &str, Value)] = &[
        (
            "get",
            "/v1/users",
            "username_prefix",
            json!({"minLength": 1, "maxLength": users::MAX_PREFIX_CHARS}),
        ),
        (
            "get",
            "/v1/conversations/{id}/messages",
            "before_seq",
            json!({"minimum": 1}),
        ),
        (
            "get",
            "/v1/conversations/{id}/messages",
            "after_seq",
            json!({"minimum": 0}),
        ),
        (
            "get",
            "/v1/audit/events",
            "after_position",
            json!({"minimum": 0}),
        ),
        (
            "get",
            "/v1/audit/streams/{aggregate_type}/{aggregate_id}",
            "aggregate_type",
            json!({"enum": ["user", "conversation", "read_marker"]}),
        ),
    ];
    for (method, path, name, want) in params {
        has(
            &format!("{method} {path} {name}"),
            parameter(&doc, method, path, name)?,
            want,
        )?;
    }
    // Every id in a path is a UUID.
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for (method, op) in item.as_object().context("path item")? {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or_default();
                if p["in"] == "path" && (name == "id" || name.ends_with("_id")) {
                    has(
                        &format!("{method} {path} {name}"),
                        resolve(&doc, &p["schema"])?,
                        &json!({"type": "string", "format": "uuid"}),
                    )?;
                }
            }
        }
    }
    p.stop().await
}

#[tokio::test]
async fn every_operation_documents_the_statuses_it_can_answer() -> Result<()> {
    let (p, doc) = document().await?;
    let expected = expected_statuses();
    let mut documented = BTreeSet::new();
    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for (method, op) in item.as_object().context("path item")? {
            documented.insert((method.clone(), path.clone()));
            let responses = op["responses"].as_object().context("responses")?;
            let Some(want) = expected.get(&(method.as_str(), path.as_str())) else {
                problems.push(format!(
                    "{method} {path} is not in this test's list: add what it can answer"
                ));
                continue;
            };
            for status in want {
                if !responses.contains_key(&status.to_string()) {
                    problems.push(format!("{method} {path} does not document {status}"));
                }
            }
            for (status, response) in responses {
                let code: u16 = status.parse().context("numeric status")?;
                if code >= 400 && !(path == "/readyz" && code == 503) {
                    let schema = &response["content"]["application/problem+json"]["schema"];
                    if schema["$ref"] != "#/components/schemas/Problem"
                        || response["content"]
                            .as_object()
                            .map_or(0, serde_json::Map::len)
                            != 1
                    {
                        problems.push(format!(
                            "{method} {path} {status} is not an application/problem+json Problem: {response}"
                        ));
                    }
                }
                if code == 429 && response["headers"]["Retry-After"]["schema"]["type"] != "integer"
                {
                    problems.push(format!("{method} {path} 429 does not document Retry-After"));
                }
            }
            if op["operationId"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{method} {path} has no operationId"));
            }
        }
    }
    for (method, path) in expected.keys() {
        if !documented.contains(&((*method).to_owned(), (*path).to_owned())) {
            problems.push(format!("{method} {path} is missing from the document"));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    p.stop().await
}

#[tokio::test]
async fn the_document_is_well_formed_openapi_3_1() -> Result<()> {
    let (p, doc) = document().await?;
    ensure!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "openapi: {}",
        doc["openapi"]
    );
    ensure!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    // Every $ref names a component that exists.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    out.push(r);
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    ensure!(!all.is_empty(), "no $ref at all");
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .with_context(|| format!("$ref outside components/schemas: {r}"))?;
        ensure!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {r}"
        );
    }
    // Operation ids are unique; path parameters are declared and required.
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_object().context("path item")? {
            let id = op["operationId"].as_str().unwrap_or_default();
            ensure!(ids.insert(id.to_owned()), "operationId {id} twice");
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path" && p["required"] == true)
                .filter_map(|p| p["name"].as_str())
                .collect();
            ensure!(
                declared == templated,
                "{method} {path}: path parameters {declared:?}, template {templated:?}"
            );
            ensure!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
        }
    }
    p.stop().await
}
