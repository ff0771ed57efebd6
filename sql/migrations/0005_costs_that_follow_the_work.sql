-- Costs that follow the work, not the table.
--
-- A pending task is `near` when its run_at is at most the claim horizon away (a minute;
-- master/db.py's CLAIM_HORIZON): it is inserted so, or the scanner promotes it (reading
-- only those whose turn has come, from their own index) well before it is due. Claims
-- read near tasks alone, so tasks due later than the horizon, at any priority, are never
-- walked past; tasks due sooner are, but only those of a higher priority, and only for
-- that minute. A task scheduled far ahead pays one more write, ahead of its time; one
-- due now or soon pays nothing.
ALTER TABLE tasks ADD COLUMN near boolean NOT NULL DEFAULT true;
UPDATE tasks SET near = false WHERE state = 'pending' AND run_at > now() + interval '1 minute';

-- Unpinned and pinned near tasks get an index each: a claim reads only its own region's
-- pinned tasks, so a backlog pinned to a region that is down costs the others nothing.
DROP INDEX tasks_due_idx;
CREATE INDEX tasks_claim_idx ON tasks (priority DESC, run_at)
    WHERE state = 'pending' AND near AND region IS NULL;
CREATE INDEX tasks_claim_pinned_idx ON tasks (region, priority DESC, run_at)
    WHERE state = 'pending' AND near AND region IS NOT NULL;
CREATE INDEX tasks_later_idx ON tasks (run_at) WHERE state = 'pending' AND NOT near;
-- When the scanner next has something to wake for: the next near task to come due,
-- found past those already due (a backlog pinned to a region that is down among them).
-- Unpinned and pinned apart, so that no claim reads another region's pinned tasks here.
DROP INDEX tasks_next_due_idx;
CREATE INDEX tasks_wake_idx ON tasks (run_at)
    WHERE state = 'pending' AND near AND region IS NULL;
CREATE INDEX tasks_wake_pinned_idx ON tasks (run_at)
    WHERE state = 'pending' AND near AND region IS NOT NULL;

-- Listing by state, oldest or newest first, reads only the page it returns.
CREATE INDEX tasks_state_created_idx ON tasks (state, created_at, id);

-- Pending and finished tasks are counted as they move, in the statement that moves
-- them, so /v1/stats need not count a million rows (or a backlog of a million due
-- later). One row per state and slot: a writer adds to its session's slot, so
-- concurrent writers rarely wait on one another; a slot may go below zero, their sum
-- never does.
CREATE TABLE task_counts (
    state text NOT NULL,
    slot  integer NOT NULL,
    n     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (state, slot)
);
INSERT INTO task_counts (state, slot, n)
SELECT state, 0, count(*) FROM tasks
WHERE state IN ('pending', 'succeeded', 'failed', 'cancelled')
GROUP BY state;
