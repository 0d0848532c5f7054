-- Results and failures become types (proto/lethe/v1/results.proto). A task's report is an
-- encoded lethe.v1.TaskReport; every failure, of an attempt, a task or a job, an encoded
-- google.rpc.Status holding a google.rpc.ErrorInfo. Nothing reads inside them in SQL.
--
-- An operation's result is no longer copied into its row (it was whichever task wrote last):
-- the coordinator builds it from the reports of the tasks its kind names. Reports recorded as
-- JSON before this migration are dropped: an index built before it must be built again before
-- its model serves a deletion request. Recorded failures are kept as a Status with code
-- UNKNOWN and their message.

-- The protobuf varint of n (n >= 0).
CREATE FUNCTION pg_temp.varint(n bigint) RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    out bytea := ''::bytea;
BEGIN
    LOOP
        IF n < 128 THEN
            RETURN out || set_byte('\x00'::bytea, 0, n::integer);
        END IF;
        out := out || set_byte('\x00'::bytea, 0, ((n & 127) | 128)::integer);
        n := n >> 7;
    END LOOP;
END;
$$;

-- google.rpc.Status { code: 2 (UNKNOWN), message: the legacy error's message }.
CREATE FUNCTION pg_temp.legacy_status(error jsonb) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT '\x0802'::bytea || '\x12'::bytea || pg_temp.varint(length(m)) || m
    FROM (SELECT convert_to(coalesce(error->'error'->>'message', error->>'message',
                                     error::text), 'UTF8') AS m) AS legacy
$$;

ALTER TABLE tasks DROP COLUMN result;
ALTER TABLE tasks ADD COLUMN report bytea;
ALTER TABLE jobs DROP COLUMN result;
ALTER TABLE jobs ALTER COLUMN error TYPE bytea USING pg_temp.legacy_status(error);
ALTER TABLE tasks ALTER COLUMN last_error TYPE bytea USING pg_temp.legacy_status(last_error);
ALTER TABLE task_attempts ALTER COLUMN error TYPE bytea USING pg_temp.legacy_status(error);

-- As in 0003, without building a result: a request's DeletionResult is built from its run's
-- reports and version when it is read.
CREATE OR REPLACE FUNCTION settle_deletion_run() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    produced model_versions;
BEGIN
    IF NEW.state = 'succeeded' THEN
        INSERT INTO model_versions (model_id, version, run_id, uri, sha256, size_bytes, anchor,
                                    forgotten)
        SELECT NEW.model_id, (NEW.spec->>'version')::integer, NEW.id, a.uri, a.sha256,
               a.size_bytes, t.kind = 'full_retrain',
               ARRAY(SELECT value::bigint FROM jsonb_array_elements_text(NEW.spec->'forgotten'))
        FROM tasks t JOIN artifacts a ON a.task_id = t.id AND a.name = 'model'
        WHERE t.job_id = NEW.id AND t.kind IN ('match', 'full_retrain')
        RETURNING * INTO produced;
        IF produced.run_id IS NULL THEN
            RAISE EXCEPTION 'deletion run % succeeded without a model artifact', NEW.id;
        END IF;
    END IF;
    UPDATE jobs r SET
        state = NEW.state,
        finished_at = NEW.finished_at,
        error = NEW.error,
        updated_at = now()
    WHERE r.run_id = NEW.id AND r.kind = 'deletion'
      AND r.state IN ('queued', 'running', 'cancelling');
    RETURN NULL;
END;
$$;
