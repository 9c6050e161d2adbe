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

/// Parses a JSON document with the errors of [`ApiJson`] (also used for
/// WebSocket frames).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::Malformed(format!("body is not valid UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(ApiError::Malformed(
            "empty body; a JSON object is required".into(),
        ));
    }
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
}
