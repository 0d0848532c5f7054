-- The W3C traceparent of the span that accepted a job, so that the spans of its tasks' attempts
-- are that span's children in a trace viewer (trace_id alone made them orphans). Jobs traced
-- before this have no such span; theirs stands in for it.
ALTER TABLE jobs ADD COLUMN traceparent text
    CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
UPDATE jobs SET traceparent = '00-' || trace_id || '-' || substr(md5(id::text), 1, 16) || '-01'
    WHERE trace_id IS NOT NULL;
