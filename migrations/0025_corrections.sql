-- Correcting history (issue 24): the stored raw callbacks read again with today's normalisers,
-- and what they now say replacing what they said.
--
-- An event a correction run re-derives differently is not changed in place: the old row stays
-- (for the record and the feed that already carried it) with `replaced_by` naming the run, and
-- a new row takes its place, with an id of its own so that subscribers receive it, `natural_id`
-- the normaliser's id of it (so that a second run compares like with like, and a provider's
-- retry of the old report is still a duplicate), and `correction` {run, replaces} for them.
-- Replaced rows are left out of timelines, stats and replays; the recipient's state is folded
-- again from its remaining events (refold_recipient), the one place it may move backwards.

-- Which normaliser version made the event (`provider:hash`); NULL for the hub's own events.
ALTER TABLE events
    ADD COLUMN normalizer text,
    ADD COLUMN natural_id text,
    ADD COLUMN correction jsonb,
    ADD COLUMN replaced_by uuid;
CREATE INDEX events_natural_idx ON events (natural_id) WHERE natural_id IS NOT NULL;

-- Every run, dry or applied: who started it, its window, the normalisers it used, how far it
-- got (`cursor`: the last raw callback done, in id order, committed with that batch's changes,
-- so an interrupted apply resumes after it) and what it found.
CREATE TABLE correction_runs (
    id uuid PRIMARY KEY,
    mode text NOT NULL CHECK (mode IN ('dry_run', 'apply')),
    state text NOT NULL CHECK (state IN ('running', 'finished', 'stopped', 'failed')),
    started_by text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    provider text,
    since timestamptz,
    until timestamptz NOT NULL,
    versions jsonb NOT NULL,
    total bigint NOT NULL DEFAULT 0,
    examined bigint NOT NULL DEFAULT 0,
    cursor uuid,
    counts jsonb NOT NULL DEFAULT '{}',
    examples jsonb NOT NULL DEFAULT '[]',
    error text
);
CREATE INDEX correction_runs_started_idx ON correction_runs (started_at DESC);

-- Whether libphonenumber held the recipient's number to exist (a valid, allocated number) when
-- the message was made: a `delivered` for one that cannot is an implausible report (/v1/stats).
-- NULL: not known (rows of reports alone, and rows from before this migration).
ALTER TABLE message_recipients ADD COLUMN number_valid boolean;

-- A send's answer and a failover carry it to the rows they make.
CREATE OR REPLACE FUNCTION adopt_recipient(p_message_id uuid, p_provider text, p_pending_id text, p_provider_message_id text, p_recipient text) RETURNS bigint LANGUAGE plpgsql AS $$
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
         segments, deadline, country, tenant, attempt, superseded, created_at,
         redeliver_until, redeliver_on, number_valid)
    VALUES
        (p_message_id, p_provider, p_provider_message_id, p_recipient, pending.status,
         pending.final, pending.sequence, pending.segments, pending.deadline, pending.country,
         pending.tenant, pending.attempt, pending.superseded, pending.created_at,
         pending.redeliver_until, pending.redeliver_on, pending.number_valid)
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
        deadline = coalesce(deadline, pending.deadline),
        country = coalesce(country, pending.country), tenant = pending.tenant,
        number_valid = coalesce(number_valid, pending.number_valid),
        attempt = pending.attempt, superseded = pending.superseded,
        created_at = pending.created_at, redeliver_until = pending.redeliver_until,
        redeliver_on = pending.redeliver_on, updated_at = now()
    WHERE id = found_row;
    PERFORM adopt_events(found_row, p_message_id, pending.tenant, p_recipient);
    IF pending.attempt > 1 THEN
        UPDATE events SET attempt = pending.attempt WHERE recipient_id = found_row;
    END IF;
    DELETE FROM message_recipients WHERE id = pending.id;
    RETURN found_row;
END
$$;

