-- API keys for the /v1 API: stored as a SHA-256 of the secret (the secret is 32 random bytes, so
-- a slow hash adds nothing), with scopes, revocable.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    prefix        text NOT NULL,
    secret_hash   bytea NOT NULL UNIQUE,
    scopes        text[] NOT NULL
                  CHECK (scopes <@ ARRAY['send', 'read', 'admin']::text[] AND cardinality(scopes) > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
