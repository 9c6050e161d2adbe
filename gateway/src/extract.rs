//! Extractors whose rejections are the app's own problem documents
//! (never axum's plain-text ones): JSON bodies, path and query parameters.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body: 415-free (a missing content type is accepted, a non-JSON
/// one refused with 400), 413 beyond the limit, 400 for bad UTF-8 or
/// syntax, 422 naming the field for wrong types, missing or unknown fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if !(essence == "application/json" || essence.ends_with("+json")) {
                return Err(ApiError::Malformed(format!(
                    "expected Content-Type application/json, got {essence}"
                )));
            }
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| bytes_rejection(&r))?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON document with the errors of [`ApiJson`]: 400 for bad
/// UTF-8 or syntax, 422 naming the field for wrong types, missing or
/// unknown fields, and for strings holding U+0000.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = json_text(bytes)?;
    // JSON can only carry U+0000 escaped, so documents without the escape
    // (all but hostile ones) skip the walk.
    if text.contains("\\u0000") {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
            refuse_nul(&value)?;
        }
    }
    parse_json_text(text)
}

/// The document as text: 400 when it is not UTF-8 or is empty.
pub fn json_text(bytes: &[u8]) -> Result<&str, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::Malformed(format!("body is not valid UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(ApiError::Malformed(
            "empty body; a JSON object is required".into(),
        ));
    }
    Ok(text)
}

/// A 422 naming the first string (or key) of `value` holding U+0000.
pub fn refuse_nul(value: &serde_json::Value) -> Result<(), ApiError> {
    match nul_field(value, "") {
        Some(field) => Err(ApiError::invalid(&field, NUL_REFUSED)),
        None => Ok(()),
    }
}

/// Deserializes `text` with [`parse_json`]'s errors, without its U+0000
/// check (for callers that check the parsed value themselves).
pub fn parse_json_text<T: DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    serde_json::from_str(text).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => {
                let message = e.to_string();
                let field = field_of(&message).unwrap_or_else(|| "body".to_owned());
                ApiError::invalid(&field, message)
            }
            Category::Io | Category::Syntax | Category::Eof => {
                ApiError::Malformed(format!("malformed JSON: {e}"))
            }
        }
    })
}

/// Why a string with U+0000 is refused: PostgreSQL's `text` and `jsonb`
/// cannot store it, so it is refused wherever it enters.
pub const NUL_REFUSED: &str = "must not contain the NUL character (U+0000)";

/// The path (`a.b[2]`, or `body` for the document itself) of the first
/// string or key holding U+0000, if any.
fn nul_field(value: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    let here = || {
        if at.is_empty() {
            "body".to_owned()
        } else {
            at.to_owned()
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => Some(here()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_field(v, &format!("{at}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.contains('\0') {
                Some(here())
            } else {
                nul_field(v, &path)
            }
        }),
        _ => None,
    }
}

/// Refuses a query string or path whose percent-encoding decodes to
/// U+0000 (the only way a URI carries it), naming the parameter.
fn refuse_encoded_nul(raw: &str, whole: &str) -> Result<(), ApiError> {
    if !raw.contains("%00") {
        return Ok(());
    }
    let field = raw
        .split('&')
        .find(|pair| pair.contains("%00"))
        .and_then(|pair| pair.split('=').next())
        .filter(|key| !key.is_empty() && !key.contains('%') && key.len() <= 64)
        .unwrap_or(whole);
    Err(ApiError::invalid(field, NUL_REFUSED))
}

/// The field serde names in a data error (`missing field `x``,
/// `unknown field `x``), if any.
fn field_of(message: &str) -> Option<String> {
    for marker in ["missing field `", "unknown field `", "duplicate field `"] {
        if let Some(rest) = message.split(marker).nth(1) {
            return rest.split('`').next().map(str::to_owned);
        }
    }
    None
}

fn bytes_rejection(r: &BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge
    } else {
        ApiError::Malformed(r.body_text())
    }
}

/// Path parameters; a bad one is a 400 problem (a malformed id cannot name
/// anything).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        refuse_encoded_nul(parts.uri.path(), "path")?;
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|r: PathRejection| ApiError::Malformed(r.body_text()))
    }
}

/// Query parameters; a bad one is a 400 problem.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        refuse_encoded_nul(parts.uri.query().unwrap_or_default(), "query")?;
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r: QueryRejection| ApiError::Malformed(r.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        n: u32,
    }

    #[test]
    fn errors_are_classified() {
        assert!(matches!(
            parse_json::<Body>(b"{"),
            Err(ApiError::Malformed(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"\xff\xfe"),
            Err(ApiError::Malformed(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b""),
            Err(ApiError::Malformed(_))
        ));
        match parse_json::<Body>(br#"{"name":"a"}"#) {
            Err(ApiError::Validation { errors, .. }) => assert!(errors.contains_key("n")),
            other => panic!("{other:?}"),
        }
        match parse_json::<Body>(br#"{"name":"a","n":1,"x":2}"#) {
            Err(ApiError::Validation { errors, .. }) => assert!(errors.contains_key("x")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_json::<Body>(br#"{"name":"a","n":"x"}"#),
            Err(ApiError::Validation { .. })
        ));
        assert!(parse_json::<Body>(br#"{"name":"a","n":1}"#).is_ok());
    }

    #[test]
    fn nul_characters_are_refused_naming_the_field() {
        match parse_json::<Body>(br#"{"name":"a\u0000b","n":1}"#) {
            Err(ApiError::Validation { errors, .. }) => {
                assert_eq!(errors.get("name").map(String::as_str), Some(NUL_REFUSED));
            }
            other => panic!("{other:?}"),
        }
        let nested: Result<serde_json::Value, _> =
            parse_json(br#"{"a":[{"b":"x"},{"c":"\u0000"}]}"#);
        match nested {
            Err(ApiError::Validation { errors, .. }) => assert!(errors.contains_key("a[1].c")),
            other => panic!("{other:?}"),
        }
        // An escaped backslash followed by "u0000" is six ordinary characters.
        assert!(parse_json::<Body>(br#"{"name":"\\u0000","n":1}"#).is_ok());
        assert!(refuse_encoded_nul("limit=5&username_prefix=a%00", "query").is_err());
        assert!(refuse_encoded_nul("username_prefix=a%2500", "query").is_ok());
        match refuse_encoded_nul("username_prefix=%00", "query") {
            Err(ApiError::Validation { errors, .. }) => {
                assert!(errors.contains_key("username_prefix"));
            }
            other => panic!("{other:?}"),
        }
    }
}
