//! Parsed values. Each newtype is built once, at the edge, by a `parse`
//! function that enforces its rules; everything inside trusts it.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Limits;

/// Why a value was refused; `field` names the offending input for API errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {kind}")]
pub struct ValidationError {
    /// The input field the value came from, as named in API.md.
    pub field: &'static str,
    /// What is wrong with it.
    pub kind: ValidationKind,
}

/// The ways a value can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationKind {
    #[error("must not be empty")]
    Empty,
    #[error("must be at least {0} characters")]
    TooShort(usize),
    #[error("must be at most {0} characters")]
    TooLong(usize),
    #[error("contains characters that are not allowed")]
    InvalidCharacters,
    #[error("is not well formed")]
    Malformed,
}

impl ValidationError {
    pub fn new(field: &'static str, kind: ValidationKind) -> Self {
        Self { field, kind }
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUIDv7).
            pub fn new_v7() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses the textual form; `field` names the input for errors.
            pub fn parse(s: &str, field: &'static str) -> Result<Self, ValidationError> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| ValidationError::new(field, ValidationKind::Malformed))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identifies a user; also the id of the user's event stream.
    UserId
);
uuid_id!(
    /// Identifies a conversation; also the id of its event stream.
    ConversationId
);
uuid_id!(
    /// Identifies a message within a conversation.
    MessageId
);

/// Namespace for ids derived by UUIDv5 (direct conversations, read markers).
const NAMESPACE: Uuid = Uuid::from_u128(0x6d65_7373_656e_6765_7200_0000_0000_0001);

impl ConversationId {
    /// The one direct conversation between two users: the id is derived from
    /// the unordered pair, so opening it twice (from either side) names the
    /// same stream and the event store's uniqueness makes it exist once.
    pub fn direct(a: UserId, b: UserId) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut name = [0u8; 32];
        name[..16].copy_from_slice(lo.0.as_bytes());
        name[16..].copy_from_slice(hi.0.as_bytes());
        Self(Uuid::new_v5(&NAMESPACE, &name))
    }
}