CREATE OR REPLACE FUNCTION fail_over(p_message_id uuid, p_recipients text[], p_provider text, p_deadline timestamp with time zone, p_redeliver_until timestamp with time zone, p_redeliver_on text[]) RETURNS SETOF text LANGUAGE sql AS $$
    WITH old AS (
        UPDATE message_recipients mr SET superseded = true, deadline = NULL,
            redeliver_until = NULL, updated_at = now()
        WHERE mr.message_id = p_message_id AND mr.recipient = ANY(p_recipients)
          AND NOT mr.superseded
          AND NOT EXISTS (SELECT 1 FROM message_recipients o
                          WHERE o.message_id = p_message_id AND o.recipient = mr.recipient
                            AND o.provider = p_provider)
        RETURNING mr.recipient, mr.attempt, mr.sequence, mr.segments, mr.country, mr.tenant,
                  mr.number_valid
    )
    INSERT INTO message_recipients
        (message_id, provider, provider_message_id, recipient, status, final, sequence,
         segments, deadline, country, tenant, attempt, redeliver_until, redeliver_on,
         number_valid)
    SELECT p_message_id, p_provider, 'pending:' || p_message_id, old.recipient, 'unknown', false,
           old.sequence, old.segments, p_deadline, old.country, old.tenant, old.attempt + 1,
           p_redeliver_until, p_redeliver_on, old.number_valid
    FROM old
    RETURNING recipient
$$;

-- Reports that contradict what the hub knows of a message: a provider's summary whose counts do
-- not add up to the message's recipients or say more (or, once final, fewer) delivered than the
-- recipients do, and a report about a recipient the message never had. Each is kept once (per
-- message, kind and the report that showed it) and told as a `message.discrepancy` event.
CREATE TABLE message_discrepancies (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id uuid NOT NULL,
    kind text NOT NULL
        CHECK (kind IN ('summary_counts', 'summary_delivered', 'unknown_recipient')),
    provider text NOT NULL,
    tenant text,
    details jsonb NOT NULL,
    subject text NOT NULL,
    event_id text NOT NULL,
    found_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, kind, subject)
);

