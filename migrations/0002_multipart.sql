-- Multipart messages (DESIGN.md): a recipient is `delivered` only when every known part is
-- delivered, and any part's failure is the recipient's. Parts are known from per-part reports
-- (events with provider_part_id) and from the send answer (register_parts), whose part ids some
-- providers then report as if they were message ids (Swift's `sms.id`).

CREATE TABLE recipient_parts (
    provider      text NOT NULL,
    part_id       text NOT NULL,
    recipient_id  bigint NOT NULL REFERENCES message_recipients (id),
    status        text NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, part_id)
);
CREATE INDEX recipient_parts_recipient_idx ON recipient_parts (recipient_id);

-- Finals are named, so that a status this function does not know (a missing one, or one added
-- later without updating it) ranks lowest, like `unknown`, and never passes for final.
CREATE OR REPLACE FUNCTION status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN status IN ('accepted', 'scheduled') THEN 1
        WHEN status = 'queued' THEN 2
        WHEN status = 'sent' THEN 3
        WHEN status IN ('delivered', 'undelivered', 'failed', 'rejected', 'expired',
                        'cancelled', 'received') THEN 4
        ELSE 0
    END
$$;

-- The status a recipient's parts add up to. `expected_parts` is the segment count when known:
-- fewer parts known than that means some are still to come.
CREATE FUNCTION parts_status(p_recipient_id bigint, expected_parts integer) RETURNS text
LANGUAGE sql STABLE AS $$
    WITH parts AS (
        SELECT status FROM recipient_parts WHERE recipient_id = p_recipient_id
    )
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM parts WHERE status_rank(status) = 4 AND status <> 'delivered')
            THEN (SELECT min(status) FROM parts
                  WHERE status_rank(status) = 4 AND status <> 'delivered')
        WHEN (SELECT bool_and(status = 'delivered') FROM parts)
             AND (SELECT count(*) FROM parts) >= coalesce(expected_parts, 0)
            THEN 'delivered'
        -- Some part still in flight (the least advanced speaks), or parts yet unheard of
        -- while those known are delivered: handed over, not yet delivered.
        ELSE coalesce((SELECT status FROM parts
                       WHERE status <> 'delivered'
                       ORDER BY status_rank(status), status LIMIT 1), 'sent')
    END
$$;

-- Called with the send answer: the recipient's row (created if the reports have not done so) and
-- the ids of its parts. Returns the recipient row's id.
CREATE FUNCTION register_parts(
    p_provider text,
    p_provider_message_id text,
    p_recipient text,
    p_part_ids text[]
) RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    rid bigint;
BEGIN
    INSERT INTO message_recipients AS mr
        (provider, provider_message_id, recipient, status, final, sequence, segments)
    VALUES
        (p_provider, p_provider_message_id, coalesce(p_recipient, ''), 'accepted', false, 0,
         cardinality(p_part_ids))
    ON CONFLICT (provider, provider_message_id, recipient) DO UPDATE SET
        segments = coalesce(mr.segments, excluded.segments), updated_at = now()
    RETURNING mr.id INTO rid;
    INSERT INTO recipient_parts (provider, part_id, recipient_id, status)
    SELECT p_provider, part_id, rid, 'accepted' FROM unnest(p_part_ids) AS part_id
    ON CONFLICT (provider, part_id) DO NOTHING;
    RETURN rid;
END
$$;

-- Which recipient row an event is about: a registered part id names its owner; otherwise
-- (provider, provider message id, handset). Only status events with a provider id have one.
CREATE FUNCTION event_recipient_key(ev jsonb, OUT provider text, OUT provider_message_id text,
                                    OUT recipient text, OUT part_id text)
LANGUAGE sql STABLE AS $$
    SELECT ev->>'provider',
           coalesce(owner.provider_message_id, ev->>'provider_message_id'),
           coalesce(owner.recipient, ev->>'recipient', ''),
           coalesce(ev->>'provider_part_id', rp.part_id)
    FROM (SELECT 1) AS one
    LEFT JOIN recipient_parts rp
           ON ev->>'provider_part_id' IS NULL
          AND rp.provider = ev->>'provider' AND rp.part_id = ev->>'provider_message_id'
    LEFT JOIN message_recipients owner ON owner.id = rp.recipient_id
