//! `impl Commands` for the read-marker aggregate.

use domain::read_marker::{ConversationFacts, ReadMarkerCommand};
use domain::values::{read_marker_id, UserId};

use super::{conv_id, CommandError, Commands};
use crate::store::CommandMeta;

impl Commands {
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
