-- An Idempotency-Key belongs to the API key that sent it: another key using the same value
-- starts a request of its own and never reads the first caller's answer. `owner` is the API
-- key's id ('' when keys are off). A claim whose request died before answering is told from a
-- live one by its age (created_at), and answers past their expiry are purged by the worker.
ALTER TABLE idempotency_keys ADD COLUMN owner text NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (owner, key);
CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);
