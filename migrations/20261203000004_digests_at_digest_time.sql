-- Email digests computed at digest time (issue 13, review per-message-cost
-- §2.2). `digest_items` held one row per (recipient, message), written for
-- every member of a conversation on every message, online or not: O(members)
-- rows per message. What a digest needs already exists in the read models
-- (members, read markers, messages); the email channel now keeps only:
--
-- - `digest_pending`: one row per conversation with messages the digest
--   worker has not finished with, written by the consumer once per
--   conversation and batch (an upsert of `last_seq`), deleted by the worker
--   once no member has anything left to mail from it;
-- - `digest_marks`: per (user, conversation), the highest sequence already
--   mailed: the watermark that keeps every message in at most one digest.
CREATE TABLE digest_pending (
    conversation_id uuid   PRIMARY KEY,
    -- The first sequence not yet considered for a digest.
    since_seq       bigint NOT NULL,
    -- The highest sequence the consumer has queued. The worker deletes the
    -- row only if it is still the value it looked at, so a message queued
    -- meanwhile keeps the row.
    last_seq        bigint NOT NULL
);

CREATE TABLE digest_marks (
    user_id         uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    mailed_seq      bigint NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
);

-- Whatever was queued under the old scheme stays pending.
INSERT INTO digest_pending (conversation_id, since_seq, last_seq)
SELECT conversation_id, min(seq), max(seq) FROM digest_items GROUP BY conversation_id;

DROP TABLE digest_items;