/// Id of the read-marker stream of one member in one conversation.
pub fn read_marker_id(conversation: ConversationId, user: UserId) -> Uuid {
    let mut name = [0u8; 33];
    name[0] = b'r';
    name[1..17].copy_from_slice(conversation.0.as_bytes());
    name[17..].copy_from_slice(user.0.as_bytes());
    Uuid::new_v5(&NAMESPACE, &name)
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// `[a-z0-9_]`, 3–32 by default; stored lower-case so uniqueness is
/// case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str, limits: &Limits) -> Result<Self, ValidationError> {
        let lower = s.to_ascii_lowercase();
        let err = |kind| ValidationError::new("username", kind);
        let n = char_len(&lower);
        if n < limits.username_min {
            return Err(err(ValidationKind::TooShort(limits.username_min)));
        }
        if n > limits.username_max {
            return Err(err(ValidationKind::TooLong(limits.username_max)));
        }
        if !lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(err(ValidationKind::InvalidCharacters));
        }
        Ok(Self(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, trimmed and lower-cased; checked for shape only (one
/// `@`, non-empty local part and a dotted domain), deliverability is proven
/// by the reset mail, not here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let err = |kind| ValidationError::new("email", kind);
        let t = s.trim().to_lowercase();
        if t.is_empty() {
            return Err(err(ValidationKind::Empty));
        }
        if t.len() > 254 {
            return Err(err(ValidationKind::TooLong(254)));
        }
        let Some((local, domain)) = t.split_once('@') else {
            return Err(err(ValidationKind::Malformed));
        };
        let ok = !local.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !t.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(err(ValidationKind::Malformed));
        }
        Ok(Self(t))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: trimmed, 1–64 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(s: &str, limits: &Limits) -> Result<Self, ValidationError> {
        let t = s.trim();
        let err = |kind| ValidationError::new("display_name", kind);
        if t.is_empty() {
            return Err(err(ValidationKind::Empty));
        }
        if char_len(t) > limits.display_name_max {
            return Err(err(ValidationKind::TooLong(limits.display_name_max)));
        }
        if t.chars().any(char::is_control) {
            return Err(err(ValidationKind::InvalidCharacters));
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password in clear, only ever held in memory on its way to the hasher.
/// `Debug` is redacted so it cannot reach a log line.
#[derive(Clone)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    pub fn parse(s: &str, limits: &Limits, field: &'static str) -> Result<Self, ValidationError> {
        let n = char_len(s);
        if n < limits.password_min {
            return Err(ValidationError::new(
                field,
                ValidationKind::TooShort(limits.password_min),
            ));
        }
        if n > limits.password_max {
            return Err(ValidationError::new(
                field,
                ValidationKind::TooLong(limits.password_max),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A message body: trimmed, 1–4000 characters by default, no U+0000.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageBody(String);

impl MessageBody {
    pub fn parse(s: &str, limits: &Limits) -> Result<Self, ValidationError> {
        let t = s.trim();
        let err = |kind| ValidationError::new("body", kind);
        if t.is_empty() {
            return Err(err(ValidationKind::Empty));
        }
        if char_len(t) > limits.body_max {
            return Err(err(ValidationKind::TooLong(limits.body_max)));
        }
        // Line breaks and tabs are text; U+0000 is not (PostgreSQL cannot
        // store it, and no client means it).
        if t.contains('\0') {
            return Err(err(ValidationKind::InvalidCharacters));
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A group title: trimmed, 1–128 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Title(String);

impl Title {
    pub fn parse(s: &str, limits: &Limits) -> Result<Self, ValidationError> {
        let t = s.trim();
        let err = |kind| ValidationError::new("title", kind);
        if t.is_empty() {
            return Err(err(ValidationKind::Empty));
        }
        if char_len(t) > limits.title_max {
            return Err(err(ValidationKind::TooLong(limits.title_max)));
        }
        if t.chars().any(char::is_control) {
            return Err(err(ValidationKind::InvalidCharacters));
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The client's idempotency key for a send: 1–64 printable ASCII bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub fn parse(s: &str, limits: &Limits) -> Result<Self, ValidationError> {
        let err = |kind| ValidationError::new("client_msg_id", kind);
        if s.is_empty() {
            return Err(err(ValidationKind::Empty));
        }
        if s.len() > limits.client_msg_id_max {
            return Err(err(ValidationKind::TooLong(limits.client_msg_id_max)));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(ValidationKind::InvalidCharacters));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A member's role in a group. Direct conversations have two `Member`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    /// Owners and admins manage membership and titles.
    pub fn can_manage(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            _ => Err(ValidationError::new("role", ValidationKind::Malformed)),
        }
    }
}

/// Platform-wide roles of a user (not conversation roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    /// May read the audit log.
    Auditor,
}

impl UserRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "auditor" => Ok(UserRole::Auditor),
            _ => Err(ValidationError::new("role", ValidationKind::Malformed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rules() {
        let l = Limits::default();
        assert_eq!(
            Username::parse("Alice_1", &l).map(|u| u.0),
            Ok("alice_1".into())
        );
        assert!(
            matches!(Username::parse("ab", &l), Err(e) if e.kind == ValidationKind::TooShort(3))
        );
        assert!(Username::parse(&"a".repeat(33), &l).is_err());
        assert!(Username::parse("al ice", &l).is_err());
        assert!(Username::parse("alicé", &l).is_err());
    }

    #[test]
    fn body_is_trimmed_and_bounded_in_characters() {
        let l = Limits::default();
        assert_eq!(
            MessageBody::parse("  hi \n", &l).map(|b| b.0),
            Ok("hi".into())
        );
        assert!(MessageBody::parse("   ", &l).is_err());
        assert!(MessageBody::parse(&"é".repeat(4000), &l).is_ok());
        assert!(MessageBody::parse(&"é".repeat(4001), &l).is_err());
        assert!(MessageBody::parse("a\tb\nc", &l).is_ok());
        assert!(MessageBody::parse("a\0b", &l).is_err());
    }

    #[test]
    fn email_shape() {
        assert!(Email::parse("A@Example.org").is_ok_and(|e| e.as_str() == "a@example.org"));
        for bad in ["", "a", "a@b", "@b.c", "a@b@c.d", "a b@c.d", "a@.c"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn direct_id_is_symmetric_and_distinct() {
        let a = UserId::new_v7();
        let b = UserId::new_v7();
        let c = UserId::new_v7();
        assert_eq!(ConversationId::direct(a, b), ConversationId::direct(b, a));
        assert_ne!(ConversationId::direct(a, b), ConversationId::direct(a, c));
    }

    #[test]
    fn password_debug_is_redacted() {
        let p = Password::parse("correct horse", &Limits::default(), "password").ok();
        assert!(!format!("{p:?}").contains("horse"));
    }
}
