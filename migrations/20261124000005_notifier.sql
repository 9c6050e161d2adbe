-- The notifier's own tables (issue: Notifier). Secrets of push
-- subscriptions (p256dh, auth) live here and nowhere else: never in events,
-- Kafka or logs. Nothing here is derived from the event log alone, so none of
-- it is rebuilt by the projector.

-- Web-push subscriptions (the browser's PushSubscription). One per user and
-- endpoint: posting the same endpoint again refreshes its keys.
CREATE TABLE push_subscriptions (
    subscription_id uuid        PRIMARY KEY,
    user_id         uuid        NOT NULL,
    endpoint        text        NOT NULL,
    -- base64url, as the browser gives them: the user agent's P-256 public
    -- key (65-byte point) and the 16-byte authentication secret.
    p256dh          text        NOT NULL,
    auth            text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT push_subscriptions_user_endpoint_key UNIQUE (user_id, endpoint)
);

-- Per-user channel switches; a missing row means the defaults (push and
-- email on, the configured email delay).
CREATE TABLE notification_settings (
    user_id             uuid        PRIMARY KEY,
    push                boolean     NOT NULL,
    email               boolean     NOT NULL,
    email_delay_seconds integer     NOT NULL CHECK (email_delay_seconds BETWEEN 0 AND 604800),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Muted conversations: no push and no email for them while
-- muted_until is NULL (until unmuted) or in the future.
CREATE TABLE conversation_mutes (
    user_id         uuid        NOT NULL,
    conversation_id uuid        NOT NULL,
    muted_until     timestamptz,
    PRIMARY KEY (user_id, conversation_id)
);

-- Push deliveries: the dedupe record and the outbox of the push worker.
-- Written (ON CONFLICT DO NOTHING) before the Kafka offset is committed, so a
-- redelivered MessageSent never yields a second row; a row is claimed
-- (state 'sending', lease) before its HTTP request and closed after it.
CREATE TABLE push_deliveries (
    message_id      uuid        NOT NULL,
    subscription_id uuid        NOT NULL,
    user_id         uuid        NOT NULL,
    conversation_id uuid        NOT NULL,
    -- scheme://host[:port] of the endpoint: VAPID audience and the unit of
    -- per-push-service concurrency.
    origin          text        NOT NULL,
    -- The plaintext payload (API.md's JSON); cleared once sent.
    payload         jsonb,
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sending', 'sent', 'gone', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    last_status     integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    PRIMARY KEY (message_id, subscription_id)
);
CREATE INDEX push_deliveries_due_idx ON push_deliveries (next_attempt_at)
    WHERE state IN ('pending', 'sending');

-- Messages waiting to be mailed in a digest if still unread when due. One
-- row per (recipient, message): the dedupe record of the email channel.
CREATE TABLE digest_items (
    user_id         uuid        NOT NULL,
    message_id      uuid        NOT NULL,
    conversation_id uuid        NOT NULL,
    seq             bigint      NOT NULL,
    sender_id       uuid        NOT NULL,
    preview         text        NOT NULL,
    sent_at         timestamptz NOT NULL,
    due_at          timestamptz NOT NULL,
    PRIMARY KEY (user_id, message_id)
);
CREATE INDEX digest_items_due_idx ON digest_items (due_at);
CREATE INDEX digest_items_read_idx ON digest_items (user_id, conversation_id, seq);

-- Digests sent: one row per email, and the window (no second digest to a
-- user sooner than their delay after the previous one).
CREATE TABLE digests_sent (
    digest_id     uuid        PRIMARY KEY,
    user_id       uuid        NOT NULL,
    sent_at       timestamptz NOT NULL DEFAULT now(),
    conversations integer     NOT NULL,
    messages      integer     NOT NULL
);
CREATE INDEX digests_sent_user_idx ON digests_sent (user_id, sent_at DESC);
