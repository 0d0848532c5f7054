-- What a deletion run writes, and how far a task has got, become columns: no statement or
-- trigger reads JSON by key any more. The run's spec keeps what the planner decided, for
-- people and for the result; the trigger reads only the columns, which the store sets from
-- the planner's typed answer.

ALTER TABLE jobs
    ADD COLUMN writes_version integer CHECK (writes_version >= 1),
    ADD COLUMN writes_forgotten bigint[];

-- The one read of the old JSON: runs planned before this migration.
UPDATE jobs SET
    writes_version = (spec->>'version')::integer,
    writes_forgotten = ARRAY(SELECT value::bigint
                             FROM jsonb_array_elements_text(spec->'forgotten'))
WHERE kind = 'deletion_run';

ALTER TABLE jobs ADD CONSTRAINT jobs_a_run_says_what_it_writes CHECK (
    (kind = 'deletion_run') = (writes_version IS NOT NULL AND writes_forgotten IS NOT NULL));

-- Never written or read since 0001.
ALTER TABLE jobs DROP COLUMN progress;

ALTER TABLE tasks
    ADD COLUMN progress_fraction double precision
        CHECK (progress_fraction BETWEEN 0 AND 1),
    ADD COLUMN progress_message text CHECK (length(progress_message) <= 4096);

UPDATE tasks SET
    progress_fraction = LEAST(GREATEST((progress->>'fraction')::float8, 0), 1),
    progress_message = left(progress->>'message', 4096)
WHERE progress IS NOT NULL;

ALTER TABLE tasks DROP COLUMN progress;

-- As in 0008, with the version and the forgotten examples from the run's columns.
CREATE OR REPLACE FUNCTION settle_deletion_run() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    produced model_versions;
BEGIN
    IF NEW.state = 'succeeded' THEN
        INSERT INTO model_versions (model_id, version, run_id, uri, sha256, size_bytes, anchor,
                                    forgotten)
        SELECT NEW.model_id, NEW.writes_version, NEW.id, a.uri, a.sha256,
               a.size_bytes, t.kind = 'full_retrain', NEW.writes_forgotten
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
