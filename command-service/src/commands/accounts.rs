//! `impl Commands` for the user aggregate: registration, passwords (change
//! and reset), display names and platform roles.

use chrono::{DateTime, Utc};
use domain::user::UserCommand;
use domain::user::UserError;
use domain::values::{DisplayName, Email, Password, UserId, UserRole, Username};
use futures::FutureExt;
use sqlx::{PgConnection, Row};

use super::{CommandError, Commands};
use crate::credentials::{new_reset_token, token_hash};
use crate::store::{Appended, CommandMeta, ExecError, SideWrite, StoreError};

/// A reset token to deliver by mail. Secret: never log it.
#[derive(Clone)]
pub struct ResetIssued {
    pub user_id: UserId,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for ResetIssued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResetIssued")
            .field("user_id", &self.user_id)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Commands {
    #[tracing::instrument(skip_all)]
    pub async fn register(
        &self,
        email: &str,
        username: &str,
        password: &str,
        display_name: Option<&str>,
        meta: &CommandMeta,
    ) -> Result<UserId, CommandError> {
        let email = Email::parse(email)?;
        let username = Username::parse(username, &self.limits)?;
        let password = Password::parse(password, &self.limits, "password")?;
        let display_name =
            DisplayName::parse(display_name.unwrap_or(username.as_str()), &self.limits)?;
        let hash = self.hasher.hash(password.expose().to_owned()).await?;
        let user_id = UserId::new_v7();
        let (e, u) = (email.as_str().to_owned(), username.as_str().to_owned());
        let side: SideWrite<'_, _> = Box::new(move |conn: &mut PgConnection, _: &[Appended<_>]| {
            let (e, u, hash) = (e.clone(), u.clone(), hash.clone());
            async move {
                sqlx::query(
                    "INSERT INTO user_identities (user_id, email, username) VALUES ($1, $2, $3)",
                )
                .bind(user_id.0)
                .bind(e)
                .bind(u)
                .execute(&mut *conn)
                .await?;
                sqlx::query("INSERT INTO credentials (user_id, password_hash) VALUES ($1, $2)")
                    .bind(user_id.0)
                    .bind(hash)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
            .boxed()
        });
        let meta = CommandMeta {
            actor: user_id.to_string(),
            ..meta.clone()
        };
        self.users
            .execute(
                &user_id.to_string(),
                UserCommand::Register {
                    user_id,
                    email,
                    username,
                    display_name,
                },
                &(),
                &meta,
                Some(side),
            )
            .await?;
        Ok(user_id)
    }

    /// Login check: email or username plus password. Unknown logins cost the
    /// same as wrong passwords.
    #[tracing::instrument(skip_all)]
    pub async fn verify_password(
        &self,
        login: &str,
        password: &str,
    ) -> Result<UserId, CommandError> {
        let login = login.trim().to_lowercase();
        let row = if login.len() <= 254 && password.chars().count() <= self.limits.password_max {
            sqlx::query(
                "SELECT i.user_id, c.password_hash FROM user_identities i JOIN credentials c USING (user_id) \
                 WHERE lower(i.email) = $1 OR lower(i.username) = $1 LIMIT 1",
            )
            .bind(&login)
            .fetch_optional(&self.pool)
            .await?
        } else {
            None
        };
        let (user, hash) = match row {
            Some(r) => (
                Some(UserId(r.try_get("user_id")?)),
                Some(r.try_get::<String, _>("password_hash")?),
            ),
            None => (None, None),
        };
        let ok = self.hasher.verify(password.to_owned(), hash).await?;
        match (ok, user) {
            (true, Some(u)) => Ok(u),
            _ => Err(CommandError::InvalidCredentials),
        }
    }

    #[tracing::instrument(skip_all, fields(user_id = %actor))]
    pub async fn change_password(
        &self,
        actor: UserId,
        current: &str,
        new: &str,
        meta: &CommandMeta,
    ) -> Result<(), CommandError> {
        let new = Password::parse(new, &self.limits, "new_password")?;
        let hash: Option<String> =
            sqlx::query_scalar("SELECT password_hash FROM credentials WHERE user_id = $1")
                .bind(actor.0)
                .fetch_optional(&self.pool)
                .await?;
        if hash.is_none() {
            return Err(UserError::NotFound.into());
        }
        if !self.hasher.verify(current.to_owned(), hash).await? {
            return Err(CommandError::InvalidCredentials);
        }
        let new_hash = self.hasher.hash(new.expose().to_owned()).await?;
        self.users
            .execute(
                &actor.to_string(),
                UserCommand::ChangePassword,
                &(),
                meta,
                Some(set_password(actor, new_hash, None)),
            )
            .await?;
        Ok(())
    }

