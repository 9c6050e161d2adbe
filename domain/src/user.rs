//! The `User` aggregate: registration, profile, password lifecycle, roles.
//!
//! Credentials are deliberately absent: the password hash and reset tokens
//! live in command-service tables. The aggregate records *that* a password
//! changed or a reset was requested, which is all auditors and notifiers need.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::event::{EventTypes, CURRENT_VERSION};
use crate::values::{DisplayName, Email, UserId, UserRole, Username};

/// What a user (or an operator, for roles) can ask of a user stream.
#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    /// Create the account. Email/username uniqueness is enforced by a unique
    /// index written in the same transaction as the event.
    Register {
        user_id: UserId,
        email: Email,
        username: Username,
        display_name: DisplayName,
    },
    /// The caller proved the current password (checked by the service).
    ChangePassword,
    /// A reset token was issued (stored hashed elsewhere), valid until `expires_at`.
    RequestPasswordReset {
        expires_at: DateTime<Utc>,
    },
    /// A valid reset token was presented at `at`.
    CompletePasswordReset {
        at: DateTime<Utc>,
    },
    ChangeDisplayName {
        display_name: DisplayName,
    },
    /// Operator command.
    GrantRole {
        role: UserRole,
    },
    /// Operator command.
    RevokeRole {
        role: UserRole,
    },
}

/// How a password came to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordChangeMethod {
    Change,
    Reset,
}

/// Events of a user stream. None carries a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    UserRegistered {
        user_id: UserId,
        email: Email,
        username: Username,
        display_name: DisplayName,
    },
    PasswordChanged {
        method: PasswordChangeMethod,
    },
    PasswordResetRequested {
        expires_at: DateTime<Utc>,
    },
    DisplayNameChanged {
        display_name: DisplayName,
    },
    RoleGranted {
        role: UserRole,
    },
    RoleRevoked {
        role: UserRole,
    },
}

impl EventTypes for UserEvent {
    const TYPES: &'static [&'static str] = &[
        "UserRegistered",
        "PasswordChanged",
        "PasswordResetRequested",
        "DisplayNameChanged",
        "RoleGranted",
        "RoleRevoked",
    ];
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            UserEvent::UserRegistered { .. } => "UserRegistered",
            UserEvent::PasswordChanged { .. } => "PasswordChanged",
            UserEvent::PasswordResetRequested { .. } => "PasswordResetRequested",
            UserEvent::DisplayNameChanged { .. } => "DisplayNameChanged",
            UserEvent::RoleGranted { .. } => "RoleGranted",
            UserEvent::RoleRevoked { .. } => "RoleRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        CURRENT_VERSION.to_string()
    }
}

/// Why a user command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user already registered")]
    AlreadyRegistered,
    #[error("user not found")]
    NotFound,
    #[error("role already granted")]
    RoleAlreadyGranted,
    #[error("role not granted")]
    RoleNotGranted,
    #[error("no password reset is pending or it has expired")]
    NoResetPending,
}

/// A user's state: only what commands need to decide.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Option<UserId>,
    pub username: Option<Username>,
    pub roles: BTreeSet<UserRole>,
    /// Expiry of the latest reset token issued and not yet used.
    pub reset_pending_until: Option<DateTime<Utc>>,
}

