-- How many processes a task left running in its process group, killed when it ended.
ALTER TABLE tasks ADD COLUMN killed_processes integer NOT NULL DEFAULT 0;
