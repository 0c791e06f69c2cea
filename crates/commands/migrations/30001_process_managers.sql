-- Where each process manager (saga) is in the log. A process manager
-- handles an event, then moves its checkpoint; a crash in between makes it
-- handle the event again, which its idempotent steps make harmless.
CREATE TABLE process_checkpoints (
    name        TEXT        PRIMARY KEY,
    position    BIGINT      NOT NULL DEFAULT 0,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
