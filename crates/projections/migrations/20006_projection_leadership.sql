-- Leadership, fencing and failures of projection runners.
--
-- `generation` is bumped by every runner that becomes a projection's leader
-- (while it holds the projection's advisory lock). A batch commit moves the
-- checkpoint only if the row still has the position *and* the generation the
-- runner read, so a stale leader's late commit fails instead of applying a
-- batch twice.
--
-- `failed_position` is the event a FAILED projection could not fold (its
-- checkpoint stays below it); with `last_error` it is kept until a batch
-- commits after the failure.
--
-- `state` reflects the leader: RUNNING, FAILED or STOPPED (STANDBY is a
-- per-process state, allowed here but not written by the runtime).
ALTER TABLE projection_checkpoints
    ADD COLUMN generation       BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN failed_position  BIGINT;

ALTER TABLE projection_checkpoints ALTER COLUMN state SET DEFAULT 'STOPPED';

UPDATE projection_checkpoints SET state = 'STOPPED'
    WHERE state NOT IN ('RUNNING', 'STANDBY', 'FAILED', 'STOPPED');

ALTER TABLE projection_checkpoints
    ADD CONSTRAINT projection_checkpoints_state_check
    CHECK (state IN ('RUNNING', 'STANDBY', 'FAILED', 'STOPPED'));
