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
                       retry_of, schedule, near)
    SELECT u.*, u.run_at <= now() + $10::float8 * interval '1 second'
    FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::int[], $5::timestamptz[],
                $6::text[], $7::int[], $8::float8[], $9::uuid[], $11::text[])
        AS u (id, kind, payload, priority, run_at, region, max_attempts, timeout_s, retry_of,
              schedule)
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
                       retry_of, idempotency_key, fingerprint, near)
    SELECT u.*, u.run_at <= now() + $12::float8 * interval '1 second'
    FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::int[], $5::timestamptz[],
                $6::text[], $7::int[], $8::float8[], $9::uuid[], $10::text[], $11::text[])
        AS u (id, kind, payload, priority, run_at, region, max_attempts, timeout_s, retry_of,
              idempotency_key, fingerprint)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, created_at
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT 'pending', pg_backend_pid() % 16, count(*) FROM inserted HAVING count(*) > 0
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT array_agg(id) AS ids, min(created_at) AS created_at, pg_notify('strata_tasks', '')
FROM inserted;

-- name: tasks_by_key
SELECT * FROM tasks WHERE idempotency_key = ANY ($1::text[]);

-- name: claim_due
-- The most urgent due tasks region $1 may run: unpinned ones, and those pinned to it, each
-- read from its own index of near tasks in claim order and locked as read, skipping any
-- that another claim holds. Only when both kinds are due does it lock more than it
-- claims, and only until it commits.
WITH free AS (
    SELECT id, priority, run_at FROM tasks
    WHERE state = 'pending' AND near AND region IS NULL AND run_at <= now()
    ORDER BY priority DESC, run_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), pinned AS (
    SELECT id, priority, run_at FROM tasks
    WHERE state = 'pending' AND near AND region = $1 AND run_at <= now()
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
              t.run_at
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT 'pending', pg_backend_pid() % 16, -count(*) FROM claimed HAVING count(*) > 0
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT * FROM claimed;

-- name: count_due
-- How many due tasks the live regions $1 could take, counted up to $2 (their room): a
-- region's share of a scan follows it, so a small batch is spread, not taken by one.
-- Pinned tasks count only for the regions counted.
SELECT least($2, (SELECT count(*) FROM (
    SELECT 1 FROM tasks
    WHERE state = 'pending' AND near AND region IS NULL AND run_at <= now()
    LIMIT $2
) AS free) + (SELECT count(*) FROM (
    SELECT 1 FROM tasks
    WHERE state = 'pending' AND near AND region = ANY($1::text[]) AND run_at <= now()
    LIMIT $2
) AS pinned));

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
-- Live regions and how many more tasks each will take: what it advertised it holds at
-- most, less what is already dispatched to it or running there.
SELECT r.name, r.address, r.max_outstanding - coalesce(i.n, 0) AS room
FROM regions AS r
LEFT JOIN (
    SELECT assigned_region, count(*) AS n
    FROM tasks
    WHERE state IN ('dispatched', 'running')
    GROUP BY assigned_region
) AS i ON i.assigned_region = r.name
WHERE r.state = 'up' AND r.last_heartbeat > now() - $1::float8 * interval '1 second'
ORDER BY r.name;

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
WITH e AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[])
        AS e(id, attempt, worker_id, started_at)
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
           date_part('epoch', e.started_at - u.lost_at) AS rescued, u.schedule
    FROM updated AS u JOIN e ON e.id = u.id
)
-- One row: the stale starts (attempts no longer owned), and what the hop histograms
-- need of the applied ones, in seconds (see Database.apply_report).
SELECT ARRAY (SELECT id FROM stale) AS stale_ids,
       ARRAY (SELECT attempt FROM stale) AS stale_attempts,
       NULL::text[] AS states, NULL::int[] AS counts,
       ARRAY (SELECT to_started FROM hops) AS to_started,
       ARRAY (SELECT due_to_started FROM hops) AS due_to_started,
       ARRAY (SELECT rescued FROM hops WHERE rescued IS NOT NULL) AS rescued,
       ARRAY (SELECT schedule FROM hops WHERE schedule IS NOT NULL) AS schedules,
       ARRAY (SELECT due_to_started FROM hops WHERE schedule IS NOT NULL) AS schedule_lags;

