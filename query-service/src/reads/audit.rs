//! Reads of the event store itself: the audit log (role `auditor`) and the
//! WebSocket replay.
//!
//! Only events with a global position are ever returned. Positions are
//! assigned after commit by the single outbox relay, in increasing order
//! without holes (migration `20261124000001`), so a reader paging by
//! `position > last seen` can never skip an event that committed late: it
//! simply has not got its position yet and shows up on a later page.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use super::{page_limit, QueryError, Reads};

/// Default and largest page of the audit log.
pub const DEFAULT_EVENTS_LIMIT: u32 = 1000;
pub const MAX_EVENTS_LIMIT: u32 = 1000;
/// Default and largest page of the replay.
pub const DEFAULT_REPLAY_LIMIT: u32 = 500;
pub const MAX_REPLAY_LIMIT: u32 = 1000;
/// Positions the replay examines per call at most: bounds the cost of a
/// call whatever the gap and however few events concern the caller.
pub const REPLAY_SCAN_WINDOW: i64 = 10_000;

/// One stored event with its envelope, as in `schemas/envelope.v1.schema.json`.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub position: i64,
    /// The payload exactly as stored (a JSON object).
    pub payload: Box<RawValue>,
}

/// A page of the global log.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// Continue with `after_position = next_position`.
    pub next_position: i64,
}

/// A page of one stream.
#[derive(Debug, Clone)]
pub struct StreamPage {
    pub events: Vec<StoredEvent>,
    pub has_more: bool,
    pub next_sequence: i64,
}

/// One WebSocket event frame of the replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayFrame {
    pub position: i64,
    pub conversation_id: String,
    pub seq: i64,
    /// API.md's `{"type":"event","cursor",...,"event":{...}}`, serialised.
    pub frame_json: String,
}

/// A page of the replay.
#[derive(Debug, Clone)]
pub struct ReplayPage {
    pub frames: Vec<ReplayFrame>,
    pub next_position: i64,
    pub has_more: bool,
    /// The page stops before an event the read models do not reflect yet:
    /// call again shortly from `next_position`.
    pub waiting_for_projection: bool,
}

/// The metadata column, written by command-service's event store.
#[derive(Deserialize)]
struct Meta {
    event_id: Uuid,
    actor: String,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
}

const EVENT_COLUMNS: &str = "position, aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload::text AS payload, metadata::text AS metadata";

fn stored_event(row: &PgRow) -> Result<StoredEvent, QueryError> {
    let corrupt =
        |what: &str, e: &dyn std::fmt::Display| QueryError::Corrupt(format!("event {what}: {e}"));
    let metadata: String = row.try_get("metadata")?;
    let meta: Meta = serde_json::from_str(&metadata).map_err(|e| corrupt("metadata", &e))?;
    let payload: String = row.try_get("payload")?;
    let version: String = row.try_get("event_version")?;
    Ok(StoredEvent {
        event_id: meta.event_id,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: version.parse().map_err(|e| corrupt("version", &e))?,
        occurred_at: meta.occurred_at,
        actor: meta.actor,
        correlation_id: meta.correlation_id,
        causation_id: meta.causation_id,
        position: row.try_get("position")?,
        payload: RawValue::from_string(payload).map_err(|e| corrupt("payload", &e))?,
    })
}

/// The `event` object of a WebSocket event frame.
#[derive(Serialize)]
struct FrameEvent<'a> {
    event_id: Uuid,
    event_type: &'a str,
    event_version: u32,
    conversation_id: &'a str,
    seq: i64,
    occurred_at: DateTime<Utc>,
    actor: &'a str,
    data: &'a Value,
}

/// A WebSocket event frame.
#[derive(Serialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    cursor: String,
    event: FrameEvent<'a>,
}

/// (conversation, message) of an event that carries a message body: the
/// replay must not resend that body once the message is deleted.
fn body_key(event: &StoredEvent, data: &Value) -> Option<(Uuid, Uuid)> {
    if !matches!(event.event_type.as_str(), "MessageSent" | "MessageEdited") {
        return None;
    }
    let conversation = Uuid::parse_str(&event.aggregate_id).ok()?;
    let message = Uuid::parse_str(data.get("message_id")?.as_str()?).ok()?;
    Some((conversation, message))
}

impl Reads {
    async fn require_auditor(&self, user: Uuid) -> Result<(), QueryError> {
        if self.is_auditor(user).await? {
            Ok(())
        } else {
            Err(QueryError::NotAuditor)
        }
    }

