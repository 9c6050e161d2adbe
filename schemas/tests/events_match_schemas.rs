//! The domain and the schemas agree.
//!
//! For every `event_type` each domain event enum lists in `EventTypes::TYPES`,
//! this test builds real instances, encodes them exactly as the event store
//! and Kafka do (`domain::event::encode`, wrapped in `domain::envelope::Envelope`)
//! and validates envelope and payload against their JSON Schemas (draft
//! 2020-12, format validation on). It fails when a variant has no instance
//! here or no schema, when a schema has no variant, and when an instance does
//! not validate. Negative cases prove the schemas actually refuse bad input.

#![allow(clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{Duration, Utc};
use domain::conversation::{ConversationEvent, ConversationKind, MemberEntry};
use domain::envelope::{Envelope, SYSTEM_ACTOR};
use domain::event::{encode, EventTypes, CURRENT_VERSION};
use domain::read_marker::ReadMarkerEvent;
use domain::user::{PasswordChangeMethod, UserEvent};
use domain::values::{
    read_marker_id, ClientMsgId, ConversationId, DisplayName, Email, MessageBody, MessageId, Role,
    Title, UserId, UserRole, Username,
};
use domain::Limits;
use jsonschema::Validator;
use serde_json::{json, Value};
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn compile(schema_text: &str, what: &str) -> Validator {
    let schema: Value = serde_json::from_str(schema_text).expect("schema is JSON");
    if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
        panic!("{what} is not a valid 2020-12 schema: {e}");
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{what} does not compile: {e}"))
}

fn envelope_validator() -> Validator {
    compile(schemas::envelope_schema(), "envelope.v1")
}

fn payload_validator(aggregate_type: &str, event_type: &str) -> Option<Validator> {
    schemas::event_schema(aggregate_type, event_type, CURRENT_VERSION).map(|text| {
        compile(
            text,
            &format!("{aggregate_type}/{event_type}.v{CURRENT_VERSION}"),
        )
    })
}

/// All validation errors of `instance`, one line each (empty when valid).
fn errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The `event_type` names of every aggregate, keyed by `aggregate_type`.
fn types_of(aggregate_type: &str) -> Option<&'static [&'static str]> {
    match aggregate_type {
        "user" => Some(UserEvent::TYPES),
        "conversation" => Some(ConversationEvent::TYPES),
        "read_marker" => Some(ReadMarkerEvent::TYPES),
        _ => None,
    }
}

const AGGREGATE_TYPES: [&str; 3] = ["user", "conversation", "read_marker"];

/// One encoded event, ready to be wrapped.
#[derive(Debug)]
struct Sample {
    aggregate_id: Uuid,
    actor: String,
    event_type: String,
    payload: Value,
}

fn envelope(aggregate_type: &str, sequence: i64, sample: &Sample) -> Value {
    let env = Envelope::<Value> {
        event_id: Uuid::now_v7(),
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: sample.aggregate_id.to_string(),
        sequence,
        event_type: sample.event_type.clone(),
        event_version: CURRENT_VERSION,
        occurred_at: Utc::now(),
        actor: sample.actor.clone(),
        correlation_id: Uuid::now_v7(),
        // Exercise both shapes of the optional fields.
        causation_id: (sequence % 2 == 0).then(Uuid::now_v7),
        position: (sequence % 3 != 0).then_some(sequence * 10),
        payload: sample.payload.clone(),
    };
    serde_json::to_value(env).expect("envelope serialises")
}

fn limits() -> Limits {
    Limits::default()
}

fn title(s: &str) -> Title {
    Title::parse(s, &limits()).expect("valid title")
}

fn body(s: &str) -> MessageBody {
    MessageBody::parse(s, &limits()).expect("valid body")
}

fn display_name(s: &str) -> DisplayName {
    DisplayName::parse(s, &limits()).expect("valid display name")
}

