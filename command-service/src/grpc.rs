//! The gRPC face of [`Commands`]: metadata in, statuses out.
//!
//! The one mapping from command errors to `tonic::Status` lives here. Every
//! status carries a stable machine code in the `x-error-code` metadata key
//! (and `x-error-field` for validation errors) so the gateway can produce
//! API.md's problem documents without parsing messages. Internal errors are
//! logged once here, with their cause chain, and reach the client as a bare
//! `Internal`.

use std::sync::Arc;

use domain::conversation::ConversationError;
use domain::read_marker::ReadMarkerError;
use domain::user::UserError;
use domain::values::UserId;
use proto::command::v1 as pb;
use proto::command::v1::command_service_server::CommandService;
use proto::meta::{caller, correlation_id, status};
use tonic::{Code, Request, Response, Status};

use crate::commands::{CommandError, Commands};
use crate::store::CommandMeta;

impl From<CommandError> for Status {
    fn from(e: CommandError) -> Self {
        use Code::*;
        use ConversationError as C;
        let msg = e.to_string();
        match e {
            CommandError::Validation(v) => {
                status(InvalidArgument, "validation_failed", msg, Some(v.field))
            }
            CommandError::EmailTaken => status(AlreadyExists, "email_taken", msg, Some("email")),
            CommandError::UsernameTaken => {
                status(AlreadyExists, "username_taken", msg, Some("username"))
            }
            CommandError::InvalidCredentials => {
                status(Unauthenticated, "invalid_credentials", msg, None)
            }
            CommandError::InvalidResetToken => {
                status(FailedPrecondition, "invalid_token", msg, Some("token"))
            }
            CommandError::Unauthenticated => status(Unauthenticated, "unauthenticated", msg, None),
            CommandError::Contention => status(Aborted, "conflict", msg, None),
            CommandError::User(u) => match u {
                UserError::NotFound => status(NotFound, "user_not_found", msg, None),
                UserError::AlreadyRegistered => {
                    status(AlreadyExists, "already_registered", msg, None)
                }
                UserError::RoleAlreadyGranted => {
                    status(AlreadyExists, "role_already_granted", msg, None)
                }
                UserError::RoleNotGranted => {
                    status(FailedPrecondition, "role_not_granted", msg, None)
                }
                UserError::NoResetPending => {
                    status(FailedPrecondition, "invalid_token", msg, Some("token"))
                }
            },
            CommandError::ReadMarker(r) => match r {
                ReadMarkerError::ConversationNotFound => {
                    status(NotFound, "conversation_not_found", msg, None)
                }
                ReadMarkerError::NotAMember => status(PermissionDenied, "not_a_member", msg, None),
                ReadMarkerError::SeqOutOfRange { .. } => {
                    status(InvalidArgument, "validation_failed", msg, Some("seq"))
                }
            },
            CommandError::Conversation(c) => match c {
                C::NotFound => status(NotFound, "conversation_not_found", msg, None),
                C::AlreadyExists => status(AlreadyExists, "conversation_exists", msg, None),
                C::NotAMember => status(PermissionDenied, "not_a_member", msg, None),
                C::Forbidden => status(PermissionDenied, "forbidden", msg, None),
                C::NotAuthor => status(PermissionDenied, "not_author", msg, None),
                C::UnknownUsers(_) => status(NotFound, "user_not_found", msg, Some("user_id")),
                C::AlreadyMember(_) => {
                    status(AlreadyExists, "already_member", msg, Some("user_id"))
                }
                C::NotMember(_) => status(NotFound, "member_not_found", msg, Some("user_id")),
                C::GroupFull(_) => status(FailedPrecondition, "group_full", msg, None),
                C::DirectConversation => {
                    status(FailedPrecondition, "direct_conversation", msg, None)
                }
                C::DirectWithSelf => {
                    status(InvalidArgument, "validation_failed", msg, Some("user_id"))
                }
                C::DirectIdMismatch => status(
                    InvalidArgument,
                    "validation_failed",
                    msg,
                    Some("conversation_id"),
                ),
                C::MessageNotFound => {
                    status(NotFound, "message_not_found", msg, Some("message_id"))
                }
                C::MessageDeleted => status(
                    FailedPrecondition,
                    "message_deleted",
                    msg,
                    Some("message_id"),
                ),
                C::OwnerCannotLeave => status(FailedPrecondition, "owner_cannot_leave", msg, None),
                C::InvalidRole(_) => {
                    status(InvalidArgument, "validation_failed", msg, Some("role"))
                }
                C::Lookup(l) => {
                    tracing::error!(error = ?l, "lookup failed");
                    status(Internal, "internal", "internal error", None)
                }
            },
            CommandError::Internal(err) => {
                tracing::error!(error = ?err, "command failed");
                status(Internal, "internal", "internal error", None)
            }
        }
    }
}

