//! History pages, bounded by the caller's membership periods.
//!
//! A user sees the messages with `joined_seq <= seq < left_seq` for each of
//! their periods in `rm_member_periods` (`left_seq` NULL while a member). A
//! removed member therefore keeps the history of the periods they were in
//! and sees nothing from the removal on; a late joiner sees from the
//! sequence of their joining; a user with no period gets NOT_FOUND, exactly
//! like for a conversation that does not exist.
//!
//! Caching (scope `conv`, one generation read per request):
//! - `periods:{user_id}`: the caller's periods, the authorization input;
//! - `history`: the newest page at the default size, *unfiltered* (shared by
//!   all members) plus the sequence of the next older message. It serves
//!   callers with exactly one, still open, period: their visible set is
//!   `seq >= joined_seq`, so filtering the page and deciding `has_more` is
//!   exact. Anyone else (former members, rejoiners) reads PostgreSQL.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{page_limit, parse_id, MessageView, QueryError, Reads};
use crate::cache::Scope;

/// Default and largest history page.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// One membership period: the caller sees `joined_seq <= seq < left_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Period {
    pub joined_seq: i64,
    /// `None` while still a member.
    pub left_seq: Option<i64>,
}

impl Period {
    /// Exclusive upper bound, `i64::MAX` while open.
    fn end(&self) -> i64 {
        self.left_seq.unwrap_or(i64::MAX)
    }
}

/// Which part of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Newest first, from the end (no bound given).
    Newest,
    /// Newest first, `seq < before`.
    Before(i64),
    /// Oldest first, `seq > after`.
    After(i64),
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    /// More visible messages exist beyond the page in its direction.
    pub has_more: bool,
}

/// What a member since `joined_seq` (still a member) sees of the shared
/// newest page: everything below `joined_seq` is invisible; the next older
/// message counts only when visible, and then the whole page was visible.
fn visible_part(page: NewestPage, joined_seq: i64) -> MessagePage {
    let mut messages = page.messages;
    messages.retain(|m| m.seq >= joined_seq);
    MessagePage {
        messages,
        has_more: page.older_seq.is_some_and(|s| s >= joined_seq),
    }
}

/// The cached newest page of a conversation, for all members alike.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NewestPage {
    /// Newest first, at most [`DEFAULT_LIMIT`].
    messages: Vec<MessageView>,
    /// The seq of the newest message older than the page, if any.
    older_seq: Option<i64>,
}

const MESSAGE_COLUMNS: &str =
    "message_id, conversation_id, seq, sender_id, CASE WHEN deleted THEN NULL ELSE body END AS body, sent_at, edited_at, deleted";

impl Reads {
    /// `user`'s membership periods of `conversation`, oldest first, from
    /// PostgreSQL.
    async fn periods_from_db(
        &self,
        conversation: Uuid,
        user: Uuid,
    ) -> Result<Vec<Period>, QueryError> {
        Ok(sqlx::query_as(
            "SELECT joined_seq, left_seq FROM rm_member_periods \
             WHERE conversation_id = $1 AND user_id = $2 ORDER BY joined_seq",
        )
        .bind(conversation)
        .bind(user)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A page of `conversation`'s history as `user` may see it.
    #[tracing::instrument(level = "debug", skip(self), err(level = "debug"))]
    pub async fn list_messages(
        &self,
        user: Uuid,
        conversation: &str,
        before_seq: Option<i64>,
        after_seq: Option<i64>,
        limit: Option<u32>,
    ) -> Result<MessagePage, QueryError> {
        let conversation = parse_id("conversation_id", conversation)?;
        let direction = match (before_seq, after_seq) {
            (Some(_), Some(_)) => {
                return Err(QueryError::invalid(
                    "before_seq",
                    "before_seq and after_seq are exclusive",
                ))
            }
            (Some(b), None) if b < 1 => {
                return Err(QueryError::invalid("before_seq", "must be at least 1"))
            }
            (None, Some(a)) if a < 0 => {
                return Err(QueryError::invalid("after_seq", "must not be negative"))
            }
            (Some(b), None) => Direction::Before(b),
            (None, Some(a)) => Direction::After(a),
            (None, None) => Direction::Newest,
        };
        let limit = page_limit(limit, DEFAULT_LIMIT, MAX_LIMIT)?;
        let newest_default = direction == Direction::Newest && limit == i64::from(DEFAULT_LIMIT);
        // One generation read; then the periods (and, for the default
        // newest page, the shared page too) in one round trip.
        let generation = self
            .cache
            .generation(Scope::Conv, &conversation.to_string())
            .await?;
        let generation = generation.as_ref();
        let periods_key = format!("periods:{user}");
        let (cached_periods, cached_page) = if newest_default {
            self.cache
                .get_two::<Vec<Period>, NewestPage>(generation, &periods_key, "history")
                .await
        } else {
            (self.cache.get(generation, &periods_key).await, None)
        };
        let periods = match cached_periods {
            Some(p) => p,
            None => {
                let p = self.periods_from_db(conversation, user).await?;
                // Absence is not cached: probing ids fills nothing.
                if !p.is_empty() {
                    self.cache.put(generation, &periods_key, &p).await;
                }
                p
            }
        };
        if periods.is_empty() {
            return Err(QueryError::ConversationNotFound);
        }
        match periods.as_slice() {
            [only] if newest_default && only.left_seq.is_none() => {
                let page = match cached_page {
                    Some(page) => page,
                    None => {
                        let page = self.newest_from_db(conversation).await?;
                        self.cache.put(generation, "history", &page).await;
                        page
                    }
                };
                Ok(visible_part(page, only.joined_seq))
            }
            _ => {
                self.history_from_db(conversation, &periods, direction, limit)
                    .await
            }
        }
    }

    /// The newest default-size page of the whole conversation (all members
    /// alike) and the seq of the next older message.
    async fn newest_from_db(&self, conversation: Uuid) -> Result<NewestPage, QueryError> {
        let mut messages: Vec<MessageView> = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM rm_messages WHERE conversation_id = $1 \
             ORDER BY seq DESC LIMIT $2"
        ))
        .bind(conversation)
        .bind(i64::from(DEFAULT_LIMIT) + 1)
        .fetch_all(&self.pool)
        .await?;
        let older_seq = if messages.len() > DEFAULT_LIMIT as usize {
            messages.pop().map(|m| m.seq)
        } else {
            None
        };
        Ok(NewestPage {
            messages,
            older_seq,
        })
    }

