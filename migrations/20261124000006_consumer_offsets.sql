-- Kafka consumer positions of the projector and the notifier, kept here
-- rather than in the broker's group coordinator (ADR 0005). The projector
-- advances its row in the same transaction as the read models, so a record
-- is applied and passed in one commit.
CREATE TABLE consumer_offsets (
    group_id    text   NOT NULL,
    topic       text   NOT NULL,
    partition   int    NOT NULL,
    -- The offset of the next record to read.
    next_offset bigint NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);
