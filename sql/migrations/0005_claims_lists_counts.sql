-- Costs that follow the work, not the table.
--
-- Claims: unpinned and pinned pending tasks get an index each. A claim reads only its
-- own region's pinned tasks (a backlog pinned to a region that is down costs the others
-- nothing) and, within each priority, only tasks already due: tasks due later sit after
-- them in run_at order and are never read.
-- The run_at index goes: claims would read it, in run_at order, past tasks of other
-- priorities and regions. The next task due is found per priority level instead.
DROP INDEX tasks_due_idx;
DROP INDEX tasks_next_due_idx;
CREATE INDEX tasks_claim_free_idx ON tasks (priority DESC, run_at)
    WHERE state = 'pending' AND region IS NULL;
CREATE INDEX tasks_claim_pinned_idx ON tasks (region, priority DESC, run_at)
    WHERE state = 'pending' AND region IS NOT NULL;

-- Listing by state, oldest or newest first, reads only the rows it returns.
CREATE INDEX tasks_state_created_idx ON tasks (state, created_at, id);

-- Finished tasks are counted as they finish (one row per state and slot; a writer adds
-- to the slot of its session, so concurrent writers rarely wait on one another), so
-- /v1/stats need not count a million rows. Unfinished ones are counted from their
-- partial indexes.
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
