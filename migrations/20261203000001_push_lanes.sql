-- Push lanes (ADR 0004). A push service keeps only the last push it
-- received for a Topic, and the notifier's Topic is the conversation: two
-- pushes of one conversation to one subscription must leave in the
-- conversation's order, or an older message arriving late replaces the newer
-- one on the lock screen. A lane is (subscription_id, conversation_id); the
-- push worker claims a row only when no earlier row of its lane, in
-- (seq, message_id) order, is still pending or sending. So a lane has at
-- most one request in flight and its rows leave in order.

-- The message's sequence in its conversation (the payload's "seq"). Rows
-- queued before this migration take it from their payload; those already
-- closed (payload cleared) keep 0, they are out of every lane.
ALTER TABLE push_deliveries ADD COLUMN seq bigint NOT NULL DEFAULT 0;
UPDATE push_deliveries
   SET seq = CASE
         WHEN jsonb_typeof(payload->'seq') IS DISTINCT FROM 'number' THEN 0
         WHEN (payload->>'seq')::numeric BETWEEN 0 AND 9223372036854775807
           THEN trunc((payload->>'seq')::numeric)::bigint
         ELSE 0
       END
 WHERE state IN ('pending', 'sending');

-- The lane lookups of the claim ("is an earlier row of this lane open?")
-- and of recording an answer ("is a later one waiting?").
CREATE INDEX push_deliveries_lane_idx
    ON push_deliveries (subscription_id, conversation_id, seq, message_id)
    WHERE state IN ('pending', 'sending');