// ---------------------------------------------------------------------------
// Instances of every event
// ---------------------------------------------------------------------------

/// The name of a user event's variant. Exhaustive on purpose: a new variant
/// does not compile until it is named here, which is the reminder to build an
/// instance of it in `user_events` and to write its schema.
fn user_variant(e: &UserEvent) -> &'static str {
    match e {
        UserEvent::UserRegistered { .. } => "UserRegistered",
        UserEvent::PasswordChanged { .. } => "PasswordChanged",
        UserEvent::PasswordResetRequested { .. } => "PasswordResetRequested",
        UserEvent::DisplayNameChanged { .. } => "DisplayNameChanged",
        UserEvent::RoleGranted { .. } => "RoleGranted",
        UserEvent::RoleRevoked { .. } => "RoleRevoked",
    }
}

/// See [`user_variant`].
fn conversation_variant(e: &ConversationEvent) -> &'static str {
    match e {
        ConversationEvent::ConversationCreated { .. } => "ConversationCreated",
        ConversationEvent::MemberAdded { .. } => "MemberAdded",
        ConversationEvent::MemberRemoved { .. } => "MemberRemoved",
        ConversationEvent::MemberRoleChanged { .. } => "MemberRoleChanged",
        ConversationEvent::ConversationRenamed { .. } => "ConversationRenamed",
        ConversationEvent::MessageSent { .. } => "MessageSent",
        ConversationEvent::MessageEdited { .. } => "MessageEdited",
        ConversationEvent::MessageDeleted { .. } => "MessageDeleted",
    }
}

/// See [`user_variant`].
fn read_marker_variant(e: &ReadMarkerEvent) -> &'static str {
    match e {
        ReadMarkerEvent::ReadMarkerMoved { .. } => "ReadMarkerMoved",
    }
}

fn user_events(user: UserId) -> Vec<UserEvent> {
    let l = limits();
    vec![
        UserEvent::UserRegistered {
            user_id: user,
            email: Email::parse("  Ann.Lee+chat@Example.org ").expect("valid email"),
            username: Username::parse("Ann_Lee_1", &l).expect("valid username"),
            display_name: display_name("Ann Lée 🌱"),
        },
        UserEvent::PasswordChanged {
            method: PasswordChangeMethod::Change,
        },
        UserEvent::PasswordResetRequested {
            expires_at: Utc::now() + Duration::minutes(30),
        },
        UserEvent::PasswordChanged {
            method: PasswordChangeMethod::Reset,
        },
        UserEvent::DisplayNameChanged {
            display_name: display_name("Annie"),
        },
        UserEvent::RoleGranted {
            role: UserRole::Auditor,
        },
        UserEvent::RoleRevoked {
            role: UserRole::Auditor,
        },
    ]
}

struct People {
    owner: UserId,
    admin: UserId,
    member: UserId,
}

fn group_events(group: ConversationId, p: &People) -> Vec<ConversationEvent> {
    let msg = MessageId::new_v7();
    vec![
        ConversationEvent::ConversationCreated {
            conversation_id: group,
            kind: ConversationKind::Group,
            title: Some(title("  Team «α» ")),
            created_by: p.owner,
            members: vec![
                MemberEntry {
                    user_id: p.owner,
                    role: Role::Owner,
                },
                MemberEntry {
                    user_id: p.member,
                    role: Role::Member,
                },
            ],
        },
        ConversationEvent::MemberAdded {
            user_id: p.admin,
            role: Role::Admin,
            added_by: p.owner,
        },
        ConversationEvent::MemberAdded {
            user_id: UserId::new_v7(),
            role: Role::Member,
            added_by: p.admin,
        },
        ConversationEvent::MemberRoleChanged {
            user_id: p.member,
            role: Role::Admin,
            changed_by: p.owner,
        },
        // An ownership transfer.
        ConversationEvent::MemberRoleChanged {
            user_id: p.member,
            role: Role::Owner,
            changed_by: p.owner,
        },
        ConversationEvent::MemberRoleChanged {
            user_id: p.owner,
            role: Role::Admin,
            changed_by: p.owner,
        },
        ConversationEvent::ConversationRenamed {
            title: title("Team β"),
            renamed_by: p.admin,
        },
        ConversationEvent::MessageSent {
            message_id: msg,
            sender_id: p.member,
            body: body("  hello\nworld 👋 "),
            client_msg_id: ClientMsgId::parse("c-1~!{}", &limits()).expect("valid id"),
            sent_at: Utc::now(),
        },
        ConversationEvent::MessageEdited {
            message_id: msg,
            body: body("hello, world"),
            edited_at: Utc::now(),
        },
        ConversationEvent::MessageDeleted {
            message_id: msg,
            deleted_by: p.admin,
        },
        ConversationEvent::MemberRemoved {
            user_id: p.admin,
            removed_by: p.admin,
        },
        ConversationEvent::MemberRemoved {
            user_id: p.member,
            removed_by: p.owner,
        },
    ]
}

