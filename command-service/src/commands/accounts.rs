//! The application service: parses raw input into domain values, loads the
//! right aggregate, runs the command and writes the side tables that go with
//! it. Both the gRPC layer and the operator CLI call these functions.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use domain::conversation::{
    Conversation, ConversationCommand, ConversationError, ConversationEvent, ConversationLookup,
    ConversationServices, NewConversation,
};
use domain::read_marker::{ConversationFacts, ReadMarker, ReadMarkerCommand, ReadMarkerError};
use domain::user::{User, UserCommand, UserError};
use domain::values::{
    read_marker_id, ClientMsgId, ConversationId, DisplayName, Email, MessageBody, MessageId,
    Password, Role, Title, UserId, UserRole, Username, ValidationError,
};
use domain::Limits;
use futures::FutureExt;
use sqlx::{PgConnection, PgPool, Row};

use crate::credentials::{new_reset_token, token_hash, CredentialError, Hasher};
use crate::lookup::{message_index_writer, PgLookup};
use crate::store::{
    Appended, CommandMeta, ExecError, Repository, SideWrite, StoreError, StoreTuning,
};

/// Why a command failed, at the level clients care about.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("invalid input: {0}")]
    Validation(#[from] ValidationError),
    #[error("email already registered")]
    EmailTaken,
    #[error("username already taken")]
    UsernameTaken,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("reset token is invalid, used or expired")]
    InvalidResetToken,
    #[error("no authenticated user on the call")]
    Unauthenticated,
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Conversation(ConversationError),
    #[error(transparent)]
    ReadMarker(#[from] ReadMarkerError),
    #[error("too many concurrent writers, try again")]
    Contention,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => CommandError::Contention,
            other => CommandError::Internal(other.into()),
        }
    }
}

impl From<CredentialError> for CommandError {
    fn from(e: CredentialError) -> Self {
        CommandError::Internal(e.into())
    }
}

impl From<sqlx::Error> for CommandError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<ConversationError> for CommandError {
    fn from(e: ConversationError) -> Self {
        match e {
            ConversationError::Lookup(l) => CommandError::Internal(l.into()),
            other => CommandError::Conversation(other),
        }
    }
}

impl<E: Into<CommandError>> From<ExecError<E>> for CommandError {
    fn from(e: ExecError<E>) -> Self {
        match e {
            ExecError::Domain(d) => d.into(),
            ExecError::Exhausted(_) => CommandError::Contention,
            ExecError::Store(StoreError::Unique(c)) if c == "user_identities_email_key" => {
                CommandError::EmailTaken
            }
            ExecError::Store(StoreError::Unique(c)) if c == "user_identities_username_key" => {
                CommandError::UsernameTaken
            }
            ExecError::Store(s) => s.into(),
        }
    }
}

/// Result of a send: the message's identity, whether it was new or a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub message_id: MessageId,
    pub seq: i64,
    pub sent_at: DateTime<Utc>,
    pub duplicate: bool,
}

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

/// Every command of the platform.
#[derive(Debug)]
pub struct Commands {
    pool: PgPool,
    pub users: Repository<User>,
    pub conversations: Repository<Conversation>,
    pub markers: Repository<ReadMarker>,
    services: ConversationServices,
    lookup: Arc<PgLookup>,
    hasher: Hasher,
    limits: Limits,
    reset_ttl: Duration,
}

fn conv_id(s: &str) -> Result<ConversationId, CommandError> {
    Ok(ConversationId::parse(s, "conversation_id")?)
}

