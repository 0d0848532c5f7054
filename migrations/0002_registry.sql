-- What tenants register before they ask for work: datasets and models, by object-store URL.
-- Names are the tenant's own handles (`datasets/{name}`, `models/{name}`); a name is bound to
-- one URL for good, so a request that names a model always means the same bytes.

CREATE TABLE datasets (
    id          uuid PRIMARY KEY,
    tenant      text NOT NULL CHECK (length(tenant) BETWEEN 1 AND 200),
    name        text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,99}$'),
    uri         text NOT NULL CHECK (length(uri) BETWEEN 1 AND 2000),
    -- Of the object at `uri`, when the registrant gives it; workers check it on every read.
    sha256      bytea CHECK (sha256 IS NULL OR length(sha256) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, name)
);

CREATE TABLE models (
    id            uuid PRIMARY KEY,
    tenant        text NOT NULL CHECK (length(tenant) BETWEEN 1 AND 200),
    name          text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,99}$'),
    -- Trained on this dataset (of the same tenant): the examples a deletion request names are
    -- its indices.
    dataset_id    uuid NOT NULL REFERENCES datasets (id),
    uri           text NOT NULL CHECK (length(uri) BETWEEN 1 AND 2000),
    sha256        bytea CHECK (sha256 IS NULL OR length(sha256) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, name)
);
