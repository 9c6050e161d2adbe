//! The opaque cursor of the conversation list: the keyset
//! (`last_activity_at`, `conversation_id`) of the last item of a page.
//!
//! Encoded as URL-safe base64 (no padding) of a version byte, the time in
//! microseconds since the epoch (big-endian `i64`, PostgreSQL's precision,
//! so the round trip is exact) and the 16 id bytes. Clients must treat it as
//! opaque; the version byte lets the format change without misreading old
//! cursors.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 16;

/// A position in the conversation list, exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    pub last_activity_at: DateTime<Utc>,
    pub conversation_id: Uuid,
}

impl ListCursor {
    /// The opaque string handed to clients.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.last_activity_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(self.conversation_id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses a string made by [`ListCursor::encode`]; `None` for anything else.
    pub fn decode(s: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        if bytes.len() != LEN || bytes[0] != VERSION {
            return None;
        }
        let micros = i64::from_be_bytes(bytes[1..9].try_into().ok()?);
        Some(Self {
            last_activity_at: DateTime::from_timestamp_micros(micros)?,
            conversation_id: Uuid::from_slice(&bytes[9..]).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let c = ListCursor {
            last_activity_at: DateTime::from_timestamp_micros(1_790_000_000_123_456)
                .unwrap_or_default(),
            conversation_id: Uuid::now_v7(),
        };
        assert_eq!(ListCursor::decode(&c.encode()), Some(c));
        assert_eq!(ListCursor::decode(""), None);
        assert_eq!(ListCursor::decode("not a cursor"), None);
        let mut other = URL_SAFE_NO_PAD.decode(c.encode()).unwrap_or_default();
        other[0] = 2;
        assert_eq!(ListCursor::decode(&URL_SAFE_NO_PAD.encode(other)), None);
    }
}
