-- Version 3: what each (function, memory size) has cost per task, over its ended workers
-- (--memory-sizes chooses a new worker's size from it).
CREATE TABLE carpool_size_costs (
    function TEXT NOT NULL,
    memory_mb INTEGER NOT NULL,
    workers BIGINT NOT NULL,
    tasks BIGINT NOT NULL,
    billed_gb_ms DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (function, memory_mb)
);