-- name: mark_finished
-- A failure with attempts left goes back to pending with an exponential backoff;
-- rows come back only for stale events (attempt no longer owned).
WITH e AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::bool[], $4::text[], $5::timestamptz[],
                         $6::timestamptz[], $7::int[], $8::text[], $9::text[], $12::text[],
                         $13::bool[], $14::bool[], $15::int[], $16::bool[], $18::bool[])
        AS e(id, attempt, ok, worker_id, started_at, finished_at, exit_code, output, error,
             stderr, output_truncated, stderr_truncated, killed_processes, timed_out,
             start_unreported)
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
    RETURNING t.id, t.state, t.claimed_at, t.run_at, t.lost_at, t.schedule
), counted AS (
    INSERT INTO task_counts (state, slot, n)
    SELECT u.state, pg_backend_pid() % 16, count(*) FROM updated AS u
    WHERE u.state IN ('succeeded', 'failed', 'pending')
    GROUP BY u.state
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
), stale AS (
    SELECT e.* FROM e WHERE NOT EXISTS (SELECT 1 FROM updated u WHERE u.id = e.id)
), recorded AS (
    -- Each applied result ends its attempt (region $17 reported it); a stale one, of a
    -- task that exists, says that attempt's result came and was dropped.
    INSERT INTO attempts (task_id, attempt, region, worker_id, claimed_at, started_at,
                          finished_at, outcome, reason, exit_code)
    SELECT e.id, e.attempt, $17, e.worker_id, u.claimed_at, e.started_at, e.finished_at,
           CASE WHEN e.ok THEN 'succeeded' WHEN e.timed_out THEN 'timed_out'
                ELSE 'failed' END,
           e.error, e.exit_code
    FROM e JOIN updated AS u ON u.id = e.id
  UNION ALL
    SELECT s.id, s.attempt, $17, s.worker_id, NULL, s.started_at, s.finished_at, 'stale',
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
           date_part('epoch', e.started_at - u.lost_at) AS rescued, u.schedule
    FROM updated AS u JOIN e ON e.id = u.id
    WHERE e.start_unreported AND e.started_at IS NOT NULL AND u.state <> 'pending'
), counts AS (
    SELECT state, count(*)::int AS n FROM updated GROUP BY state
)
SELECT ARRAY (SELECT id FROM stale) AS stale_ids,
       ARRAY (SELECT attempt FROM stale) AS stale_attempts,
       ARRAY (SELECT state FROM counts) AS states, ARRAY (SELECT n FROM counts) AS counts,
       ARRAY (SELECT to_started FROM hops) AS to_started,
       ARRAY (SELECT due_to_started FROM hops) AS due_to_started,
       ARRAY (SELECT rescued FROM hops WHERE rescued IS NOT NULL) AS rescued,
       ARRAY (SELECT schedule FROM hops WHERE schedule IS NOT NULL) AS schedules,
       ARRAY (SELECT due_to_started FROM hops WHERE schedule IS NOT NULL) AS schedule_lags;

-- name: mark_evicted
-- Attempts whose worker $3 died; the region ($5) runs them again on another of its
-- workers, under the same attempt. Applied before a report's starts, so the attempt is
-- still the dead worker's, or not yet known to have started (its start came in the same
-- report as the eviction); recorded once, however often the report is sent.
WITH e AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[])
        AS e(id, attempt, worker_id, reason)
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
    RETURNING t.id, t.attempt, e.worker_id, old.claimed_at, old.started_at, e.reason
)
INSERT INTO attempts (task_id, attempt, region, worker_id, claimed_at, started_at,
                      outcome, reason)
SELECT id, attempt, $5, worker_id, claimed_at, started_at, 'evicted', reason
FROM evicted;

-- name: list_attempts
SELECT attempt, region, worker_id, claimed_at, started_at, finished_at, outcome, reason,
       exit_code
FROM attempts WHERE task_id = $1
ORDER BY attempt, finished_at;

-- name: count_stale
UPDATE regions SET stale_results = stale_results + $2 WHERE name = $1;

-- name: upsert_region
-- Returns the state the region had before ('down' means the master gave its work away).
WITH before AS (SELECT state FROM regions WHERE name = $1)
INSERT INTO regions (name, address, state, last_heartbeat, capacity, max_outstanding,
                     running, queued, workers)
VALUES ($1, $2, 'up', now(), $3, $4, $5, $6, $7::jsonb)
ON CONFLICT (name) DO UPDATE
SET address = excluded.address, state = 'up', last_heartbeat = now(),
    capacity = excluded.capacity, max_outstanding = excluded.max_outstanding,
    running = excluded.running, queued = excluded.queued, workers = excluded.workers
RETURNING (SELECT state FROM before) AS previous_state;

-- name: list_regions
SELECT name, address, state, registered_at, last_heartbeat, capacity, max_outstanding,
       running, queued, workers::text AS workers, stale_results,
       state = 'up' AND last_heartbeat > now() - $1::float8 * interval '1 second' AS live
FROM regions
ORDER BY name;

-- name: get_task
SELECT * FROM tasks WHERE id = $1;

