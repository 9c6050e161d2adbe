//! The close reasons a connection sends (the table in [the ws module
//! doc](crate::ws)), and which one a read error means.

use crate::ws::hub::CloseReason;

pub(super) const SHUTDOWN: CloseReason = CloseReason {
    code: 1001,
    reason: "server shutting down",
};
pub(super) const GONE: CloseReason = CloseReason {
    code: 1000,
    reason: "",
};
pub(super) const HELLO_REQUIRED: CloseReason = CloseReason {
    code: 1008,
    reason: "hello required",
};
pub(super) const TOO_LARGE: CloseReason = CloseReason {
    code: 1009,
    reason: "frame too large",
};
pub(super) const BAD_CURSOR: CloseReason = CloseReason {
    code: 1008,
    reason: "cursor ahead of the log",
};
pub(super) const OLD_CURSOR: CloseReason = CloseReason {
    code: 1008,
    reason: "cursor too old",
};
pub(super) const INVALID_TEXT: CloseReason = CloseReason {
    code: 1007,
    reason: "text frame is not UTF-8",
};
pub(super) const PROTOCOL_ERROR: CloseReason = CloseReason {
    code: 1002,
    reason: "protocol error",
};
pub(super) const TRY_AGAIN: CloseReason = CloseReason {
    code: 1013,
    reason: "try again later",
};
pub(super) const UNAUTHENTICATED: CloseReason = CloseReason {
    code: 4401,
    reason: "unauthenticated",
};
pub(super) const IDLE: CloseReason = CloseReason {
    code: 4408,
    reason: "idle timeout",
};

/// The close reason for a read error: 1009 when the frame exceeded the
/// codec's hard limit, 1007 for a text frame that is not UTF-8 and 1002
/// for another protocol violation (RFC 6455 §7.4.1), else the socket is
/// gone.
pub(super) fn stream_error(e: &axum::Error) -> CloseReason {
    let text = e.to_string().to_ascii_lowercase();
    if text.contains("too long") || text.contains("space limit") || text.contains("too big") {
        TOO_LARGE
    } else if text.contains("utf-8") {
        INVALID_TEXT
    } else if text.contains("protocol error") {
        PROTOCOL_ERROR
    } else {
        tracing::debug!(error = %e, "WebSocket read failed");
        GONE
    }
}
