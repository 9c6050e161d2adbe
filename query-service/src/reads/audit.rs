//! Reads of the event store itself: the audit log (role `auditor`) and the
//! WebSocket replay.
//!
//! Only events with a global position are ever returned. Positions are
//! assigned after commit by the single outbox relay, in increasing order
//! without holes (migration `20261124000001`), so a reader paging by
//! `position > last seen` can never skip an event that committed late: it
//! simply has not got its position yet and shows up on a later page.

use std::collections::HashSet;

use domain::envelope::Envelope;
use domain::frame::EventFrame;
use infra::postgres::{EventRow, EVENT_COLUMNS};
use serde_json::value::RawValue;
use serde_json::Value;
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

/// One stored event with its envelope, as in
/// `schemas/envelope.v1.schema.json`, payload exactly as stored. Only
/// positioned events are read, so `position` is always `Some`.
pub type StoredEvent = Envelope<Box<RawValue>>;

/// The global position of a positioned event.
fn position(e: &StoredEvent) -> i64 {
    e.position.unwrap_or_default()
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

fn stored_event(row: EventRow) -> Result<StoredEvent, QueryError> {
    if row.position.is_none() {
        return Err(QueryError::Corrupt(
            "an unpositioned event in a positioned read".into(),
        ));
    }
    row.into_raw_envelope()
        .map_err(|e| QueryError::Corrupt(format!("event {e}")))
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
        let rows: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        ))
        .bind(after_position)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let events = rows
            .into_iter()
            .map(stored_event)
            .collect::<Result<Vec<_>, _>>()?;
        let next_position = events.last().map_or(after_position, position);
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
        let rows: Vec<EventRow> = sqlx::query_as(&format!(
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
            .into_iter()
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
        let rows: Vec<EventRow> = sqlx::query_as(&format!(
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
            .into_iter()
            .map(stored_event)
            .collect::<Result<Vec<_>, _>>()?;
        let next_position = if events.len() as i64 >= limit {
            events.last().map_or(window_end, position)
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
                let frame = EventFrame::of(e, &conversation_id, &*data)
                    .ok_or_else(|| QueryError::Corrupt("an unpositioned event".into()))?;
                let frame_json = serde_json::to_string(&frame)
                    .map_err(|err| QueryError::Corrupt(format!("frame: {err}")))?;
                Ok(ReplayFrame {
                    position: position(e),
                    conversation_id,
                    seq: e.sequence,
                    frame_json,
                })
            })
            .collect()
    }
}