/// A direct conversation between `a` and `b`, created as the domain does.
fn direct_created(a: UserId, b: UserId) -> ConversationEvent {
    let mut pair = [a, b];
    pair.sort();
    ConversationEvent::ConversationCreated {
        conversation_id: ConversationId::direct(a, b),
        kind: ConversationKind::Direct,
        title: None,
        created_by: a,
        members: pair
            .into_iter()
            .map(|user_id| MemberEntry {
                user_id,
                role: Role::Member,
            })
            .collect(),
    }
}

fn encode_all<E: EventTypes>(
    events: &[E],
    variant: fn(&E) -> &'static str,
    aggregate_id: Uuid,
    actor: &str,
) -> Vec<Sample> {
    events
        .iter()
        .map(|e| {
            let (event_type, payload) = encode(e).expect("event encodes");
            assert_eq!(event_type, variant(e), "encode() names the variant");
            Sample {
                aggregate_id,
                actor: actor.to_owned(),
                event_type,
                payload,
            }
        })
        .collect()
}

/// Every sample, keyed by aggregate type.
fn all_samples() -> Vec<(&'static str, Vec<Sample>)> {
    let p = People {
        owner: UserId::new_v7(),
        admin: UserId::new_v7(),
        member: UserId::new_v7(),
    };
    let group = ConversationId::new_v7();

    let mut user = encode_all(
        &user_events(p.owner),
        user_variant,
        p.owner.0,
        &p.owner.to_string(),
    );
    // Roles are granted by operators.
    for s in user.iter_mut().filter(|s| s.event_type.starts_with("Role")) {
        s.actor = SYSTEM_ACTOR.to_owned();
    }

    let mut conversation = encode_all(
        &group_events(group, &p),
        conversation_variant,
        group.0,
        &p.owner.to_string(),
    );
    let direct = direct_created(p.member, p.admin);
    conversation.extend(encode_all(
        &[direct],
        conversation_variant,
        ConversationId::direct(p.member, p.admin).0,
        &p.member.to_string(),
    ));
    // A group holding only its creator.
    conversation.extend(encode_all(
        &[ConversationEvent::ConversationCreated {
            conversation_id: ConversationId::new_v7(),
            kind: ConversationKind::Group,
            title: Some(title("Notes")),
            created_by: p.admin,
            members: vec![MemberEntry {
                user_id: p.admin,
                role: Role::Owner,
            }],
        }],
        conversation_variant,
        Uuid::now_v7(),
        &p.admin.to_string(),
    ));

    let read_marker = encode_all(
        &[
            ReadMarkerEvent::ReadMarkerMoved {
                conversation_id: group,
                user_id: p.member,
                seq: 1,
            },
            ReadMarkerEvent::ReadMarkerMoved {
                conversation_id: group,
                user_id: p.member,
                seq: 12,
            },
        ],
        read_marker_variant,
        read_marker_id(group, p.member),
        &p.member.to_string(),
    );

    vec![
        ("user", user),
        ("conversation", conversation),
        ("read_marker", read_marker),
    ]
}

