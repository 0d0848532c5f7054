-- The worker token each worker registered with. The worker API then takes a worker's calls only
-- with that token, so one leaked token cannot heartbeat, complete or fail the tasks of workers
-- that registered with others. Workers registered before this, or behind trusted headers, have
-- none and are bound to no token.
ALTER TABLE workers ADD COLUMN credential_id uuid REFERENCES credentials (id);
