-- Version 2: the lease names the active coordinator's URL (standbys tell clients and
-- workers where to go), and idempotency keys are indexed for operators' queries.
ALTER TABLE carpool_lease ADD COLUMN url TEXT NOT NULL DEFAULT '';
CREATE INDEX carpool_tasks_by_key ON carpool_tasks (idempotency_key) WHERE idempotency_key <> '';
