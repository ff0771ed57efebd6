-- Named queries, loaded once by master/db.py. Values are always bound parameters.
--
-- Every statement that moves tasks into or out of pending, or into a finished state,
-- adds that to task_counts in the same statement (into its session's slot), so counting
-- tasks by state never reads the tasks themselves.

-- name: insert_tasks
-- One round trip for one task or ten thousand; the NOTIFY wakes the scanners at commit.
-- Every row of one statement gets the same created_at (now(), the transaction's start):
-- one row comes back, whatever the batch's size. A task due within the claim horizon
-- ($10 seconds) is near at once; the scanner promotes the others ahead of their time.
WITH inserted AS (
    INSERT INTO tasks (id, kind, payload, priority, run_at, region, max_attempts, timeout_s,
                       retry_of, concurrency_key, schedule, near)
    SELECT u.*, u.run_at <= now() + $11::float8 * interval '1 second'
    FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::int[], $5::timestamptz[],
                $6::text[], $7::int[], $8::float8[], $9::uuid[], $10::text[], $12::text[])
        AS u (id, kind, payload, priority, run_at, region, max_attempts, timeout_s, retry_of,
              concurrency_key, schedule)
    RETURNING created_at
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT 'pending', pg_backend_pid() % 16, count(*) FROM inserted HAVING count(*) > 0
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT (SELECT created_at FROM inserted LIMIT 1) AS created_at, pg_notify('strata_tasks', '');

-- name: insert_keyed_tasks
-- As insert_tasks, for a batch where some task has an idempotency key: a task whose key
-- is taken is not inserted (a create with the same key that is still running is waited
-- for). Returns the ids that were inserted.
WITH inserted AS (
    INSERT INTO tasks (id, kind, payload, priority, run_at, region, max_attempts, timeout_s,
                       retry_of, concurrency_key, idempotency_key, fingerprint, near)
    SELECT u.*, u.run_at <= now() + $13::float8 * interval '1 second'
    FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::int[], $5::timestamptz[],
                $6::text[], $7::int[], $8::float8[], $9::uuid[], $10::text[], $11::text[],
                $12::text[])
        AS u (id, kind, payload, priority, run_at, region, max_attempts, timeout_s, retry_of,
              concurrency_key, idempotency_key, fingerprint)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, created_at
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT 'pending', pg_backend_pid() % 16, count(*) FROM inserted HAVING count(*) > 0
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT array_agg(id) AS ids, min(created_at) AS created_at, pg_notify('strata_tasks', '')
FROM inserted;

-- name: insert_graph
-- A batch where some task has parents: each row comes with the state the insert worked
-- out (waiting on its unfinished parents, pending, or cancelled by a parent that had
-- already failed), and its edges are kept for the statement that ends each parent.
WITH inserted AS (
    INSERT INTO tasks (id, kind, payload, priority, run_at, region, max_attempts, timeout_s,
                       retry_of, concurrency_key, idempotency_key, fingerprint, state,
                       waiting_on, depends_on, run_on_upstream_failure, has_dependents,
                       error, finished_at, near)
    SELECT u.id, u.kind, u.payload, u.priority, u.run_at, u.region, u.max_attempts,
           u.timeout_s, u.retry_of, u.concurrency_key, u.idempotency_key, u.fingerprint,
           u.state, u.waiting_on, u.depends_on::uuid[], u.run_on_upstream_failure,
           u.has_dependents, u.error, CASE WHEN u.state = 'cancelled' THEN now() END,
           u.run_at <= now() + $13::float8 * interval '1 second'
    FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::int[], $5::timestamptz[],
                $6::text[], $7::int[], $8::float8[], $9::uuid[], $10::text[], $11::text[],
                $12::text[], $14::text[], $15::int[], $16::text[], $17::bool[], $18::bool[],
                $19::text[])
        AS u (id, kind, payload, priority, run_at, region, max_attempts, timeout_s, retry_of,
              concurrency_key, idempotency_key, fingerprint, state, waiting_on, depends_on,
              run_on_upstream_failure, has_dependents, error)
    RETURNING state, created_at
), edges AS (
    INSERT INTO task_deps (parent, child)
    SELECT * FROM unnest($20::uuid[], $21::uuid[]) ON CONFLICT DO NOTHING
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT state, pg_backend_pid() % 16, count(*) FROM inserted GROUP BY state
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT (SELECT created_at FROM inserted LIMIT 1) AS created_at, pg_notify('strata_tasks', '');

-- name: lock_parents
-- Parents named by new tasks, as they are now: each is locked (in id order, as every
-- such insert locks them) and marked as having dependents, so the statement that ends
-- it, now waiting for this insert, releases the children this insert makes.
UPDATE tasks AS t SET has_dependents = true
WHERE t.id = ANY (ARRAY (
    SELECT id FROM tasks WHERE id = ANY ($1::uuid[]) ORDER BY id FOR UPDATE))
RETURNING t.id, t.state;

-- name: doomed_dependents
-- What the tasks $1, that failed or were cancelled in this transaction, take with them:
-- their children, and theirs after them, transitively (but for a child that runs
-- whatever its parents did: on_upstream_failure "run"), each with the task whose end
-- was the cause. A task waits exactly while it has parents left (waiting_on > 0, a
-- check holds it so): that, never its state, is what these statements read, so each
-- task is found by key however many wait, whatever the planner guesses of them.
WITH RECURSIVE doomed (id, root) AS (
    SELECT d.child, d.parent FROM task_deps AS d JOIN tasks AS c ON c.id = d.child
    WHERE d.parent = ANY ($1::uuid[]) AND c.waiting_on > 0
      AND NOT c.run_on_upstream_failure
  UNION
    SELECT d.child, x.root FROM doomed AS x
    JOIN task_deps AS d ON d.parent = x.id JOIN tasks AS c ON c.id = d.child
    WHERE c.waiting_on > 0 AND NOT c.run_on_upstream_failure
), once AS (
    SELECT DISTINCT ON (id) id, root FROM doomed ORDER BY id, root
)
SELECT ARRAY (SELECT id FROM once ORDER BY id) AS ids,
       ARRAY (SELECT root FROM once ORDER BY id) AS roots;

-- name: cancel_doomed
-- The tasks doomed_dependents found ($1, each caused by $2), cancelled.
WITH doomed AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[]) AS x (id, root)
), cancelled AS (
    UPDATE tasks AS t
    SET state = 'cancelled', finished_at = now(), waiting_on = 0,
        error = 'upstream ' || x.root || ' failed'
    FROM doomed AS x
    WHERE t.id = ANY ($1::uuid[]) AND t.id = x.id AND t.waiting_on > 0
    RETURNING t.id
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT c.state, pg_backend_pid() % 16, c.sign * (SELECT count(*) FROM cancelled)
    FROM (VALUES ('cancelled', 1), ('waiting', -1)) AS c (state, sign)
    WHERE EXISTS (SELECT 1 FROM cancelled)
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT ARRAY (SELECT id FROM cancelled) AS cancelled;

-- name: release_dependents
-- The children of the tasks $1 that ended in this transaction (cancelled ones among
-- them, after cancel_doomed): each edge from them no longer holds its child back, and
-- a child with none left is pending, due as it always was, and the scanners are woken.
-- Set-wise: one statement for any number of parents and children.
WITH freed AS (
    SELECT child, count(*)::int AS n FROM task_deps WHERE parent = ANY ($1::uuid[])
    GROUP BY child
), released AS (
    UPDATE tasks AS t
    SET waiting_on = greatest(0, t.waiting_on - f.n),
        state = CASE WHEN t.waiting_on <= f.n THEN 'pending' ELSE 'waiting' END,
        near = t.run_at <= now() + $2::float8 * interval '1 second'
    FROM freed AS f
    WHERE t.id = ANY (ARRAY (SELECT child FROM freed)) AND t.id = f.child
      AND t.waiting_on > 0
    RETURNING t.state
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT c.state, pg_backend_pid() % 16, c.sign * (SELECT count(*) FROM released
                                                     WHERE state = 'pending')
    FROM (VALUES ('pending', 1), ('waiting', -1)) AS c (state, sign)
    WHERE EXISTS (SELECT 1 FROM released WHERE state = 'pending')
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT (SELECT count(*) FROM released WHERE state = 'pending') AS released,
       CASE WHEN EXISTS (SELECT 1 FROM released WHERE state = 'pending')
            THEN pg_notify('strata_tasks', '') END AS woken;

-- name: dependents
SELECT child FROM task_deps WHERE parent = $1 ORDER BY child LIMIT $2;

-- name: task_graph
-- The tasks around $1, up to $2 of them: its ancestors and its descendants, each found
-- by key (parents from a child's own list, children from the edges), nearest first.
WITH RECURSIVE up (id, depth) AS (
    SELECT $1::uuid, 0
  UNION
    SELECT p.id, u.depth + 1 FROM up AS u JOIN tasks AS t ON t.id = u.id,
        unnest(t.depends_on) AS p (id)
    WHERE u.depth < $3
), down (id, depth) AS (
    SELECT $1::uuid, 0
  UNION
    SELECT d.child, w.depth + 1 FROM down AS w JOIN task_deps AS d ON d.parent = w.id
    WHERE w.depth < $3
), near_ids AS (
    SELECT id, min(depth) AS depth FROM (SELECT * FROM up UNION ALL SELECT * FROM down) AS a
    GROUP BY id ORDER BY min(depth), id LIMIT $2
)
SELECT t.id, t.kind, t.state, t.priority, t.depends_on, n.depth, t.payload::text AS payload
FROM near_ids AS n JOIN tasks AS t ON t.id = n.id
ORDER BY n.depth, t.id;

-- name: reprioritize
UPDATE tasks SET priority = $2 WHERE id = $1 AND state IN ('waiting', 'pending')
RETURNING *;

-- name: set_concurrency_limit
INSERT INTO concurrency_limits (key, lim) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE SET lim = excluded.lim, updated_at = now();

-- name: concurrency_keys
-- Each key asked for ($1; NULL: every key with a limit) with its limit, how many of its
-- tasks are in flight (at most about its limit, from their own index), and pending.
SELECT k.key, l.lim,
       (SELECT count(*) FROM tasks
        WHERE state IN ('dispatched', 'running') AND concurrency_key = k.key) AS active,
       (SELECT count(*) FROM tasks
        WHERE state = 'pending' AND concurrency_key = k.key) AS pending
FROM (SELECT key FROM concurrency_limits WHERE $1::text IS NULL
      UNION SELECT $1 WHERE $1::text IS NOT NULL) AS k
LEFT JOIN concurrency_limits AS l ON l.key = k.key
ORDER BY k.key;

-- name: clear_concurrency_limit
DELETE FROM concurrency_limits WHERE key = $1;

-- name: tasks_by_key
SELECT * FROM tasks WHERE idempotency_key = ANY ($1::text[]);

-- name: claim_due
-- The most urgent due tasks region $1 may run: unpinned ones, and those pinned to it, each
-- read from its own index of near tasks in claim order and locked as read, skipping any
-- that another claim holds. Only when both kinds are due does it lock more than it
-- claims, and only until it commits.
WITH free AS (
    SELECT id, priority, run_at FROM tasks
    WHERE state = 'pending' AND near AND region IS NULL AND concurrency_key IS NULL
      AND run_at <= now()
    ORDER BY priority DESC, run_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), pinned AS (
    SELECT id, priority, run_at FROM tasks
    WHERE state = 'pending' AND near AND region = $1 AND concurrency_key IS NULL
      AND run_at <= now()
    ORDER BY priority DESC, run_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id FROM (SELECT * FROM free UNION ALL SELECT * FROM pinned) AS candidates
    ORDER BY priority DESC, run_at
    LIMIT $2
), claimed AS (
    UPDATE tasks AS t
    SET state = 'dispatched', attempt = t.attempt + 1, assigned_region = $1,
        picked_at = coalesce(t.picked_at, now()), claimed_at = now(), worker_id = NULL
    -- By key, whatever the planner guesses of the candidates' number.
    WHERE t.id = ANY (ARRAY (SELECT id FROM due))
    RETURNING t.id, t.attempt, t.kind, t.payload::text AS payload, t.timeout_s, t.priority,
              t.run_at, t.depends_on
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT 'pending', pg_backend_pid() % 16, -count(*) FROM claimed HAVING count(*) > 0
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
-- A child gets its parents' outputs (a task without parents reads nothing more).
SELECT c.*, CASE WHEN c.depends_on IS NOT NULL THEN (
           SELECT jsonb_object_agg(p.id, p.output) FROM tasks AS p
           WHERE p.id = ANY (c.depends_on))::text END AS parent_outputs
FROM claimed AS c;

-- name: lock_due_keys
-- Up to $2 keys with near pending tasks, in key order from just after $1 round to it
-- (each claim starts where the last one stopped), each read by a skip over the keyed
-- claim index: one probe a key, however long its backlog. The limits of those keys are
-- locked until the claim commits: claims of one limited key, from any master, take
-- turns, and each counts what the one before it dispatched.
WITH RECURSIVE after_cursor (key) AS (
    (SELECT concurrency_key FROM tasks
     WHERE state = 'pending' AND near AND concurrency_key > $1
     ORDER BY concurrency_key LIMIT 1)
  UNION ALL
    SELECT (SELECT concurrency_key FROM tasks
            WHERE state = 'pending' AND near AND concurrency_key > k.key
            ORDER BY concurrency_key LIMIT 1)
    FROM after_cursor AS k WHERE k.key IS NOT NULL
), from_start (key) AS (
    (SELECT concurrency_key FROM tasks
     WHERE state = 'pending' AND near AND concurrency_key IS NOT NULL
     ORDER BY concurrency_key LIMIT 1)
  UNION ALL
    SELECT (SELECT concurrency_key FROM tasks
            WHERE state = 'pending' AND near AND concurrency_key > k.key
            ORDER BY concurrency_key LIMIT 1)
    FROM from_start AS k WHERE k.key IS NOT NULL AND k.key <= $1
), keys AS (
    (SELECT key FROM after_cursor WHERE key IS NOT NULL LIMIT $2)
  UNION
    (SELECT key FROM from_start WHERE key IS NOT NULL AND key <= $1 LIMIT $2)
), locked AS (
    SELECT key, lim FROM concurrency_limits WHERE key IN (SELECT key FROM keys)
    ORDER BY key
    FOR UPDATE
)
SELECT k.key, l.lim FROM keys AS k LEFT JOIN locked AS l ON l.key = k.key
ORDER BY k.key > $1 DESC, k.key
LIMIT $2;

-- name: claim_fair
-- As claim_due, when keyed tasks are due: each key ($3, with its limit $4 or NULL) is a
-- lane, and so are the unkeyed tasks. A lane offers at most $5 tasks, and a limited key
-- no more than its limit less what it has in flight (counted now, under the lock
-- lock_due_keys took); the claim takes the lanes' first tasks, then their seconds, and
-- so on: round-robin, by priority within a rank.
WITH lanes AS (
    SELECT l.key, CASE WHEN l.lim IS NULL THEN $5
                       ELSE greatest(0, least($5, l.lim - (
                           SELECT count(*) FROM tasks AS a
                           WHERE a.state IN ('dispatched', 'running')
                             AND a.concurrency_key = l.key))) END AS room
    FROM unnest($3::text[], $4::int[]) AS l (key, lim)
), keyed AS (
    SELECT c.id, c.priority, c.run_at,
           row_number() OVER (PARTITION BY c.concurrency_key
                              ORDER BY priority DESC, run_at) AS rank
    FROM lanes, LATERAL (
        SELECT id, priority, run_at, concurrency_key FROM tasks
        WHERE state = 'pending' AND near AND concurrency_key = lanes.key
          AND (region IS NULL OR region = $1) AND run_at <= now()
        ORDER BY priority DESC, run_at
        LIMIT lanes.room
        FOR UPDATE SKIP LOCKED
    ) AS c
), free AS (
    SELECT id, priority, run_at FROM tasks
    WHERE state = 'pending' AND near AND region IS NULL AND concurrency_key IS NULL
      AND run_at <= now()
    ORDER BY priority DESC, run_at
    LIMIT $5
    FOR UPDATE SKIP LOCKED
), pinned AS (
    SELECT id, priority, run_at FROM tasks
    WHERE state = 'pending' AND near AND region = $1 AND concurrency_key IS NULL
      AND run_at <= now()
    ORDER BY priority DESC, run_at
    LIMIT $5
    FOR UPDATE SKIP LOCKED
), unkeyed AS (
    SELECT id, priority, run_at, row_number() OVER (ORDER BY priority DESC, run_at) AS rank
    FROM (SELECT * FROM free UNION ALL SELECT * FROM pinned) AS u
), due AS (
    SELECT id FROM (SELECT * FROM keyed UNION ALL SELECT * FROM unkeyed) AS candidates
    ORDER BY rank, priority DESC, run_at
    LIMIT $2
), claimed AS (
    UPDATE tasks AS t
    SET state = 'dispatched', attempt = t.attempt + 1, assigned_region = $1,
        picked_at = coalesce(t.picked_at, now()), claimed_at = now(), worker_id = NULL
    WHERE t.id = ANY (ARRAY (SELECT id FROM due))
    RETURNING t.id, t.attempt, t.kind, t.payload::text AS payload, t.timeout_s, t.priority,
              t.run_at, t.depends_on
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT 'pending', pg_backend_pid() % 16, -count(*) FROM claimed HAVING count(*) > 0
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT c.*, CASE WHEN c.depends_on IS NOT NULL THEN (
           SELECT jsonb_object_agg(p.id, p.output) FROM tasks AS p
           WHERE p.id = ANY (c.depends_on))::text END AS parent_outputs
FROM claimed AS c;

-- name: promote_near
-- Pending tasks due within the claim horizon ($2 seconds) become near, the soonest due
-- first, up to $1 a call. Rows another master is promoting are skipped, not waited for.
UPDATE tasks AS t SET near = true
-- By key, whatever the planner guesses of their number.
WHERE t.id = ANY (ARRAY (
    SELECT id FROM tasks
    WHERE state = 'pending' AND NOT near
      AND run_at <= now() + $2::float8 * interval '1 second'
    ORDER BY run_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
));

-- name: next_due
-- When the next near task not yet due, unpinned or pinned to one of the live regions $1,
-- will be (those already due wait for room, not for a time; those further off are
-- promoted at the scanner's ticks, well ahead of time).
-- In run_at order, so that only the run_at indexes serve: an aggregate could read the
-- whole claim index instead.
SELECT least(
    (SELECT run_at FROM tasks
     WHERE state = 'pending' AND near AND region IS NULL AND run_at > now()
     ORDER BY run_at LIMIT 1),
    (SELECT run_at FROM tasks
     WHERE state = 'pending' AND near AND region IS NOT NULL AND region = ANY ($1::text[])
       AND run_at > now()
     ORDER BY run_at LIMIT 1));

-- name: oldest_due
-- The near task due first, from the run_at indexes (one entry each); a task due but not
-- yet promoted is at most a scan interval old.
SELECT least(
    (SELECT run_at FROM tasks
     WHERE state = 'pending' AND near AND region IS NULL AND run_at <= now()
     ORDER BY run_at LIMIT 1),
    (SELECT run_at FROM tasks
     WHERE state = 'pending' AND near AND region IS NOT NULL AND run_at <= now()
     ORDER BY run_at LIMIT 1)) AS run_at;

-- name: region_room
-- Live regions of master $2 (every live region when $2 is NULL) and how many more tasks
-- each will take: what it advertised it holds at most, less what is already dispatched
-- to it or running there; and how many it holds beyond its workers' slots at most.
-- And, the same on every row (each evaluated once): whether any
-- task with a concurrency key is due (claims then go key by key), and how many due tasks
-- these regions could take, counted up to $3 (0: not counted), each from its claim
-- index (read in its order, so that no other index is taken for it): unkeyed free,
-- unkeyed pinned to one of them, keyed. A region's share of a scan
-- follows that count, so a small batch is spread, not taken by one. One round trip for
-- all of it, on every scan.
WITH live AS MATERIALIZED (
    SELECT name, address, max_outstanding, capacity FROM regions
    WHERE state = 'up' AND last_heartbeat > now() - $1::float8 * interval '1 second'
      AND ($2::text IS NULL OR master IS NULL OR master = $2)
), names AS MATERIALIZED (
    SELECT coalesce(array_agg(name), '{}') AS a FROM live
)
SELECT l.name, l.address, l.max_outstanding - coalesce(i.n, 0) AS room,
       greatest(l.max_outstanding - l.capacity, 0) AS queue,
       coalesce((SELECT true FROM tasks
                 WHERE state = 'pending' AND near AND concurrency_key IS NOT NULL
                   AND run_at <= now()
                 -- The keyed claim index's order: read from it, and no other (an
                 -- EXISTS would drop the order, and any index of pending tasks would do).
                 ORDER BY concurrency_key, priority DESC, run_at LIMIT 1), false) AS keyed_due,
       (SELECT least($3, (SELECT count(*) FROM (
            SELECT 1 FROM tasks
            WHERE state = 'pending' AND near AND region IS NULL AND concurrency_key IS NULL
              AND run_at <= now()
            ORDER BY priority DESC, run_at  -- the claim index's order: read from it
            LIMIT $3
        ) AS free) + (SELECT count(*) FROM live AS lr, LATERAL (
            -- Region by region: each a range of the pinned claim index.
            SELECT 1 FROM tasks
            WHERE state = 'pending' AND near AND region = lr.name
              AND concurrency_key IS NULL AND run_at <= now()
            ORDER BY priority DESC, run_at
            LIMIT $3
        ) AS pinned) + (SELECT count(*) FROM (
            SELECT 1 FROM tasks
            WHERE state = 'pending' AND near AND concurrency_key IS NOT NULL
              AND (region IS NULL OR region = ANY ((SELECT a FROM names)::text[]))
              AND run_at <= now()
            ORDER BY concurrency_key, priority DESC, run_at
            LIMIT $3
        ) AS keyed))) AS due
FROM live AS l
LEFT JOIN (
    SELECT assigned_region, count(*) AS n
    FROM tasks
    WHERE state IN ('dispatched', 'running')
    GROUP BY assigned_region
) AS i ON i.assigned_region = l.name
ORDER BY l.name;

-- name: return_to_pending
-- Attempts that never started (undeliverable batch, a region handing work back), for
-- reason $3: they end returned.
WITH returned AS (
    UPDATE tasks AS t
    SET state = 'pending', assigned_region = NULL, worker_id = NULL
    FROM unnest($1::uuid[], $2::int[]) AS e(id, attempt), tasks AS old
    WHERE t.id = e.id AND t.attempt = e.attempt AND t.state IN ('dispatched', 'running')
      AND old.id = t.id
    RETURNING t.id, t.attempt, old.assigned_region, old.worker_id, old.claimed_at,
              old.started_at
), recorded AS (
    INSERT INTO attempts (task_id, attempt, region, worker_id, claimed_at, started_at,
                          outcome, reason)
    SELECT id, attempt, assigned_region, worker_id, claimed_at, started_at, 'returned', $3
    FROM returned
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT 'pending', pg_backend_pid() % 16, count(*) FROM returned HAVING count(*) > 0
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT id FROM returned;

-- name: mark_started
-- $5: the region that reported each start (reports of several regions go in one).
WITH e AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[], $5::text[])
        AS e(id, attempt, worker_id, started_at, region)
), updated AS (
    UPDATE tasks AS t
    SET state = 'running', started_at = e.started_at, worker_id = e.worker_id
    FROM e
    WHERE t.id = e.id AND t.attempt = e.attempt AND t.state IN ('dispatched', 'running')
    RETURNING t.id, t.claimed_at, t.run_at, t.lost_at, t.schedule
), stale AS (
    SELECT e.id, e.attempt FROM e WHERE NOT EXISTS (SELECT 1 FROM updated u WHERE u.id = e.id)
), hops AS (
    SELECT date_part('epoch', e.started_at - u.claimed_at) AS to_started,
           date_part('epoch', e.started_at - u.run_at) AS due_to_started,
           date_part('epoch', e.started_at - u.lost_at) AS rescued, u.schedule, e.region
    FROM updated AS u JOIN e ON e.id = u.id
)
-- One row: the stale starts (attempts no longer owned), and what the hop histograms
-- need of the applied ones, in seconds (see Database.apply_report).
SELECT ARRAY (SELECT id FROM stale) AS stale_ids,
       ARRAY (SELECT attempt FROM stale) AS stale_attempts,
       NULL::text[] AS states, NULL::int[] AS counts,
       ARRAY (SELECT to_started FROM hops) AS to_started,
       ARRAY (SELECT region FROM hops) AS hop_regions,
       ARRAY (SELECT due_to_started FROM hops) AS due_to_started,
       ARRAY (SELECT rescued FROM hops WHERE rescued IS NOT NULL) AS rescued,
       ARRAY (SELECT schedule FROM hops WHERE schedule IS NOT NULL) AS schedules,
       ARRAY (SELECT due_to_started FROM hops WHERE schedule IS NOT NULL) AS schedule_lags,
       NULL::uuid[] AS ended, NULL::uuid[] AS failed;

-- name: mark_finished
-- A failure with attempts left goes back to pending with an exponential backoff;
-- rows come back only for stale events (attempt no longer owned). $17: the region that
-- reported each result (reports of several regions go in one).
WITH e AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::bool[], $4::text[], $5::timestamptz[],
                         $6::timestamptz[], $7::int[], $8::text[], $9::text[], $12::text[],
                         $13::bool[], $14::bool[], $15::int[], $16::bool[], $18::bool[],
                         $17::text[])
        AS e(id, attempt, ok, worker_id, started_at, finished_at, exit_code, output, error,
             stderr, output_truncated, stderr_truncated, killed_processes, timed_out,
             start_unreported, region)
), updated AS (
    UPDATE tasks AS t
    SET state = CASE
            WHEN e.ok THEN 'succeeded'
            WHEN t.failures + 1 < t.max_attempts THEN 'pending'
            ELSE 'failed' END,
        failures = t.failures + (NOT e.ok)::int,
        run_at = CASE
            WHEN NOT e.ok AND t.failures + 1 < t.max_attempts
            THEN now() + least($10::float8 * power(2, t.failures), $11::float8)
                         * (0.75 + random() * 0.5) * interval '1 second'
            ELSE t.run_at END,
        -- A retry waits out its backoff: near again when the scanner promotes it.
        near = e.ok OR t.failures + 1 >= t.max_attempts,
        assigned_region = CASE
            WHEN NOT e.ok AND t.failures + 1 < t.max_attempts THEN NULL
            ELSE t.assigned_region END,
        started_at = coalesce(e.started_at, t.started_at),
        finished_at = CASE
            WHEN e.ok OR t.failures + 1 >= t.max_attempts THEN e.finished_at END,
        worker_id = e.worker_id,
        exit_code = e.exit_code,
        output = e.output,
        error = e.error,
        stderr = e.stderr,
        output_truncated = e.output_truncated,
        stderr_truncated = e.stderr_truncated,
        killed_processes = e.killed_processes,
        -- Kept only where the start is learnt now and the task is done: returned below.
        lost_at = CASE WHEN e.start_unreported AND (e.ok OR t.failures + 1 >= t.max_attempts)
                       THEN t.lost_at END
    FROM e
    WHERE t.id = e.id AND t.attempt = e.attempt AND t.state IN ('dispatched', 'running')
    RETURNING t.id, t.state, t.claimed_at, t.run_at, t.lost_at, t.schedule, t.has_dependents,
              t.concurrency_key
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT u.state, pg_backend_pid() % 16, count(*) FROM updated AS u
    WHERE u.state IN ('succeeded', 'failed', 'pending')
    GROUP BY u.state
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
), stale AS (
    SELECT e.* FROM e WHERE NOT EXISTS (SELECT 1 FROM updated u WHERE u.id = e.id)
), recorded AS (
    -- Each applied result ends its attempt (its region reported it); a stale one, of a
    -- task that exists, says that attempt's result came and was dropped.
    INSERT INTO attempts (task_id, attempt, region, worker_id, claimed_at, started_at,
                          finished_at, outcome, reason, exit_code)
    SELECT e.id, e.attempt, e.region, e.worker_id, u.claimed_at, e.started_at, e.finished_at,
           CASE WHEN e.ok THEN 'succeeded' WHEN e.timed_out THEN 'timed_out'
                ELSE 'failed' END,
           e.error, e.exit_code
    FROM e JOIN updated AS u ON u.id = e.id
  UNION ALL
    SELECT s.id, s.attempt, s.region, s.worker_id, NULL, s.started_at, s.finished_at, 'stale',
           'its result came when the attempt was no longer the task''s own: dropped',
           s.exit_code
    FROM stale AS s WHERE EXISTS (SELECT 1 FROM tasks WHERE id = s.id)
)
-- One row: the stale events; how many were applied, by the state they left the task in;
-- and of the starts known only from their results, what the hop histograms need, in
-- seconds (of a task going back to pending, run_at is already its retry's: left out).
, hops AS (
    SELECT date_part('epoch', e.started_at - u.claimed_at) AS to_started,
           date_part('epoch', e.started_at - u.run_at) AS due_to_started,
           date_part('epoch', e.started_at - u.lost_at) AS rescued, u.schedule, e.region
    FROM updated AS u JOIN e ON e.id = u.id
    WHERE e.start_unreported AND e.started_at IS NOT NULL AND u.state <> 'pending'
), counts AS (
    SELECT state, count(*)::int AS n FROM updated GROUP BY state
)
SELECT ARRAY (SELECT id FROM stale) AS stale_ids,
       ARRAY (SELECT attempt FROM stale) AS stale_attempts,
       ARRAY (SELECT state FROM counts) AS states, ARRAY (SELECT n FROM counts) AS counts,
       ARRAY (SELECT to_started FROM hops) AS to_started,
       ARRAY (SELECT region FROM hops) AS hop_regions,
       ARRAY (SELECT due_to_started FROM hops) AS due_to_started,
       ARRAY (SELECT rescued FROM hops WHERE rescued IS NOT NULL) AS rescued,
       ARRAY (SELECT schedule FROM hops WHERE schedule IS NOT NULL) AS schedules,
       ARRAY (SELECT due_to_started FROM hops WHERE schedule IS NOT NULL) AS schedule_lags,
       -- Ended tasks that have children to release (see release_dependents), and of
       -- those the ones that failed (see doomed_dependents).
       ARRAY (SELECT id FROM updated WHERE has_dependents AND state <> 'pending') AS ended,
       ARRAY (SELECT id FROM updated WHERE has_dependents AND state = 'failed') AS failed,
       -- A task of a limited key ended: its slot is free for every master, not only for
       -- the one its region reports to (which wakes anyway).
       CASE WHEN EXISTS (SELECT 1 FROM updated AS u JOIN concurrency_limits AS l
                         ON l.key = u.concurrency_key)
            THEN pg_notify('strata_tasks', '') END AS key_freed;

-- name: mark_evicted
-- Attempts whose worker $3 died; their region ($5) runs them again on another of its
-- workers, under the same attempt. Applied before a report's starts, so the attempt is
-- still the dead worker's, or not yet known to have started (its start came in the same
-- report as the eviction); recorded once, however often the report is sent.
WITH e AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[])
        AS e(id, attempt, worker_id, reason, region)
), evicted AS (
    UPDATE tasks AS t
    SET state = 'dispatched', worker_id = NULL, started_at = NULL,
        lost_at = coalesce(t.lost_at, now())
    FROM e, tasks AS old
    WHERE t.id = e.id AND t.attempt = e.attempt AND t.state IN ('dispatched', 'running')
      AND (t.worker_id = e.worker_id OR t.worker_id IS NULL) AND old.id = t.id
      AND NOT EXISTS (
          SELECT 1 FROM attempts AS a
          WHERE a.task_id = e.id AND a.attempt = e.attempt AND a.worker_id = e.worker_id
            AND a.outcome = 'evicted')
    RETURNING t.id, t.attempt, e.worker_id, old.claimed_at, old.started_at, e.reason,
              e.region
)
INSERT INTO attempts (task_id, attempt, region, worker_id, claimed_at, started_at,
                      outcome, reason)
