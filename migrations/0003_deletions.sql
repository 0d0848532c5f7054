-- Deletion requests, the runs that serve them, and model versions (DESIGN.md §1.8).
--
-- A deletion request is a job of kind `deletion` with no tasks of its own: it is the operation
-- its tenant follows. Pending requests on one model are coalesced by the planner into one
-- `deletion_run` job that holds the task graph (predict → match → audit); every request of the
-- run points at it through `run_id`, and mirrors its state (the trigger below), so each keeps
-- its own operation while the work is done once. Runs on one model never overlap: each starts
-- from the version the previous one produced, and targets are predicted from version 0 with
-- everything forgotten so far.

ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('index_build', 'deletion', 'deletion_run', 'noop'));
ALTER TABLE jobs DROP CONSTRAINT jobs_tasks_total_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_tasks_total_check
    CHECK (tasks_total >= 1 OR (kind = 'deletion' AND tasks_total = 0));

-- The task kinds a worker runs (empty: every kind). A worker built without the ML engine must
-- not lease an ML task only to fail it.
ALTER TABLE workers ADD COLUMN kinds text[] NOT NULL DEFAULT '{}'
    CHECK (cardinality(kinds) <= 100);

ALTER TABLE jobs ADD COLUMN model_id uuid REFERENCES models (id);
ALTER TABLE jobs ADD COLUMN run_id uuid REFERENCES jobs (id);
ALTER TABLE jobs ADD CONSTRAINT jobs_model_scoped
    CHECK ((kind IN ('index_build', 'deletion', 'deletion_run')) = (model_id IS NOT NULL));
-- A deletion request's run; for an index build, the retraining run whose version it indexes.
ALTER TABLE jobs ADD CONSTRAINT jobs_run_of_request
    CHECK (run_id IS NULL OR kind IN ('deletion', 'index_build'));

-- What the planner scans: requests still waiting for a run, oldest first per model.
CREATE INDEX jobs_pending_deletions ON jobs (model_id, created_at)
    WHERE kind = 'deletion' AND run_id IS NULL AND state = 'queued';
CREATE INDEX jobs_by_run ON jobs (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX jobs_by_model ON jobs (model_id, kind, id DESC) WHERE model_id IS NOT NULL;

-- Version 0 of a model is its `models` row; every succeeded run adds the next version. The
-- parent of version v is v - 1 (runs on a model are serialised), and the requests that produced
-- a version are the jobs whose `run_id` is its run. An anchor is a version retrained from
-- scratch once too much was forgotten: later runs predict their targets from it (with the
-- index built for it) instead of from version 0.
CREATE TABLE model_versions (
    model_id    uuid NOT NULL REFERENCES models (id),
    version     integer NOT NULL CHECK (version >= 1),
    run_id      uuid NOT NULL UNIQUE REFERENCES jobs (id),
    uri         text NOT NULL CHECK (length(uri) BETWEEN 1 AND 2000),
    sha256      bytea NOT NULL CHECK (length(sha256) = 32),
    size_bytes  bigint NOT NULL CHECK (size_bytes >= 0),
    anchor      boolean NOT NULL,
    -- Every training index forgotten since version 0, sorted: the next run's starting set.
    forgotten   bigint[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, version)
);

-- A run's state change reaches its requests in the same transaction, whichever path made it
-- (claim, completion, failure, cancellation, deadline, a replica's sweep); a succeeded run
-- records its model version at the same time. Requests already finished on their own (a
-- cancelled one) keep their state.
CREATE FUNCTION settle_deletion_run() RETURNS trigger LANGUAGE plpgsql AS $$
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
        updated_at = now(),
        result = CASE WHEN NEW.state = 'succeeded' THEN jsonb_build_object(
            'run', NEW.id,
            'model_version', produced.version,
            'model_uri', produced.uri,
            'model_sha256', encode(produced.sha256, 'hex'),
            'model_size_bytes', produced.size_bytes,
            'forgotten_total', cardinality(produced.forgotten),
            'retrained', produced.anchor,
            'report', NEW.result) END
    WHERE r.run_id = NEW.id AND r.kind = 'deletion'
      AND r.state IN ('queued', 'running', 'cancelling');
    RETURN NULL;
END;
$$;

CREATE TRIGGER deletion_run_settles AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.kind = 'deletion_run' AND NEW.state IS DISTINCT FROM OLD.state)
    EXECUTE FUNCTION settle_deletion_run();
