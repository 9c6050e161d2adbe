//! Profiles: anyone authenticated may look up a user's public profile
//! (id, username, display name) by id or username prefix; only the user
//! themselves sees their email and roles.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{page_limit, parse_id, QueryError, Reads};

/// Default and largest page of a username search.
pub const DEFAULT_SEARCH_LIMIT: u32 = 20;
pub const MAX_SEARCH_LIMIT: u32 = 100;
/// Longest prefix worth matching (the longest username).
pub const MAX_PREFIX_CHARS: usize = 32;

/// A public profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct UserView {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
}

/// The caller's own profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct MeView {
    pub user_id: Uuid,
    pub email: String,
    pub username: String,
    pub display_name: String,
    pub roles: Vec<String>,
}

/// Escapes `LIKE` metacharacters (`_` is legal in usernames).
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Reads {
    /// A user's public profile.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn get_user(&self, user_id: &str) -> Result<UserView, QueryError> {
        let id = parse_id("user_id", user_id)?;
        sqlx::query_as("SELECT user_id, username, display_name FROM rm_users WHERE user_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(QueryError::UserNotFound)
    }

    /// Users whose username starts with `prefix`, case-insensitively, in
    /// username order.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn search_users(
        &self,
        prefix: &str,
        limit: Option<u32>,
    ) -> Result<Vec<UserView>, QueryError> {
        let prefix = prefix.trim().to_lowercase();
        let chars = prefix.chars().count();
        if chars == 0 || chars > MAX_PREFIX_CHARS {
            return Err(QueryError::invalid(
                "username_prefix",
                format!("must have 1 to {MAX_PREFIX_CHARS} characters"),
            ));
        }
        if prefix.contains('\0') {
            return Err(QueryError::invalid(
                "username_prefix",
                "must not contain the NUL character (U+0000)",
            ));
        }
        let limit = page_limit(limit, DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT)?;
        // Usernames are stored lower-case. The range on the pattern
        // operators uses the text_pattern_ops index even in a generic
        // prepared plan (a parameterised LIKE alone would not); the LIKE
        // keeps the match exact.
        let upper = format!("{prefix}\u{10FFFF}");
        Ok(sqlx::query_as(
            "SELECT user_id, username, display_name FROM rm_users \
             WHERE username ~>=~ $1 AND username ~<~ $2 AND username LIKE $3 \
             ORDER BY username LIMIT $4",
        )
        .bind(&prefix)
        .bind(&upper)
        .bind(format!("{}%", like_escape(&prefix)))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The caller's own profile.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn me(&self, user: Uuid) -> Result<MeView, QueryError> {
        sqlx::query_as(
            "SELECT user_id, email, username, display_name, roles FROM rm_users WHERE user_id = $1",
        )
        .bind(user)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(QueryError::UserNotFound)
    }

    /// Whether `user` holds the `auditor` role.
    pub(crate) async fn is_auditor(&self, user: Uuid) -> Result<bool, QueryError> {
        let found: Option<bool> =
            sqlx::query_scalar("SELECT 'auditor' = ANY(roles) FROM rm_users WHERE user_id = $1")
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found == Some(true))
    }
}

#[cfg(test)]
mod tests {
    use super::like_escape;

    #[test]
    fn like_metacharacters_are_escaped() {
        assert_eq!(like_escape("a_b%c\\"), "a\\_b\\%c\\\\");
        assert_eq!(like_escape("plain"), "plain");
    }
}
