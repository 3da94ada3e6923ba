-- Group commit: the callbacks that arrive together are stored by one call, in one transaction
-- (one round trip and one commit flush for all of them, instead of one each).
--
-- store_events now also returns the raw callback of each event, and takes it from the event
-- itself (its `raw_id`) when called for several callbacks at once (p_raw_id null). Events
-- without a recipient are written in id order, so that two batches holding the same inbound
-- reports wait for each other instead of deadlocking.
DROP FUNCTION store_events(uuid, jsonb);

CREATE FUNCTION store_events(p_raw_id uuid, p_events jsonb)
RETURNS TABLE (event_id text, inserted boolean, message_id uuid, sequence integer,
               recipient_status text, event_raw_id uuid)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    k record;
    e record;
    rec record;
    part_owner record;
    candidate text;
    owner_raw uuid;
BEGIN
    FOR k IN
        SELECT DISTINCT key.provider, key.provider_message_id, key.recipient
        FROM jsonb_array_elements(coalesce(p_events, '[]'::jsonb)) AS ev(value),
             LATERAL event_recipient_key(ev.value) AS key
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

    FOR e IN
        SELECT ev.value AS v, key.provider AS key_provider,
               key.provider_message_id AS key_pmid, key.recipient AS key_recipient,
               key.part_id
        FROM jsonb_array_elements(coalesce(p_events, '[]'::jsonb)) WITH ORDINALITY AS ev(value, n)
        LEFT JOIN LATERAL event_recipient_key(ev.value) AS key ON true
        -- Events without a recipient lock each other through their ids: always in id order.
        ORDER BY key.provider_message_id, key.recipient,
                 CASE WHEN key.provider IS NULL THEN ev.value->>'id' END, ev.n
    LOOP
        owner_raw := coalesce(p_raw_id, (e.v->>'raw_id')::uuid);
        IF e.key_provider IS NULL THEN
            -- Inbound messages and summaries have no recipient state: each stands alone.
            INSERT INTO events
                (id, type, provider, provider_message_id, provider_part_id, recipient, sender,
                 status, final, provider_status, error_code, error_message, occurred_at,
                 received_at, client_ref, segments, price, text, counts, raw_id, failure_kind,
                 occurred_at_source, synthetic, sequence)
            VALUES
                (e.v->>'id', e.v->>'type', e.v->>'provider', e.v->>'provider_message_id',
                 e.v->>'provider_part_id', e.v->>'recipient', e.v->>'sender', e.v->>'status',
                 (e.v->>'final')::boolean, e.v->>'provider_status', e.v->>'error_code',
                 e.v->>'error_message', (e.v->>'occurred_at')::timestamptz,
                 (e.v->>'received_at')::timestamptz, e.v->>'client_ref',
                 (e.v->>'segments')::integer, nullif(e.v->'price', 'null'::jsonb),
                 e.v->>'text', nullif(e.v->'counts', 'null'::jsonb), owner_raw,
                 e.v->>'failure_kind', e.v->>'occurred_at_source',
                 coalesce((e.v->>'synthetic')::boolean, false), 1)
            ON CONFLICT (id) DO NOTHING;
            RETURN QUERY SELECT e.v->>'id', FOUND, NULL::uuid,
                CASE WHEN FOUND THEN 1 END, NULL::text, owner_raw;
            CONTINUE;
        END IF;

        -- Under the recipient's lock, every other writer of this event id waits or is done.
        PERFORM 1 FROM events ex WHERE ex.id = e.v->>'id';
        IF FOUND THEN
            RETURN QUERY SELECT e.v->>'id', false, NULL::uuid, NULL::integer, NULL::text,
                owner_raw;
            CONTINUE;
        END IF;

        candidate := e.v->>'status';
        IF e.part_id IS NOT NULL THEN
            SELECT mr.id, mr.segments INTO part_owner FROM message_recipients mr
            WHERE mr.provider = e.key_provider AND mr.provider_message_id = e.key_pmid
              AND mr.recipient = e.key_recipient;
            INSERT INTO recipient_parts AS rp (provider, part_id, recipient_id, status)
            VALUES (e.key_provider, e.part_id, part_owner.id, e.v->>'status')
            ON CONFLICT (provider, part_id) DO UPDATE SET
                status = CASE WHEN status_rank(excluded.status) > status_rank(rp.status)
                              THEN excluded.status ELSE rp.status END,
                updated_at = now();
            candidate := parts_status(
                part_owner.id, coalesce((e.v->>'segments')::integer, part_owner.segments));
        END IF;

        -- Every CASE reads the row as it was: a status that moves forward brings its failure
        -- kind, segments and price; a stale report only fills what is still unknown.
        UPDATE message_recipients AS mr SET
            status = CASE WHEN status_rank(candidate) > status_rank(mr.status)
                          THEN candidate ELSE mr.status END,
            final = CASE WHEN status_rank(candidate) > status_rank(mr.status)
                         THEN status_rank(candidate) = 4 ELSE mr.final END,
            failure_kind = CASE WHEN status_rank(candidate) > status_rank(mr.status)
                                THEN e.v->>'failure_kind' ELSE mr.failure_kind END,
            sequence = mr.sequence + 1,
            segments = CASE WHEN status_rank(candidate) > status_rank(mr.status)
                                 OR mr.segments IS NULL
                            THEN coalesce((e.v->>'segments')::integer, mr.segments)
                            ELSE mr.segments END,
            price = CASE WHEN status_rank(candidate) > status_rank(mr.status)
                              OR mr.price IS NULL
                         THEN coalesce(nullif(e.v->'price', 'null'::jsonb), mr.price)
                         ELSE mr.price END,
            updated_at = now()
        WHERE mr.provider = e.key_provider AND mr.provider_message_id = e.key_pmid
          AND mr.recipient = e.key_recipient
        RETURNING mr.id, mr.message_id, mr.sequence, mr.status INTO rec;

        INSERT INTO events
            (id, type, provider, provider_message_id, provider_part_id, recipient, sender,
             status, final, provider_status, error_code, error_message, occurred_at,
             received_at, client_ref, segments, price, text, counts, raw_id, failure_kind,
             occurred_at_source, synthetic, message_id, recipient_id, sequence,
             recipient_status)
        VALUES
            (e.v->>'id', e.v->>'type', e.v->>'provider', e.key_pmid, e.part_id,
             e.v->>'recipient', e.v->>'sender', e.v->>'status', (e.v->>'final')::boolean,
             e.v->>'provider_status', e.v->>'error_code', e.v->>'error_message',
             (e.v->>'occurred_at')::timestamptz, (e.v->>'received_at')::timestamptz,
             e.v->>'client_ref', (e.v->>'segments')::integer,
             nullif(e.v->'price', 'null'::jsonb), e.v->>'text',
             nullif(e.v->'counts', 'null'::jsonb), owner_raw, e.v->>'failure_kind',
             e.v->>'occurred_at_source', coalesce((e.v->>'synthetic')::boolean, false),
             rec.message_id, rec.id, rec.sequence, rec.status)
        ON CONFLICT (id) DO NOTHING;
        IF NOT FOUND THEN
            -- Only if a part id was registered between two writers of one report: start over.
            RAISE EXCEPTION 'event % was stored concurrently', e.v->>'id'
                USING ERRCODE = 'serialization_failure';
        END IF;
        RETURN QUERY SELECT e.v->>'id', true, rec.message_id, rec.sequence, rec.status,
            owner_raw;
    END LOOP;
