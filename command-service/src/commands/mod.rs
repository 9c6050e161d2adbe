//! The application service: parses raw input into domain values, loads the
//! right aggregate, runs the command and writes the side tables that go with
//! it. Both the gRPC layer and the operator CLI call these functions.
//!
//! One `impl Commands` block per aggregate: `accounts` (users, passwords,
//! roles), `conversations` (conversations, members, messages) and
//! `read_markers`.

mod accounts;
mod conversations;
mod read_markers;

use std::sync::Arc;

use chrono::Duration;
use domain::conversation::{Conversation, ConversationError, ConversationServices};
use domain::read_marker::{ReadMarker, ReadMarkerError};
use domain::user::{User, UserError};
use domain::values::{ConversationId, ValidationError};
use domain::Limits;
use sqlx::PgPool;

pub use self::accounts::ResetIssued;
pub use self::conversations::SentMessage;
use crate::credentials::{CredentialError, Hasher};
use crate::lookup::{OptimisticLookup, PgLookup};
use crate::relay::RelayWake;
use crate::store::{ExecError, Repository, StoreError, StoreTuning};

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

/// Every command of the platform.
#[derive(Debug)]
pub struct Commands {
    pool: PgPool,
    pub users: Repository<User>,
    pub conversations: Repository<Conversation>,
    pub markers: Repository<ReadMarker>,
    services: ConversationServices,
    /// `services` with [`OptimisticLookup`], for a send's first attempt.
    first_send: ConversationServices,
    lookup: Arc<PgLookup>,
    hasher: Hasher,
    limits: Limits,
    reset_ttl: Duration,
    wake: Arc<RelayWake>,
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
        let wake = Arc::new(RelayWake::default());
        Self {
            users: Repository::new(pool.clone(), tuning, wake.clone()),
            conversations: Repository::new(pool.clone(), tuning, wake.clone()),
            markers: Repository::new(pool.clone(), tuning, wake.clone()),
            services: ConversationServices {
                lookup: lookup.clone(),
                limits,
            },
            first_send: ConversationServices {
                lookup: Arc::new(OptimisticLookup(lookup.clone())),
                limits,
            },
            lookup,
            pool,
            hasher,
            limits,
            reset_ttl,
            wake,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What every append of these commands signals; give it to the relay
    /// of this process ([`crate::relay::Relay::with_wake`]).
    pub fn relay_wake(&self) -> Arc<RelayWake> {
        self.wake.clone()
    }
}
