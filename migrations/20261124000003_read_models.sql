-- Read models maintained by the projector (issue: Read side). Every table is
-- derived from the event log and can be rebuilt from it; none is written by
-- command-service. Prefixed `rm_` to keep them apart from the event store.

-- Dedupe and gap detection: the last sequence applied per projection and
-- stream. An event at or below it is a redelivery (skipped); one above
-- last + 1 reveals a gap, repaired by reading the stream from `events`.
CREATE TABLE rm_checkpoints (
    projection     text   NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    last_sequence  bigint NOT NULL,
    PRIMARY KEY (projection, aggregate_type, aggregate_id)
);

-- Highest global position applied per projection (progress, rebuild hand-over).
CREATE TABLE rm_positions (
    projection    text PRIMARY KEY,
    last_position bigint NOT NULL DEFAULT 0
);

-- User directory.
CREATE TABLE rm_users (
    user_id       uuid PRIMARY KEY,
    username      text        NOT NULL,
    display_name  text        NOT NULL,
    email         text        NOT NULL,
    roles         text[]      NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL
);
-- Case-insensitive prefix search (usernames are stored lower-case).
CREATE INDEX rm_users_username_prefix_idx ON rm_users (username text_pattern_ops);

-- Conversations.
CREATE TABLE rm_conversations (
    conversation_id  uuid PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('direct', 'group')),
    title            text,
    created_by       uuid        NOT NULL,
    created_at       timestamptz NOT NULL,
    last_seq         bigint      NOT NULL,
    last_message_seq bigint,
    last_activity_at timestamptz NOT NULL
);

-- Current members.
CREATE TABLE rm_members (
    conversation_id uuid        NOT NULL,
    user_id         uuid        NOT NULL,
    role            text        NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_seq      bigint      NOT NULL,
    joined_at       timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX rm_members_user_idx ON rm_members (user_id);

-- Every membership period, for authorization of history: a user sees the
-- events with joined_seq <= seq < left_seq (left_seq NULL while a member).
CREATE TABLE rm_member_periods (
    conversation_id uuid   NOT NULL,
    user_id         uuid   NOT NULL,
    joined_seq      bigint NOT NULL,
    left_seq        bigint,
    PRIMARY KEY (conversation_id, user_id, joined_seq)
);

-- Message history. A deleted message keeps its row (seq, sender, times)
-- with body NULL: the body is gone from the read model.
CREATE TABLE rm_messages (
    conversation_id uuid        NOT NULL,
    seq             bigint      NOT NULL,
    message_id      uuid        NOT NULL,
    sender_id       uuid        NOT NULL,
    client_msg_id   text        NOT NULL,
    body            text,
    sent_at         timestamptz NOT NULL,
    edited_at       timestamptz,
    deleted         boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (conversation_id, seq)
);
CREATE UNIQUE INDEX rm_messages_id_key ON rm_messages (conversation_id, message_id);

-- Per-user conversation list, ordered by activity, with unread counts.
CREATE TABLE rm_user_conversations (
    user_id          uuid        NOT NULL,
    conversation_id  uuid        NOT NULL,
    last_activity_at timestamptz NOT NULL,
    read_seq         bigint      NOT NULL DEFAULT 0,
    unread_count     bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, conversation_id)
);
CREATE INDEX rm_user_conversations_activity_idx
    ON rm_user_conversations (user_id, last_activity_at DESC, conversation_id DESC);

-- Read markers, kept even for conversations a user has left (cheap).
CREATE TABLE rm_read_markers (
    conversation_id uuid   NOT NULL,
    user_id         uuid   NOT NULL,
    seq             bigint NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