    /// Any page, filtered by `periods`, straight from PostgreSQL.
    async fn history_from_db(
        &self,
        conversation: Uuid,
        periods: &[Period],
        direction: Direction,
        limit: i64,
    ) -> Result<MessagePage, QueryError> {
        let joined: Vec<i64> = periods.iter().map(|p| p.joined_seq).collect();
        let ends: Vec<i64> = periods.iter().map(Period::end).collect();
        // Overall bounds let the primary key range-scan; the EXISTS is exact.
        let lowest = joined.iter().copied().min().unwrap_or(i64::MAX);
        let highest = ends.iter().copied().max().unwrap_or(0);
        let (bound, order, cmp) = match direction {
            Direction::Newest => (i64::MAX, "DESC", "<"),
            Direction::Before(b) => (b, "DESC", "<"),
            Direction::After(a) => (a, "ASC", ">"),
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM rm_messages m \
             WHERE m.conversation_id = $1 AND m.seq {cmp} $2 AND m.seq >= $3 AND m.seq < $4 \
               AND EXISTS (SELECT 1 FROM unnest($5::bigint[], $6::bigint[]) AS p(j, l) \
                           WHERE m.seq >= p.j AND m.seq < p.l) \
             ORDER BY m.seq {order} LIMIT $7"
        );
        let mut messages: Vec<MessageView> = sqlx::query_as(&sql)
            .bind(conversation)
            .bind(bound)
            .bind(lowest)
            .bind(highest)
            .bind(&joined)
            .bind(&ends)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
        let has_more = messages.len() as i64 > limit;
        messages.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(MessagePage { messages, has_more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seqs: &[i64], older_seq: Option<i64>) -> NewestPage {
        let conversation_id = Uuid::now_v7();
        NewestPage {
            messages: seqs
                .iter()
                .map(|&seq| MessageView {
                    message_id: Uuid::now_v7(),
                    conversation_id,
                    seq,
                    sender_id: Uuid::now_v7(),
                    body: Some("x".into()),
                    sent_at: chrono::Utc::now(),
                    edited_at: None,
                    deleted: false,
                })
                .collect(),
            older_seq,
        }
    }

    fn seqs(p: &MessagePage) -> Vec<i64> {
        p.messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn the_shared_page_is_cut_at_the_joining_and_has_more_is_exact() {
        let all = visible_part(page(&[10, 9, 8], Some(7)), 1);
        assert_eq!((seqs(&all), all.has_more), (vec![10, 9, 8], true));
        let joined_at_oldest = visible_part(page(&[10, 9, 8], Some(7)), 8);
        assert_eq!(
            (seqs(&joined_at_oldest), joined_at_oldest.has_more),
            (vec![10, 9, 8], false)
        );
        let late = visible_part(page(&[10, 9, 8], Some(7)), 9);
        assert_eq!((seqs(&late), late.has_more), (vec![10, 9], false));
        let after_all = visible_part(page(&[10, 9, 8], Some(7)), 11);
        assert!(after_all.messages.is_empty() && !after_all.has_more);
        let short = visible_part(page(&[3, 2], None), 1);
        assert_eq!((seqs(&short), short.has_more), (vec![3, 2], false));
    }
}
