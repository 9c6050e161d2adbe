//! `impl Commands` for the conversation aggregate: conversations, members
//! and messages.

use chrono::{DateTime, Utc};
use domain::conversation::{
    ConversationCommand, ConversationError, ConversationEvent, ConversationLookup,
    ConversationServices, NewConversation,
};
use domain::values::{ClientMsgId, ConversationId, MessageBody, MessageId, Role, Title, UserId};

use super::{conv_id, CommandError, Commands};
use crate::lookup::message_index_writer;
use crate::store::{Appended, CommandMeta, ExecError, StoreError};

/// Result of a send: the message's identity, whether it was new or a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub message_id: MessageId,
    pub seq: i64,
    pub sent_at: DateTime<Utc>,
    pub duplicate: bool,
}

impl Commands {
    async fn conv(
        &self,
        id: ConversationId,
        cmd: ConversationCommand,
        meta: &CommandMeta,
    ) -> Result<Vec<Appended<ConversationEvent>>, CommandError> {
        Ok(self.conv_with(&self.services, id, cmd, meta).await?)
    }

    async fn conv_with(
        &self,
        services: &ConversationServices,
        id: ConversationId,
        cmd: ConversationCommand,
        meta: &CommandMeta,
    ) -> Result<Vec<Appended<ConversationEvent>>, ExecError<ConversationError>> {
        let executed = self
            .conversations
            .execute(
                &id.to_string(),
                cmd,
                services,
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

    #[tracing::instrument(level = "debug", skip_all, fields(user_id = %actor, conversation_id = conversation))]
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
        let cmd = ConversationCommand::SendMessage {
            sender: actor,
            message_id: MessageId::new_v7(),
            client_msg_id: client_msg_id.clone(),
            body,
            sent_at: meta.occurred_at,
        };
        // First without asking whether the client_msg_id was used: the
        // append's unique index answers that (OptimisticLookup). Only a
        // refused append pays the lookup, by handling the send again.
        let events = match self
            .conv_with(&self.first_send, id, cmd.clone(), meta)
            .await
        {
            Err(ExecError::Store(StoreError::Unique(_))) => {
                self.conv_with(&self.services, id, cmd, meta).await?
            }
            other => other?,
        };
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
}
