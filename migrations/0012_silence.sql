-- Statuses that always end (issue 15). A recipient of a message the hub sent has a deadline:
-- the message's expires_at, else the time it was sent plus the silence timeout. One with no
-- final status by then is given a synthetic `expired` (events.synthetic; such an event has no
-- raw callback, so events.raw_id may be null). A real final report that arrives later takes
-- over from a synthetic final (synthetic_final); two real finals keep the first-final rule.
ALTER TABLE message_recipients ADD COLUMN deadline timestamptz;
ALTER TABLE message_recipients ADD COLUMN synthetic_final boolean NOT NULL DEFAULT false;
-- The sweep's claim: the due ones first, through this index only. It names no column a report
-- changes (not `final`): the callbacks' updates of a recipient stay HOT (no index touched),
-- and the sweep clears the deadline of a recipient that ended meanwhile, when it comes due.
CREATE INDEX message_recipients_due_idx ON message_recipients (deadline)
    WHERE deadline IS NOT NULL;
ALTER TABLE events ALTER COLUMN raw_id DROP NOT NULL;

-- Recipients waiting already: the default timeout (72 hours) from their message's creation.
UPDATE message_recipients mr
SET deadline = coalesce(m.expires_at, coalesce(m.send_at, m.created_at) + interval '72 hours')
FROM messages m
WHERE m.id = mr.message_id AND NOT mr.final;

-- Whether a report's status replaces the recipient's: a higher rank, or a real final where the
-- recipient's final was synthetic.
CREATE OR REPLACE FUNCTION takes_over(
    candidate text, candidate_synthetic boolean, current_status text, current_synthetic boolean
) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT status_rank(candidate) > status_rank(current_status)
        OR (current_synthetic AND NOT candidate_synthetic AND status_rank(candidate) = 4)
$$;

CREATE OR REPLACE FUNCTION adopt_recipient(p_message_id uuid, p_provider text, p_pending_id text, p_provider_message_id text, p_recipient text) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    pending record;
    found_row bigint;
    owner uuid;
BEGIN
    SELECT * INTO pending FROM message_recipients mr
    WHERE mr.provider = p_provider AND mr.provider_message_id = p_pending_id
      AND mr.recipient = p_recipient
    FOR UPDATE;
    IF pending.id IS NULL THEN
        RETURN 0;
    END IF;
    -- Taking the key with ON CONFLICT waits for a report storing it at this moment, so the
    -- two never both create it.
    INSERT INTO message_recipients AS mr
        (message_id, provider, provider_message_id, recipient, status, final, sequence,
         segments, deadline)
    VALUES
        (p_message_id, p_provider, p_provider_message_id, p_recipient, pending.status,
         pending.final, pending.sequence, pending.segments, pending.deadline)
    ON CONFLICT (provider, provider_message_id, recipient) DO NOTHING
    RETURNING mr.id INTO found_row;
    IF found_row IS NOT NULL THEN
        -- No report under that id for this handset: but one without a handset may exist.
        PERFORM 1 FROM message_recipients mr
        WHERE mr.provider = p_provider AND mr.provider_message_id = p_provider_message_id
          AND mr.recipient = '' AND mr.message_id IS NULL;
        IF FOUND THEN
            DELETE FROM message_recipients WHERE id = found_row;
            UPDATE message_recipients mr SET recipient = p_recipient, updated_at = now()
            WHERE mr.provider = p_provider AND mr.provider_message_id = p_provider_message_id
              AND mr.recipient = ''
            RETURNING mr.id INTO found_row;
        ELSE
            DELETE FROM message_recipients WHERE id = pending.id;
            RETURN found_row;
        END IF;
    END IF;
    SELECT mr.id, mr.message_id INTO found_row, owner FROM message_recipients mr
    WHERE mr.provider = p_provider AND mr.provider_message_id = p_provider_message_id
      AND mr.recipient = p_recipient
    FOR UPDATE;
    IF owner IS NOT NULL AND owner <> p_message_id THEN
        -- The provider gave an id it gave another message: keep the provisional id (the
        -- caller logs it) rather than mix two messages' reports.
        RETURN NULL;
    END IF;
    -- Reports that outran the send answer: the row is the message's now, with its deadline.
    UPDATE message_recipients SET message_id = p_message_id,
        deadline = coalesce(deadline, pending.deadline), updated_at = now()
    WHERE id = found_row;
    UPDATE events SET message_id = p_message_id, recipient = coalesce(recipient, p_recipient)
    WHERE recipient_id = found_row AND message_id IS NULL;
    DELETE FROM message_recipients WHERE id = pending.id;
    RETURN found_row;
END
$$;

CREATE OR REPLACE FUNCTION store_events(p_raw_id uuid, p_events jsonb) RETURNS TABLE(event_id text, inserted boolean, message_id uuid, sequence integer, recipient_status text, event_raw_id uuid)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    k record;
    e record;
    rec record;
    part_owner record;
    candidate text;
    owner_raw uuid;
    is_synthetic boolean;
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

        -- Every CASE reads the row as it was: a status that takes over (a higher rank, or a
        -- real final after a synthetic one) brings its failure kind, segments and price; a
        -- stale report only fills what is still unknown.
        is_synthetic := coalesce((e.v->>'synthetic')::boolean, false);
        UPDATE message_recipients AS mr SET
            status = CASE WHEN takes_over(candidate, is_synthetic, mr.status, mr.synthetic_final)
                          THEN candidate ELSE mr.status END,
            final = CASE WHEN takes_over(candidate, is_synthetic, mr.status, mr.synthetic_final)
                         THEN status_rank(candidate) = 4 ELSE mr.final END,
            synthetic_final = CASE
                WHEN takes_over(candidate, is_synthetic, mr.status, mr.synthetic_final)
                THEN is_synthetic AND status_rank(candidate) = 4 ELSE mr.synthetic_final END,
            failure_kind = CASE
                WHEN takes_over(candidate, is_synthetic, mr.status, mr.synthetic_final)
                THEN e.v->>'failure_kind' ELSE mr.failure_kind END,
            sequence = mr.sequence + 1,
            segments = CASE WHEN takes_over(candidate, is_synthetic, mr.status, mr.synthetic_final)
                                 OR mr.segments IS NULL
                            THEN coalesce((e.v->>'segments')::integer, mr.segments)
                            ELSE mr.segments END,
            price = CASE WHEN takes_over(candidate, is_synthetic, mr.status, mr.synthetic_final)
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
