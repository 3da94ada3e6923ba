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

-- A missing status ranks lowest, like `unknown`: it must never pass for a final one.
CREATE OR REPLACE FUNCTION status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN status IS NULL OR status = 'unknown' THEN 0
        WHEN status IN ('accepted', 'scheduled') THEN 1
        WHEN status = 'queued' THEN 2
        WHEN status = 'sent' THEN 3
        ELSE 4  -- every final status
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

-- As in 0001, plus parts: an event about a part (its provider_part_id, or a provider message id
-- that is a registered part id) updates that part, and the recipient moves to what its parts add
-- up to, still forward only.
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
    new_count integer := 0;
    given_count integer := 0;
    rid bigint;
    part text;
    candidate text;
    rec record;
    final_outcome text := p_outcome;
BEGIN
    FOR ev IN
        SELECT e.value
        FROM jsonb_array_elements(coalesce(p_events, '[]'::jsonb)) WITH ORDINALITY AS e(value, n)
        ORDER BY e.value->>'provider_message_id', e.value->>'recipient', e.n
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

        -- The recipient: through a registered part id, else by (provider, id, handset).
        part := ev->>'provider_part_id';
        rid := NULL;
        IF part IS NULL THEN
            SELECT rp.recipient_id INTO rid FROM recipient_parts rp
            WHERE rp.provider = ev->>'provider' AND rp.part_id = ev->>'provider_message_id';
            IF rid IS NOT NULL THEN
                part := ev->>'provider_message_id';
            END IF;
        END IF;
        IF rid IS NULL THEN
            INSERT INTO message_recipients AS mr
                (provider, provider_message_id, recipient, status, final, sequence)
            VALUES
                (ev->>'provider', ev->>'provider_message_id', coalesce(ev->>'recipient', ''),
                 'unknown', false, 0)
            ON CONFLICT (provider, provider_message_id, recipient) DO UPDATE
                SET updated_at = now()
            RETURNING mr.id INTO rid;
        END IF;
        -- Lock the recipient before reading its parts, so concurrent part reports queue here.
        SELECT * INTO rec FROM message_recipients mr WHERE mr.id = rid FOR UPDATE;

        candidate := ev->>'status';
        IF part IS NOT NULL THEN
            INSERT INTO recipient_parts AS rp (provider, part_id, recipient_id, status)
            VALUES (ev->>'provider', part, rid, ev->>'status')
            ON CONFLICT (provider, part_id) DO UPDATE SET
                status = CASE WHEN status_rank(excluded.status) > status_rank(rp.status)
                              THEN excluded.status ELSE rp.status END,
                updated_at = now();
            candidate := parts_status(rid, coalesce((ev->>'segments')::integer, rec.segments));
        END IF;

        UPDATE message_recipients AS mr SET
            status = CASE WHEN status_rank(candidate) > status_rank(mr.status)
                          THEN candidate ELSE mr.status END,
            final = CASE WHEN status_rank(candidate) > status_rank(mr.status)
                         THEN status_rank(candidate) = 4 ELSE mr.final END,
            failure_kind = CASE WHEN status_rank(candidate) > status_rank(mr.status)
                                THEN ev->>'failure_kind' ELSE mr.failure_kind END,
            sequence = mr.sequence + 1,
            segments = coalesce((ev->>'segments')::integer, mr.segments),
            price = coalesce(nullif(ev->'price', 'null'::jsonb), mr.price),
            updated_at = now()
        WHERE mr.id = rid
        RETURNING mr.id, mr.message_id, mr.sequence, mr.status, mr.provider_message_id
        INTO rec;

        UPDATE events AS e
        SET recipient_id = rec.id, message_id = rec.message_id, sequence = rec.sequence,
            recipient_status = rec.status, provider_part_id = part,
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
