-- The master a region talks to: the one its heartbeats last reached. That master claims
-- and delegates the region's work; the others leave it alone, so that each region gets
-- its batches from one scanner however many masters run. A region moves to another
-- master when its own cannot answer, and the column follows its next heartbeat. NULL
-- (a region last heard of before this column): any master may serve it.
ALTER TABLE regions ADD COLUMN master text;
