-- The conversation list is derived at read time (issue 13, review
-- per-message-cost §2.1). The table this replaces was rewritten for every
-- member of a conversation on every message (activity time and unread
-- count): O(members) row writes per message, 400 rows per message in a group
-- of 100. A message now writes O(1) rows whatever the audience; the list
-- reads what already exists:
--
-- - order: `GREATEST(rm_conversations.last_activity_at, rm_members.joined_at)`
--   (creation, then every message, or the member's own join if later);
-- - read_seq: the member's read marker (0 when none);
-- - unread_count: messages by others after GREATEST(read_seq, joined_seq),
--   not deleted: a range of rm_messages' primary key, O(unread).
--
-- A view of the old name and columns keeps ad-hoc queries working; the
-- query service spells the same definition out so that it can limit a page
-- before counting.
DROP TABLE rm_user_conversations;

CREATE VIEW rm_user_conversations AS
SELECT mb.user_id,
       mb.conversation_id,
       GREATEST(c.last_activity_at, mb.joined_at) AS last_activity_at,
       COALESCE(rm.seq, 0) AS read_seq,
       (SELECT count(*) FROM rm_messages m
         WHERE m.conversation_id = mb.conversation_id
           AND m.seq > GREATEST(COALESCE(rm.seq, 0), mb.joined_seq)
           AND m.sender_id <> mb.user_id
           AND NOT m.deleted) AS unread_count
  FROM rm_members mb
  JOIN rm_conversations c ON c.conversation_id = mb.conversation_id
  LEFT JOIN rm_read_markers rm
         ON rm.conversation_id = mb.conversation_id AND rm.user_id = mb.user_id;