CREATE FUNCTION record_discrepancy(p_message_id uuid, p_kind text, p_provider text,
                                   p_tenant text, p_details jsonb, p_subject text,
                                   p_raw_id uuid, p_recipient text, p_recipient_id bigint,
                                   p_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    discrepancy_id text := 'evt_' || left(encode(sha256(convert_to(
        concat_ws(chr(31), 'discrepancy', p_message_id::text, p_kind, p_subject), 'UTF8')),
        'hex'), 32);
BEGIN
    INSERT INTO message_discrepancies
        (message_id, kind, provider, tenant, details, subject, event_id)
    VALUES (p_message_id, p_kind, p_provider, p_tenant, p_details, p_subject, discrepancy_id)
    ON CONFLICT (message_id, kind, subject) DO NOTHING;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO events
        (id, type, provider, message_id, recipient_id, recipient, status, final,
         provider_status, occurred_at, received_at, raw_id, occurred_at_source, synthetic,
         sequence, tenant, details)
    VALUES
        (discrepancy_id, 'message.discrepancy', p_provider, p_message_id, p_recipient_id,
         p_recipient, 'unknown', false, p_kind, p_at, p_at, p_raw_id, 'received', true, 1,
         p_tenant, jsonb_build_object('kind', p_kind) || p_details);
END
$$;

-- A summary checked against the recipients of its message (by the provider's message id) as
-- they stand when it arrives.
CREATE FUNCTION check_summary() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    summed integer;
    said_delivered integer;
BEGIN
    SELECT min(mr.message_id::text)::uuid AS message_id, min(mr.tenant) AS tenant,
           count(*) AS recipients,
           count(*) FILTER (WHERE mr.status = 'delivered') AS delivered,
           count(*) FILTER (WHERE NOT mr.final) AS open
    INTO r
    FROM message_recipients mr
    WHERE mr.provider = NEW.provider AND mr.provider_message_id = NEW.provider_message_id
      AND mr.message_id IS NOT NULL AND NOT mr.superseded;
    IF r.message_id IS NULL OR NEW.counts IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(sum(value::integer), 0) INTO summed FROM jsonb_each_text(NEW.counts);
    said_delivered := coalesce((NEW.counts->>'delivered')::integer, 0);
    IF summed <> r.recipients THEN
        PERFORM record_discrepancy(r.message_id, 'summary_counts', NEW.provider, r.tenant,
            jsonb_build_object('counts', NEW.counts, 'recipients', r.recipients),
            NEW.id, NEW.raw_id, NULL, NULL, NEW.received_at);
    END IF;
    IF said_delivered > r.delivered + r.open
       OR (NEW.final AND said_delivered < r.delivered) THEN
        PERFORM record_discrepancy(r.message_id, 'summary_delivered', NEW.provider, r.tenant,
            jsonb_build_object('summary_delivered', said_delivered,
                               'recipients_delivered', r.delivered, 'recipients_open', r.open),
            NEW.id, NEW.raw_id, NULL, NULL, NEW.received_at);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_check_summary AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.type = 'message.summary') EXECUTE FUNCTION check_summary();

-- store_events: the new columns, from the events' JSON (normalizer, natural_id, correction),
-- and a report about a recipient its message never had (a recipient row first made by a
-- report, for a provider message id whose message is known) is a discrepancy.
CREATE OR REPLACE FUNCTION store_events(p_raw_id uuid, p_events jsonb) RETURNS TABLE(event_id text, inserted boolean, message_id uuid, sequence integer, recipient_status text, event_raw_id uuid)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    k record;
    e record;
    rec record;
    part_owner record;
    candidate text;
    owner_raw uuid;
    is_synthetic boolean;
    alone_tenant text;
    latest record;
    made_id bigint;
    known record;
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
        ON CONFLICT (provider, provider_message_id, recipient) DO NOTHING
        RETURNING mr.id INTO made_id;
        IF NOT FOUND THEN
            PERFORM 1 FROM message_recipients mr
            WHERE mr.provider = k.provider AND mr.provider_message_id = k.provider_message_id
              AND mr.recipient = k.recipient
            FOR UPDATE;
        ELSIF k.recipient <> '' THEN  -- '': a report naming no recipient of several
            SELECT mr.message_id, mr.tenant INTO known FROM message_recipients mr
            WHERE mr.provider = k.provider AND mr.provider_message_id = k.provider_message_id
              AND mr.message_id IS NOT NULL
            LIMIT 1;
            IF FOUND THEN
                PERFORM record_discrepancy(known.message_id, 'unknown_recipient', k.provider,
                    known.tenant, jsonb_build_object('provider_message_id',
                                                     k.provider_message_id),
                    'recipient:' || made_id, p_raw_id, k.recipient, made_id, now());
            END IF;
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
        -- An event id is stored once: its writers take turns, and each looks before writing
        -- (events has no unique index on id alone: its key includes the partition's time).
        PERFORM pg_advisory_xact_lock(hashtextextended(e.v->>'id', 0));
        IF e.key_provider IS NULL THEN
            -- Inbound messages and summaries have no recipient state: each stands alone.
            PERFORM 1 FROM events ex WHERE ex.id = e.v->>'id';
            IF FOUND THEN
                RETURN QUERY SELECT e.v->>'id', false, NULL::uuid, NULL::integer, NULL::text,
                    owner_raw;
                CONTINUE;
            END IF;
            alone_tenant := CASE e.v->>'type'
                WHEN 'message.inbound' THEN reply_tenant(
                    e.v->>'recipient', e.v->>'sender', (e.v->>'received_at')::timestamptz)
                WHEN 'message.summary' THEN (
                    SELECT mr.tenant FROM message_recipients mr
                    WHERE mr.provider = e.v->>'provider'
                      AND mr.provider_message_id = e.v->>'provider_message_id'
                      AND mr.tenant IS NOT NULL
                    LIMIT 1)
                END;
            INSERT INTO events
                (id, type, provider, provider_message_id, provider_part_id, recipient, sender,
                 status, final, provider_status, error_code, error_message, occurred_at,
                 received_at, client_ref, segments, price, text, counts, raw_id, failure_kind,
                 occurred_at_source, synthetic, sequence, tenant, details, normalizer,
                 natural_id, correction)
            VALUES
                (e.v->>'id', e.v->>'type', e.v->>'provider', e.v->>'provider_message_id',
                 e.v->>'provider_part_id', e.v->>'recipient', e.v->>'sender', e.v->>'status',
                 (e.v->>'final')::boolean, e.v->>'provider_status', e.v->>'error_code',
                 e.v->>'error_message', (e.v->>'occurred_at')::timestamptz,
                 (e.v->>'received_at')::timestamptz, e.v->>'client_ref',
                 (e.v->>'segments')::integer, nullif(e.v->'price', 'null'::jsonb),
                 e.v->>'text', nullif(e.v->'counts', 'null'::jsonb), owner_raw,
                 e.v->>'failure_kind', e.v->>'occurred_at_source',
                 coalesce((e.v->>'synthetic')::boolean, false), 1, alone_tenant,
                 nullif(e.v->'details', 'null'::jsonb), e.v->>'normalizer', e.v->>'natural_id',
                 nullif(e.v->'correction', 'null'::jsonb));
            RETURN QUERY SELECT e.v->>'id', true, NULL::uuid, 1, NULL::text, owner_raw;
            CONTINUE;
        END IF;

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
        RETURNING mr.id, mr.message_id, mr.sequence, mr.status, mr.tenant, mr.attempt,
                  mr.superseded, mr.recipient INTO rec;

        IF rec.superseded THEN
            UPDATE message_recipients AS mr SET
                sequence = mr.sequence + 1,
                status = CASE WHEN candidate = 'delivered' THEN 'delivered' ELSE mr.status END,
                final = CASE WHEN candidate = 'delivered' THEN true ELSE mr.final END,
                synthetic_final = CASE WHEN candidate = 'delivered' THEN false
                                       ELSE mr.synthetic_final END,
                failure_kind = CASE WHEN candidate = 'delivered' THEN NULL
                                    ELSE mr.failure_kind END,
                deadline = CASE WHEN candidate = 'delivered' THEN NULL ELSE mr.deadline END,
                updated_at = now()
            WHERE mr.message_id = rec.message_id AND mr.recipient = rec.recipient
              AND NOT mr.superseded
            RETURNING mr.sequence, mr.status INTO latest;
            IF FOUND THEN
                rec.sequence := latest.sequence;
                rec.status := latest.status;
            END IF;
        END IF;

        INSERT INTO events
            (id, type, provider, provider_message_id, provider_part_id, recipient, sender,
             status, final, provider_status, error_code, error_message, occurred_at,
             received_at, client_ref, segments, price, text, counts, raw_id, failure_kind,
             occurred_at_source, synthetic, message_id, recipient_id, sequence,
             recipient_status, tenant, attempt, normalizer, natural_id, correction)
        VALUES
            (e.v->>'id', e.v->>'type', e.v->>'provider', e.key_pmid, e.part_id,
             e.v->>'recipient', e.v->>'sender', e.v->>'status', (e.v->>'final')::boolean,
             e.v->>'provider_status', e.v->>'error_code', e.v->>'error_message',
             (e.v->>'occurred_at')::timestamptz, (e.v->>'received_at')::timestamptz,
             e.v->>'client_ref', (e.v->>'segments')::integer,
             nullif(e.v->'price', 'null'::jsonb), e.v->>'text',
             nullif(e.v->'counts', 'null'::jsonb), owner_raw, e.v->>'failure_kind',
             e.v->>'occurred_at_source', coalesce((e.v->>'synthetic')::boolean, false),
             rec.message_id, rec.id, rec.sequence, rec.status, rec.tenant, rec.attempt,
             e.v->>'normalizer', e.v->>'natural_id', nullif(e.v->'correction', 'null'::jsonb));
        RETURN QUERY SELECT e.v->>'id', true, rec.message_id, rec.sequence, rec.status,
            owner_raw;
    END LOOP;
END
$$;
-- A recipient's state folded again from its events that stand (in the order they arrived), by
-- the rules store_events applies one report at a time: a higher rank takes over, a real final
-- takes over a synthetic one, parts combine, and a delivery of a superseded attempt counts for
-- the latest one. Events of this transaction that it re-derived carry the state it ends in.
-- p_deadline: the silence deadline of a recipient that is no longer final; p_bump: count the
-- change in the sequence (when no new event of the recipient did). Returns the state before
-- and after, for this recipient and, when it is a superseded attempt, the latest one.
CREATE FUNCTION refold_recipient(p_recipient_id bigint, p_deadline timestamptz, p_bump boolean)
RETURNS TABLE(recipient_id bigint, message_id uuid, recipient text, before_status text,
              after_status text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
    ev record;
    folded text;
    folded_synthetic boolean := false;
    folded_kind text;
    candidate text;
    latest_id bigint;
BEGIN
    SELECT mr.id, mr.message_id, mr.recipient, mr.status, mr.final, mr.segments,
           mr.superseded, mr.sequence,
           (m.dispatch_at IS NOT NULL AND m.dispatched_at IS NULL) AS held
    INTO r
    FROM message_recipients mr LEFT JOIN messages m ON m.id = mr.message_id
    WHERE mr.id = p_recipient_id
    FOR UPDATE OF mr;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    folded := CASE WHEN r.held THEN 'scheduled' ELSE 'unknown' END;
    DELETE FROM recipient_parts rp WHERE rp.recipient_id = p_recipient_id;
    FOR ev IN
        SELECT * FROM (
            SELECT e.status, e.synthetic, e.failure_kind, e.provider_part_id, e.segments,
                   true AS own, e.received_at, e.feed_seq
            FROM events e
            WHERE e.recipient_id = p_recipient_id AND e.type = 'message.status'
              AND e.replaced_by IS NULL
            UNION ALL
            SELECT e.status, e.synthetic, e.failure_kind, e.provider_part_id, e.segments,
                   false, e.received_at, e.feed_seq
            FROM message_recipients s JOIN events e ON e.recipient_id = s.id
            WHERE NOT r.superseded AND s.message_id = r.message_id
              AND s.recipient = r.recipient AND s.superseded
              AND e.type = 'message.status' AND e.status = 'delivered'
              AND e.replaced_by IS NULL
        ) AS told
        ORDER BY told.received_at, told.feed_seq
    LOOP
        IF NOT ev.own THEN
            folded := 'delivered';
            folded_synthetic := false;
            folded_kind := NULL;
            CONTINUE;
        END IF;
        candidate := ev.status;
        IF ev.provider_part_id IS NOT NULL THEN
            INSERT INTO recipient_parts AS rp (provider, part_id, recipient_id, status)
            SELECT mr.provider, ev.provider_part_id, p_recipient_id, ev.status
            FROM message_recipients mr WHERE mr.id = p_recipient_id
            ON CONFLICT (provider, part_id) DO UPDATE SET
                status = CASE WHEN status_rank(excluded.status) > status_rank(rp.status)
                              THEN excluded.status ELSE rp.status END,
                updated_at = now();
            candidate := parts_status(p_recipient_id, coalesce(ev.segments, r.segments));
        END IF;
        IF takes_over(candidate, ev.synthetic, folded, folded_synthetic) THEN
            folded_kind := ev.failure_kind;
            folded_synthetic := ev.synthetic AND status_rank(candidate) = 4;
            folded := candidate;
        END IF;
    END LOOP;

    UPDATE message_recipients AS mr SET
        status = folded,
        final = status_rank(folded) = 4,
        synthetic_final = folded_synthetic,
        failure_kind = folded_kind,
        deadline = CASE WHEN status_rank(folded) = 4 THEN NULL
                        ELSE coalesce(mr.deadline, p_deadline) END,
        sequence = mr.sequence + CASE WHEN p_bump AND folded IS DISTINCT FROM r.status
                                      THEN 1 ELSE 0 END,
        updated_at = now()
    WHERE mr.id = p_recipient_id;
    UPDATE events AS e SET recipient_status = folded
    WHERE e.recipient_id = p_recipient_id AND e.txid = pg_current_xact_id()
      AND e.correction IS NOT NULL;
    RETURN QUERY SELECT r.id, r.message_id, r.recipient, r.status, folded;

    IF r.superseded AND r.message_id IS NOT NULL THEN
        SELECT s.id INTO latest_id FROM message_recipients s
        WHERE s.message_id = r.message_id AND s.recipient = r.recipient AND NOT s.superseded;
        IF FOUND THEN
            RETURN QUERY SELECT * FROM refold_recipient(latest_id, p_deadline, p_bump);
        END IF;
    END IF;
END
$$;

-- Several recipients folded again in one call (a run's batch), in the order given.
CREATE FUNCTION refold_recipients(p_ids bigint[], p_deadlines timestamptz[], p_bumps boolean[])
RETURNS TABLE(recipient_id bigint, message_id uuid, recipient text, before_status text,
              after_status text)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        RETURN QUERY SELECT * FROM refold_recipient(p_ids[i], p_deadlines[i], p_bumps[i]);
    END LOOP;
END
$$;

-- A reply a correction re-derived has been answered already: only a new one applies keywords.
DROP TRIGGER events_reply_keyword ON events;
CREATE TRIGGER events_reply_keyword AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.type = 'message.inbound' AND NEW.natural_id IS NULL)
    EXECUTE FUNCTION apply_reply_keyword();
