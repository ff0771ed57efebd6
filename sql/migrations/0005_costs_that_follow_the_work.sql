-- Costs that follow the work, not the table.
--
-- A pending task is `due` once its run_at has come: it is inserted so when run_at is not
-- in the future, and the scanner promotes the others as their time comes (reading only
-- those whose time has come, from their own index). Claims read due tasks alone, so tasks
-- due later, at any priority, are never walked past.
ALTER TABLE tasks ADD COLUMN due boolean NOT NULL DEFAULT true;
UPDATE tasks SET due = false WHERE state = 'pending' AND run_at > now();

-- Unpinned and pinned due tasks get an index each: a claim reads only its own region's
-- pinned tasks, so a backlog pinned to a region that is down costs the others nothing.
DROP INDEX tasks_due_idx;
DROP INDEX tasks_next_due_idx;
CREATE INDEX tasks_claim_idx ON tasks (priority DESC, run_at)
    WHERE state = 'pending' AND due AND region IS NULL;
CREATE INDEX tasks_claim_pinned_idx ON tasks (region, priority DESC, run_at)
    WHERE state = 'pending' AND due AND region IS NOT NULL;
CREATE INDEX tasks_later_idx ON tasks (run_at) WHERE state = 'pending' AND NOT due;

-- Listing by state, oldest or newest first, reads only the page it returns.
CREATE INDEX tasks_state_created_idx ON tasks (state, created_at, id);

-- Finished tasks are counted as they finish, in the statement that finishes them, so
-- /v1/stats need not count a million rows. One row per state and slot: a writer adds to
-- its session's slot, so concurrent writers rarely wait on one another.
CREATE TABLE task_counts (
    state text NOT NULL,
    slot  integer NOT NULL,
    n     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (state, slot)
);
INSERT INTO task_counts (state, slot, n)
SELECT state, 0, count(*) FROM tasks
WHERE state IN ('succeeded', 'failed', 'cancelled')
GROUP BY state;