/// tonic service over [`Commands`].
#[derive(Debug, Clone)]
pub struct CommandGrpc {
    commands: Arc<Commands>,
}

impl CommandGrpc {
    pub fn new(commands: Arc<Commands>) -> Self {
        Self { commands }
    }
}

/// The acting user and the command metadata of a call.
fn actor<T>(req: &Request<T>) -> Result<(UserId, CommandMeta), Status> {
    let user = UserId(caller(req)?);
    Ok((
        user,
        CommandMeta::new(user.to_string(), correlation_id(req)?),
    ))
}

fn anonymous<T>(req: &Request<T>, actor: &str) -> Result<CommandMeta, Status> {
    Ok(CommandMeta::new(actor, correlation_id(req)?))
}

type Reply<T> = Result<Response<T>, Status>;

fn empty() -> Reply<pb::Empty> {
    Ok(Response::new(pb::Empty {}))
}

#[tonic::async_trait]
impl CommandService for CommandGrpc {
    async fn register_user(
        &self,
        req: Request<pb::RegisterUserRequest>,
    ) -> Reply<pb::RegisterUserResponse> {
        let meta = anonymous(&req, domain::envelope::SYSTEM_ACTOR)?;
        let r = req.into_inner();
        let id = self
            .commands
            .register(
                &r.email,
                &r.username,
                &r.password,
                r.display_name.as_deref(),
                &meta,
            )
            .await?;
        Ok(Response::new(pb::RegisterUserResponse {
            user_id: id.to_string(),
        }))
    }

    async fn verify_password(
        &self,
        req: Request<pb::VerifyPasswordRequest>,
    ) -> Reply<pb::VerifyPasswordResponse> {
        let r = req.into_inner();
        let id = self.commands.verify_password(&r.login, &r.password).await?;
        Ok(Response::new(pb::VerifyPasswordResponse {
            user_id: id.to_string(),
        }))
    }

    async fn change_password(&self, req: Request<pb::ChangePasswordRequest>) -> Reply<pb::Empty> {
        let (user, meta) = actor(&req)?;
        let r = req.into_inner();
        self.commands
            .change_password(user, &r.current_password, &r.new_password, &meta)
            .await?;
        empty()
    }

    async fn request_password_reset(
        &self,
        req: Request<pb::RequestPasswordResetRequest>,
    ) -> Reply<pb::RequestPasswordResetResponse> {
        let meta = anonymous(&req, domain::envelope::SYSTEM_ACTOR)?;
        let r = req.into_inner();
        let issued = self
            .commands
            .request_password_reset(&r.email, &meta)
            .await?;
        Ok(Response::new(match issued {
            Some(i) => pb::RequestPasswordResetResponse {
                token: Some(i.token),
                user_id: Some(i.user_id.to_string()),
                expires_at: Some(i.expires_at.to_rfc3339()),
            },
            None => pb::RequestPasswordResetResponse::default(),
        }))
    }

    async fn complete_password_reset(
        &self,
        req: Request<pb::CompletePasswordResetRequest>,
    ) -> Reply<pb::CompletePasswordResetResponse> {
        let meta = anonymous(&req, domain::envelope::SYSTEM_ACTOR)?;
        let r = req.into_inner();
        let user = self
            .commands
            .complete_password_reset(&r.token, &r.new_password, &meta)
            .await?;
        Ok(Response::new(pb::CompletePasswordResetResponse {
            user_id: user.to_string(),
        }))
    }

    async fn change_display_name(
        &self,
        req: Request<pb::ChangeDisplayNameRequest>,
    ) -> Reply<pb::Empty> {
        let (user, meta) = actor(&req)?;
        self.commands
            .change_display_name(user, &req.into_inner().display_name, &meta)
            .await?;
        empty()
    }

