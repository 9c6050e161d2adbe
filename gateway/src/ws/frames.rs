//! The frames of API.md's WebSocket section.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;

/// `hello`: the first frame.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    #[serde(default)]
    pub access_token: Option<String>,
    /// A decimal string (as sent in frames) or a number.
    #[serde(default)]
    pub cursor: Option<Value>,
}

impl Hello {
    /// The resume position, if any.
    pub fn position(&self) -> Result<Option<i64>, ApiError> {
        let bad = || ApiError::invalid("cursor", "must be a non-negative integer position");
        match &self.cursor {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => s
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|p| *p >= 0)
                .map(Some)
                .ok_or_else(bad),
            Some(Value::Number(n)) => n.as_i64().filter(|p| *p >= 0).map(Some).ok_or_else(bad),
            Some(_) => Err(bad()),
        }
    }
}

/// `send`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Send {
    pub conversation_id: String,
    pub client_msg_id: String,
    pub body: String,
}

/// `typing`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Typing {
    pub conversation_id: String,
}

/// `reauth`: a fresh access token of the socket's session (after a
/// refresh), sent before the current one expires.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reauth {
    pub access_token: String,
}

/// A client frame.
#[derive(Debug)]
pub enum ClientFrame {
    Hello(Hello),
    Send(Send),
    Typing(Typing),
    Reauth(Reauth),
    Ping,
}

/// A refused frame: the error frame to answer with. `client_msg_id` is
/// echoed when the frame was a `send` that carried one.
#[derive(Debug)]
pub struct FrameError {
    pub code: String,
    pub detail: String,
    pub client_msg_id: Option<String>,
}

impl FrameError {
    pub fn new(code: &str, detail: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            detail: detail.into(),
            client_msg_id: None,
        }
    }

    fn from_api(e: &ApiError, client_msg_id: Option<String>) -> Self {
        let p = e.problem();
        Self {
            code: p.code,
            detail: p.detail.unwrap_or_else(|| p.title.clone()),
            client_msg_id,
        }
    }

    /// `{"type":"error","code","detail"[,"client_msg_id"]}`.
    pub fn to_json(&self) -> String {
        error_frame(&self.code, &self.detail, self.client_msg_id.as_deref())
    }
}

/// The error frame of an [`ApiError`] (a gRPC status mapped through it).
pub fn api_error_frame(e: &ApiError, client_msg_id: Option<String>) -> String {
    FrameError::from_api(e, client_msg_id).to_json()
}

/// `{"type":"error",...}`.
pub fn error_frame(code: &str, detail: &str, client_msg_id: Option<&str>) -> String {
    let mut v = json!({"type": "error", "code": code, "detail": detail});
    if let (Some(id), Some(obj)) = (client_msg_id, v.as_object_mut()) {
        obj.insert("client_msg_id".into(), Value::String(id.to_owned()));
    }
    v.to_string()
}

/// Parses a text frame.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value = crate::extract::parse_json_text(text)
        .map_err(|e| FrameError::new("malformed_frame", e.problem().detail.unwrap_or_default()))?;
    let Some(obj) = value.as_object() else {
        return Err(FrameError::new(
            "malformed_frame",
            "a frame is a JSON object",
        ));
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => {
            return Err(FrameError::new(
                "malformed_frame",
                "a frame needs a string \"type\"",
            ))
        }
    };
    let client_msg_id = obj
        .get("client_msg_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    // U+0000 anywhere: refused like any invalid field, echoing the
    // `client_msg_id` of a send.
    if text.contains("\\u0000") {
        if let Err(e) = crate::extract::refuse_nul(&value) {
            let echo = client_msg_id.clone().filter(|_| kind == "send");
            return Err(FrameError::from_api(&e, echo));
        }
    }
    let mut fields = obj.clone();
    fields.remove("type");
    let fields = Value::Object(fields);
    let typed = |e: serde_json::Error| {
        let message = e.to_string();
        let field = ["missing field `", "unknown field `", "invalid type"]
            .iter()
            .find_map(|m| message.split(m).nth(1))
            .and_then(|r| r.split('`').next())
            .filter(|f| !f.is_empty() && !f.contains(' '))
            .unwrap_or("frame")
            .to_owned();
        ApiError::invalid(&field, message)
    };
    match kind.as_str() {
        "hello" => serde_json::from_value(fields)
            .map(ClientFrame::Hello)
            .map_err(|e| FrameError::from_api(&typed(e), None)),
        "send" => serde_json::from_value(fields)
            .map(ClientFrame::Send)
            .map_err(|e| FrameError::from_api(&typed(e), client_msg_id)),
        "typing" => serde_json::from_value(fields)
            .map(ClientFrame::Typing)
            .map_err(|e| FrameError::from_api(&typed(e), None)),
        "reauth" => serde_json::from_value(fields)
            .map(ClientFrame::Reauth)
            .map_err(|e| FrameError::from_api(&typed(e), None)),
        "ping" => Ok(ClientFrame::Ping),
        other => Err(FrameError::new(
            "unknown_frame_type",
            format!(
                "unknown frame type {:?}; expected hello, send, typing, reauth or ping",
                other.chars().take(40).collect::<String>()
            ),
        )),
    }
}