// ---------------------------------------------------------------------------
// Coverage and validity
// ---------------------------------------------------------------------------

#[test]
fn every_event_the_domain_defines_validates_against_its_schema() {
    let envelope_schema = envelope_validator();
    let mut failures = Vec::new();
    let mut validated = 0usize;

    for (aggregate_type, samples) in all_samples() {
        let types = types_of(aggregate_type).expect("known aggregate type");

        // Every name an instance encodes to is a declared type.
        for s in &samples {
            if !types.contains(&s.event_type.as_str()) {
                failures.push(format!(
                    "{aggregate_type}/{}: encoded name missing from TYPES",
                    s.event_type
                ));
            }
        }

        for event_type in types {
            let instances: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.event_type == *event_type)
                .collect();
            if instances.is_empty() {
                failures.push(format!(
                    "{aggregate_type}/{event_type}: no instance built by this test"
                ));
            }
            let Some(payload_schema) = payload_validator(aggregate_type, event_type) else {
                failures.push(format!(
                    "{aggregate_type}/{event_type}: no schema v{CURRENT_VERSION} in schemas::ALL"
                ));
                continue;
            };
            for (i, s) in instances.into_iter().enumerate() {
                for e in errors(&payload_schema, &s.payload) {
                    failures.push(format!(
                        "{aggregate_type}/{event_type} payload {}: {e}",
                        s.payload
                    ));
                }
                let sequence = i64::try_from(i).expect("small") + 1;
                let wrapped = envelope(aggregate_type, sequence, s);
                for e in errors(&envelope_schema, &wrapped) {
                    failures.push(format!(
                        "{aggregate_type}/{event_type} envelope {wrapped}: {e}"
                    ));
                }
                // The envelope round-trips through the domain type.
                let back: Envelope<Value> =
                    serde_json::from_value(wrapped.clone()).expect("envelope decodes");
                assert_eq!(serde_json::to_value(&back).expect("re-encodes"), wrapped);
                validated += 1;
            }
        }
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let declared: usize = AGGREGATE_TYPES
        .iter()
        .filter_map(|a| types_of(a))
        .map(<[&str]>::len)
        .sum();
    assert!(
        validated >= declared,
        "{validated} instances < {declared} types"
    );
}

#[test]
fn every_schema_belongs_to_a_domain_event() {
    let mut orphans = Vec::new();
    for (aggregate_type, event_type, version, _) in schemas::ALL {
        let known = types_of(aggregate_type).is_some_and(|t| t.contains(event_type));
        if !known {
            orphans.push(format!(
                "{aggregate_type}/{event_type} v{version}: no such event"
            ));
        }
        if *version < 1 || *version > CURRENT_VERSION {
            orphans.push(format!(
                "{aggregate_type}/{event_type} v{version}: version outside 1..={CURRENT_VERSION}"
            ));
        }
    }
    assert!(orphans.is_empty(), "{}", orphans.join("\n"));
}

