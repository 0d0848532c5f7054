-- The W3C trace a caller's request belongs to (its trace id, 32 hex digits), so that the
-- workers running its tasks can log under the same trace. A deletion run has none of its own:
-- its tasks take the trace of the first request it serves.
ALTER TABLE jobs ADD COLUMN trace_id text CHECK (trace_id ~ '^[0-9a-f]{32}$');
