//! The gRPC face of [`Reads`]: caller identity in, statuses out.
//!
//! The one mapping from [`QueryError`] to `tonic::Status` lives here. Every
//! status carries a stable machine code in the `x-error-code` metadata key
//! (and `x-error-field` for validation errors), the same keys as
//! command-service, so the gateway maps both services alike. Internal errors
//! are logged once here, with their cause chain, and reach the client as a
//! bare `Internal`.

use chrono::{DateTime, SecondsFormat, Utc};
use proto::meta::{caller, status};
use proto::query::v1 as pb;
use proto::query::v1::query_service_server::QueryService;
use tonic::{Code, Request, Response, Status};

use crate::reads::audit::StoredEvent;
use crate::reads::conversations::{ConversationDetails, ConversationSummary};
use crate::reads::users::UserView;
use crate::reads::{MessageView, QueryError, Reads};

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Self {
        let msg = e.to_string();
        match e {
            QueryError::Invalid { field, .. } => {
                status(Code::InvalidArgument, "validation_failed", msg, Some(field))
            }
            QueryError::CursorAhead => status(
                Code::OutOfRange,
                "cursor_ahead",
                msg,
                Some("after_position"),
            ),
            QueryError::ConversationNotFound => {
                status(Code::NotFound, "conversation_not_found", msg, None)
            }
            QueryError::UserNotFound => status(Code::NotFound, "user_not_found", msg, None),
            QueryError::NotAuditor => status(Code::PermissionDenied, "forbidden", msg, None),
            QueryError::Database(err) => {
                tracing::error!(error = ?err, "read failed");
                status(Code::Internal, "internal", "internal error", None)
            }
            QueryError::Corrupt(what) => {
                tracing::error!(error = %what, "read failed on stored data");
                status(Code::Internal, "internal", "internal error", None)
            }
            QueryError::Behind(_) => status(Code::Unavailable, "projection_behind", msg, None),
        }
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn message(m: MessageView) -> pb::Message {
    pb::Message {
        message_id: m.message_id.to_string(),
        conversation_id: m.conversation_id.to_string(),
        seq: m.seq,
        sender_id: m.sender_id.to_string(),
        body: if m.deleted { None } else { m.body },
        sent_at: time(m.sent_at),
        edited_at: m.edited_at.map(time),
        deleted: m.deleted,
    }
}

fn summary(c: ConversationSummary) -> pb::ConversationSummary {
    pb::ConversationSummary {
        conversation_id: c.conversation_id.to_string(),
        kind: c.kind,
        title: c.title,
        last_message: c.last_message.map(message),
        unread_count: c.unread_count,
        last_seq: c.last_seq,
        last_activity_at: time(c.last_activity_at),
    }
}

fn details(d: ConversationDetails) -> pb::ConversationDetails {
    pb::ConversationDetails {
        conversation_id: d.conversation_id.to_string(),
        kind: d.kind,
        title: d.title,
        created_at: time(d.created_at),
        members: d
            .members
            .into_iter()
            .map(|m| pb::Member {
                user_id: m.user_id.to_string(),
                role: m.role,
                joined_at: time(m.joined_at),
                joined_seq: m.joined_seq,
            })
            .collect(),
        last_seq: d.last_seq,
        created_by: d.created_by.to_string(),
    }
}

fn user(u: UserView) -> pb::User {
    pb::User {
        user_id: u.user_id.to_string(),
        username: u.username,
        display_name: u.display_name,
    }
}

fn envelope(e: StoredEvent) -> pb::Envelope {
    pb::Envelope {
        event_id: e.event_id.to_string(),
        aggregate_type: e.aggregate_type,
        aggregate_id: e.aggregate_id,
        sequence: e.sequence,
        event_type: e.event_type,
        event_version: e.event_version,
        // The envelope's own serialisation of the time (as on Kafka).
        occurred_at: e.occurred_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        actor: e.actor,
        correlation_id: e.correlation_id.to_string(),
        causation_id: e.causation_id.map(|c| c.to_string()),
        position: e.position.unwrap_or_default(),
        payload_json: e.payload.get().to_owned(),
    }
}

/// tonic service over [`Reads`].
#[derive(Debug, Clone)]
pub struct QueryGrpc {
    reads: Reads,
}

impl QueryGrpc {
    pub fn new(reads: Reads) -> Self {
        Self { reads }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl QueryService for QueryGrpc {
    async fn list_conversations(
        &self,
        req: Request<pb::ListConversationsRequest>,
    ) -> Reply<pb::ListConversationsResponse> {
        let me = caller(&req)?;
        let r = req.into_inner();
        let page = self
            .reads
            .list_conversations(me, r.limit, r.cursor.as_deref())
            .await?;
        Ok(Response::new(pb::ListConversationsResponse {
            conversations: page.conversations.into_iter().map(summary).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    async fn get_conversation(
        &self,
        req: Request<pb::GetConversationRequest>,
    ) -> Reply<pb::ConversationDetails> {
        let me = caller(&req)?;
        let d = self
            .reads
            .get_conversation(me, &req.into_inner().conversation_id)
            .await?;
        Ok(Response::new(details(d)))
    }

    async fn list_messages(
        &self,
        req: Request<pb::ListMessagesRequest>,
    ) -> Reply<pb::ListMessagesResponse> {
        let me = caller(&req)?;
        let r = req.into_inner();
        let page = self
            .reads
            .list_messages(me, &r.conversation_id, r.before_seq, r.after_seq, r.limit)
            .await?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: page.messages.into_iter().map(message).collect(),
            has_more: page.has_more,
        }))
    }

    async fn get_read_marker(
        &self,
        req: Request<pb::GetReadMarkerRequest>,
    ) -> Reply<pb::ReadMarker> {
        let me = caller(&req)?;
        let m = self
            .reads
            .read_marker(me, &req.into_inner().conversation_id)
            .await?;
        Ok(Response::new(pb::ReadMarker {
            conversation_id: m.conversation_id.to_string(),
            seq: m.seq,
            unread_count: m.unread_count,
        }))
    }

    async fn get_user(&self, req: Request<pb::GetUserRequest>) -> Reply<pb::User> {
        caller(&req)?;
        let u = self.reads.get_user(&req.into_inner().user_id).await?;
        Ok(Response::new(user(u)))
    }

    async fn search_users(
        &self,
        req: Request<pb::SearchUsersRequest>,
    ) -> Reply<pb::SearchUsersResponse> {
        caller(&req)?;
        let r = req.into_inner();
        let users = self.reads.search_users(&r.username_prefix, r.limit).await?;
        Ok(Response::new(pb::SearchUsersResponse {
            users: users.into_iter().map(user).collect(),
        }))
    }

    async fn get_me(&self, req: Request<pb::GetMeRequest>) -> Reply<pb::Me> {
        let me = caller(&req)?;
        let m = self.reads.me(me).await?;
        Ok(Response::new(pb::Me {
            user_id: m.user_id.to_string(),
            email: m.email,
            username: m.username,
            display_name: m.display_name,
            roles: m.roles,
        }))
    }

    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Reply<pb::ListEventsResponse> {
        let me = caller(&req)?;
        let r = req.into_inner();
        let page = self
            .reads
            .list_events(me, r.after_position, r.limit)
            .await?;
        Ok(Response::new(pb::ListEventsResponse {
            events: page.events.into_iter().map(envelope).collect(),
            next_position: page.next_position,
        }))
    }

    async fn get_stream(&self, req: Request<pb::GetStreamRequest>) -> Reply<pb::GetStreamResponse> {
        let me = caller(&req)?;
        let r = req.into_inner();
        let page = self
            .reads
            .get_stream(
                me,
                &r.aggregate_type,
                &r.aggregate_id,
                r.from_sequence,
                r.limit,
            )
            .await?;
        Ok(Response::new(pb::GetStreamResponse {
            events: page.events.into_iter().map(envelope).collect(),
            has_more: page.has_more,
            next_sequence: page.next_sequence,
        }))
    }

    async fn list_events_for_user(
        &self,
        req: Request<pb::ListEventsForUserRequest>,
    ) -> Reply<pb::ListEventsForUserResponse> {
        let me = caller(&req)?;
        let r = req.into_inner();
        let page = self
            .reads
            .replay(me, r.after_position, r.limit, r.up_to_position)
            .await?;
        Ok(Response::new(pb::ListEventsForUserResponse {
            events: page
                .frames
                .into_iter()
                .map(|f| pb::ReplayEvent {
                    position: f.position,
                    conversation_id: f.conversation_id,
                    seq: f.seq,
                    frame_json: f.frame_json,
                })
                .collect(),
            next_position: page.next_position,
            has_more: page.has_more,
            waiting_for_projection: page.waiting_for_projection,
        }))
    }
}