SELECT id, attempt, region, worker_id, claimed_at, started_at, 'evicted', reason
FROM evicted;

-- name: list_attempts
SELECT attempt, region, worker_id, claimed_at, started_at, finished_at, outcome, reason,
       exit_code
FROM attempts WHERE task_id = $1
ORDER BY attempt, finished_at;

-- name: count_stale
UPDATE regions SET stale_results = stale_results + $2 WHERE name = $1;

-- name: list_regions
SELECT name, address, state, registered_at, last_heartbeat, capacity, max_outstanding,
       running, queued, workers::text AS workers, stale_results, master,
       state = 'up' AND last_heartbeat > now() - $1::float8 * interval '1 second' AS live
FROM regions
ORDER BY name;

-- name: get_task
SELECT * FROM tasks WHERE id = $1;

-- name: list_tasks_branch
-- The tasks in one state ({state}, a literal: each state has an index of its own, partial,
-- in created order) past the cursor ($3, $4: the (created_at, id) of the last row seen;
-- {bound} says which way). Database.listing orders and limits it ($5), and merges the
-- branches of every state for a listing of all: each reads only its part of the page,
-- and the next row after it. No cursor reads from the start: the bound is an index
-- condition either way, in any plan.
SELECT * FROM tasks
WHERE state = '{state}'
  AND ($1::text IS NULL OR coalesce(assigned_region, region) = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND {bound}

-- name: cancel_task
-- Returns the row as it was before, so the caller knows whether a region holds it.
WITH before AS (
    SELECT id, state, assigned_region, attempt, worker_id, claimed_at, started_at,
           has_dependents
    FROM tasks WHERE id = $1 FOR UPDATE
), updated AS (
    UPDATE tasks AS t SET state = 'cancelled', finished_at = now(), waiting_on = 0
    FROM before b
    WHERE t.id = b.id AND b.state IN ('waiting', 'pending', 'dispatched', 'running')
    RETURNING t.id
), recorded AS (
    -- An attempt in flight ends with it.
    INSERT INTO attempts (task_id, attempt, region, worker_id, claimed_at, started_at,
                          outcome, reason)
    SELECT b.id, b.attempt, b.assigned_region, b.worker_id, b.claimed_at, b.started_at,
           'cancelled', 'cancelled by a client'
    FROM updated, before AS b
    WHERE b.state IN ('dispatched', 'running')
), counted AS (
    -- Cancelled, and no longer pending (or waiting) if it was.
    INSERT INTO task_counts (state, slot, n)
    SELECT c.state, pg_backend_pid() % 16, c.n
    FROM updated, before AS b,
         LATERAL (VALUES ('cancelled', 1), (b.state, -1)) AS c (state, n)
    WHERE c.state IN ('cancelled', 'pending', 'waiting')
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT b.state, b.assigned_region, b.attempt, EXISTS (SELECT 1 FROM updated) AS cancelled,
       b.has_dependents
FROM before b;

-- name: count_by_state
-- Pending and finished tasks from the counts kept as they move; those in flight (as many
-- as the regions hold at most) from their partial index. A state with none is left out.
SELECT state, n FROM (
    SELECT state, count(*) AS n FROM tasks WHERE state IN ('dispatched', 'running')
    GROUP BY state
  UNION ALL
    SELECT state, sum(n)::bigint FROM task_counts GROUP BY state
) AS counts
WHERE n > 0;

-- name: mark_regions_down
UPDATE regions
SET state = 'down'
WHERE state = 'up' AND last_heartbeat < now() - $1::float8 * interval '1 second'
RETURNING name, last_heartbeat;

-- name: reclaim_down_regions
-- Every unfinished attempt held by a down region: a new attempt (the fencing token moves
-- on, so the old one's late results are dropped), back to pending. Pinned tasks come
-- back too, and wait there until their region is up again.
WITH reclaimed AS (
    UPDATE tasks AS t
    SET state = 'pending', attempt = t.attempt + 1, assigned_region = NULL, worker_id = NULL,
        lost_at = coalesce(t.lost_at, r.last_heartbeat)
    FROM regions AS r, tasks AS old
    WHERE r.name = t.assigned_region AND r.state = 'down'
      AND t.state IN ('dispatched', 'running') AND old.id = t.id
    RETURNING t.id, r.name AS region, old.attempt, old.worker_id, old.claimed_at,
              old.started_at
), recorded AS (
    INSERT INTO attempts (task_id, attempt, region, worker_id, claimed_at, started_at,
                          outcome, reason)
    SELECT id, attempt, region, worker_id, claimed_at, started_at, 'reclaimed',
           'region ' || region || ' was declared down'
    FROM reclaimed
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT 'pending', pg_backend_pid() % 16, count(*) FROM reclaimed HAVING count(*) > 0
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT id, region FROM reclaimed;

-- name: beat_region
-- A region's heartbeat (or registration), in one statement: one round trip and one
-- commit a beat, which with a thousand regions beating is most of what a beat costs.
-- The region's row is upserted: address $2, capacity $3, max_outstanding $4, running
-- $5, queued $6, workers $7 (JSON), and $8 the master it talks to now (NULL: leave it as
-- it was). Then, unless the region was down (its attempts were reclaimed then): attempts
-- the master believes it holds but its heartbeat does not list ($9, $10), claimed before
-- $11 (younger ones may still be on their way), never arrived or were lost with a
-- restart: a new attempt each, back to pending. Returns the state the region had before
-- ('down' means the master gave its work away; NULL if new) and how many were lost.
WITH before AS (SELECT state FROM regions WHERE name = $1),
beat AS (
    INSERT INTO regions (name, address, state, last_heartbeat, capacity, max_outstanding,
                         running, queued, workers, master)
    VALUES ($1, $2, 'up', now(), $3, $4, $5, $6, $7::jsonb, $8)
    ON CONFLICT (name) DO UPDATE
    SET address = excluded.address, state = 'up', last_heartbeat = now(),
        capacity = excluded.capacity, max_outstanding = excluded.max_outstanding,
        running = excluded.running, queued = excluded.queued, workers = excluded.workers,
        master = coalesce(excluded.master, regions.master)
), lost AS (
    UPDATE tasks AS t
    SET state = 'pending', attempt = t.attempt + 1, assigned_region = NULL, worker_id = NULL,
        lost_at = coalesce(t.lost_at, now())
    FROM tasks AS old
    WHERE t.assigned_region = $1 AND t.state IN ('dispatched', 'running')
      AND t.claimed_at < $11 AND old.id = t.id
      AND (SELECT state FROM before) IS DISTINCT FROM 'down'
      AND NOT EXISTS (
          SELECT 1 FROM unnest($9::uuid[], $10::int[]) AS h(id, attempt)
          WHERE h.id = t.id AND h.attempt = t.attempt
      )
    RETURNING t.id, old.attempt, old.worker_id, old.claimed_at, old.started_at
), recorded AS (
    INSERT INTO attempts (task_id, attempt, region, worker_id, claimed_at, started_at,
                          outcome, reason)
    SELECT id, attempt, $1, worker_id, claimed_at, started_at, 'reclaimed',
           'region ' || $1 || ' no longer held it (never delivered, or lost in a restart)'
    FROM lost
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT 'pending', pg_backend_pid() % 16, count(*) FROM lost HAVING count(*) > 0
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT (SELECT state FROM before) AS previous_state, (SELECT count(*) FROM lost)::int AS lost;

-- name: region_names
SELECT name, state = 'up' AND last_heartbeat > now() - $1::float8 * interval '1 second' AS live,
       last_heartbeat
FROM regions
ORDER BY name;

-- name: delete_region
-- Only a region that is down and that no unfinished task names (pinned or assigned).
-- Returns why not, or deletes it and returns nothing to say.
WITH r AS (
    SELECT name, state = 'up' AND last_heartbeat > now() - $2::float8 * interval '1 second'
           AS live
    FROM regions WHERE name = $1 FOR UPDATE
), users AS (
    SELECT count(*) AS n FROM tasks
    WHERE (region = $1 OR assigned_region = $1)
      AND state IN ('pending', 'dispatched', 'running')
), deleted AS (
    DELETE FROM regions WHERE name = $1
      AND NOT (SELECT live FROM r) AND (SELECT n FROM users) = 0
    RETURNING name
)
SELECT (SELECT live FROM r) AS live, (SELECT n FROM users) AS tasks,
       EXISTS (SELECT 1 FROM deleted) AS deleted
FROM r;

-- name: register_event_listener
INSERT INTO event_listeners (master, until)
VALUES ($1, now() + $2::float8 * interval '1 second')
ON CONFLICT (master) DO UPDATE SET until = excluded.until;

-- name: insert_schedule
INSERT INTO schedules (name, cron, every_s, timezone, task, overlap, catchup, start_at,
                       end_at, paused, next_fire_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11)
ON CONFLICT (name) DO NOTHING
RETURNING *;

-- name: update_schedule
UPDATE schedules
SET cron = $2, every_s = $3, timezone = $4, task = $5::jsonb, overlap = $6, catchup = $7,
    start_at = $8, end_at = $9, paused = $10, next_fire_at = $11, updated_at = now()
WHERE name = $1
RETURNING *;

-- name: get_schedule
SELECT * FROM schedules WHERE name = $1;

-- name: list_schedules
SELECT * FROM schedules ORDER BY name;

-- name: due_schedules
-- The schedules soonest to fire, and whether each is due: at its fire time, or $1
-- seconds before when its runs may overlap (its task is made ahead, due at that time).
SELECT name, next_fire_at, overlap = 'allow' AS ahead,
       next_fire_at <= clock_timestamp()
           + CASE WHEN overlap = 'allow' THEN $1::float8 ELSE 0 END * interval '1 second'
       AS due
FROM schedules
WHERE NOT paused AND next_fire_at IS NOT NULL
ORDER BY next_fire_at
LIMIT $2;

-- name: lock_due_schedule
-- The schedule, if it is due and no other master is firing it now; with the state of
-- its last fire's task, and the time by the database's clock.
SELECT s.*, t.state AS last_task_state, clock_timestamp() AS now
FROM schedules AS s LEFT JOIN tasks AS t ON t.id = s.last_task_id
WHERE s.name = $1 AND NOT s.paused AND s.next_fire_at IS NOT NULL
  AND s.next_fire_at <= clock_timestamp()
      + CASE WHEN s.overlap = 'allow' THEN $2::float8 ELSE 0 END * interval '1 second'
FOR UPDATE OF s SKIP LOCKED;

-- name: lock_schedule
SELECT s.*, t.state AS last_task_state, clock_timestamp() AS now
FROM schedules AS s LEFT JOIN tasks AS t ON t.id = s.last_task_id
WHERE s.name = $1
FOR UPDATE OF s;

-- name: record_fires
-- The fires not yet recorded: a (schedule, fire_time) another master recorded first is
-- left as it is, and its task is not made again.
INSERT INTO schedule_fires (schedule, fire_time, outcome, reason, task_id)
SELECT $1, f.* FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::uuid[])
    AS f (fire_time, outcome, reason, task_id)
ON CONFLICT (schedule, fire_time) DO NOTHING
RETURNING fire_time, task_id;

-- name: advance_schedule
UPDATE schedules
SET next_fire_at = $2, last_task_id = coalesce($3, last_task_id)
WHERE name = $1;

-- name: list_fires
SELECT f.fire_time, f.outcome, f.reason, f.task_id, f.recorded_at, t.state AS task_state
FROM schedule_fires AS f LEFT JOIN tasks AS t ON t.id = f.task_id
WHERE f.schedule = $1 AND f.fire_time < coalesce($2::timestamptz, 'infinity')
ORDER BY f.fire_time DESC
LIMIT $3;

-- name: remove_finished
-- Tasks that finished before $1, at most $2 of each final state, with their attempts,
-- taken off the counts. Found by created_at, in the index listings need anyway (one per
-- state): a task is made before it finishes, and the few made before the cutoff that finished
-- after it are passed over by the filter. Rows another statement holds are skipped,
-- never waited for.
WITH old_succeeded AS (
    SELECT id FROM tasks WHERE state = 'succeeded' AND created_at < $1 AND finished_at < $1
    ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
), old_failed AS (
    SELECT id FROM tasks WHERE state = 'failed' AND created_at < $1 AND finished_at < $1
    ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
), old_cancelled AS (
    SELECT id FROM tasks WHERE state = 'cancelled' AND created_at < $1 AND finished_at < $1
    ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
), old AS (
    SELECT id FROM old_succeeded UNION ALL SELECT id FROM old_failed
    UNION ALL SELECT id FROM old_cancelled
), removed AS (
    DELETE FROM tasks AS t USING old WHERE t.id = old.id
    RETURNING t.id, t.state, t.depends_on, t.has_dependents
), edges_out AS (
    -- Its edges, each found by key: to its children, and from its parents.
    DELETE FROM task_deps AS d USING removed AS r WHERE r.has_dependents AND d.parent = r.id
), edges_in AS (
    DELETE FROM task_deps AS d USING removed AS r, unnest(r.depends_on) AS p (id)
    WHERE d.parent = p.id AND d.child = r.id
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT state, pg_backend_pid() % 16, -count(*) FROM removed GROUP BY state
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
), histories AS (
    DELETE FROM attempts WHERE task_id IN (SELECT id FROM removed)
)
SELECT count(*) FROM removed;

-- name: remove_old_fires
-- Fire records kept as long as the tasks they made.
DELETE FROM schedule_fires
WHERE ctid IN (SELECT ctid FROM schedule_fires WHERE fire_time < $1 LIMIT $2);

-- name: insert_api_token
-- Nothing comes back when the name is taken (a hash taken is a unique violation: two
-- random tokens do not collide).
INSERT INTO api_tokens (name, hash) VALUES ($1, $2)
ON CONFLICT (name) DO NOTHING
RETURNING name, created_at;

-- name: list_api_tokens
SELECT name, created_at, last_used_at FROM api_tokens ORDER BY name;

-- name: api_token_hashes
-- What every master reads about once a second: a handful of rows.
SELECT hash FROM api_tokens;

-- name: delete_api_token
DELETE FROM api_tokens WHERE name = $1;

-- name: touch_api_tokens
UPDATE api_tokens SET last_used_at = now() WHERE hash = ANY($1::text[]);
