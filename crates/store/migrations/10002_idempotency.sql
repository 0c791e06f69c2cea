-- Idempotency keys (DESIGN.md: "the key is recorded in the same transaction
-- as the append").
--
-- One row per key, written by the appender in the same transaction as the
-- events of the first append that used it, under the same advisory lock: a
-- key is recorded if and only if its append committed, and of any number of
-- concurrent duplicates exactly one appends. The row holds that append's
-- outcome (stream, last revision, last position) so a retry can be answered
-- without appending. `key` is already scoped by the caller; `request_hash` is
-- the caller's digest of the request input, compared by the caller.
CREATE TABLE idempotency_keys (
    key           TEXT        PRIMARY KEY,
    request_hash  TEXT        NOT NULL,
    stream_id     TEXT        NOT NULL,
    revision      BIGINT      NOT NULL,
    position      BIGINT      NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
