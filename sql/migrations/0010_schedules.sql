-- Schedules: a task made at each fire time of a cron expression or a fixed interval.
CREATE TABLE schedules (
    name         text PRIMARY KEY,
    cron         text,
    every_s      double precision,
    timezone     text NOT NULL DEFAULT 'UTC',
    task         jsonb NOT NULL,          -- the body of POST /v1/tasks, without run_at
    overlap      text NOT NULL DEFAULT 'allow'
                 CHECK (overlap IN ('allow', 'skip', 'cancel_previous')),
    catchup      text NOT NULL DEFAULT 'none' CHECK (catchup IN ('none', 'all')),
    start_at     timestamptz,
    end_at       timestamptz,
    paused       boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- The first fire time not yet accounted for (NULL: none left, past end_at).
    next_fire_at timestamptz,
    -- The task of the last fire: what overlap looks at.
    last_task_id uuid,
    CHECK ((cron IS NULL) <> (every_s IS NULL))
);
-- What the schedulers poll: the schedules that are due, soonest first.
CREATE INDEX schedules_due_idx ON schedules (next_fire_at) WHERE NOT paused;

-- Every fire time of every schedule, and what became of it. The key is what makes a
-- fire happen once, whichever masters race for it: the task is inserted in the
-- transaction that inserts its fire, and a second insert of the fire does nothing.
CREATE TABLE schedule_fires (
    schedule    text NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
    fire_time   timestamptz NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('fired', 'skipped_overlap', 'missed')),
    reason      text,
    task_id     uuid,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, fire_time)
);

-- The schedule a task was fired by: its start gives strata_schedule_lag_seconds.
ALTER TABLE tasks ADD COLUMN schedule text;