impl User {
    fn ensure_exists(&self) -> Result<(), UserError> {
        self.id.map(|_| ()).ok_or(UserError::NotFound)
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            UserCommand::Register {
                user_id,
                email,
                username,
                display_name,
            } => {
                if self.id.is_some() {
                    return Err(UserError::AlreadyRegistered);
                }
                UserEvent::UserRegistered {
                    user_id,
                    email,
                    username,
                    display_name,
                }
            }
            UserCommand::ChangePassword => {
                self.ensure_exists()?;
                UserEvent::PasswordChanged {
                    method: PasswordChangeMethod::Change,
                }
            }
            UserCommand::RequestPasswordReset { expires_at } => {
                self.ensure_exists()?;
                UserEvent::PasswordResetRequested { expires_at }
            }
            UserCommand::CompletePasswordReset { at } => {
                self.ensure_exists()?;
                match self.reset_pending_until {
                    Some(until) if at <= until => UserEvent::PasswordChanged {
                        method: PasswordChangeMethod::Reset,
                    },
                    _ => return Err(UserError::NoResetPending),
                }
            }
            UserCommand::ChangeDisplayName { display_name } => {
                self.ensure_exists()?;
                UserEvent::DisplayNameChanged { display_name }
            }
            UserCommand::GrantRole { role } => {
                self.ensure_exists()?;
                if self.roles.contains(&role) {
                    return Err(UserError::RoleAlreadyGranted);
                }
                UserEvent::RoleGranted { role }
            }
            UserCommand::RevokeRole { role } => {
                self.ensure_exists()?;
                if !self.roles.contains(&role) {
                    return Err(UserError::RoleNotGranted);
                }
                UserEvent::RoleRevoked { role }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered {
                user_id, username, ..
            } => {
                self.id = Some(user_id);
                self.username = Some(username);
            }
            UserEvent::PasswordChanged { .. } => self.reset_pending_until = None,
            UserEvent::PasswordResetRequested { expires_at } => {
                self.reset_pending_until = Some(expires_at);
            }
            UserEvent::DisplayNameChanged { .. } => {}
            UserEvent::RoleGranted { role } => {
                self.roles.insert(role);
            }
            UserEvent::RoleRevoked { role } => {
                self.roles.remove(&role);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use crate::Limits;
    use chrono::Duration;
    use cqrs_es::test::TestFramework;

    type F = TestFramework<User>;

    fn registered() -> (UserId, UserEvent) {
        let l = Limits::default();
        let id = UserId::new_v7();
        let ev = UserEvent::UserRegistered {
            user_id: id,
            email: Email::parse("ann@example.org").expect("valid"),
            username: Username::parse("ann", &l).expect("valid"),
            display_name: DisplayName::parse("Ann", &l).expect("valid"),
        };
        (id, ev)
    }

    fn register_cmd(ev: &UserEvent) -> UserCommand {
        let UserEvent::UserRegistered {
            user_id,
            email,
            username,
            display_name,
        } = ev.clone()
        else {
            unreachable!("registered() builds UserRegistered")
        };
        UserCommand::Register {
            user_id,
            email,
            username,
            display_name,
        }
    }

    #[test]
    fn register_emits_user_registered() {
        let (_, ev) = registered();
        F::with(())
            .given_no_previous_events()
            .when(register_cmd(&ev))
            .then_expect_events(vec![ev]);
    }

    #[test]
    fn register_twice_is_refused() {
        let (_, ev) = registered();
        F::with(())
            .given(vec![ev.clone()])
            .when(register_cmd(&ev))
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn commands_on_unknown_user_are_refused() {
        for cmd in [
            UserCommand::ChangePassword,
            UserCommand::GrantRole {
                role: UserRole::Auditor,
            },
            UserCommand::RequestPasswordReset {
                expires_at: Utc::now(),
            },
        ] {
            F::with(())
                .given_no_previous_events()
                .when(cmd)
                .then_expect_error(UserError::NotFound);
        }
    }

    #[test]
    fn change_password() {
        let (_, ev) = registered();
        F::with(())
            .given(vec![ev])
            .when(UserCommand::ChangePassword)
            .then_expect_events(vec![UserEvent::PasswordChanged {
                method: PasswordChangeMethod::Change,
            }]);
    }

    #[test]
    fn reset_completes_once_and_only_before_expiry() {
        let (_, ev) = registered();
        let now = Utc::now();
        let requested = UserEvent::PasswordResetRequested {
            expires_at: now + Duration::minutes(30),
        };
        F::with(())
            .given(vec![ev.clone(), requested.clone()])
            .when(UserCommand::CompletePasswordReset { at: now })
            .then_expect_events(vec![UserEvent::PasswordChanged {
                method: PasswordChangeMethod::Reset,
            }]);
        F::with(())
            .given(vec![ev.clone(), requested.clone()])
            .when(UserCommand::CompletePasswordReset {
                at: now + Duration::minutes(31),
            })
            .then_expect_error(UserError::NoResetPending);
        F::with(())
            .given(vec![
                ev.clone(),
                requested,
                UserEvent::PasswordChanged {
                    method: PasswordChangeMethod::Reset,
                },
            ])
            .when(UserCommand::CompletePasswordReset { at: now })
            .then_expect_error(UserError::NoResetPending);
        F::with(())
            .given(vec![ev])
            .when(UserCommand::CompletePasswordReset { at: now })
            .then_expect_error(UserError::NoResetPending);
    }

    #[test]
    fn roles_grant_and_revoke() {
        let (_, ev) = registered();
        let granted = UserEvent::RoleGranted {
            role: UserRole::Auditor,
        };
        F::with(())
            .given(vec![ev.clone()])
            .when(UserCommand::GrantRole {
                role: UserRole::Auditor,
            })
            .then_expect_events(vec![granted.clone()]);
        F::with(())
            .given(vec![ev.clone(), granted.clone()])
            .when(UserCommand::GrantRole {
                role: UserRole::Auditor,
            })
            .then_expect_error(UserError::RoleAlreadyGranted);
        F::with(())
            .given(vec![ev.clone(), granted])
            .when(UserCommand::RevokeRole {
                role: UserRole::Auditor,
            })
            .then_expect_events(vec![UserEvent::RoleRevoked {
                role: UserRole::Auditor,
            }]);
        F::with(())
            .given(vec![ev])
            .when(UserCommand::RevokeRole {
                role: UserRole::Auditor,
            })
            .then_expect_error(UserError::RoleNotGranted);
    }

    #[test]
    fn display_name_changes() {
        let (_, ev) = registered();
        let dn = DisplayName::parse("Annie", &Limits::default()).expect("valid");
        F::with(())
            .given(vec![ev])
            .when(UserCommand::ChangeDisplayName {
                display_name: dn.clone(),
            })
            .then_expect_events(vec![UserEvent::DisplayNameChanged { display_name: dn }]);
    }
}
