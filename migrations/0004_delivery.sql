-- Re-emitting events: subscriptions, the outbox of deliveries (written in the same transaction as
-- the events), every attempt, and a commit-ordered cursor for the pull feed.

ALTER TABLE subscriptions
    ADD COLUMN previous_secret text,
    ADD COLUMN previous_secret_until timestamptz,
    ADD COLUMN failing_since timestamptz,
    ADD COLUMN disabled_reason text,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

ALTER TABLE deliveries
    ADD COLUMN leased_until timestamptz,
    ADD COLUMN lease_token uuid,
    ADD COLUMN last_status integer,
    ADD COLUMN last_error text,
    ADD COLUMN delivered_at timestamptz,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT deliveries_status_check
        CHECK (status IN ('pending', 'delivering', 'delivered', 'failed'));
DROP INDEX deliveries_due_idx;
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at)
    WHERE status IN ('pending', 'delivering');
CREATE INDEX deliveries_event_idx ON deliveries (event_id);

CREATE TABLE delivery_attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      bigint NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt          integer NOT NULL,
    started_at       timestamptz NOT NULL,
    status_code      integer,
    latency_ms       double precision,
    response_excerpt text,
    error            text
);
CREATE INDEX delivery_attempts_delivery_idx ON delivery_attempts (delivery_id, attempt);

-- The feed's cursor: the writing transaction's id and a per-row sequence. The feed serves only
-- rows of transactions older than every transaction still running (the snapshot's xmin), so a
-- transaction that commits late can never slip in behind a cursor that has moved past it.
ALTER TABLE events
    ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    ADD COLUMN feed_seq bigint GENERATED ALWAYS AS IDENTITY;
CREATE INDEX events_feed_idx ON events (txid, feed_seq);

-- Whether a subscription's filters take an event (absent filter: everything).
CREATE FUNCTION subscription_takes(filters jsonb, ev_type text, ev_provider text, ev_status text)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT (filters->'event_types' IS NULL OR filters->'event_types' ? ev_type)
       AND (filters->'providers' IS NULL OR filters->'providers' ? ev_provider)
       AND (filters->'statuses' IS NULL OR filters->'statuses' ? ev_status)
$$;

-- The outbox: every new event gets a delivery per enabled subscription that takes it, in the
-- transaction that stores the event.
CREATE FUNCTION queue_deliveries() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO deliveries (subscription_id, event_id)
    SELECT s.id, NEW.id FROM subscriptions s
    WHERE s.enabled AND subscription_takes(s.filters, NEW.type, NEW.provider, NEW.status);
    RETURN NULL;
END
$$;
CREATE TRIGGER events_queue_deliveries AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION queue_deliveries();
