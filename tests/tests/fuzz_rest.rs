//! Schemathesis against the whole platform in-process: every operation of
//! `GET /v1/openapi.json` is called with generated inputs (examples,
//! boundary values and negative cases of the coverage phase, random
//! fuzzing, and stateful sequences that follow the links between
//! responses and parameters), and every answer is checked against the
//! document.
//!
//! The test fails on any 5xx, on any 4xx that is not an
//! `application/problem+json` document, and on any failure schemathesis
//! reports (an undocumented status, a wrong content type, a body or header
//! that does not match its schema). It prints the counts (requests,
//! operations, test cases) schemathesis reports.
//!
//! Schemathesis is a Python program: `./dev test` installs a pinned
//! version into a cached virtualenv and exports `MESSENGER_SCHEMATHESIS`
//! (the path of its `st`). Without it this test fails: it never skips.
//!
//! Beyond schemathesis' checks, every response it received (its HAR
//! report) is checked here: no 5xx, every 4xx an `application/problem+json`
//! document whose `status` member is the response's status.
//!
//! Operations are split over four runs, and none is left out:
//! - `main` and `real-ids`: every operation except the two that end the
//!   session the run authenticates with (`POST /v1/auth/logout`, and `DELETE
//!   /v1/auth/sessions/{session_id}`, which the stateful phase can feed
//!   with the caller's own session id from `GET /v1/auth/sessions`). Were
//!   they in this run, every request after the first logout would only be
//!   answered 401 and the rest of the API would go untested. `main` lets
//!   schemathesis generate the path ids; `real-ids` fixes them to the
//!   conversation, message, member and subscription made beforehand, so
//!   that generated bodies and queries reach the services instead of
//!   stopping at a 404.
//! - `delete-session` and `logout`: each of those two alone, each
//!   authenticated with a session of the same user made for it (after a
//!   logout its session's token is refused, so the two cannot share one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tests::gateway_support::{gateway_config, Gateway, Platform, TestUser};
use tests::harness::pki;
use tests::notifier_support::{NotifierOptions, PushServer, RunningNotifier};

const DEADLINE: Duration = Duration::from_secs(20);

/// Test cases per operation in the fuzzing phase (and the bound of the
/// stateful phase); with the examples and coverage phases this keeps a run
/// within about two minutes on two cores.
const MAX_EXAMPLES: u32 = 50;

/// A fixed seed: a run is repeatable, and a failure can be reproduced.
/// `MESSENGER_FUZZ_SEED` explores with another.
const SEED: u64 = 20_240_901;