    async fn grant_role(&self, req: Request<pb::GrantRoleRequest>) -> Reply<pb::Empty> {
        let meta = anonymous(&req, domain::envelope::SYSTEM_ACTOR)?;
        let r = req.into_inner();
        self.commands
            .set_role(&r.user_id, &r.role, true, &meta)
            .await?;
        empty()
    }

    async fn revoke_role(&self, req: Request<pb::GrantRoleRequest>) -> Reply<pb::Empty> {
        let meta = anonymous(&req, domain::envelope::SYSTEM_ACTOR)?;
        let r = req.into_inner();
        self.commands
            .set_role(&r.user_id, &r.role, false, &meta)
            .await?;
        empty()
    }

    async fn create_group(
        &self,
        req: Request<pb::CreateGroupRequest>,
    ) -> Reply<pb::CreateConversationResponse> {
        let (user, meta) = actor(&req)?;
        let r = req.into_inner();
        let id = self
            .commands
            .create_group(user, &r.title, &r.member_ids, &meta)
            .await?;
        Ok(Response::new(pb::CreateConversationResponse {
            conversation_id: id.to_string(),
            created: true,
        }))
    }

    async fn open_direct(
        &self,
        req: Request<pb::OpenDirectRequest>,
    ) -> Reply<pb::CreateConversationResponse> {
        let (user, meta) = actor(&req)?;
        let (id, created) = self
            .commands
            .open_direct(user, &req.into_inner().user_id, &meta)
            .await?;
        Ok(Response::new(pb::CreateConversationResponse {
            conversation_id: id.to_string(),
            created,
        }))
    }

    async fn add_member(&self, req: Request<pb::AddMemberRequest>) -> Reply<pb::Empty> {
        let (user, meta) = actor(&req)?;
        let r = req.into_inner();
        self.commands
            .add_member(
                user,
                &r.conversation_id,
                &r.user_id,
                r.role.as_deref(),
                &meta,
            )
            .await?;
        empty()
    }

    async fn remove_member(&self, req: Request<pb::RemoveMemberRequest>) -> Reply<pb::Empty> {
        let (user, meta) = actor(&req)?;
        let r = req.into_inner();
        self.commands
            .remove_member(user, &r.conversation_id, &r.user_id, &meta)
            .await?;
        empty()
    }

    async fn change_role(&self, req: Request<pb::ChangeRoleRequest>) -> Reply<pb::Empty> {
        let (user, meta) = actor(&req)?;
        let r = req.into_inner();
        self.commands
            .change_role(user, &r.conversation_id, &r.user_id, &r.role, &meta)
            .await?;
        empty()
    }

    async fn rename_conversation(
        &self,
        req: Request<pb::RenameConversationRequest>,
    ) -> Reply<pb::Empty> {
        let (user, meta) = actor(&req)?;
        let r = req.into_inner();
        self.commands
            .rename(user, &r.conversation_id, &r.title, &meta)
            .await?;
        empty()
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Reply<pb::SendMessageResponse> {
        let (user, meta) = actor(&req)?;
        let r = req.into_inner();
        let sent = self
            .commands
            .send_message(user, &r.conversation_id, &r.client_msg_id, &r.body, &meta)
            .await?;
        Ok(Response::new(pb::SendMessageResponse {
            message_id: sent.message_id.to_string(),
            seq: sent.seq,
            sent_at: sent
                .sent_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            duplicate: sent.duplicate,
        }))
    }

    async fn edit_message(&self, req: Request<pb::EditMessageRequest>) -> Reply<pb::Empty> {
        let (user, meta) = actor(&req)?;
        let r = req.into_inner();
        self.commands
            .edit_message(user, &r.conversation_id, &r.message_id, &r.body, &meta)
            .await?;
        empty()
    }

    async fn delete_message(&self, req: Request<pb::DeleteMessageRequest>) -> Reply<pb::Empty> {
        let (user, meta) = actor(&req)?;
        let r = req.into_inner();
        self.commands
            .delete_message(user, &r.conversation_id, &r.message_id, &meta)
            .await?;
        empty()
    }

    async fn mark_read(&self, req: Request<pb::MarkReadRequest>) -> Reply<pb::Empty> {
        let (user, meta) = actor(&req)?;
        let r = req.into_inner();
        self.commands
            .mark_read(user, &r.conversation_id, r.seq, &meta)
            .await?;
        empty()
    }
}
