//! The metadata contract of every Messenger gRPC call, one definition for
//! the servers (command-service, query-service, notifier) and the client
//! (the gateway).
//!
//! - Requests carry the authenticated user in [`USER_ID`] (set by the
//!   gateway, after it verified the access token) and optionally the client
//!   request's id in [`CORRELATION_ID`].
//! - Failures carry a stable machine code in [`ERROR_CODE`] (API.md's
//!   `code`) and, for validation errors, the offending field in
//!   [`ERROR_FIELD`]; [`status`] builds them, [`error_code`] and
//!   [`error_field`] read them.

use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};
use uuid::Uuid;

/// The authenticated user a call acts for.
pub const USER_ID: &str = "x-user-id";
/// Ties the events of a call to a client request.
pub const CORRELATION_ID: &str = "x-correlation-id";
/// The stable error code of a failure.
pub const ERROR_CODE: &str = "x-error-code";
/// The offending field of a validation failure.
pub const ERROR_FIELD: &str = "x-error-field";

/// A status with `error_code` (and `field`) in the metadata.
pub fn status(
    code: Code,
    error_code: &'static str,
    message: impl Into<String>,
    field: Option<&'static str>,
) -> Status {
    let mut s = Status::new(code, message);
    s.metadata_mut()
        .insert(ERROR_CODE, MetadataValue::from_static(error_code));
    if let Some(f) = field {
        s.metadata_mut()
            .insert(ERROR_FIELD, MetadataValue::from_static(f));
    }
    s
}

/// `INVALID_ARGUMENT` / `validation_failed` naming `field`.
pub fn invalid(field: &'static str, message: &str) -> Status {
    status(
        Code::InvalidArgument,
        "validation_failed",
        format!("{field}: {message}"),
        Some(field),
    )
}

/// The user a call acts for: `UNAUTHENTICATED` without one,
/// `INVALID_ARGUMENT` when it is not a UUID.
pub fn caller<T>(req: &Request<T>) -> Result<Uuid, Status> {
    let raw = req.metadata().get(USER_ID).ok_or_else(|| {
        status(
            Code::Unauthenticated,
            "unauthenticated",
            "no authenticated user",
            None,
        )
    })?;
    uuid_value(raw, "malformed x-user-id")
}

/// The correlation id of a call, if it has one; `INVALID_ARGUMENT` when it
/// is not a UUID.
pub fn correlation_id<T>(req: &Request<T>) -> Result<Option<Uuid>, Status> {
    req.metadata()
        .get(CORRELATION_ID)
        .map(|v| uuid_value(v, "malformed x-correlation-id"))
        .transpose()
}

fn uuid_value(v: &MetadataValue<tonic::metadata::Ascii>, what: &str) -> Result<Uuid, Status> {
    v.to_str()
        .ok()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| status(Code::InvalidArgument, "validation_failed", what, None))
}

/// Sets the user a call acts for.
pub fn set_caller<T>(req: &mut Request<T>, user_id: Uuid) {
    if let Ok(v) = MetadataValue::try_from(user_id.to_string()) {
        req.metadata_mut().insert(USER_ID, v);
    }
}

/// The [`ERROR_CODE`] of a failure, if the server set one.
pub fn error_code(status: &Status) -> Option<&str> {
    status.metadata().get(ERROR_CODE)?.to_str().ok()
}

/// The [`ERROR_FIELD`] of a failure, if the server set one.
pub fn error_field(status: &Status) -> Option<&str> {
    status.metadata().get(ERROR_FIELD)?.to_str().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        let user = Uuid::now_v7();
        let mut req = Request::new(());
        assert_eq!(caller(&req).unwrap_err().code(), Code::Unauthenticated);
        set_caller(&mut req, user);
        assert_eq!(caller(&req).unwrap(), user);
        assert_eq!(correlation_id(&req).unwrap(), None);
        req.metadata_mut()
            .insert(CORRELATION_ID, MetadataValue::from_static("nope"));
        let bad = correlation_id(&req).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert_eq!(error_code(&bad), Some("validation_failed"));
        let s = invalid("body", "too long");
        assert_eq!(error_field(&s), Some("body"));
        assert_eq!(s.message(), "body: too long");
    }
}
