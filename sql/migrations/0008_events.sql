-- The event stream: every change of a task's state (or of its attempt) is published with
-- NOTIFY on strata_events, from a statement-level trigger, so no statement that moves a
-- task can forget to, and a subscriber hears of it only once it is committed.
--
-- Nothing is published while no master has a subscriber: a master with one (or that had
-- one within its resume window) keeps a row here, renewed, that expires if it dies.
CREATE TABLE event_listeners (
    master text PRIMARY KEY,
    until  timestamptz NOT NULL
);

-- Each NOTIFY carries a batch: "<seq> [[id, state, attempt, region, worker_id, at], ...]",
-- cut to stay under PostgreSQL's 8000-byte payload limit (a line is at most ~330 bytes:
-- the worker id is cut to 100 characters, region names are at most 63). at is the time of
-- the change in unix seconds: when it started for running, when it ended for a finished
-- state, else the statement's time.
CREATE SEQUENCE event_batches;

CREATE FUNCTION publish_task_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM event_listeners WHERE until > now()) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('strata_events', nextval('event_batches') || ' [' || string_agg(line, ',') || ']')
        FROM (
            SELECT line, sum(length(line) + 1) OVER (ROWS UNBOUNDED PRECEDING) / 7000 AS batch
            FROM (
                SELECT json_build_array(n.id, n.state, n.attempt, n.region, NULL,
                                        extract(epoch FROM statement_timestamp()))::text AS line
                FROM new_rows AS n
            ) AS lines
        ) AS cut
        GROUP BY batch;
    ELSE
        PERFORM pg_notify('strata_events', nextval('event_batches') || ' [' || string_agg(line, ',') || ']')
        FROM (
            SELECT line, sum(length(line) + 1) OVER (ROWS UNBOUNDED PRECEDING) / 7000 AS batch
            FROM (
                SELECT json_build_array(
                    n.id, n.state, n.attempt, coalesce(n.assigned_region, n.region),
                    left(n.worker_id, 100),
                    extract(epoch FROM CASE
                        WHEN n.state = 'running' THEN coalesce(n.started_at, statement_timestamp())
                        WHEN n.state IN ('succeeded', 'failed', 'cancelled')
                            THEN coalesce(n.finished_at, statement_timestamp())
                        ELSE statement_timestamp() END))::text AS line
                FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
                WHERE n.state <> o.state OR n.attempt <> o.attempt
            ) AS lines
        ) AS cut
        GROUP BY batch;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_inserted_events AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION publish_task_events();
CREATE TRIGGER tasks_updated_events AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION publish_task_events();
