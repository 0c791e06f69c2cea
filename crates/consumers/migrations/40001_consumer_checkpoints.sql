-- Checkpoints of the consumers run by `marketplace_consumers::runner` (the
-- process managers), with the same leadership, fencing and failure columns
-- as the projection builds:
--
-- - `generation` is bumped (from `consumer_generations`) by every runner that
--   becomes the leader while holding the consumer's advisory lock; a
--   checkpoint write moves the position only if the row still has the
--   position and the generation the runner read, so a stale leader's late
--   write fails instead of skipping or repeating work.
-- - `state` reflects the leader: RUNNING, FAILED or STOPPED. A FAILED
--   consumer keeps `failed_position` (the event it could not handle; its
--   checkpoint stays below it) and `last_error` until a batch commits after
--   a reset.
CREATE TABLE consumer_checkpoints (
    name             TEXT        PRIMARY KEY,
    position         BIGINT      NOT NULL DEFAULT 0,
    generation       BIGINT      NOT NULL DEFAULT 0,
    state            TEXT        NOT NULL DEFAULT 'STOPPED'
                     CHECK (state IN ('RUNNING', 'FAILED', 'STOPPED')),
    failed_position  BIGINT,
    last_error       TEXT,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE SEQUENCE consumer_generations;

-- The process managers' checkpoints from before this table (kept, unused).
DO $$
BEGIN
    IF to_regclass('process_checkpoints') IS NOT NULL THEN
        INSERT INTO consumer_checkpoints (name, position)
            SELECT name, position FROM process_checkpoints
            ON CONFLICT (name) DO NOTHING;
    END IF;
END
$$;