#[test]
fn every_schema_file_on_disk_is_listed_and_well_formed() {
    let listed: BTreeSet<String> = schemas::ALL
        .iter()
        .map(|(a, e, v, _)| format!("{a}/{e}.v{v}.schema.json"))
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("events");
    let mut on_disk = BTreeSet::new();
    for dir in std::fs::read_dir(&root).expect("events/ exists") {
        let dir = dir.expect("readable").path();
        let aggregate = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_owned();
        assert!(
            AGGREGATE_TYPES.contains(&aggregate.as_str()),
            "unexpected folder events/{aggregate}"
        );
        for file in std::fs::read_dir(&dir).expect("readable") {
            let file = file.expect("readable").path();
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .expect("utf-8 name");
            on_disk.insert(format!("{aggregate}/{name}"));
        }
    }
    assert_eq!(
        on_disk, listed,
        "files under events/ and schemas::ALL differ"
    );

    for (aggregate_type, event_type, version, text) in schemas::ALL {
        let what = format!("{aggregate_type}/{event_type}.v{version}");
        compile(text, &what);
        let schema: Value = serde_json::from_str(text).expect("JSON");
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{what}"
        );
        assert_eq!(
            schema["$id"],
            format!(
                "https://messenger.example/schemas/events/{aggregate_type}/{event_type}.v{version}.schema.json"
            ),
            "{what}"
        );
        assert_eq!(schema["type"], "object", "{what}");
        assert_eq!(schema["additionalProperties"], false, "{what}");
        assert!(
            schema["description"].as_str().is_some_and(|d| d.len() > 20),
            "{what} needs a description"
        );
    }
    compile(schemas::envelope_schema(), "envelope.v1");
}

// ---------------------------------------------------------------------------
// ConversationCreated: direct and group shapes
// ---------------------------------------------------------------------------

#[test]
fn conversation_created_direct_and_group_shapes() {
    let v = payload_validator("conversation", "ConversationCreated").expect("schema");
    let (a, b, c) = (UserId::new_v7(), UserId::new_v7(), UserId::new_v7());

    // Direct chats from either side, and groups, as the domain builds them.
    let mut valid = vec![direct_created(a, b), direct_created(b, a)];
    valid.push(ConversationEvent::ConversationCreated {
        conversation_id: ConversationId::new_v7(),
        kind: ConversationKind::Group,
        title: Some(title("G")),
        created_by: a,
        members: vec![
            MemberEntry {
                user_id: a,
                role: Role::Owner,
            },
            MemberEntry {
                user_id: c,
                role: Role::Member,
            },
        ],
    });
    for e in &valid {
        let (_, payload) = encode(e).expect("encodes");
        assert_eq!(errors(&v, &payload), Vec::<String>::new(), "{payload}");
    }
    let (_, direct) = encode(&direct_created(a, b)).expect("encodes");
    assert_eq!(direct["title"], Value::Null, "direct has a null title");
    assert_eq!(direct["kind"], "direct");

    // A direct chat has no title, exactly two members, no roles.
    let mut titled = direct.clone();
    titled["title"] = json!("Us");
    let mut three = direct.clone();
    three["members"]
        .as_array_mut()
        .expect("array")
        .push(json!({"user_id": c.to_string(), "role": "member"}));
    let mut with_owner = direct.clone();
    with_owner["members"][0]["role"] = json!("owner");
    // A group always has a title.
    let (_, group) = encode(&valid[2]).expect("encodes");
    let mut untitled_group = group.clone();
    untitled_group["title"] = Value::Null;
    let mut empty_title = group.clone();
    empty_title["title"] = json!("");
    let mut no_members = group;
    no_members["members"] = json!([]);

    for (why, bad) in [
        ("direct with a title", titled),
        ("direct with three members", three),
        ("direct with an owner", with_owner),
        ("group without a title", untitled_group),
        ("group with an empty title", empty_title),
        ("group without members", no_members),
    ] {
        assert!(!v.is_valid(&bad), "{why} must be refused: {bad}");
    }
}

// ---------------------------------------------------------------------------
// Negative checks: the schemas refuse what the domain never produces
// ---------------------------------------------------------------------------

fn sample_payload(aggregate_type: &str, event_type: &str) -> Value {
    all_samples()
        .into_iter()
        .filter(|(a, _)| *a == aggregate_type)
        .flat_map(|(_, s)| s)
        .find(|s| s.event_type == event_type)
        .map(|s| s.payload)
        .expect("a sample exists")
}