-- name: list_tasks
-- Oldest first; the cursor is the (created_at, id) of the last row seen. No cursor reads
-- from the start: the bound is an index condition either way, in any plan.
SELECT * FROM tasks
WHERE ($1::text IS NULL OR coalesce(assigned_region, region) = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND (created_at, id) > (coalesce($3::timestamptz, '-infinity'),
                         coalesce($4::uuid, '00000000-0000-0000-0000-000000000000'))
ORDER BY created_at, id
LIMIT $5;

-- name: list_tasks_newest_first
SELECT * FROM tasks
WHERE ($1::text IS NULL OR coalesce(assigned_region, region) = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND (created_at, id) < (coalesce($3::timestamptz, 'infinity'),
                         coalesce($4::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
ORDER BY created_at DESC, id DESC
LIMIT $5;

-- name: list_tasks_in_state
-- Tasks in state $6: queries of their own, so that every plan, a cached generic one
-- included, reads the (state, created_at, id) index rather than filtering the table.
SELECT * FROM tasks
WHERE state = $6
  AND ($1::text IS NULL OR coalesce(assigned_region, region) = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND (state, created_at, id) > ($6, coalesce($3::timestamptz, '-infinity'),
                                coalesce($4::uuid, '00000000-0000-0000-0000-000000000000'))
ORDER BY state, created_at, id
LIMIT $5;

-- name: list_tasks_in_state_newest_first
SELECT * FROM tasks
WHERE state = $6
  AND ($1::text IS NULL OR coalesce(assigned_region, region) = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND (state, created_at, id) < ($6, coalesce($3::timestamptz, 'infinity'),
                                coalesce($4::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
ORDER BY state DESC, created_at DESC, id DESC
LIMIT $5;

-- name: cancel_task
-- Returns the row as it was before, so the caller knows whether a region holds it.
WITH before AS (
    SELECT id, state, assigned_region, attempt, worker_id, claimed_at, started_at
    FROM tasks WHERE id = $1 FOR UPDATE
), updated AS (
    UPDATE tasks AS t SET state = 'cancelled', finished_at = now()
    FROM before b
    WHERE t.id = b.id AND b.state IN ('pending', 'dispatched', 'running')
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
    -- Cancelled, and no longer pending if it was.
    INSERT INTO task_counts (state, slot, n)
    SELECT c.state, pg_backend_pid() % 16, c.n
    FROM updated, before AS b,
         LATERAL (VALUES ('cancelled', 1), ('pending', -1)) AS c (state, n)
    WHERE c.state = 'cancelled' OR b.state = 'pending'
    ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
)
SELECT b.state, b.assigned_region, b.attempt, EXISTS (SELECT 1 FROM updated) AS cancelled
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

-- name: reconcile_region
-- Attempts the master believes a live region holds but the region's heartbeat does not
-- list: they never arrived or were lost with a restart. A new attempt, back to pending.
WITH lost AS (
    UPDATE tasks AS t
    SET state = 'pending', attempt = t.attempt + 1, assigned_region = NULL, worker_id = NULL,
        lost_at = coalesce(t.lost_at, now())
    FROM tasks AS old
    WHERE t.assigned_region = $1 AND t.state IN ('dispatched', 'running')
      AND t.claimed_at < $4 AND old.id = t.id
      AND NOT EXISTS (
          SELECT 1 FROM unnest($2::uuid[], $3::int[]) AS h(id, attempt)
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
SELECT id FROM lost;

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
-- taken off the counts. Found by (state, created_at), an index listings need anyway: a
-- task is made before it finishes, and the few made before the cutoff that finished
-- after it are passed over by the filter. Rows another statement holds are skipped,
-- never waited for.
WITH old_succeeded AS (
    SELECT id FROM tasks WHERE state = 'succeeded' AND created_at < $1 AND finished_at < $1
    ORDER BY state, created_at LIMIT $2 FOR UPDATE SKIP LOCKED
), old_failed AS (
    SELECT id FROM tasks WHERE state = 'failed' AND created_at < $1 AND finished_at < $1
    ORDER BY state, created_at LIMIT $2 FOR UPDATE SKIP LOCKED
), old_cancelled AS (
    SELECT id FROM tasks WHERE state = 'cancelled' AND created_at < $1 AND finished_at < $1
    ORDER BY state, created_at LIMIT $2 FOR UPDATE SKIP LOCKED
), old AS (
    SELECT id FROM old_succeeded UNION ALL SELECT id FROM old_failed
    UNION ALL SELECT id FROM old_cancelled
), removed AS (
    DELETE FROM tasks AS t USING old WHERE t.id = old.id
    RETURNING t.id, t.state
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