$$;

-- As in 0001, with two changes.
-- Parts: an event about a part (its provider_part_id, or a provider message id that is a
-- registered part id) updates that part, and the recipient moves to what its parts add up to,
-- still forward only.
-- Locks: every recipient the callback touches is created or locked first, in key order, before
-- any event is inserted: two callbacks sharing recipients (or events) then queue instead of
-- deadlocking.
CREATE OR REPLACE FUNCTION ingest_events(
    p_raw_id uuid,
    p_outcome text,
    p_error text,
    p_events jsonb
) RETURNS TABLE (
    event_id text,
    inserted boolean,
    message_id uuid,
    sequence integer,
    recipient_status text,
    raw_outcome text
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    ev jsonb;
    k record;
    new_count integer := 0;
    given_count integer := 0;
    rid bigint;
    candidate text;
    advanced boolean;
    cur record;
    rec record;
    final_outcome text := p_outcome;
BEGIN
    FOR k IN
        SELECT DISTINCT key.provider, key.provider_message_id, key.recipient
        FROM jsonb_array_elements(coalesce(p_events, '[]'::jsonb)) AS e(value),
             LATERAL event_recipient_key(e.value) AS key
        WHERE e.value->>'type' = 'message.status' AND e.value->>'provider_message_id' IS NOT NULL
        ORDER BY 1, 2, 3
    LOOP
        INSERT INTO message_recipients AS mr
            (provider, provider_message_id, recipient, status, final, sequence)
        VALUES (k.provider, k.provider_message_id, k.recipient, 'unknown', false, 0)
        ON CONFLICT (provider, provider_message_id, recipient) DO NOTHING;
        IF NOT FOUND THEN
            PERFORM 1 FROM message_recipients mr
            WHERE mr.provider = k.provider AND mr.provider_message_id = k.provider_message_id
              AND mr.recipient = k.recipient
            FOR UPDATE;
        END IF;
    END LOOP;

    FOR ev IN
        SELECT e.value
        FROM jsonb_array_elements(coalesce(p_events, '[]'::jsonb)) WITH ORDINALITY AS e(value, n)
        ORDER BY e.value->>'provider_message_id', coalesce(e.value->>'recipient', ''), e.n
    LOOP
        given_count := given_count + 1;
        INSERT INTO events AS e
            (id, type, provider, provider_message_id, provider_part_id, recipient, sender,
             status, final, provider_status, error_code, error_message, occurred_at,
             received_at, client_ref, segments, price, text, counts, raw_id, failure_kind,
             occurred_at_source, synthetic)
        VALUES
            (ev->>'id', ev->>'type', ev->>'provider', ev->>'provider_message_id',
             ev->>'provider_part_id', ev->>'recipient', ev->>'sender', ev->>'status',
             (ev->>'final')::boolean, ev->>'provider_status', ev->>'error_code',
             ev->>'error_message', (ev->>'occurred_at')::timestamptz,
             (ev->>'received_at')::timestamptz, ev->>'client_ref', (ev->>'segments')::integer,
             nullif(ev->'price', 'null'::jsonb), ev->>'text', nullif(ev->'counts', 'null'::jsonb),
             p_raw_id, ev->>'failure_kind', ev->>'occurred_at_source',
             coalesce((ev->>'synthetic')::boolean, false))
        ON CONFLICT (id) DO NOTHING;

        IF NOT FOUND THEN
            RETURN QUERY SELECT ev->>'id', false, NULL::uuid, NULL::integer, NULL::text,
                NULL::text;
            CONTINUE;
        END IF;
        new_count := new_count + 1;

        IF ev->>'type' <> 'message.status' OR ev->>'provider_message_id' IS NULL THEN
            -- Inbound messages and summaries have no recipient state: each stands alone.
            RETURN QUERY SELECT ev->>'id', true, NULL::uuid, 1, NULL::text, NULL::text;
            CONTINUE;
        END IF;

        SELECT * INTO k FROM event_recipient_key(ev);
        SELECT * INTO cur FROM message_recipients mr
        WHERE mr.provider = k.provider AND mr.provider_message_id = k.provider_message_id
          AND mr.recipient = k.recipient;  -- locked above
        rid := cur.id;

        candidate := ev->>'status';
        IF k.part_id IS NOT NULL THEN
            INSERT INTO recipient_parts AS rp (provider, part_id, recipient_id, status)
            VALUES (ev->>'provider', k.part_id, rid, ev->>'status')
            ON CONFLICT (provider, part_id) DO UPDATE SET
                status = CASE WHEN status_rank(excluded.status) > status_rank(rp.status)
                              THEN excluded.status ELSE rp.status END,
                updated_at = now();
            candidate := parts_status(rid, coalesce((ev->>'segments')::integer, cur.segments));
        END IF;
        advanced := status_rank(candidate) > status_rank(cur.status);

        -- Segments and price follow the report that moved the status (a late, stale report
        -- does not overwrite them), or fill them when still unknown.
        UPDATE message_recipients AS mr SET
            status = CASE WHEN advanced THEN candidate ELSE mr.status END,
            final = CASE WHEN advanced THEN status_rank(candidate) = 4 ELSE mr.final END,
            failure_kind = CASE WHEN advanced THEN ev->>'failure_kind' ELSE mr.failure_kind END,
            sequence = mr.sequence + 1,
            segments = CASE WHEN advanced OR mr.segments IS NULL
                            THEN coalesce((ev->>'segments')::integer, mr.segments)
                            ELSE mr.segments END,
            price = CASE WHEN advanced OR mr.price IS NULL
                         THEN coalesce(nullif(ev->'price', 'null'::jsonb), mr.price)
                         ELSE mr.price END,
            updated_at = now()
        WHERE mr.id = rid
        RETURNING mr.id, mr.message_id, mr.sequence, mr.status, mr.provider_message_id
        INTO rec;

        UPDATE events AS e
        SET recipient_id = rec.id, message_id = rec.message_id, sequence = rec.sequence,
            recipient_status = rec.status, provider_part_id = k.part_id,
            provider_message_id = rec.provider_message_id
        WHERE e.id = ev->>'id';
        RETURN QUERY SELECT ev->>'id', true, rec.message_id, rec.sequence, rec.status, NULL::text;
    END LOOP;

    IF p_outcome = 'normalised' AND given_count > 0 AND new_count = 0 THEN
        final_outcome := 'duplicate';
    END IF;
    UPDATE raw_callbacks AS r
    SET outcome = final_outcome, error = p_error, event_count = new_count, processed_at = now()
    WHERE r.id = p_raw_id;
    RETURN QUERY SELECT NULL::text, false, NULL::uuid, NULL::integer, NULL::text, final_outcome;
END
$$;

-- Replaces 0001's: two statements, so that the events are re-pointed with a snapshot taken after
-- the recipient's lock is held (a report committed while this waited is attached too); and a
-- recipient already attached to another message is an error, never silently moved.
CREATE OR REPLACE FUNCTION attach_orphans(
    p_message_id uuid,
    p_provider text,
    p_provider_message_id text,
    p_recipient text
) RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    rid bigint;
    owner uuid;
BEGIN
    INSERT INTO message_recipients AS mr
        (message_id, provider, provider_message_id, recipient, status, final, sequence)
    VALUES
        (p_message_id, p_provider, p_provider_message_id, coalesce(p_recipient, ''),
         'accepted', false, 0)
    ON CONFLICT (provider, provider_message_id, recipient) DO NOTHING
    RETURNING mr.id INTO rid;
    IF rid IS NULL THEN
        SELECT mr.id, mr.message_id INTO rid, owner FROM message_recipients mr
        WHERE mr.provider = p_provider AND mr.provider_message_id = p_provider_message_id
          AND mr.recipient = coalesce(p_recipient, '')
        FOR UPDATE;
        IF owner IS NOT NULL AND owner <> p_message_id THEN
            RAISE EXCEPTION 'recipient % of % % belongs to message %',
                p_recipient, p_provider, p_provider_message_id, owner
                USING ERRCODE = 'unique_violation';
        END IF;
        UPDATE message_recipients SET message_id = p_message_id, updated_at = now()
        WHERE id = rid AND message_id IS NULL;
    END IF;
    UPDATE events SET message_id = p_message_id
    WHERE recipient_id = rid AND message_id IS NULL;
    RETURN rid;
END
$$;
