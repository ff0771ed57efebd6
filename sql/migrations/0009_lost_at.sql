-- When the task's last attempt was lost with its region (its last heartbeat) or its
-- worker (when the region found it dead): cleared when the task next ends. Its next
-- start gives strata_task_rescue_seconds, the time from the death to running elsewhere.
ALTER TABLE tasks ADD COLUMN lost_at timestamptz;
