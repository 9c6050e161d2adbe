//! The one mapping of failures to HTTP: RFC 9457 problem details
//! (`application/problem+json`) with API.md's stable `code`.
//!
//! Every handler returns `Result<_, ApiError>`. Internal causes are logged
//! once here, inside the request span, and never reach the client.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`about:blank` style, ours:
    /// `https://messenger.dev/problems/{code}`).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable machine-readable code (API.md).
    pub code: String,
    /// Field → why, for validation failures.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, String>,
}

/// A failure of a request. Each variant's doc names its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be parsed (malformed JSON, bad UTF-8, wrong
    /// types, unknown fields, bad path or query parameters).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// 401: no, bad, expired or revoked credentials.
    #[error("unauthenticated: {detail}")]
    Unauthenticated { code: &'static str, detail: String },
    /// 403: authenticated but not allowed.
    #[error("forbidden: {detail}")]
    Forbidden { code: String, detail: String },
    /// 404: not found, or not visible to the caller.
    #[error("not found: {detail}")]
    NotFound { code: String, detail: String },
    /// 405: the path exists, the method does not (`Allow` lists the ones
    /// that do, when known).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: conflicts with existing state.
    #[error("conflict: {detail}")]
    Conflict { code: String, detail: String },
    /// 413: body over the configured limit.
    #[error("payload too large")]
    TooLarge,
    /// 426: a WebSocket endpoint asked without a valid upgrade handshake.
    #[error("upgrade required: {0}")]
    UpgradeRequired(String),
    /// 422: well-formed but invalid values; field → why.
    #[error("validation failed: {detail}")]
    Validation {
        detail: String,
        errors: BTreeMap<String, String>,
    },
    /// 429: rate limited; retry after the given time.
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    /// 503: a dependency is unavailable (Redis, a service).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// 500: a real fault; the cause is logged, not returned.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 422 for one field.
    pub fn invalid(field: &str, why: impl Into<String>) -> Self {
        let why = why.into();
        let mut errors = BTreeMap::new();
        errors.insert(field.to_owned(), why.clone());
        Self::Validation {
            detail: format!("{field}: {why}"),
            errors,
        }
    }

    /// A 404 with `code`.
    pub fn not_found(code: &str, detail: impl Into<String>) -> Self {
        Self::NotFound {
            code: code.to_owned(),
            detail: detail.into(),
        }
    }

    /// A 401 `invalid_token`-style error.
    pub fn unauthenticated(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Unauthenticated {
            code,
            detail: detail.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &str, &'static str) {
        match self {
            Self::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_request", "Bad Request"),
            Self::Unauthenticated { code, .. } => {
                (StatusCode::UNAUTHORIZED, code, "Unauthenticated")
            }
            Self::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code, "Forbidden"),
            Self::NotFound { code, .. } => (StatusCode::NOT_FOUND, code, "Not Found"),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method Not Allowed",
            ),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code, "Conflict"),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload Too Large",
            ),
            Self::UpgradeRequired(_) => (
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                "Upgrade Required",
            ),
            Self::Validation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Validation Failed",
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too Many Requests",
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service Unavailable",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal Server Error",
            ),
        }
    }

    /// The problem document this error answers with.
    pub fn problem(&self) -> Problem {
        let (status, code, title) = self.parts();
        let detail = match self {
            Self::Malformed(d) => Some(d.clone()),
            Self::Unauthenticated { detail, .. }
            | Self::Forbidden { detail, .. }
            | Self::NotFound { detail, .. }
            | Self::Conflict { detail, .. }
            | Self::Validation { detail, .. } => Some(detail.clone()),
            Self::TooLarge => Some("the request body is larger than allowed".to_owned()),
            Self::MethodNotAllowed => Some("this endpoint does not accept that method".to_owned()),
            Self::UpgradeRequired(why) => Some(format!(
                "this endpoint is a WebSocket: send a GET with the upgrade handshake ({why})"
            )),
            Self::RateLimited { retry_after } => Some(format!(
                "too many requests; retry after {} s",
                retry_after.as_secs().max(1)
            )),
            Self::Unavailable(_) => Some("a dependency is unavailable; retry later".to_owned()),
            Self::Internal(_) => None,
        };
        let errors = match self {
            Self::Validation { errors, .. } => errors.clone(),
            _ => BTreeMap::new(),
        };
        Problem {
            kind: format!("https://messenger.dev/problems/{code}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            code: code.to_owned(),
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(e) => tracing::error!(error = format!("{e:#}"), "request failed"),
            Self::Unavailable(why) => tracing::warn!(why = %why, "dependency unavailable"),
            _ => tracing::debug!(error = %self, "request refused"),
        }
        let problem = self.problem();
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Self::UpgradeRequired(_) = self {
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        if let Self::RateLimited { retry_after } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// Maps a status from command-, query- or notifier-service, using the
/// `x-error-code` / `x-error-field` metadata they attach
/// (docs/architecture.md, Errors). API.md hides what the caller may not
/// see: "not a member" becomes 404.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let code = proto::meta::error_code(&status)
            .unwrap_or_default()
            .to_owned();
        let field = proto::meta::error_field(&status).map(str::to_owned);
        let message = status.message().to_owned();
        match status.code() {
            // OUT_OF_RANGE: a well-formed value beyond what exists (a replay
            // cursor ahead of the log).
            Code::InvalidArgument | Code::OutOfRange => {
                let field = field.unwrap_or_else(|| "request".to_owned());
                let mut errors = BTreeMap::new();
                errors.insert(field, message.clone());
                Self::Validation {
                    detail: message,
                    errors,
                }
            }
            Code::NotFound => Self::NotFound {
                code: if code.is_empty() {
                    "not_found".into()
                } else {
                    code
                },
                detail: message,
            },
            Code::PermissionDenied if code == "not_a_member" => Self::NotFound {
                code: "conversation_not_found".into(),
                detail: "no such conversation".into(),
            },
            Code::PermissionDenied => Self::Forbidden {
                code: if code.is_empty() {
                    "forbidden".into()
                } else {
                    code
                },
                detail: message,
            },
            Code::AlreadyExists => Self::Conflict {
                code: if code.is_empty() {
                    "conflict".into()
                } else {
                    code
                },
                detail: message,
            },
            Code::FailedPrecondition => Self::Conflict {
                code: if code.is_empty() {
                    "conflict".into()
                } else {
                    code
                },
                detail: message,
            },
            Code::Aborted => Self::Conflict {
                code: "conflict".into(),
                detail: "concurrent changes; retry".into(),
            },
            Code::Unauthenticated if code == "invalid_credentials" => Self::Unauthenticated {
                code: "invalid_credentials",
                detail: "wrong login or password".into(),
            },
            Code::Unauthenticated => Self::Unauthenticated {
                code: "unauthenticated",
                detail: message,
            },
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                Self::Unavailable(format!("{:?}: {message}", status.code()))
            }
            _ => Self::Internal(anyhow::anyhow!(
                "upstream status {:?}: {message}",
                status.code()
            )),
        }
    }
}
