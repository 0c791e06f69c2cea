-- One warm group commit in one statement (the appender's `write_warm`):
-- takes the append lock, checks that the log's top is still `expected_top`
-- (the one the appender planned on: nobody else has appended since), and
-- inserts the rows, NOTIFYing `payload` on `channel`. Returns false, having
-- written nothing, when the top has moved. Called outside a transaction
-- block, the statement's own transaction commits before it answers, so one
-- round trip does what BEGIN, the planning lookup, the INSERT and COMMIT
-- did in four.
--
-- In READ COMMITTED each statement of this VOLATILE function takes a new
-- snapshot, so the top is read after the lock is granted and sees every
-- append committed before it.
CREATE FUNCTION events_append_at(
    expected_top   BIGINT,
    lock_key       BIGINT,
    positions      BIGINT[],
    stream_ids     TEXT[],
    revisions      BIGINT[],
    event_ids      UUID[],
    event_types    TEXT[],
    schema_versions INT[],
    datas          JSONB[],
    metadatas      JSONB[],
    recorded_ats   TIMESTAMPTZ[],
    channel        TEXT,
    payload        TEXT
) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    IF (SELECT coalesce(max(position), 0) FROM events) <> expected_top THEN
        RETURN false;
    END IF;
    INSERT INTO events (position, stream_id, revision, event_id, event_type,
                        schema_version, data, metadata, recorded_at)
    SELECT * FROM unnest(positions, stream_ids, revisions, event_ids, event_types,
                         schema_versions, datas, metadatas, recorded_ats);
    PERFORM pg_notify(channel, payload);
    RETURN true;
END
$$;
