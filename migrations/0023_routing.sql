-- Routing and failover (issue 22): routes chosen by the hub when a send names no provider, and
-- a recipient's attempts over several providers.
--
-- A recipient sent again over another provider (send-time failover, or redelivery after the
-- fact) gets a row of its own for the new attempt, under that provider's ids, so that each
-- provider's reports keep finding their row by the same unique key. The attempt it replaces is
-- `superseded`: the recipient's state (status, sequence) is the row of its latest attempt, and a
-- report about an earlier attempt moves it only to say `delivered` (a late delivery counts
-- whatever came after). Every event carries the attempt it is about.

CREATE TABLE send_routes (
    name text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    -- The first matching route (lowest position, then name) decides.
    position integer NOT NULL,
    -- match, providers, weights, prices, choose, failover_on_timeout, redeliver, enabled: as
    -- the API takes them (validated there: one model for the API, the CLI's files and here).
    spec jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Every change of a route: who, when, what it was and what it became (NULL: none).
CREATE TABLE send_route_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    route text NOT NULL,
    action text NOT NULL CHECK (action IN ('create', 'update', 'delete')),
    who text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    before jsonb,
    after jsonb
);
CREATE INDEX send_route_changes_route_idx ON send_route_changes (route, id);

-- How the hub chose the message's providers (NULL: the caller named one).
ALTER TABLE messages ADD COLUMN routing jsonb;

-- created_at: when the attempt was made (a provider's health looks at its recent ones; rows
-- from before this migration get the migration's time). redeliver_until/redeliver_on: the
-- route's redelivery after the fact, while it may still happen (NULL: it may not, or no
-- longer); the partial index is the redelivery sweep's, and stays as small as what is open.
ALTER TABLE message_recipients
    ADD COLUMN attempt smallint NOT NULL DEFAULT 1,
    ADD COLUMN superseded boolean NOT NULL DEFAULT false,
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN redeliver_until timestamptz,
    ADD COLUMN redeliver_on text[];
CREATE INDEX message_recipients_redeliver_idx ON message_recipients (redeliver_until)
    WHERE redeliver_until IS NOT NULL;
-- The providers' health reads the attempts of the last window.
CREATE INDEX message_recipients_created_idx ON message_recipients (created_at)
    WHERE message_id IS NOT NULL;

ALTER TABLE events ADD COLUMN attempt smallint NOT NULL DEFAULT 1;
-- What an event of a type without a recipient carries besides the common fields (a
-- provider.health's country, state, reason and figures).
ALTER TABLE events ADD COLUMN details jsonb;

-- Each provider's health per destination country ('': every country), as the health rules or
-- its send errors left it; a row is kept once made (its changed_at holds the next change).
CREATE TABLE provider_health (
    provider text NOT NULL,
    country text NOT NULL DEFAULT '',
    state text NOT NULL CHECK (state IN ('healthy', 'degraded')),
    -- Which rule made it so: 'slow', 'delivery_rate', 'send_errors' (the circuit breaker), or
    -- 'recovered'.
    rule text NOT NULL,
    reason text NOT NULL,
    figures jsonb,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, country)
);

-- Event types added after the first three reach a subscription only when its filter names
-- them: a subscriber of everything keeps getting what it got.
CREATE OR REPLACE FUNCTION subscription_takes(filters jsonb, ev_type text, ev_provider text, ev_status text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT (CASE WHEN filters->'event_types' IS NULL
                 THEN ev_type IN ('message.status', 'message.summary', 'message.inbound')
                 ELSE filters->'event_types' ? ev_type END)
       AND (filters->'providers' IS NULL OR filters->'providers' ? ev_provider)
       AND (filters->'statuses' IS NULL OR filters->'statuses' ? ev_status)
$$;

-- fail_over: the recipients' current attempts are superseded by new ones over p_provider,
-- under the message's provisional id until that provider names its own; their sequence goes
-- on from where it was. Returns the recipients given a new attempt (not those of another
-- message, nor those already sent over p_provider).
CREATE FUNCTION fail_over(p_message_id uuid, p_recipients text[], p_provider text, p_deadline timestamptz, p_redeliver_until timestamptz, p_redeliver_on text[]) RETURNS SETOF text
    LANGUAGE sql
    AS $$
    WITH old AS (
        UPDATE message_recipients mr SET superseded = true, deadline = NULL,
            redeliver_until = NULL, updated_at = now()
        WHERE mr.message_id = p_message_id AND mr.recipient = ANY(p_recipients)
          AND NOT mr.superseded
          AND NOT EXISTS (SELECT 1 FROM message_recipients o
                          WHERE o.message_id = p_message_id AND o.recipient = mr.recipient
                            AND o.provider = p_provider)
        RETURNING mr.recipient, mr.attempt, mr.sequence, mr.segments, mr.country, mr.tenant
    )
    INSERT INTO message_recipients
        (message_id, provider, provider_message_id, recipient, status, final, sequence,
         segments, deadline, country, tenant, attempt, redeliver_until, redeliver_on)
    SELECT p_message_id, p_provider, 'pending:' || p_message_id, old.recipient, 'unknown', false,
           old.sequence, old.segments, p_deadline, old.country, old.tenant, old.attempt + 1,
           p_redeliver_until, p_redeliver_on
    FROM old
    RETURNING recipient
$$;

-- adopt_recipient: the attempt (and whether it is superseded) goes with the row.
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
         segments, deadline, country, tenant, attempt, superseded, created_at,
         redeliver_until, redeliver_on)
    VALUES
        (p_message_id, p_provider, p_provider_message_id, p_recipient, pending.status,
         pending.final, pending.sequence, pending.segments, pending.deadline, pending.country,
         pending.tenant, pending.attempt, pending.superseded, pending.created_at,
         pending.redeliver_until, pending.redeliver_on)
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

-- store_events: a report about an attempt that a later one superseded moves the recipient's
-- latest attempt only to say `delivered`; its sequence and recipient_status are the recipient's
-- (the latest attempt's row), so a subscriber's ordering holds across attempts.
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
    alone_tenant text;
    latest record;
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
                 occurred_at_source, synthetic, sequence, tenant, details)
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
                 nullif(e.v->'details', 'null'::jsonb));
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
             recipient_status, tenant, attempt)
        VALUES
            (e.v->>'id', e.v->>'type', e.v->>'provider', e.key_pmid, e.part_id,
             e.v->>'recipient', e.v->>'sender', e.v->>'status', (e.v->>'final')::boolean,
             e.v->>'provider_status', e.v->>'error_code', e.v->>'error_message',
             (e.v->>'occurred_at')::timestamptz, (e.v->>'received_at')::timestamptz,
             e.v->>'client_ref', (e.v->>'segments')::integer,
             nullif(e.v->'price', 'null'::jsonb), e.v->>'text',
             nullif(e.v->'counts', 'null'::jsonb), owner_raw, e.v->>'failure_kind',
             e.v->>'occurred_at_source', coalesce((e.v->>'synthetic')::boolean, false),
             rec.message_id, rec.id, rec.sequence, rec.status, rec.tenant, rec.attempt);
        RETURN QUERY SELECT e.v->>'id', true, rec.message_id, rec.sequence, rec.status,
            owner_raw;
    END LOOP;
END
$$;