#[test]
fn payload_schemas_refuse_bad_payloads() {
    let message_sent = payload_validator("conversation", "MessageSent").expect("schema");
    let good = sample_payload("conversation", "MessageSent");
    assert!(message_sent.is_valid(&good), "{good}");

    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut missing = good.clone();
    missing.as_object_mut().expect("object").remove("body");
    cases.push(("missing body", missing));
    let mut wrong_type = good.clone();
    wrong_type["body"] = json!(42);
    cases.push(("body is a number", wrong_type));
    let mut empty = good.clone();
    empty["body"] = json!("");
    cases.push(("empty body", empty));
    let mut bad_uuid = good.clone();
    bad_uuid["sender_id"] = json!("not-a-uuid");
    cases.push(("sender_id is not a uuid", bad_uuid));
    let mut bad_time = good.clone();
    bad_time["sent_at"] = json!("yesterday");
    cases.push(("sent_at is not a date-time", bad_time));
    let mut extra = good.clone();
    extra["password_hash"] = json!("$argon2id$...");
    cases.push(("unknown property", extra));
    let mut wrapped = json!({});
    wrapped["MessageSent"] = good;
    cases.push(("enum wrapper left in", wrapped));
    let mut spaced = sample_payload("conversation", "MessageSent");
    spaced["client_msg_id"] = json!("has space");
    cases.push(("client_msg_id with a space", spaced));
    for (why, bad) in cases {
        assert!(!message_sent.is_valid(&bad), "{why} must be refused: {bad}");
    }

    let seq = payload_validator("read_marker", "ReadMarkerMoved").expect("schema");
    let mut marker = sample_payload("read_marker", "ReadMarkerMoved");
    assert!(seq.is_valid(&marker));
    marker["seq"] = json!("12");
    assert!(!seq.is_valid(&marker), "seq as a string must be refused");
    marker["seq"] = json!(0);
    assert!(!seq.is_valid(&marker), "seq 0 must be refused");

    let role = payload_validator("conversation", "MemberAdded").expect("schema");
    let mut added = sample_payload("conversation", "MemberAdded");
    assert!(role.is_valid(&added));
    added["role"] = json!("superuser");
    assert!(!role.is_valid(&added), "unknown role must be refused");

    let registered = payload_validator("user", "UserRegistered").expect("schema");
    let mut user = sample_payload("user", "UserRegistered");
    assert!(registered.is_valid(&user), "{user}");
    user["username"] = json!("Ann");
    assert!(
        !registered.is_valid(&user),
        "upper-case username must be refused"
    );
    let mut user = sample_payload("user", "UserRegistered");
    user["email"] = json!("no-at-sign");
    assert!(
        !registered.is_valid(&user),
        "malformed email must be refused"
    );

    let method = payload_validator("user", "PasswordChanged").expect("schema");
    assert!(method.is_valid(&json!({"method": "reset"})));
    assert!(!method.is_valid(&json!({"method": "guess"})));
    assert!(!method.is_valid(&json!({})));
}

