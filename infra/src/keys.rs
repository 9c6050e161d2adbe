//! Redis key and channel layout shared by the relay and the projector
//! (writers), query-service (cache reader, read fence) and the gateway
//! (pub/sub subscriber).
//! Every key starts with a configurable prefix (`MESSENGER_REDIS_PREFIX`,
//! default `msg`) so tests and tenants never collide.
//!
//! # Pub/sub
//!
//! - `{p}:conv:{conversation_id}`: every event of the conversation,
//!   published by command-service's relay once the event is durable and
//!   positioned, before the projector applies it (ADR 0006; the routes are
//!   `domain::frame::LiveRoute`).
//!   Payload: API.md's WebSocket event frame
//!   `{"type":"event","cursor","event":{...}}`, ready to forward as is.
//! - `{p}:user:{user_id}`: membership changes concerning that user
//!   (ConversationCreated and MemberAdded naming them, MemberRemoved of them)
//!   and their own read markers, same payload, published by the projector
//!   after its commit, so a gateway can subscribe or unsubscribe the user's
//!   sockets to the conversation channel before forwarding.
//! - Gateways also relay ephemeral typing notices on the conversation
//!   channel: `{"type":"typing","conversation_id","user_id"}` (never
//!   stored). Subscribers that want events only skip `type != "event"`.
//!
//! # Cache coherence by generations
//!
//! Cached values are stored under a key that embeds a generation number:
//! `{p}:cache:{scope}:{id}:{what}:g{generation}`, where the generation is
//! the integer at `{p}:gen:{scope}:{id}` (missing = 0). A reader first reads
//! the generation, then the cache key; on a miss it reads PostgreSQL and
//! stores the result under the generation it read *before* the database
//! read, with a TTL. The projector increments the generation *after* its
//! transaction commits. A value computed from a database state older than
//! the latest commit is therefore always filed under an old generation that
//! no reader asks for again: no stale read survives an invalidation, without
//! locks. Scopes: `conv` (details, members, newest history page) and `user`
//! (conversation list).

/// The pub/sub channel of a conversation.
pub fn conv_channel(prefix: &str, conversation_id: &str) -> String {
    format!("{prefix}:conv:{conversation_id}")
}

/// The pub/sub channel of a user's membership changes.
pub fn user_channel(prefix: &str, user_id: &str) -> String {
    format!("{prefix}:user:{user_id}")
}

/// A gateway process's own probe channel (its live-path health check).
pub fn probe_channel(prefix: &str, instance: &str) -> String {
    format!("{prefix}:probe:{instance}")
}

/// Generation counter of a cache scope (`conv` or `user`) and id.
pub fn generation(prefix: &str, scope: &str, id: &str) -> String {
    format!("{prefix}:gen:{scope}:{id}")
}

/// A cached value of `scope`/`id` named `what`, valid for `generation`.
pub fn cached(prefix: &str, scope: &str, id: &str, what: &str, generation: i64) -> String {
    format!("{prefix}:cache:{scope}:{id}:{what}:g{generation}")
}

/// The read fence of a conversation, written by the live path: the
/// highest sequence of the conversation whose frame was published (set by
/// the relay *before* the frame's `PUBLISH`, with a day's TTL). A read of
/// the conversation waits until [`projected_head`] reaches it, so a client
/// that got a frame and then reads history sees the event.
pub fn live_head(prefix: &str, conversation_id: &str) -> String {
    format!("{prefix}:live:conv:{conversation_id}")
}

/// The other half of the read fence: the highest sequence of the
/// conversation in the read models (set by the projector after its
/// transaction commits and after the generation `INCR`s, with a day's TTL).
pub fn projected_head(prefix: &str, conversation_id: &str) -> String {
    format!("{prefix}:projected:conv:{conversation_id}")
}

/// TTL of [`live_head`] and [`projected_head`]: a conversation quiet for
/// longer needs no fence (a missing live head means nothing to wait for).
pub const HEAD_TTL_SECS: i64 = 86_400;

/// Presence of a user (maintained by gateways; read by the notifier):
/// exists ⇒ online. A set of the user's open WebSockets
/// (`{gateway instance}:{socket id}`), added when a socket is ready and
/// removed when it closes (an empty set disappears); its TTL
/// (`GATEWAY_PRESENCE_TTL_SECS`) is refreshed every third of it while a
/// socket is open, so a dead gateway's users go offline within one TTL.
pub fn presence(prefix: &str, user_id: &str) -> String {
    format!("{prefix}:presence:{user_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(conv_channel("msg", "c1"), "msg:conv:c1");
        assert_eq!(user_channel("msg", "u1"), "msg:user:u1");
        assert_eq!(generation("t", "conv", "c1"), "t:gen:conv:c1");
        assert_eq!(
            cached("t", "conv", "c1", "history", 3),
            "t:cache:conv:c1:history:g3"
        );
    }
}
