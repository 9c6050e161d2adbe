-- Command-side tables: facts commands must check that do not belong in
-- aggregate state, and secrets that must never enter the event log.
-- All are written in the same transaction as the events they accompany.

-- Who is registered; unique email and username (case-insensitive). The
-- index names are mapped to `email_taken` / `username_taken`.
CREATE TABLE user_identities (
    user_id  uuid PRIMARY KEY,
    email    text NOT NULL,
    username text NOT NULL
);
CREATE UNIQUE INDEX user_identities_email_key ON user_identities (lower(email));
CREATE UNIQUE INDEX user_identities_username_key ON user_identities (lower(username));

-- Secret: argon2id PHC strings. Never in an event, a log line or on Kafka.
CREATE TABLE credentials (
    user_id       uuid PRIMARY KEY REFERENCES user_identities (user_id),
    password_hash text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Secret: password reset tokens, stored as SHA-256 of the 256-bit token.
CREATE TABLE password_reset_tokens (
    token_hash bytea PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES user_identities (user_id),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX password_reset_tokens_user_idx ON password_reset_tokens (user_id);

-- Per-message facts the Conversation aggregate asks about (author, deleted,
-- idempotency key) so its state never grows with history. The unique index
-- makes a (sender, client_msg_id) pair append at most once, even across
-- command-service instances.
CREATE TABLE message_index (
    conversation_id uuid        NOT NULL,
    message_id      uuid        NOT NULL,
    sender_id       uuid        NOT NULL,
    client_msg_id   text        NOT NULL,
    seq             bigint      NOT NULL,
    sent_at         timestamptz NOT NULL,
    deleted         boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (conversation_id, message_id)
);
CREATE UNIQUE INDEX message_index_client_key
    ON message_index (conversation_id, sender_id, client_msg_id);
