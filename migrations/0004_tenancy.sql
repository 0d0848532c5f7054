-- Who may call: API credentials, quotas on queued work, and the audit log of who asked for
-- what. Secrets are never stored: a credential row keeps the SHA-256 of its token (tokens are
-- 256 random bits, so a fast hash is enough; there is nothing to brute-force).

CREATE TABLE credentials (
    id             uuid PRIMARY KEY,
    -- A tenant's token calls the public API for that tenant; a worker's calls the worker API
    -- and nothing else; an admin's calls the admin API (the fleet and the queue).
    kind           text NOT NULL CHECK (kind IN ('tenant', 'worker', 'admin')),
    tenant         text CHECK (length(tenant) BETWEEN 1 AND 200),
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    secret_sha256  bytea NOT NULL UNIQUE CHECK (length(secret_sha256) = 32),
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    CHECK ((kind = 'tenant') = (tenant IS NOT NULL))
);

-- A tenant's own limit on unfinished jobs; tenants without a row get the coordinator's default.
CREATE TABLE tenant_quotas (
    tenant           text PRIMARY KEY CHECK (length(tenant) BETWEEN 1 AND 200),
    max_active_jobs  integer NOT NULL CHECK (max_active_jobs >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- The quota check counts a tenant's unfinished jobs in the transaction that adds one.
CREATE INDEX jobs_tenant_active ON jobs (tenant) WHERE state IN ('queued', 'running', 'cancelling');

-- Every change a caller asked for, and every call that was refused for who made it. Rows are
-- only ever inserted: the triggers below refuse UPDATE, DELETE and TRUNCATE (a superuser can
-- drop them, so production databases should give the coordinator's role INSERT and SELECT only).
CREATE TABLE audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- NULL when the caller could not be identified (no token, an unknown or revoked one).
    tenant         text,
    credential_id  uuid,
    actor          text NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    action         text NOT NULL CHECK (length(action) BETWEEN 1 AND 100),
    resource       text NOT NULL CHECK (length(resource) <= 400),
    outcome        text NOT NULL CHECK (outcome IN ('allowed', 'denied')),
    reason         text CHECK (length(reason) <= 400),
    detail         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_tenant ON audit_log (tenant, id);
CREATE INDEX audit_log_denied ON audit_log (id) WHERE outcome = 'denied';

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
