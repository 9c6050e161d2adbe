//! Limits from API.md ("Limits (defaults, configurable)").

use serde::{Deserialize, Serialize};

/// Every limit a command is checked against. Services build one from their
/// configuration; [`Limits::default`] holds the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Shortest username, in characters.
    pub username_min: usize,
    /// Longest username, in characters.
    pub username_max: usize,
    /// Shortest password, in characters.
    pub password_min: usize,
    /// Longest password, in characters (bounds hashing cost).
    pub password_max: usize,
    /// Longest message body after trimming, in characters.
    pub body_max: usize,
    /// Longest group title after trimming, in characters.
    pub title_max: usize,
    /// Most members a group may have, owner included.
    pub group_max_members: usize,
    /// Longest display name, in characters.
    pub display_name_max: usize,
    /// Longest client message id, in bytes.
    pub client_msg_id_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            username_min: 3,
            username_max: 32,
            password_min: 8,
            password_max: 128,
            body_max: 4000,
            title_max: 128,
            group_max_members: 1000,
            display_name_max: 64,
            client_msg_id_max: 64,
        }
    }
}
