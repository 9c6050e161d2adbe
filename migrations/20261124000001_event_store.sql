-- The event store.
--
-- `events` and `snapshots` keep the column layout of postgres-es 0.5 (so its
-- tooling and readers recognise them) and add what DESIGN.md asks for:
--
-- * `id`: insertion order. Within one stream it follows `sequence`; across
--   streams it is NOT a commit order and no reader may tail it.
-- * `position`: the global order auditors and analysts read. It is assigned
--   after commit by the single outbox relay (leader-elected), in one
--   transaction per batch, under a row lock on `relay_state`. Positions thus
--   become visible strictly in increasing order with no hole, so a reader
--   tailing `position > checkpoint` can never skip an event whose transaction
--   committed late: a late committer simply receives a later position.
-- * `recorded_at`: when the row was written.
--
-- Envelope metadata (event_id, actor, correlation_id, causation_id,
-- occurred_at) lives in `metadata`, as postgres-es does.

CREATE TABLE events (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence > 0),
    event_type     text        NOT NULL,
    event_version  text        NOT NULL,
    payload        json        NOT NULL,
    metadata       json        NOT NULL,
    id             bigint      GENERATED ALWAYS AS IDENTITY,
    position       bigint,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    -- Optimistic concurrency: two writers of the same sequence collide here.
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_id_key ON events (id);
CREATE UNIQUE INDEX events_position_key ON events (position);
-- The outbox: events committed but not yet given a position.
CREATE INDEX events_unpositioned_idx ON events (id) WHERE position IS NULL;

-- Snapshots of aggregate state, written every N events by command-service
-- (its own store: cqrs-es 0.5's snapshot store applies events twice).
CREATE TABLE snapshots (
    aggregate_type   text        NOT NULL,
    aggregate_id     text        NOT NULL,
    last_sequence    bigint      NOT NULL,
    current_snapshot bigint      NOT NULL,
    payload          json        NOT NULL,
    timestamp        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- The relay's single row: the highest position assigned and the highest
-- position known to be on Kafka. Assigned-but-unpublished events
-- (published_position < position <= last_position) are republished after a
-- crash: at least once, in order.
CREATE TABLE relay_state (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_position      bigint  NOT NULL DEFAULT 0,
    published_position bigint  NOT NULL DEFAULT 0,
    CHECK (published_position <= last_position)
);
INSERT INTO relay_state DEFAULT VALUES;

-- Wake the relay at commit time (NOTIFY is delivered on commit) instead of
-- polling. One notification per statement is enough: the relay drains.
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('events_appended', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();
