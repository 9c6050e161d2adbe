-- Appends no longer NOTIFY inside their transaction (command-service's
-- relay module docs, "Waking"). A notifying commit takes PostgreSQL's
-- database-wide notify lock and holds it through its WAL flush, so every
-- append of every conversation committed one after the other. The event
-- store now wakes its own process's relay in memory, and notifies
-- `events_appended` in autocommit, after the commit, only when another
-- process leads the relay.
DROP TRIGGER events_notify ON events;
DROP FUNCTION events_notify();
