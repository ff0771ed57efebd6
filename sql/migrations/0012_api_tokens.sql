-- API tokens made with `strata token create NAME`: only each token's hash is kept
-- (sha256:<hex>), never the token. Every master reads the hashes about once a second, so
-- a token made or revoked counts everywhere within that; last_used_at is written by
-- those same reads, at most once a second, for the tokens used since the last one.
CREATE TABLE api_tokens (
    name         text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    hash         text NOT NULL UNIQUE CHECK (hash ~ '^sha256:[0-9a-f]{64}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);
