-- A task re-queued by hand (`strata retry`, POST /v1/tasks/{id}/retry) is a new task
-- that names the one it retries. A result keeps stdout and stderr apart, and says
-- whether either was cut to its tail.
ALTER TABLE tasks ADD COLUMN retry_of uuid;
ALTER TABLE tasks ADD COLUMN stderr text;
ALTER TABLE tasks ADD COLUMN output_truncated boolean NOT NULL DEFAULT false;
ALTER TABLE tasks ADD COLUMN stderr_truncated boolean NOT NULL DEFAULT false;