fn seed() -> u64 {
    std::env::var("MESSENGER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED)
}

/// The checks schemathesis applies to every response.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// The `st` executable (`MESSENGER_SCHEMATHESIS`), or a failure that says
/// how to get it.
fn schemathesis() -> Result<PathBuf> {
    let Some(path) = std::env::var_os("MESSENGER_SCHEMATHESIS").filter(|p| !p.is_empty()) else {
        bail!(
            "MESSENGER_SCHEMATHESIS is not set: this test needs schemathesis' `st`. \
             Run it through `./dev test` (which installs schemathesis into \
             ~/.cache/messenger/tools/venv and exports MESSENGER_SCHEMATHESIS), or set \
             MESSENGER_SCHEMATHESIS to the path of an `st` of schemathesis 4"
        );
    };
    let path = PathBuf::from(path);
    ensure!(
        path.is_file(),
        "MESSENGER_SCHEMATHESIS={} does not exist: run `./dev test` to install schemathesis",
        path.display()
    );
    Ok(path)
}

/// The platform with a notifier behind the gateway (the notification
/// endpoints would otherwise answer 503): a second gateway, pointing at the
/// notifier, replaces the one `Platform::start` made.
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

async fn call(
    p: &Platform,
    method: reqwest::Method,
    path: &str,
    who: &TestUser,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let mut r = p
        .http
        .request(method, p.url(path))
        .bearer_auth(&who.access_token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Polls `GET path` until it answers 200 and `ready` holds (reads go
/// through the projector).
async fn until(
    p: &Platform,
    path: &str,
    who: &TestUser,
    ready: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = call(p, reqwest::Method::GET, path, who, None).await?;
        if status == 200 && ready(&body) {
            return Ok(body);
        }
        ensure!(
            Instant::now() < deadline,
            "GET {path}: still {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A second session of `user` (a login of its own).
async fn second_session(p: &Platform, user: &TestUser) -> Result<String> {
    let r = p
        .http
        .post(p.url("/v1/auth/login"))
        .json(&json!({"login": user.username, "password": user.password}))
        .send()
        .await?;
    ensure!(r.status().as_u16() == 200, "second login: {}", r.status());
    let v: Value = r.json().await?;
    v["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("access_token")
}

/// What one schemathesis run saw.
#[derive(Debug, Default)]
struct RunResult {
    exit_ok: bool,
    /// Schemathesis' own summary lines (operations, test cases, failures).
    summary: Vec<String>,
    /// Every response schemathesis received.
    responses: Vec<Exchange>,
    /// Failures from the JUnit report: (test case, message).
    failures: Vec<(String, String)>,
    output: String,
    elapsed: Duration,
}

/// One schemathesis run: its name, the bearer token it sends, the
/// `--include-*`/`--exclude-*` arguments selecting its operations, and
/// fixed parameter values (`schemathesis.toml` lines continuing its
/// `[parameters]` table), if any.
struct Run<'a> {
    name: &'a str,
    token: &'a str,
    filter: &'a [&'a str],
    parameters: Option<String>,
}

/// Values mixed into the generated strings and integers (a fuzzing
/// dictionary): hostile text that random generation seldom produces (NUL
/// and other control characters, the whitespace `trim` knows and JSON
/// Schema's `\s` does not, bidi overrides, lone combining marks, markup and
/// query syntax) and the integer extremes of the server's types. Where a
/// value fits the schema it is used in positive cases too.
const DICTIONARY: &str = r#"
[dictionaries.hostile-strings]
values = [
  "\u0000", "a\u0000b", "abc\u0000", "\u0000abc\u0000", "\u0001\u001f\u007f", "a\u0085b", "\u0085",
  "\ufeffabc", "\u202eabc", "a\u0301", "\u3000abc\u3000", "a\r\nb", "%00", "../../etc/passwd",
  "' OR 1=1 --", "<script>x</script>", "{{7*7}}", "\U0001F600", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
]

[dictionaries.extreme-integers]
values = [0, 1, -1, 2147483647, 2147483648, 4294967295, 4294967296, 9223372036854775807, -9223372036854775808]

[generation.dictionaries]
string = { dictionary = "hostile-strings", probability = 0.5 }
integer = { dictionary = "extreme-integers", probability = 0.5 }

# The type-wide bindings above reach parameters; body fields are bound by
# name.
[parameters]
"body.body" = { dictionary = "hostile-strings", probability = 0.5 }
"body.title" = { dictionary = "hostile-strings", probability = 0.5 }
"body.display_name" = { dictionary = "hostile-strings", probability = 0.5 }
"body.username" = { dictionary = "hostile-strings", probability = 0.5 }
"body.email" = { dictionary = "hostile-strings", probability = 0.5 }
"body.login" = { dictionary = "hostile-strings", probability = 0.5 }
"body.password" = { dictionary = "hostile-strings", probability = 0.5 }
"body.new_password" = { dictionary = "hostile-strings", probability = 0.5 }
"body.current_password" = { dictionary = "hostile-strings", probability = 0.5 }
"body.token" = { dictionary = "hostile-strings", probability = 0.5 }
"body.refresh_token" = { dictionary = "hostile-strings", probability = 0.5 }
"body.client_msg_id" = { dictionary = "hostile-strings", probability = 0.5 }
"body.endpoint" = { dictionary = "hostile-strings", probability = 0.5 }
"body.muted_until" = { dictionary = "hostile-strings", probability = 0.5 }
"body.seq" = { dictionary = "extreme-integers", probability = 0.5 }
"body.email_delay_seconds" = { dictionary = "extreme-integers", probability = 0.5 }
"#;

/// Runs `st run` against the platform's document.
async fn run_schemathesis(st: &Path, p: &Platform, run: &Run<'_>) -> Result<RunResult> {
    let name = run.name;
    let dir = std::env::temp_dir().join(format!(
        "messenger-schemathesis-{name}-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let har = dir.join("run.har");
    let junit = dir.join("junit.xml");
    let mut cmd = tokio::process::Command::new(st);
    let config = dir.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "{DICTIONARY}\n{}",
            run.parameters.as_deref().unwrap_or_default()
        ),
    )?;
    cmd.arg("--config-file").arg(config);
    cmd.arg("run")
        .arg(p.url("/v1/openapi.json"))
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--checks", CHECKS])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--seed", &seed().to_string()])
        // One worker: with two, the worker threads parse Python sources
        // concurrently (hypothesis describing its lambdas), which Debian's
        // Python 3.11.2 does not survive ("AST constructor recursion depth
        // mismatch", a CPython race fixed in later 3.11 releases).
        .args(["--workers", "1"])
        .args(["--request-timeout", "20"])
        .args(["--generation-database", "none"])
        .args(["--suppress-health-check", "all"])
        .arg("--continue-on-failure")
        .arg("--no-color")
        .args(["--output-truncate", "true"])
        .arg("--tls-verify")
        .arg(pki().join("ca.pem"))
        .args(["--header", &format!("Authorization: Bearer {}", run.token)])
        .args(["--report", "junit,har"])
        .arg("--report-dir")
        .arg(&dir)
        .arg("--report-junit-path")
        .arg(&junit)
        .arg("--report-har-path")
        .arg(&har)
        .args(run.filter)
        .current_dir(&dir)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .context("schemathesis ran for more than 10 minutes")??;
    let elapsed = started.elapsed();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = output
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            [
                "API Operations:",
                "Test Phases:",
                "Test cases:",
                "Failures:",
                "Errors:",
                "Seed:",
            ]
            .iter()
            .any(|k| l.starts_with(k))
                || l.contains(" passed")
                || l.contains(" failed")
                || l.contains("generated")
        })
        .map(|l| l.chars().take(200).collect())
        .collect();
    let responses = read_har(&har)
        .with_context(|| format!("reading the HAR report of run {name}; output:\n{output}"))?;
    let failures = read_junit(&junit).unwrap_or_default();
    Ok(RunResult {
        exit_ok: out.status.success(),
        summary,
        responses,
        failures,
        output,
        elapsed,
    })
}

/// One request and its response, from the HAR report.
#[derive(Debug)]
struct Exchange {
    method: String,
    /// Without the query.
    path: String,
    url: String,
    status: u16,
    content_type: String,
    body: String,
}

/// Every exchange of a HAR file.
fn read_har(path: &Path) -> Result<Vec<Exchange>> {
    let har: Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let entries = har["log"]["entries"].as_array().context("log.entries")?;
    entries
        .iter()
        .map(|e| {
            let method = e["request"]["method"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let url = e["request"]["url"].as_str().unwrap_or_default();
            let path = url
                .split_once("://")
                .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
                .unwrap_or(url);
            let path = path.split('?').next().unwrap_or(path).to_owned();
            let body = e["response"]["content"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let status = u16::try_from(e["response"]["status"].as_u64().unwrap_or_default())?;
            let content_type = e["response"]["headers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|h| {
                    h["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case("content-type"))
                })
                .and_then(|h| h["value"].as_str())
                .or_else(|| e["response"]["content"]["mimeType"].as_str())
                .unwrap_or_default()
                .to_owned();
            Ok(Exchange {
                method,
                path,
                url: url.to_owned(),
                status,
                content_type,
                body,
            })
        })
        .collect()
}

/// (operation, failure) of every `<failure>`/`<error>` in a JUnit report:
/// one entry per failed check, as "ST103 Undocumented status code
/// (Received: 401)", or the error's first lines.
fn read_junit(path: &Path) -> Result<Vec<(String, String)>> {
    let xml = std::fs::read_to_string(path)?;
    let mut found = Vec::new();
    let mut case = String::new();
    for part in xml.split('<').skip(1) {
        if let Some(rest) = part.strip_prefix("testcase ") {
            case = attr(rest, "name").unwrap_or_default();
        } else if part.starts_with("failure") || part.starts_with("error") {
            let text = unescape(part.split_once('>').map_or("", |(_, t)| t));
            let mut last_check: Option<String> = None;
            let mut any = false;
            for line in text.lines().map(str::trim) {
                if let Some(check) = line.strip_prefix("- ") {
                    if let Some(c) = last_check.take() {
                        found.push((case.clone(), c));
                    }
                    last_check = Some(check.to_owned());
                    any = true;
                } else if line.starts_with("Received:") || line.starts_with("Expected:") {
                    if let Some(c) = last_check.take() {
                        found.push((case.clone(), format!("{c} ({line})")));
                    }
                }
            }
            if let Some(c) = last_check {
                found.push((case.clone(), c));
            }
            if !any {
                let head: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .take(3)
                    .collect();
                found.push((case.clone(), head.join(" / ")));
            }
        }
    }
    Ok(found)
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let end = tag[start..].find('"')? + start;
    Some(unescape(&tag[start..end]))
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#10;", "\n")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The route template a concrete path matches ("/v1/users/{user_id}").
fn route_of(doc: &Value, path: &str) -> String {
    let segments: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(route, _)| route)
        .find(|route| {
            let r: Vec<&str> = route.split('/').collect();
            r.len() == segments.len()
                && r.iter()
                    .zip(&segments)
                    .all(|(a, b)| a.starts_with('{') || a == b)
        })
        .cloned()
        .unwrap_or_else(|| path.to_owned())
}

/// The problems found, grouped by kind ("answered 405 with a problem whose
/// status is 400") with where each was seen.
#[derive(Debug, Default)]
struct Findings(BTreeMap<String, Vec<String>>);

impl Findings {
    /// Records `at` (where, with an example after ", e.g.") under `kind`,
    /// once per place.
    fn add(&mut self, kind: impl Into<String>, at: impl Into<String>) {
        let at = at.into();
        let place = at.split(", e.g. ").next().unwrap_or_default().to_owned();
        let list = self.0.entry(kind.into()).or_default();
        if !list
            .iter()
            .any(|a| a.split(", e.g. ").next() == Some(place.as_str()))
        {
            list.push(at);
        }
    }

    fn report(&self) -> String {
        self.0
            .iter()
            .map(|(kind, at)| {
                let shown: Vec<&str> = at.iter().take(8).map(String::as_str).collect();
                let more = at.len().saturating_sub(shown.len());
                format!(
                    "- {kind}: {} time(s), at {}{}",
                    at.len(),
                    shown.join("; "),
                    if more > 0 {
                        format!("; and {more} more")
                    } else {
                        String::new()
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// The counts are printed for people (`cargo test -p tests --test fuzz_rest
// -- --nocapture`): what was run, how much, with which statuses.
#[allow(clippy::print_stdout)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_nothing_undocumented() -> Result<()> {
    let st = schemathesis()?;
    let (p, notifier) = platform_with_notifier().await?;
    let push = PushServer::start().await?;

    // Data for the generated requests to reach: a group with messages, a
    // direct conversation, a push subscription; the caller is an auditor
    // so the audit endpoints answer with events, not only 403.
    let alice = p.user("fuzz_alice").await?;
    let bob = p.user("fuzz_bob").await?;
    p.commands
        .operator()
        .await?
        .grant_role(proto::command::v1::GrantRoleRequest {
            user_id: alice.user_id.clone(),
            role: "auditor".into(),
        })
        .await?;
    let post = |path: &'static str, body: Value| {
        let (p, alice) = (&p, &alice);
        async move { call(p, reqwest::Method::POST, path, alice, Some(body)).await }
    };
    let (status, group) = post(
        "/v1/conversations",
        json!({"title": "Fuzzed", "member_ids": [bob.user_id]}),
    )
    .await?;
    ensure!(status == 201, "create group: {status} {group}");
    let group = group["conversation_id"]
        .as_str()
        .context("conversation_id")?
        .to_owned();
    let (status, direct) =
        post("/v1/conversations/direct", json!({"user_id": bob.user_id})).await?;
    ensure!(status == 201, "open direct: {status} {direct}");
    let browser = push.subscribe()?;
    let (status, subscription) = post(
        "/v1/push/subscriptions",
        json!({"endpoint": browser.endpoint, "keys": {"p256dh": browser.p256dh, "auth": browser.auth}}),
    )
    .await?;
    ensure!(status == 201, "subscribe: {status} {subscription}");
    let subscription = subscription["subscription_id"]
        .as_str()
        .context("subscription_id")?
        .to_owned();
    let mut message = String::new();
    for (i, body) in ["hello", "second"].iter().enumerate() {
        let (status, sent) = call(
            &p,
            reqwest::Method::POST,
            &format!("/v1/conversations/{group}/messages"),
            &alice,
            Some(json!({"client_msg_id": format!("seed-{i}"), "body": body})),
        )
        .await?;
        ensure!(status == 201, "send: {status} {sent}");
        message = sent["message_id"]
            .as_str()
            .context("message_id")?
            .to_owned();
    }
    until(
        &p,
        &format!("/v1/conversations/{group}/messages"),
        &alice,
        |v| v["messages"].as_array().is_some_and(|m| m.len() == 2),
    )
    .await?;
    until(&p, "/v1/audit/events", &alice, |v| {
        v["events"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await?;

    let doc: Value = p
        .http
        .get(p.url("/v1/openapi.json"))
        .send()
        .await?
        .json()
        .await?;
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(route, item)| {
            item.as_object()
                .into_iter()
                .flatten()
                .map(|(m, _)| (route.clone(), m.to_uppercase()))
        })
        .collect();
    let delete_session_token = second_session(&p, &alice).await?;
    let logout_token = second_session(&p, &alice).await?;

    // The ids that exist, for the `real-ids` run: generated ids almost
    // never name anything, so without them the generated bodies would
    // mostly stop at a 404 before reaching the services.
    let real_ids = format!(
        r#"
"path.id" = "{group}"
"path.message_id" = "{message}"
"path.user_id" = "{bob}"
"path.aggregate_id" = "{group}"
"body.user_id" = "{bob}"

[[operations]]
include-operation-id = "delete_subscription"
parameters = {{ "path.id" = "{subscription}" }}
"#,
        bob = bob.user_id,
    );
    let not_ending = [
        "--exclude-operation-id",
        "logout",
        "--exclude-operation-id",
        "delete_session",
    ];
    let runs = [
        // Every operation but the two that end the caller's own session
        // (see the module docs), with generated ids...
        Run {
            name: "main",
            token: &alice.access_token,
            filter: &not_ending,
            parameters: None,
        },
        // ... and again with the ids of the data made above.
        Run {
            name: "real-ids",
            token: &alice.access_token,
            filter: &not_ending,
            parameters: Some(real_ids),
        },
        // The two, each with a session of its own.
        Run {
            name: "delete-session",
            token: &delete_session_token,
            filter: &["--include-operation-id", "delete_session"],
            parameters: None,
        },
        Run {
            name: "logout",
            token: &logout_token,
            filter: &["--include-operation-id", "logout"],
            parameters: None,
        },
    ];

    let mut findings = Findings::default();
    let mut by_operation: BTreeMap<(String, String), BTreeMap<u16, usize>> = BTreeMap::new();
    let mut total = 0;
    let started = Instant::now();
    let mut failed_outputs = Vec::new();
    for run in &runs {
        let name = run.name;
        let result = run_schemathesis(&st, &p, run).await?;
        println!("==== schemathesis run `{name}` ({:.0?})", result.elapsed);
        for line in &result.summary {
            println!("  {line}");
        }
        println!("  requests: {}", result.responses.len());
        total += result.responses.len();
        ensure!(
            !result.responses.is_empty(),
            "run {name} made no request:\n{}",
            result.output
        );
        for x in &result.responses {
            let (method, status) = (&x.method, x.status);
            let route = route_of(&doc, &x.path);
            let operation = (route.clone(), method.clone());
            // Requests with methods an endpoint does not have (the coverage
            // phase sends them) are checked but not counted as calls.
            if documented.contains(&operation) {
                *by_operation
                    .entry(operation)
                    .or_default()
                    .entry(status)
                    .or_default() += 1;
            }
            let problem_json = x
                .content_type
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/problem+json"));
            let at = format!("{method} {route} ({name})");
            if status >= 500 {
                findings.add(
                    format!("answered {status}"),
                    format!("{at}, e.g. {method} {}", x.url),
                );
            } else if status >= 400 && !problem_json {
                findings.add(
                    format!(
                        "answered {status} as `{}`, not a problem document",
                        x.content_type
                    ),
                    at,
                );
            } else if status >= 400 {
                let body: Value = serde_json::from_str(&x.body).unwrap_or(Value::Null);
                if body["status"] != status {
                    findings.add(
                        format!(
                            "answered {status} with a problem whose `status` is {}",
                            body["status"]
                        ),
                        at,
                    );
                }
            }
        }
        for (case, message) in &result.failures {
            findings.add(
                format!("schemathesis: {message}"),
                format!("{case} ({name})"),
            );
        }
        if !result.exit_ok {
            findings.add("schemathesis exited with a failure", name);
            failed_outputs.push((name, result.output));
        }
    }
    println!(
        "==== {total} requests in {} runs, {:.0?}; statuses by operation:",
        runs.len(),
        started.elapsed()
    );
    for ((route, method), statuses) in &by_operation {
        println!("  {method:6} {route}: {statuses:?}");
    }
    println!(
        "==== {} of the document's {} operations were called",
        by_operation.len(),
        documented.len()
    );
    if !findings.0.is_empty() {
        for (name, output) in &failed_outputs {
            println!("==== output of run `{name}`:\n{output}");
        }
        bail!(
            "schemathesis found {} kind(s) of problem:\n{}",
            findings.0.len(),
            findings.report()
        );
    }
    // Schemathesis does not call the document it was given (`GET
    // /v1/openapi.json`): this test fetched it above, and
    // tests/tests/openapi_contract.rs checks it.
    let uncalled: Vec<_> = documented
        .iter()
        .filter(|op| !by_operation.contains_key(*op))
        .filter(|(route, method)| !(route == "/v1/openapi.json" && method == "GET"))
        .collect();
    ensure!(uncalled.is_empty(), "operations never called: {uncalled:?}");
    notifier.stop().await?;
    p.stop().await
}