impl Commands {
    pub fn new(
        pool: PgPool,
        tuning: StoreTuning,
        hasher: Hasher,
        limits: Limits,
        reset_ttl: Duration,
    ) -> Self {
        let lookup = Arc::new(PgLookup::new(pool.clone()));
        Self {
            users: Repository::new(pool.clone(), tuning),
            conversations: Repository::new(pool.clone(), tuning),
            markers: Repository::new(pool.clone(), tuning),
            services: ConversationServices {
                lookup: lookup.clone(),
                limits,
            },
            lookup,
            pool,
            hasher,
            limits,
            reset_ttl,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    // ----- accounts -------------------------------------------------------

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

    // ----- conversations --------------------------------------------------

    async fn conv(
        &self,
        id: ConversationId,
        cmd: ConversationCommand,
        meta: &CommandMeta,
    ) -> Result<Vec<Appended<ConversationEvent>>, CommandError> {
        let executed = self
            .conversations
            .execute(
                &id.to_string(),
                cmd,
                &self.services,
                meta,
                Some(message_index_writer(id)),
            )
            .await?;
        Ok(executed.events)
    }

    #[tracing::instrument(skip_all, fields(user_id = %actor))]
    pub async fn create_group(
        &self,
        actor: UserId,
        title: &str,
        member_ids: &[String],
        meta: &CommandMeta,
    ) -> Result<ConversationId, CommandError> {
        let title = Title::parse(title, &self.limits)?;
        let members = member_ids
            .iter()
            .map(|m| UserId::parse(m, "member_ids"))
            .collect::<Result<Vec<_>, _>>()?;
        let id = ConversationId::new_v7();
        self.conv(
            id,
            ConversationCommand::Create {
                conversation_id: id,
                creator: actor,
                new: NewConversation::Group { title, members },
            },
            meta,
        )
        .await?;
        Ok(id)
    }

    /// Opens (or finds) the one direct conversation with `peer`; `true` when new.
    pub async fn open_direct(
        &self,
        actor: UserId,
        peer: &str,
        meta: &CommandMeta,
    ) -> Result<(ConversationId, bool), CommandError> {
        let peer = UserId::parse(peer, "user_id")?;
        let id = ConversationId::direct(actor, peer);
        let events = self
            .conv(
                id,
                ConversationCommand::Create {
                    conversation_id: id,
                    creator: actor,
                    new: NewConversation::Direct { peer },
                },
                meta,
            )
            .await?;
        Ok((id, !events.is_empty()))
    }

    pub async fn add_member(
        &self,
        actor: UserId,
        conversation: &str,
        user: &str,
        role: Option<&str>,
        meta: &CommandMeta,
    ) -> Result<(), CommandError> {
        let id = conv_id(conversation)?;
        let user_id = UserId::parse(user, "user_id")?;
        let role = role.map(Role::parse).transpose()?.unwrap_or(Role::Member);
        self.conv(
            id,
            ConversationCommand::AddMember {
                actor,
                user_id,
                role,
            },
            meta,
        )
        .await?;
        Ok(())
    }

    pub async fn remove_member(
        &self,
        actor: UserId,
        conversation: &str,
        user: &str,
        meta: &CommandMeta,
    ) -> Result<(), CommandError> {
        let id = conv_id(conversation)?;
        let user_id = UserId::parse(user, "user_id")?;
        self.conv(
            id,
            ConversationCommand::RemoveMember { actor, user_id },
            meta,
        )
        .await?;
        Ok(())
    }

    pub async fn change_role(
        &self,
        actor: UserId,
        conversation: &str,
        user: &str,
        role: &str,
        meta: &CommandMeta,
    ) -> Result<(), CommandError> {
        let id = conv_id(conversation)?;
        let user_id = UserId::parse(user, "user_id")?;
        let role = Role::parse(role)?;
        self.conv(
            id,
            ConversationCommand::ChangeRole {
                actor,
                user_id,
                role,
            },
            meta,
        )
        .await?;
        Ok(())
    }

    pub async fn rename(
        &self,
        actor: UserId,
        conversation: &str,
        title: &str,
        meta: &CommandMeta,
    ) -> Result<(), CommandError> {
        let id = conv_id(conversation)?;
        let title = Title::parse(title, &self.limits)?;
        self.conv(id, ConversationCommand::Rename { actor, title }, meta)
            .await?;
        Ok(())
    }

    // ----- messages -------------------------------------------------------

    #[tracing::instrument(skip_all, fields(user_id = %actor, conversation_id = conversation))]
    pub async fn send_message(
        &self,
        actor: UserId,
        conversation: &str,
        client_msg_id: &str,
        body: &str,
        meta: &CommandMeta,
    ) -> Result<SentMessage, CommandError> {
        let id = conv_id(conversation)?;
        let client_msg_id = ClientMsgId::parse(client_msg_id, &self.limits)?;
        let body = MessageBody::parse(body, &self.limits)?;
        let events = self
            .conv(
                id,
                ConversationCommand::SendMessage {
                    sender: actor,
                    message_id: MessageId::new_v7(),
                    client_msg_id: client_msg_id.clone(),
                    body,
                    sent_at: meta.occurred_at,
                },
                meta,
            )
            .await?;
        for e in events {
            if let ConversationEvent::MessageSent {
                message_id,
                sent_at,
                ..
            } = e.event
            {
                return Ok(SentMessage {
                    message_id,
                    seq: e.sequence,
                    sent_at,
                    duplicate: false,
                });
            }
        }
        // No event: this client_msg_id was used before; return the first result.
        let first = self
            .lookup
            .message_by_client_id(id, actor, &client_msg_id)
            .await
            .map_err(|e| CommandError::Internal(e.into()))?
            .ok_or_else(|| {
                CommandError::Internal(anyhow::anyhow!(
                    "duplicate send without an indexed original"
                ))
            })?;
        Ok(SentMessage {
            message_id: first.message_id,
            seq: first.seq,
            sent_at: first.sent_at,
            duplicate: true,
        })
    }

    pub async fn edit_message(
        &self,
        actor: UserId,
        conversation: &str,
        message: &str,
        body: &str,
        meta: &CommandMeta,
    ) -> Result<(), CommandError> {
        let id = conv_id(conversation)?;
        let message_id = MessageId::parse(message, "message_id")?;
        let body = MessageBody::parse(body, &self.limits)?;
        self.conv(
            id,
            ConversationCommand::EditMessage {
                actor,
                message_id,
                body,
                edited_at: meta.occurred_at,
            },
            meta,
        )
        .await?;
        Ok(())
    }

    pub async fn delete_message(
        &self,
        actor: UserId,
        conversation: &str,
        message: &str,
        meta: &CommandMeta,
    ) -> Result<(), CommandError> {
        let id = conv_id(conversation)?;
        let message_id = MessageId::parse(message, "message_id")?;
        self.conv(
            id,
            ConversationCommand::DeleteMessage { actor, message_id },
            meta,
        )
        .await?;
        Ok(())
    }

    /// Moves the caller's read marker; on its own stream, so it never
    /// contends with sends into the conversation.
    pub async fn mark_read(
        &self,
        actor: UserId,
        conversation: &str,
        seq: i64,
        meta: &CommandMeta,
    ) -> Result<(), CommandError> {
        let id = conv_id(conversation)?;
        let facts = self
            .conversations
            .read(&id.to_string(), |c, version| ConversationFacts {
                exists: c.id.is_some(),
                is_member: c.is_member(actor),
                last_seq: version,
            })
            .await?;
        self.markers
            .execute(
                &read_marker_id(id, actor).to_string(),
                ReadMarkerCommand::Move {
                    conversation_id: id,
                    user_id: actor,
                    seq,
                    facts,
                },
                &(),
                meta,
                None,
            )
            .await?;
        Ok(())
    }
}

/// Side write for password changes: replaces the hash and, for a reset,
/// spends the presented token (exactly once) and every other open token.
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
                sqlx::query("UPDATE password_reset_tokens SET used_at = now() WHERE user_id = $1 AND used_at IS NULL")
                    .bind(user.0)
                    .execute(&mut *conn)
                    .await?;
            }
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