#[test]
fn envelope_schema_refuses_bad_envelopes() {
    let v = envelope_validator();
    let sample = Sample {
        aggregate_id: Uuid::now_v7(),
        actor: Uuid::now_v7().to_string(),
        event_type: "MessageSent".to_owned(),
        payload: sample_payload("conversation", "MessageSent"),
    };
    let good = envelope("conversation", 2, &sample);
    assert_eq!(errors(&v, &good), Vec::<String>::new(), "{good}");
    let mut system = good.clone();
    system["actor"] = json!(SYSTEM_ACTOR);
    assert!(v.is_valid(&system), "actor `system` is allowed");
    let mut no_position = good.clone();
    no_position
        .as_object_mut()
        .expect("object")
        .remove("position");
    assert!(v.is_valid(&no_position), "position is optional");
    let mut null_cause = good.clone();
    null_cause["causation_id"] = Value::Null;
    assert!(v.is_valid(&null_cause), "causation_id may be null");

    let bad = |field: &str, value: Value| {
        let mut e = good.clone();
        e[field] = value;
        e
    };
    let without = |field: &str| {
        let mut e = good.clone();
        e.as_object_mut().expect("object").remove(field);
        e
    };
    let cases = [
        ("sequence 0", bad("sequence", json!(0))),
        ("sequence as a string", bad("sequence", json!("2"))),
        ("event_version 0", bad("event_version", json!(0))),
        (
            "unknown aggregate type",
            bad("aggregate_type", json!("order")),
        ),
        ("event_id not a uuid", bad("event_id", json!("abc"))),
        ("aggregate_id not a uuid", bad("aggregate_id", json!("abc"))),
        ("actor neither uuid nor system", bad("actor", json!("bob"))),
        ("causation_id not a uuid", bad("causation_id", json!("abc"))),
        (
            "occurred_at not UTC",
            bad("occurred_at", json!("2025-01-01T10:00:00+02:00")),
        ),
        (
            "occurred_at not a date-time",
            bad("occurred_at", json!("2025-13-01")),
        ),
        ("position 0", bad("position", json!(0))),
        (
            "payload not an object",
            bad("payload", json!("MessageSent")),
        ),
        (
            "event_type not a name",
            bad("event_type", json!("message sent")),
        ),
        ("unknown property", bad("secret", json!("x"))),
        ("missing payload", without("payload")),
        ("missing causation_id", without("causation_id")),
        ("missing correlation_id", without("correlation_id")),
        ("missing sequence", without("sequence")),
    ];
    for (why, e) in cases {
        assert!(!v.is_valid(&e), "{why} must be refused: {e}");
    }
}

/// Every conversation event and read marker the domain defines, framed by
/// the one `domain::frame::EventFrame` the projector and query-service
/// write, validates against `ws/event-frame.v1.schema.json`; frames that
/// break the contract do not.
#[test]
fn websocket_event_frames_validate_against_their_schema() {
    use domain::frame::EventFrame;
    let validator = compile(schemas::event_frame_schema(), "ws/event-frame.v1");
    let mut checked = 0;
    for (aggregate_type, samples) in all_samples() {
        if aggregate_type == "user" {
            continue;
        }
        for (i, sample) in samples.iter().enumerate() {
            let sequence = i as i64 + 1;
            let env = Envelope::<Value> {
                event_id: Uuid::now_v7(),
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id: sample.aggregate_id.to_string(),
                sequence,
                event_type: sample.event_type.clone(),
                event_version: CURRENT_VERSION,
                occurred_at: Utc::now(),
                actor: sample.actor.clone(),
                correlation_id: Uuid::now_v7(),
                causation_id: None,
                position: Some(sequence * 10),
                payload: sample.payload.clone(),
            };
            let conversation = match aggregate_type {
                "read_marker" => sample.payload["conversation_id"]
                    .as_str()
                    .expect("a read marker names its conversation")
                    .to_owned(),
                _ => env.aggregate_id.clone(),
            };
            let frame = EventFrame::of(&env, &conversation, &env.payload).expect("positioned");
            let value: Value = serde_json::from_str(&frame.to_json()).expect("frame is JSON");
            let errs = errors(&validator, &value);
            assert!(
                errs.is_empty(),
                "{aggregate_type}/{}: {errs:?}",
                sample.event_type
            );
            checked += 1;
            let mut bad = value.clone();
            bad["cursor"] = json!(sequence * 10);
            assert!(!errors(&validator, &bad).is_empty(), "a numeric cursor");
            let mut bad = value.clone();
            bad["event"]["conversation_id"] = json!("c");
            assert!(
                !errors(&validator, &bad).is_empty(),
                "a non-UUID conversation"
            );
            let mut bad = value;
            bad["event"].as_object_mut().expect("object").remove("seq");
            assert!(!errors(&validator, &bad).is_empty(), "no seq");
        }
    }
    assert!(checked > 10, "only {checked} frames checked");
}
