-- A client that could not tell whether a create went through sends it again with the
-- same key and gets the task it made, not a second one. The key lives, and is unique,
-- as long as its task's row. The fingerprint is what was asked for: the same key asking
-- for something else is refused.
ALTER TABLE tasks ADD COLUMN idempotency_key text;
ALTER TABLE tasks ADD COLUMN fingerprint text;
CREATE UNIQUE INDEX tasks_idempotency_key_idx ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
