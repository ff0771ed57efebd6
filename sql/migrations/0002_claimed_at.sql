-- When the current attempt was claimed: a region's heartbeat lists what it holds, and an
-- attempt claimed well before that heartbeat that the region does not hold never
-- reached it (a master died mid-delegation, a region restarted and lost its queue).
ALTER TABLE tasks ADD COLUMN claimed_at timestamptz;
