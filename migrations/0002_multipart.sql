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
-- (A table function so that the planner inlines it into the queries below.)
CREATE FUNCTION event_recipient_key(ev jsonb)
RETURNS TABLE (provider text, provider_message_id text, recipient text, part_id text)
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
    WHERE ev->>'type' = 'message.status' AND ev->>'provider_message_id' IS NOT NULL
$$;

-- The raw row is written last, with its final outcome, instead of being updated: the events
-- reference it, checked at commit.
ALTER TABLE events ALTER CONSTRAINT events_raw_id_fkey DEFERRABLE INITIALLY DEFERRED;

-- Stores the events of one callback: each new event with its recipient's state, sequence and
-- recipient_status (DESIGN.md's state machine, forward only); returns one row per event.
--
-- Locks: every recipient the callback touches is created or locked first, in key order, before
-- any event is written, so that two callbacks sharing recipients (or events) queue instead of
-- deadlocking. Holding its recipient's lock, an event can then be checked for a duplicate
-- before anything is written, and inserted once, complete.
-- Parts: an event about a part (its provider_part_id, or a provider message id that is a
-- registered part id) updates that part, and the recipient moves to what its parts add up to.
CREATE FUNCTION store_events(p_raw_id uuid, p_events jsonb)
RETURNS TABLE (event_id text, inserted boolean, message_id uuid, sequence integer,
               recipient_status text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    k record;
    e record;
    rec record;
    part_owner record;
    candidate text;
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
        ORDER BY key.provider_message_id, key.recipient, ev.n
    LOOP
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
                 e.v->>'text', nullif(e.v->'counts', 'null'::jsonb), p_raw_id,
                 e.v->>'failure_kind', e.v->>'occurred_at_source',
                 coalesce((e.v->>'synthetic')::boolean, false), 1)
            ON CONFLICT (id) DO NOTHING;
            RETURN QUERY SELECT e.v->>'id', FOUND, NULL::uuid,
                CASE WHEN FOUND THEN 1 END, NULL::text;
            CONTINUE;
        END IF;

        -- Under the recipient's lock, every other writer of this event id waits or is done.
        PERFORM 1 FROM events ex WHERE ex.id = e.v->>'id';
        IF FOUND THEN
            RETURN QUERY SELECT e.v->>'id', false, NULL::uuid, NULL::integer, NULL::text;
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
             nullif(e.v->'counts', 'null'::jsonb), p_raw_id, e.v->>'failure_kind',
             e.v->>'occurred_at_source', coalesce((e.v->>'synthetic')::boolean, false),
             rec.message_id, rec.id, rec.sequence, rec.status)
        ON CONFLICT (id) DO NOTHING;
        IF NOT FOUND THEN
            -- Only if a part id was registered between two writers of one report: start over.
            RAISE EXCEPTION 'event % was stored concurrently', e.v->>'id'
                USING ERRCODE = 'serialization_failure';
        END IF;
        RETURN QUERY SELECT e.v->>'id', true, rec.message_id, rec.sequence, rec.status;
    END LOOP;
END
$$;

-- Replaces 0001's: normalises the events of a raw callback already stored (`reprocess`), then
-- sets its outcome; rows as store_events, plus a last row with event_id null carrying the
-- outcome.
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
    stored record;
    given_count integer := 0;
    new_count integer := 0;
    final_outcome text := p_outcome;
BEGIN
    FOR stored IN SELECT * FROM store_events(p_raw_id, p_events) LOOP
        given_count := given_count + 1;
        new_count := new_count + stored.inserted::integer;
        RETURN QUERY SELECT stored.event_id, stored.inserted, stored.message_id,
            stored.sequence, stored.recipient_status, NULL::text;
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

-- Replaces 0001's: one call stores a callback and everything it produced (one round trip, one
-- transaction): its events, then the raw row with its final outcome (`duplicate` when every
-- event was known). A raw id stored before (a replay) changes nothing.
CREATE OR REPLACE FUNCTION ingest_callback(
    p_raw_id uuid,
    p_provider text,
    p_method text,
    p_path text,
    p_query text,
    p_headers jsonb,
    p_body bytea,
    p_remote_addr text,
    p_received_at timestamptz,
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
    stored record;
    given_count integer := 0;
    new_count integer := 0;
    final_outcome text := p_outcome;
BEGIN
    SELECT r.outcome INTO final_outcome FROM raw_callbacks r WHERE r.id = p_raw_id;
    IF FOUND THEN
        RETURN QUERY SELECT NULL::text, false, NULL::uuid, NULL::integer, NULL::text,
            final_outcome;
        RETURN;
    END IF;
    final_outcome := p_outcome;
    FOR stored IN SELECT * FROM store_events(p_raw_id, p_events) LOOP
        given_count := given_count + 1;
        new_count := new_count + stored.inserted::integer;
        RETURN QUERY SELECT stored.event_id, stored.inserted, stored.message_id,
            stored.sequence, stored.recipient_status, NULL::text;
    END LOOP;
    IF p_outcome = 'normalised' AND given_count > 0 AND new_count = 0 THEN
        final_outcome := 'duplicate';
    END IF;
    INSERT INTO raw_callbacks
        (id, provider, method, path, query, headers, body, remote_addr, received_at, outcome,
         error, event_count)
    VALUES
        (p_raw_id, p_provider, p_method, p_path, p_query, p_headers, p_body, p_remote_addr,
         p_received_at, final_outcome, p_error, new_count)
    ON CONFLICT (id) DO NOTHING;
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