/// `{"type":"ready","user_id","cursor","max_frame_bytes"}`: API.md's
/// frame, extended with the largest client frame the server reads (a
/// larger one gets a `frame_too_large` error frame, one beyond the codec's
/// hard limit closes the socket with 1009), so clients learn the limit
/// where they read everything else.
///
/// Also `expires_at` (RFC 3339): when the access token expires. The socket
/// closes then (4401, after a `token_expired` error frame) unless the
/// client sends a `reauth` frame with a fresh token of the same session.
pub fn ready(user_id: &str, cursor: i64, max_frame_bytes: usize, expires_at: i64) -> String {
    json!({
        "type": "ready",
        "user_id": user_id,
        "cursor": cursor.to_string(),
        "max_frame_bytes": max_frame_bytes,
        "expires_at": rfc3339(expires_at),
    })
    .to_string()
}

/// `{"type":"reauthenticated","expires_at"}`: a `reauth` was accepted.
pub fn reauthenticated(expires_at: i64) -> String {
    json!({"type": "reauthenticated", "expires_at": rfc3339(expires_at)}).to_string()
}

fn rfc3339(unix_secs: i64) -> String {
    chrono::DateTime::from_timestamp(unix_secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `{"type":"ack","client_msg_id","message_id","seq"}`.
pub fn ack(client_msg_id: &str, message_id: &str, seq: i64) -> String {
    json!({"type": "ack", "client_msg_id": client_msg_id, "message_id": message_id, "seq": seq})
        .to_string()
}

/// `{"type":"typing","conversation_id","user_id"}`.
pub fn typing(conversation_id: &str, user_id: &str) -> String {
    json!({"type": "typing", "conversation_id": conversation_id, "user_id": user_id}).to_string()
}

/// `{"type":"pong"}`.
pub const PONG: &str = r#"{"type":"pong"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert!(matches!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping)));
        match parse(r#"{"type":"hello","cursor":"12"}"#) {
            Ok(ClientFrame::Hello(h)) => assert_eq!(h.position().ok(), Some(Some(12))),
            other => panic!("{other:?}"),
        }
        let e = parse("{nope").err().map(|e| e.code);
        assert_eq!(e.as_deref(), Some("malformed_frame"));
        let e = parse(r#"{"type":"dance"}"#).err().map(|e| e.code);
        assert_eq!(e.as_deref(), Some("unknown_frame_type"));
        let e = parse(r#"{"type":"send","client_msg_id":"c1","conversation_id":"x"}"#).err();
        let e = e.map(|e| (e.code, e.client_msg_id));
        assert_eq!(
            e,
            Some(("validation_failed".to_owned(), Some("c1".to_owned())))
        );
        assert!(parse("[1]").is_err());
        let bad_cursor = parse(r#"{"type":"hello","cursor":"-3"}"#);
        match bad_cursor {
            Ok(ClientFrame::Hello(h)) => assert!(h.position().is_err()),
            other => panic!("{other:?}"),
        }
    }

    use proptest::prelude::*;

    /// JSON values of any shape, nested a few levels.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            any::<String>().prop_map(Value::String),
            Just(json!("hello")),
            Just(json!("send")),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_owned()),
                        Just("cursor".to_owned()),
                        Just("body".to_owned()),
                        Just("conversation_id".to_owned()),
                        Just("client_msg_id".to_owned()),
                        Just("access_token".to_owned()),
                        any::<String>(),
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Arbitrary text: parsed or refused with an error frame, never a
        /// panic; a refusal is valid JSON with a code.
        #[test]
        fn any_text_is_parsed_or_refused(text in any::<String>()) {
            if let Err(e) = parse(&text) {
                let frame: Value = serde_json::from_str(&e.to_json()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&frame["type"], "error");
                prop_assert!(frame["code"].is_string());
            }
        }

        /// Arbitrary JSON documents, and each frame type with arbitrary
        /// fields: the same.
        #[test]
        fn any_json_is_parsed_or_refused(
            v in json_value(),
            kind in prop_oneof![Just("hello"), Just("send"), Just("typing"), Just("ping")],
        ) {
            let _ = parse(&v.to_string());
            let mut obj = v.as_object().cloned().unwrap_or_default();
            obj.insert("type".into(), json!(kind));
            if let Ok(ClientFrame::Hello(h)) = parse(&Value::Object(obj).to_string()) {
                // A cursor is a non-negative position or refused.
                if let Ok(Some(p)) = h.position() {
                    prop_assert!(p >= 0);
                }
            }
        }

        /// Every non-negative position round-trips as string and number;
        /// every negative one is refused.
        #[test]
        fn cursors_are_positions(p in any::<i64>()) {
            for cursor in [json!(p.to_string()), json!(p)] {
                let h = Hello { access_token: None, cursor: Some(cursor) };
                if p >= 0 {
                    prop_assert_eq!(h.position().ok(), Some(Some(p)));
                } else {
                    prop_assert!(h.position().is_err());
                }
            }
        }

        /// A well-formed send parses to exactly its fields.
        #[test]
        fn sends_round_trip(conversation_id in any::<String>(), client_msg_id in any::<String>(), body in any::<String>()) {
            let text = json!({"type": "send", "conversation_id": conversation_id, "client_msg_id": client_msg_id, "body": body}).to_string();
            match parse(&text) {
                Ok(ClientFrame::Send(s)) => {
                    prop_assert_eq!(s.conversation_id, conversation_id);
                    prop_assert_eq!(s.client_msg_id, client_msg_id);
                    prop_assert_eq!(s.body, body);
                }
                // U+0000 is refused at the edge, naming the field.
                Err(e) => prop_assert!(
                    e.code == "validation_failed"
                        && (conversation_id.contains('\0') || client_msg_id.contains('\0') || body.contains('\0')),
                    "{:?}", e
                ),
                Ok(other) => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
