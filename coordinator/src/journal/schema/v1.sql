-- carpool's journal, version 1: tasks (their input until they finish, then their result),
-- the attempt each unfinished task is on, the next id, the learned concurrency, the lease.
CREATE TABLE carpool_tasks (
    id BIGINT PRIMARY KEY,
    function TEXT NOT NULL,
    payload BYTEA,
    timeout_ms BIGINT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint BIGINT NOT NULL,
    submitted_unix_ms BIGINT NOT NULL,
    result BYTEA
);
CREATE TABLE carpool_attempts (
    id BIGINT PRIMARY KEY,
    attempt INTEGER NOT NULL
);
CREATE TABLE carpool_meta (
    key TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO carpool_meta VALUES ('next_task_id', 1);
CREATE TABLE carpool_learned (
    function TEXT NOT NULL,
    memory_mb INTEGER NOT NULL,
    level INTEGER NOT NULL,
    settled BOOLEAN NOT NULL,
    PRIMARY KEY (function, memory_mb)
);
CREATE TABLE carpool_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    term BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO carpool_lease VALUES (1, '', 0, 'epoch');
