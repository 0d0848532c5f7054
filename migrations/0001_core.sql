-- Lethe's core schema. PostgreSQL is the only source of truth: every state below is a CHECKed
-- column, every transition a guarded UPDATE (state and attempt in the WHERE clause), so a
-- coordinator replica or a worker that acts on stale information changes nothing.

-- A worker incarnation: one row per process start, never reused (a restarted worker is a new
-- worker, so its predecessor's leases cannot be mistaken for its own).
CREATE TABLE workers (
    id              uuid PRIMARY KEY,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    device          text NOT NULL CHECK (device IN ('cpu', 'cuda')),
    memory_bytes    bigint NOT NULL CHECK (memory_bytes >= 0),
    slots           integer NOT NULL CHECK (slots BETWEEN 1 AND 1024),
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining', 'gone')),
    version         text NOT NULL DEFAULT '',
    registered_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now()
);

-- A job is what a user asked for and follows as a long-running operation: an index build or a
-- deletion request. Its tasks are the units of work that workers lease.
CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    tenant          text NOT NULL CHECK (length(tenant) BETWEEN 1 AND 200),
    kind            text NOT NULL CHECK (kind IN ('index_build', 'deletion', 'noop')),
    -- AIP-155 idempotency key, unique per tenant; with it, a hash of the request body, so that
    -- a key reused for a different request is refused instead of silently answered.
    request_id      text CHECK (length(request_id) BETWEEN 1 AND 200),
    request_hash    bytea NOT NULL CHECK (length(request_hash) = 32),
    spec            jsonb NOT NULL,
    priority        smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled')),
    tasks_total     integer NOT NULL CHECK (tasks_total >= 1),
    progress        jsonb NOT NULL DEFAULT '{}',
    error           jsonb,
    result          jsonb,
    deadline_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (tenant, request_id),
    CHECK ((finished_at IS NOT NULL) = (state IN ('succeeded', 'failed', 'cancelled'))),
    CHECK ((state = 'failed') = (error IS NOT NULL))
);
CREATE INDEX jobs_tenant_listing ON jobs (tenant, id DESC);
-- Unfinished jobs, for the sweep that finalises a job whose last completion's own check was lost.
CREATE INDEX jobs_active ON jobs (id) WHERE state IN ('queued', 'running', 'cancelling');
CREATE INDEX jobs_deadline ON jobs (deadline_at)
    WHERE deadline_at IS NOT NULL AND state IN ('queued', 'running', 'cancelling');

CREATE TABLE tasks (
    id                uuid PRIMARY KEY,
    job_id            uuid NOT NULL REFERENCES jobs (id),
    kind              text NOT NULL CHECK (length(kind) BETWEEN 1 AND 100),
    spec              jsonb NOT NULL,
    priority          smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    -- Capabilities a worker must have: a device ('cuda' only, or NULL for any) and memory.
    requires_device   text CHECK (requires_device IN ('cpu', 'cuda')),
    min_memory_bytes  bigint NOT NULL DEFAULT 0 CHECK (min_memory_bytes >= 0),
    state             text NOT NULL
                      CHECK (state IN ('blocked', 'available', 'leased', 'succeeded', 'failed', 'cancelled')),
    -- The fencing token: incremented by every claim, carried by every worker call.
    attempt           integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts      integer NOT NULL CHECK (max_attempts >= 1),
    -- Claims that ended without the task's fault (lease expiry, drain, preemption): they do
    -- not spend max_attempts but are capped on their own, so a task that kills every worker
    -- that runs it cannot loop forever.
    interruptions     integer NOT NULL DEFAULT 0 CHECK (interruptions >= 0),
    max_interruptions integer NOT NULL CHECK (max_interruptions >= 0),
    -- No foreign key: the claim takes the owner from the workers row it just read, and an FK
    -- check on every claim would cost more than it protects.
    lease_owner       uuid,
    lease_expires_at  timestamptz,
    -- When the latest attempt was claimed; kept after it ends, for its attempt record.
    leased_at         timestamptz,
    cancel_requested  boolean NOT NULL DEFAULT false,
    run_at            timestamptz NOT NULL DEFAULT now(),
    unmet_deps        integer NOT NULL DEFAULT 0 CHECK (unmet_deps >= 0),
    progress          jsonb,
    -- What the succeeded attempt reported; the job's result is its last task's.
    result            jsonb,
    last_error        jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    CHECK ((state = 'leased') = (lease_owner IS NOT NULL)),
    CHECK ((state = 'leased') = (lease_expires_at IS NOT NULL)),
    CHECK (state <> 'leased' OR leased_at IS NOT NULL),
    CHECK (state <> 'blocked' OR unmet_deps > 0),
    CHECK (state NOT IN ('available', 'leased', 'succeeded') OR unmet_deps = 0),
    CHECK ((finished_at IS NOT NULL) = (state IN ('succeeded', 'failed', 'cancelled'))),
    CHECK (attempt - interruptions <= max_attempts)
) WITH (fillfactor = 80);
-- The claim path only ever reads available rows; the reaper only leased ones.
CREATE INDEX tasks_claimable ON tasks (priority DESC, run_at, id) WHERE state = 'available';
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE state = 'leased';
CREATE INDEX tasks_by_job ON tasks (job_id);
-- "Has this job anything left?" is one probe of this index, however many tasks the job has.
CREATE INDEX tasks_unfinished ON tasks (job_id) WHERE state <> 'succeeded';

CREATE TABLE task_deps (
    task_id     uuid NOT NULL REFERENCES tasks (id),
    depends_on  uuid NOT NULL REFERENCES tasks (id),
    PRIMARY KEY (task_id, depends_on),
    CHECK (task_id <> depends_on)
);
CREATE INDEX task_deps_parent ON task_deps (depends_on);

-- One row per ended claim, written once by the transition that ends it (the claim in progress
-- is the task row's attempt, lease_owner and leased_at): one write per attempt, not two.
CREATE TABLE task_attempts (
    task_id     uuid NOT NULL REFERENCES tasks (id),
    attempt     integer NOT NULL CHECK (attempt >= 1),
    worker_id   uuid NOT NULL REFERENCES workers (id),
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL DEFAULT now(),
    outcome     text NOT NULL CHECK (outcome IN ('succeeded', 'retryable', 'fatal', 'interrupted',
                                                 'lease_expired', 'cancelled')),
    error       jsonb,
    PRIMARY KEY (task_id, attempt)
);

-- Committed results only: a worker writes under an attempt-scoped key, and the completion
-- that wins the fencing check records it here, once per (task, name).
CREATE TABLE artifacts (
    id            uuid PRIMARY KEY,
    task_id       uuid NOT NULL REFERENCES tasks (id),
    attempt       integer NOT NULL,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    uri           text NOT NULL CHECK (length(uri) BETWEEN 1 AND 2000),
    sha256        bytea NOT NULL CHECK (length(sha256) = 32),
    size_bytes    bigint NOT NULL CHECK (size_bytes >= 0),
    committed_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (task_id, name),
    FOREIGN KEY (task_id, attempt) REFERENCES task_attempts (task_id, attempt)
);
