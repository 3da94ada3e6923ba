-- Callbacks refused by authentication (no or wrong token, address not allowed, bad signature,
-- replay, provider closed) are recorded as what they were, never as what they said: a
-- stranger's body, or a provider's credentials sent to the wrong place, are not kept. The size
-- and a SHA-256 of the body let an operator tell one attempt from another, and match one.
CREATE TABLE callback_refusals (
    id           uuid PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    provider     text NOT NULL,
    method       text NOT NULL,
    remote_addr  text,
    reason       text NOT NULL,
    status       smallint NOT NULL,
    size_bytes   integer NOT NULL,
    body_sha256  bytea NOT NULL
);
CREATE INDEX callback_refusals_received_at_idx ON callback_refusals (received_at);
CREATE INDEX callback_refusals_provider_idx ON callback_refusals (provider, received_at);

-- Refusals kept whole until now become metadata; their bodies and headers go.
INSERT INTO callback_refusals
    (id, received_at, provider, method, remote_addr, reason, status, size_bytes, body_sha256)
SELECT id, received_at, provider, method, remote_addr, coalesce(error, 'refused'),
       CASE WHEN error LIKE 'source address %' THEN 403 ELSE 401 END,
       octet_length(body), sha256(body)
FROM raw_callbacks WHERE outcome = 'rejected';
DELETE FROM raw_callbacks WHERE outcome = 'rejected';
-- The deletes' deferred checks run now: ALTER TABLE refuses a table with checks pending.
SET CONSTRAINTS ALL IMMEDIATE;

-- raw_callbacks holds only what was accepted. (Checking the existing rows reads the table once
-- under the migration's lock; issue 16 partitions it.)
ALTER TABLE raw_callbacks DROP CONSTRAINT raw_callbacks_outcome_check;
ALTER TABLE raw_callbacks ADD CONSTRAINT raw_callbacks_outcome_check
    CHECK (outcome IN ('normalised', 'duplicate', 'unparsed'));