END
$$;

-- Stores a batch of raw callbacks with all their events (each event names its raw callback in
-- `raw_id`); the arrays hold one entry per callback. Returns store_events' rows with their raw
-- callback, plus one row per callback with event_id null carrying its final outcome
-- (`duplicate` when every one of its events was known). A raw id stored before (a replay)
-- changes nothing and answers the outcome it had.
CREATE FUNCTION ingest_callbacks(
    p_ids uuid[],
    p_providers text[],
    p_methods text[],
    p_paths text[],
    p_queries text[],
    p_headers jsonb[],
    p_bodies bytea[],
    p_remote_addrs text[],
    p_received_at timestamptz[],
    p_outcomes text[],
    p_errors text[],
    p_events jsonb
) RETURNS TABLE (
    raw_id uuid,
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
    replayed uuid[];
    stored record;
    inserted_raws uuid[] := '{}';
BEGIN
    SELECT coalesce(array_agg(r.id), '{}') INTO replayed
    FROM raw_callbacks r WHERE r.id = ANY(p_ids);
    RETURN QUERY SELECT r.id, NULL::text, false, NULL::uuid, NULL::integer, NULL::text,
        r.outcome
    FROM raw_callbacks r WHERE r.id = ANY(replayed);

    FOR stored IN
        SELECT * FROM store_events(NULL, (
            SELECT coalesce(jsonb_agg(ev.value ORDER BY ev.n), '[]'::jsonb)
            FROM jsonb_array_elements(coalesce(p_events, '[]'::jsonb))
                 WITH ORDINALITY AS ev(value, n)
            WHERE (ev.value->>'raw_id')::uuid <> ALL(replayed)))
    LOOP
        IF stored.inserted THEN
            inserted_raws := inserted_raws || stored.event_raw_id;
        END IF;
        RETURN QUERY SELECT stored.event_raw_id, stored.event_id, stored.inserted,
            stored.message_id, stored.sequence, stored.recipient_status, NULL::text;
    END LOOP;

    RETURN QUERY
    WITH given AS (
        SELECT (ev.value->>'raw_id')::uuid AS id, count(*) AS n
        FROM jsonb_array_elements(coalesce(p_events, '[]'::jsonb)) AS ev(value)
        GROUP BY 1
    ), new AS (
        SELECT id, count(*) AS n FROM unnest(inserted_raws) AS id GROUP BY 1
    )
    INSERT INTO raw_callbacks AS r
        (id, provider, method, path, query, headers, body, remote_addr, received_at, outcome,
         error, event_count)
    SELECT c.id, c.provider, c.method, c.path, c.query, c.headers, c.body, c.remote_addr,
           c.received_at,
           CASE WHEN c.outcome = 'normalised' AND coalesce(given.n, 0) > 0
                     AND coalesce(new.n, 0) = 0
                THEN 'duplicate' ELSE c.outcome END,
           c.error, coalesce(new.n, 0)
    FROM unnest(p_ids, p_providers, p_methods, p_paths, p_queries, p_headers, p_bodies,
                p_remote_addrs, p_received_at, p_outcomes, p_errors)
         AS c(id, provider, method, path, query, headers, body, remote_addr, received_at,
              outcome, error)
    LEFT JOIN given ON given.id = c.id
    LEFT JOIN new ON new.id = c.id
    WHERE c.id <> ALL(replayed)
    ON CONFLICT (id) DO NOTHING
    RETURNING r.id, NULL::text, false, NULL::uuid, NULL::integer, NULL::text, r.outcome;
END
$$;
