-- Tables of the projector's own projections beyond the core read model
-- (20261124000003_read_models.sql). Like every `rm_` table they are derived
-- from the event log: `projector rebuild --projection NAME` truncates and
-- refills them.

-- Projection `messages_per_user_day`: how many messages each user sent per
-- UTC calendar day. Every `MessageSent` counts, including messages deleted
-- later (they were sent). An example of what an analyst adds; see
-- docs/projections.md.
CREATE TABLE rm_messages_per_user_day (
    user_id uuid   NOT NULL,
    day     date   NOT NULL,
    count   bigint NOT NULL CHECK (count > 0),
    PRIMARY KEY (user_id, day)
);

-- The core projection loads and updates every member's list row of a
-- conversation when a message arrives; the primary key (user_id,
-- conversation_id) cannot find them by conversation.
CREATE INDEX rm_user_conversations_conversation_idx
    ON rm_user_conversations (conversation_id);
