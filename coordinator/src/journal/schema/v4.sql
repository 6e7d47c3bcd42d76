-- Version 4: a task's deadline, Unix ms (0: none), so that a restart or a takeover keeps
-- hurrying the function of a task whose deadline is still ahead.
ALTER TABLE carpool_tasks ADD COLUMN deadline_unix_ms BIGINT NOT NULL DEFAULT 0;
