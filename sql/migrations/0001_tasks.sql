-- Tasks and regions. Every index the scanner uses is partial, so its cost follows
-- the number of due or in-flight tasks, never the number of finished ones.
CREATE TABLE tasks (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL,
    payload         jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'dispatched', 'running',
                                     'succeeded', 'failed', 'cancelled')),
    priority        integer NOT NULL DEFAULT 0,
    run_at          timestamptz NOT NULL,
    region          text,              -- pinned by the client, or NULL
    assigned_region text,              -- where the current attempt was sent
    worker_id       text,
    attempt         integer NOT NULL DEFAULT 0,   -- bumped by every claim: the fencing token
    failures        integer NOT NULL DEFAULT 0,   -- attempts that ran and failed
    max_attempts    integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    timeout_s       double precision NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    picked_at       timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    exit_code       integer,
    output          text,
    error           text
);

CREATE INDEX tasks_due_idx ON tasks (priority DESC, run_at) WHERE state = 'pending';
CREATE INDEX tasks_next_due_idx ON tasks (run_at) WHERE state = 'pending';
CREATE INDEX tasks_inflight_idx ON tasks (assigned_region)
    WHERE state IN ('dispatched', 'running');
CREATE INDEX tasks_created_idx ON tasks (created_at, id);

CREATE TABLE regions (
    name             text PRIMARY KEY,
    address          text NOT NULL,
    state            text NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'down')),
    registered_at    timestamptz NOT NULL DEFAULT now(),
    last_heartbeat   timestamptz NOT NULL DEFAULT now(),
    capacity         integer NOT NULL DEFAULT 0,
    max_outstanding  integer NOT NULL DEFAULT 0,
    running          integer NOT NULL DEFAULT 0,
    queued           integer NOT NULL DEFAULT 0,
    workers          jsonb NOT NULL DEFAULT '[]',
    stale_results    bigint NOT NULL DEFAULT 0
);
