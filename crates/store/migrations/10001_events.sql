-- The append-only event log (DESIGN.md §2).
--
-- Positions are assigned by the appender while it holds a transaction-scoped
-- advisory lock, so they grow in commit order across all processes: a reader
-- that has seen position P can never later find a committed event below P.
CREATE TABLE events (
    position        BIGINT      PRIMARY KEY,
    stream_id       TEXT        NOT NULL,
    revision        BIGINT      NOT NULL CHECK (revision >= 0),
    event_id        UUID        NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INT         NOT NULL CHECK (schema_version > 0),
    data            JSONB       NOT NULL,
    metadata        JSONB       NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    CONSTRAINT events_stream_revision_key UNIQUE (stream_id, revision),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

CREATE INDEX events_recorded_at_idx ON events (recorded_at);

-- The log is append-only: the database itself refuses to change history.
CREATE FUNCTION events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on events is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
