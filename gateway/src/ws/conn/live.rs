//! `impl Conn`: live frames from the hub, sent once per stream in `seq`
//! order, gaps repaired.

use axum::extract::ws::Utf8Bytes;

use super::{Conn, Step};
use crate::ws::hub::{EventInfo, Info, LiveFrame, Source};

/// What was last sent of a stream (a conversation, or a read-marker
/// stream), for deduplication and gap detection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    pub(super) seq: i64,
    pub(super) position: i64,
}

impl Conn {
    pub(super) async fn on_live(&mut self, live: &LiveFrame) -> Step {
        let me = self.user()?.id();
        match &live.info {
            Info::Typing {
                conversation_id,
                user_id,
            } => {
                if live.source == Source::Conv
                    && self.convs.contains(conversation_id)
                    && *user_id != me
                {
                    self.emit(live.text.clone()).await?;
                }
                Ok(())
            }
            Info::Event(e) => {
                let cid = e.conversation_id.clone();
                let about_me = live.source == Source::User || e.subject.as_deref() == Some(&me);
                if about_me && !e.is_marker() {
                    match e.event_type.as_str() {
                        "ConversationCreated" | "MemberAdded" => {
                            let new = self.convs.insert(cid.clone());
                            self.send_live(e, &live.text).await?;
                            if new {
                                let channel = self.conv_channel(&cid);
                                let mut w = self.listen(channel)?;
                                self.await_subscribed(&mut w).await?;
                                self.catch_up(&cid, e.position).await?;
                            }
                            return Ok(());
                        }
                        "MemberRemoved" => {
                            if self.convs.remove(&cid) {
                                self.send_live(e, &live.text).await?;
                                self.last.remove(&(false, cid.clone()));
                                let channel = self.conv_channel(&cid);
                                self.unlisten(&channel);
                            }
                            return Ok(());
                        }
                        _ => {}
                    }
                }
                if !e.is_marker() && !self.convs.contains(&cid) {
                    return Ok(());
                }
                self.send_live(e, &live.text).await
            }
        }
    }

    /// Sends a live event frame once, in `seq` order, repairing gaps.
    async fn send_live(&mut self, e: &EventInfo, text: &Utf8Bytes) -> Step {
        if e.position <= self.floor {
            return Ok(());
        }
        let key = (e.is_marker(), e.conversation_id.clone());
        if let Some(seen) = self.last.get(&key).copied() {
            if e.seq <= seen.seq {
                return Ok(());
            }
            if !e.is_marker() && e.seq > seen.seq + 1 {
                tracing::debug!(
                    conversation_id = %e.conversation_id,
                    from = seen.seq,
                    to = e.seq,
                    "live gap; catching up"
                );
                self.catch_up(&e.conversation_id, seen.position).await?;
                if self.last.get(&key).is_some_and(|s| e.seq <= s.seq) {
                    return Ok(());
                }
            }
        }
        self.emit(text.clone()).await?;
        self.last.insert(
            key,
            Seen {
                seq: e.seq,
                position: e.position,
            },
        );
        Ok(())
    }
}
