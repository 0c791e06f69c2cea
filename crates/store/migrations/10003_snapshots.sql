-- Aggregate snapshots (DESIGN.md §4b, "hot aggregates"): one row per
-- stream, the state of its aggregate after `revision`, in the aggregate's
-- snapshot form `version`. A cache of what the events determine, not part
-- of the log: written outside any append, never hashed, safe to truncate.
CREATE TABLE snapshots (
    stream_id  TEXT        PRIMARY KEY,
    revision   BIGINT      NOT NULL,
    position   BIGINT      NOT NULL,
    version    INTEGER     NOT NULL,
    state      JSONB       NOT NULL,
    taken_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
