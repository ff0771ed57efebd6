-- Every attempt that ended, and how: written by the statement that ended it, so the
-- history is never behind the task. The attempt in flight is the task's own row.
-- No key: an attempt may end more than one way over time (evicted from a worker, run
-- again in its region, then finished; or reclaimed, and its result came late: stale).
CREATE TABLE attempts (
    task_id     uuid NOT NULL,
    attempt     integer NOT NULL,
    region      text,
    worker_id   text,
    claimed_at  timestamptz,
    started_at  timestamptz,
    finished_at timestamptz NOT NULL DEFAULT now(),
    outcome     text NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'timed_out',
                                                 'reclaimed', 'evicted', 'returned',
                                                 'cancelled', 'stale')),
    reason      text,
    exit_code   integer
);
CREATE INDEX attempts_task_idx ON attempts (task_id, attempt);