    /// Issues a reset token when `email` is known; `None` otherwise (the
    /// caller answers the same either way).
    #[tracing::instrument(skip_all)]
    pub async fn request_password_reset(
        &self,
        email: &str,
        meta: &CommandMeta,
    ) -> Result<Option<ResetIssued>, CommandError> {
        let email = Email::parse(email)?;
        let user: Option<uuid::Uuid> =
            sqlx::query_scalar("SELECT user_id FROM user_identities WHERE lower(email) = $1")
                .bind(email.as_str())
                .fetch_optional(&self.pool)
                .await?;
        let Some(user) = user.map(UserId) else {
            return Ok(None);
        };
        let (token, hash) = new_reset_token();
        let expires_at = meta.occurred_at + self.reset_ttl;
        let side: SideWrite<'_, _> = Box::new(move |conn: &mut PgConnection, _: &[Appended<_>]| {
            let hash = hash.clone();
            async move {
                // Only the latest token works: earlier ones are spent.
                sqlx::query("UPDATE password_reset_tokens SET used_at = now() WHERE user_id = $1 AND used_at IS NULL")
                    .bind(user.0)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(
                    "INSERT INTO password_reset_tokens (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
                )
                .bind(hash)
                .bind(user.0)
                .bind(expires_at)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }
            .boxed()
        });
        let meta = CommandMeta {
            actor: user.to_string(),
            ..meta.clone()
        };
        self.users
            .execute(
                &user.to_string(),
                UserCommand::RequestPasswordReset { expires_at },
                &(),
                &meta,
                Some(side),
            )
            .await?;
        Ok(Some(ResetIssued {
            user_id: user,
            token,
            expires_at,
        }))
    }

    #[tracing::instrument(skip_all)]
    pub async fn complete_password_reset(
        &self,
        token: &str,
        new_password: &str,
        meta: &CommandMeta,
    ) -> Result<UserId, CommandError> {
        let new = Password::parse(new_password, &self.limits, "new_password")?;
        let hash = token_hash(token);
        let user: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM password_reset_tokens WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let user = user.map(UserId).ok_or(CommandError::InvalidResetToken)?;
        let new_hash = self.hasher.hash(new.expose().to_owned()).await?;
        let meta = CommandMeta {
            actor: user.to_string(),
            ..meta.clone()
        };
        let result = self
            .users
            .execute(
                &user.to_string(),
                UserCommand::CompletePasswordReset {
                    at: meta.occurred_at,
                },
                &(),
                &meta,
                Some(set_password(user, new_hash, Some(hash))),
            )
            .await;
        match result {
            Ok(_) => Ok(user),
            // The token was consumed concurrently, or the aggregate saw no
            // pending reset: either way this token is spent.
            Err(ExecError::Store(StoreError::Precondition("token_spent"))) => {
                Err(CommandError::InvalidResetToken)
            }
            Err(ExecError::Domain(UserError::NoResetPending)) => {
                Err(CommandError::InvalidResetToken)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn change_display_name(
        &self,
        actor: UserId,
        name: &str,
        meta: &CommandMeta,
    ) -> Result<(), CommandError> {
        let display_name = DisplayName::parse(name, &self.limits)?;
        self.users
            .execute(
                &actor.to_string(),
                UserCommand::ChangeDisplayName { display_name },
                &(),
                meta,
                None,
            )
            .await?;
        Ok(())
    }

    /// Operator command: grant (or with `grant = false`, revoke) a platform role.
    pub async fn set_role(
        &self,
        user: &str,
        role: &str,
        grant: bool,
        meta: &CommandMeta,
    ) -> Result<(), CommandError> {
        let user = UserId::parse(user, "user_id")?;
        let role = UserRole::parse(role)?;
        let cmd = if grant {
            UserCommand::GrantRole { role }
        } else {
            UserCommand::RevokeRole { role }
        };
        self.users
            .execute(&user.to_string(), cmd, &(), meta, None)
            .await?;
        Ok(())
    }
}

/// Side write for password changes: replaces the hash, spends every open
/// reset token of the user and, for a reset, checks that the presented
/// one was still open (exactly once).
fn set_password(
    user: UserId,
    new_hash: String,
    spend_token: Option<Vec<u8>>,
) -> SideWrite<'static, domain::user::UserEvent> {
    Box::new(move |conn: &mut PgConnection, _: &[Appended<_>]| {
        let (new_hash, spend_token) = (new_hash.clone(), spend_token.clone());
        async move {
            if let Some(token) = spend_token {
                let spent = sqlx::query(
                    "UPDATE password_reset_tokens SET used_at = now() \
                     WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()",
                )
                .bind(token)
                .execute(&mut *conn)
                .await?;
                if spent.rows_affected() != 1 {
                    return Err(StoreError::Precondition("token_spent"));
                }
            }
            // Every other open token dies with the old password, on a
            // reset and on a change alike (security review L-3): a token
            // mailed before the change must not outlive it.
            sqlx::query("UPDATE password_reset_tokens SET used_at = now() WHERE user_id = $1 AND used_at IS NULL")
                .bind(user.0)
                .execute(&mut *conn)
                .await?;
            sqlx::query("UPDATE credentials SET password_hash = $2, updated_at = now() WHERE user_id = $1")
                .bind(user.0)
                .bind(new_hash)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }
        .boxed()
    })
}
