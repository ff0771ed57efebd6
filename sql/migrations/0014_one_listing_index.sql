-- Listings read an index of their state's own, partial, in created order: a listing of
-- every state merges them, read each in order (list_tasks_branch). That takes the place
-- of two full indexes, (created_at, id) and (state, created_at, id), each of which took
-- an entry at every claim and every result; the partial ones take one between them.
CREATE INDEX tasks_waiting_created_idx ON tasks (created_at, id) WHERE state = 'waiting';
CREATE INDEX tasks_pending_created_idx ON tasks (created_at, id) WHERE state = 'pending';
CREATE INDEX tasks_dispatched_created_idx ON tasks (created_at, id) WHERE state = 'dispatched';
CREATE INDEX tasks_running_created_idx ON tasks (created_at, id) WHERE state = 'running';
CREATE INDEX tasks_succeeded_created_idx ON tasks (created_at, id) WHERE state = 'succeeded';
CREATE INDEX tasks_failed_created_idx ON tasks (created_at, id) WHERE state = 'failed';
CREATE INDEX tasks_cancelled_created_idx ON tasks (created_at, id) WHERE state = 'cancelled';
DROP INDEX tasks_created_idx;
DROP INDEX tasks_state_created_idx;
