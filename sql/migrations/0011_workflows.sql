-- Workflows and fairness: dependencies between tasks, and concurrency keys.
--
-- A task with unfinished parents waits (state waiting), counting them down in
-- waiting_on; it becomes pending in the transaction that records its last parent's
-- success. The edges are kept parent first, so the statement that ends a parent finds
-- its children by key; a child lists its parents itself (depends_on, in the order
-- given). A parent is marked has_dependents by the insert that gives it a child (which
-- also locks it, so it cannot end unseen meanwhile): the statements that end tasks look
-- for children only then, and tasks without any pay nothing.
ALTER TABLE tasks DROP CONSTRAINT tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('waiting', 'pending', 'dispatched', 'running',
                     'succeeded', 'failed', 'cancelled'));
ALTER TABLE tasks ADD COLUMN depends_on uuid[];
ALTER TABLE tasks ADD COLUMN waiting_on integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD CONSTRAINT tasks_waiting_check CHECK ((state = 'waiting') = (waiting_on > 0));
ALTER TABLE tasks ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;
-- true: run even when a parent failed or was cancelled (on_upstream_failure "run").
ALTER TABLE tasks ADD COLUMN run_on_upstream_failure boolean NOT NULL DEFAULT false;

CREATE TABLE task_deps (
    parent uuid NOT NULL,
    child  uuid NOT NULL,
    PRIMARY KEY (parent, child)
);

-- Concurrency keys: a task may carry one; a key with a limit has at most that many of
-- its tasks dispatched or running at once, across every region and master. Keyed tasks
-- are claimed from an index of their own, key by key (round-robin), never from the
-- unkeyed claim indexes: a backlog under one key cannot fill a claim meant for others.
ALTER TABLE tasks ADD COLUMN concurrency_key text;
CREATE TABLE concurrency_limits (
    key        text PRIMARY KEY,
    lim        integer NOT NULL CHECK (lim >= 1),
    updated_at timestamptz NOT NULL DEFAULT now()
);

DROP INDEX tasks_claim_idx;
DROP INDEX tasks_claim_pinned_idx;
CREATE INDEX tasks_claim_idx ON tasks (priority DESC, run_at)
    WHERE state = 'pending' AND near AND region IS NULL AND concurrency_key IS NULL;
CREATE INDEX tasks_claim_pinned_idx ON tasks (region, priority DESC, run_at)
    WHERE state = 'pending' AND near AND region IS NOT NULL AND concurrency_key IS NULL;
CREATE INDEX tasks_claim_keyed_idx ON tasks (concurrency_key, priority DESC, run_at)
    WHERE state = 'pending' AND near AND concurrency_key IS NOT NULL;
-- What a key has in flight: at most its limit, read by every claim of the key.
CREATE INDEX tasks_inflight_key_idx ON tasks (concurrency_key)
    WHERE state IN ('dispatched', 'running') AND concurrency_key IS NOT NULL;

-- Priority aging (STRATA_PRIORITY_AGING) orders claims by priority + rate * minutes
-- waited, the same order as priority - rate * run_at in minutes: an index on that
-- (made by the master for its rate) keeps the claim reading in order. The epoch of a
-- timestamptz does not depend on the time zone: immutable, so it can be indexed.
CREATE FUNCTION strata_minutes(timestamptz) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN extract(epoch FROM $1)::double precision / 60;