    /// The global log after `after_position`, in position order.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn list_events(
        &self,
        user: Uuid,
        after_position: i64,
        limit: Option<u32>,
    ) -> Result<EventPage, QueryError> {
        self.require_auditor(user).await?;
        if after_position < 0 {
            return Err(QueryError::invalid(
                "after_position",
                "must not be negative",
            ));
        }
        let limit = page_limit(limit, DEFAULT_EVENTS_LIMIT, MAX_EVENTS_LIMIT)?;
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        ))
        .bind(after_position)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let events = rows
            .iter()
            .map(stored_event)
            .collect::<Result<Vec<_>, _>>()?;
        let next_position = events.last().map_or(after_position, |e| e.position);
        Ok(EventPage {
            events,
            next_position,
        })
    }

    /// One stream from `from_sequence`, in sequence order.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn get_stream(
        &self,
        user: Uuid,
        aggregate_type: &str,
        aggregate_id: &str,
        from_sequence: Option<i64>,
        limit: Option<u32>,
    ) -> Result<StreamPage, QueryError> {
        self.require_auditor(user).await?;
        if aggregate_type.is_empty() {
            return Err(QueryError::invalid("aggregate_type", "must not be empty"));
        }
        if aggregate_id.is_empty() {
            return Err(QueryError::invalid("aggregate_id", "must not be empty"));
        }
        let from = from_sequence.unwrap_or(1).max(1);
        let limit = page_limit(limit, DEFAULT_EVENTS_LIMIT, MAX_EVENTS_LIMIT)?;
        // Within a stream positions follow sequences, so "positioned only"
        // cuts a suffix: no hole.
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence >= $3 \
               AND position IS NOT NULL \
             ORDER BY sequence LIMIT $4"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(from)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows
            .iter()
            .map(stored_event)
            .collect::<Result<Vec<_>, _>>()?;
        let has_more = events.len() as i64 > limit;
        events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_sequence = events.last().map_or(from, |e| e.sequence + 1);
        Ok(StreamPage {
            events,
            has_more,
            next_sequence,
        })
    }

    /// The conversation events after `after_position` that `user` may see,
    /// as WebSocket frames, in position order (the resume of API.md).
    ///
    /// Visibility follows `rm_member_periods`: the events with
    /// `joined_seq <= seq <= left_seq` of each period, i.e. the history
    /// rule plus the `MemberRemoved` that ends a period, so a client learns
    /// of its own removal. The caller's own `ReadMarkerMoved` events are
    /// included too (the projector publishes them on the user's channel),
    /// with the marked conversation as `conversation_id` and the marker
    /// stream's sequence as `seq`. A `MessageSent`/`MessageEdited` whose message has
    /// since been deleted is replayed with `"body": null`: the body is gone
    /// from the read side, and the `MessageDeleted` follows in the replay.
    ///
    /// At most [`REPLAY_SCAN_WINDOW`] positions are examined per call;
    /// `next_position` may thus pass positions that were not for the user.
    /// A page never passes a conversation event the projector has not
    /// applied yet (`waiting_for_projection`), so the replay only covers
    /// what the live stream has already published or will publish with a
    /// higher position: a gateway that subscribes first, replays until
    /// `has_more` is false (pausing while waiting), then forwards live
    /// frames with a cursor above the last replayed one, misses nothing and
    /// repeats nothing.
    ///
    /// A cursor beyond the head of the log is refused
    /// ([`QueryError::CursorAhead`]): no client was ever given one, and
    /// answering it with an empty page would make it a valid starting
    /// point that never sees an event.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn replay(
        &self,
        user: Uuid,
        after_position: i64,
        limit: Option<u32>,
        up_to_position: Option<i64>,
    ) -> Result<ReplayPage, QueryError> {
        if after_position < 0 {
            return Err(QueryError::invalid(
                "after_position",
                "must not be negative",
            ));
        }
        let limit = page_limit(limit, DEFAULT_REPLAY_LIMIT, MAX_REPLAY_LIMIT)?;
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM events")
            .fetch_one(&self.pool)
            .await?;
        if after_position > head {
            return Err(QueryError::CursorAhead);
        }
        let end = match up_to_position.filter(|p| *p > 0) {
            Some(p) => p.min(head),
            None => head,
        };
        if end <= after_position {
            return Ok(ReplayPage {
                frames: Vec::new(),
                next_position: after_position,
                has_more: false,
                waiting_for_projection: false,
            });
        }
        let mut window_end = end.min(after_position.saturating_add(REPLAY_SCAN_WINDOW));
        // Membership comes from the read models, events from the store,
        // which is ahead of them: stop before the first conversation event
        // the projector has not applied yet (its stream's `last_seq` is
        // below it), or a period that ended there would still look open.
        // The projector applies each stream in order, in the same
        // transaction as the periods, so everything before it is decided.
        let unprojected: Option<i64> = sqlx::query_scalar(
            "SELECT min(e.position) FROM events e \
             LEFT JOIN rm_conversations c ON c.conversation_id = \
                  CASE WHEN e.aggregate_type = 'conversation' THEN e.aggregate_id::uuid END \
             WHERE e.position > $1 AND e.position <= $2 AND e.aggregate_type = 'conversation' \
               AND (c.last_seq IS NULL OR e.sequence > c.last_seq)",
        )
        .bind(after_position)
        .bind(window_end)
        .fetch_one(&self.pool)
        .await?;
        if let Some(p) = unprojected {
            window_end = p - 1;
        }
        if window_end <= after_position {
            return Ok(ReplayPage {
                frames: Vec::new(),
                next_position: after_position,
                has_more: true,
                waiting_for_projection: true,
            });
        }
        // The CASE keeps the uuid cast away from other streams' ids.
        // Read markers are streams of their own; the caller's are replayed
        // as the projector publishes them live (on the user's channel).
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events e \
             WHERE e.position > $1 AND e.position <= $2 \
               AND ((e.aggregate_type = 'conversation' \
                     AND EXISTS (SELECT 1 FROM rm_member_periods p \
                         WHERE p.conversation_id = CASE WHEN e.aggregate_type = 'conversation' \
                                                        THEN e.aggregate_id::uuid END \
                           AND p.user_id = $3 AND p.joined_seq <= e.sequence \
                           AND (p.left_seq IS NULL OR e.sequence <= p.left_seq))) \
                 OR (e.aggregate_type = 'read_marker' AND e.payload->>'user_id' = $4)) \
             ORDER BY e.position LIMIT $5"
        ))
        .bind(after_position)
        .bind(window_end)
        .bind(user)
        .bind(user.to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let events = rows
            .iter()
            .map(stored_event)
            .collect::<Result<Vec<_>, _>>()?;
        let next_position = if events.len() as i64 >= limit {
            events.last().map_or(window_end, |e| e.position)
        } else {
            window_end
        };
        let frames = self.frames(&events).await?;
        Ok(ReplayPage {
            frames,
            next_position,
            has_more: next_position < end,
            waiting_for_projection: unprojected.is_some_and(|p| next_position == p - 1),
        })
    }

    /// Turns events into frames, blanking bodies of deleted messages.
    async fn frames(&self, events: &[StoredEvent]) -> Result<Vec<ReplayFrame>, QueryError> {
        let mut payloads = Vec::with_capacity(events.len());
        let (mut convs, mut messages) = (Vec::new(), Vec::new());
        for e in events {
            let data: Value = serde_json::from_str(e.payload.get())
                .map_err(|err| QueryError::Corrupt(format!("event payload: {err}")))?;
            if let Some((c, m)) = body_key(e, &data) {
                convs.push(c);
                messages.push(m);
            }
            payloads.push(data);
        }
        let deleted: HashSet<(Uuid, Uuid)> = if messages.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_as(
                "SELECT m.conversation_id, m.message_id FROM rm_messages m \
                 JOIN unnest($1::uuid[], $2::uuid[]) AS k(c, id) \
                   ON m.conversation_id = k.c AND m.message_id = k.id \
                 WHERE m.deleted",
            )
            .bind(&convs)
            .bind(&messages)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect()
        };
        events
            .iter()
            .zip(payloads.iter_mut())
            .map(|(e, data)| {
                if body_key(e, data).is_some_and(|k| deleted.contains(&k)) {
                    if let Some(obj) = data.as_object_mut() {
                        obj.insert("body".into(), Value::Null);
                    }
                }
                // A read marker names its conversation in its payload; its
                // seq is the marker stream's (clients route it by type).
                let conversation_id = match e.aggregate_type.as_str() {
                    "read_marker" => data
                        .get("conversation_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    _ => e.aggregate_id.clone(),
                };
                let frame = Frame {
                    kind: "event",
                    cursor: e.position.to_string(),
                    event: FrameEvent {
                        event_id: e.event_id,
                        event_type: &e.event_type,
                        event_version: e.event_version,
                        conversation_id: &conversation_id,
                        seq: e.sequence,
                        occurred_at: e.occurred_at,
                        actor: &e.actor,
                        data,
                    },
                };
                let frame_json = serde_json::to_string(&frame)
                    .map_err(|err| QueryError::Corrupt(format!("frame: {err}")))?;
                Ok(ReplayFrame {
                    position: e.position,
                    conversation_id,
                    seq: e.sequence,
                    frame_json,
                })
            })
            .collect()
    }
}
