-- The foundation schema: raw callbacks, messages and their recipients, normalised events, and the
-- subscription outbox (used from the re-emission issue on).

CREATE TABLE raw_callbacks (
    id            uuid PRIMARY KEY,
    provider      text NOT NULL,
    method        text NOT NULL,
    path          text NOT NULL,
    query         text NOT NULL DEFAULT '',
    headers       jsonb NOT NULL DEFAULT '{}',
    body          bytea NOT NULL,
    remote_addr   text,
    received_at   timestamptz NOT NULL,
    outcome       text NOT NULL
                  CHECK (outcome IN ('normalised', 'duplicate', 'unparsed', 'rejected')),
    error         text,
    event_count   integer NOT NULL DEFAULT 0,
    processed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX raw_callbacks_outcome_idx ON raw_callbacks (outcome, provider, received_at);

CREATE TABLE messages (
    id                   uuid PRIMARY KEY,
    provider             text NOT NULL,
    provider_message_id  text,
    sender               text,
    body                 text,
    client_ref           text,
    segments             integer,
    encoding             text,
    created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_provider_message_id_idx ON messages (provider, provider_message_id);
CREATE INDEX messages_client_ref_idx ON messages (client_ref) WHERE client_ref IS NOT NULL;

-- One row per (provider's message id, handset): the recipient's current status. A row can exist
-- before its message is known (a report that outran the send answer): message_id is then null
-- and is set when the message appears.
CREATE TABLE message_recipients (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id           uuid REFERENCES messages (id),
    provider             text NOT NULL,
    provider_message_id  text NOT NULL,
    recipient            text NOT NULL DEFAULT '',
    status               text NOT NULL,
    final                boolean NOT NULL DEFAULT false,
    failure_kind         text,
    sequence             integer NOT NULL DEFAULT 0,
    segments             integer,
    price                jsonb,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, provider_message_id, recipient)
);
CREATE INDEX message_recipients_message_idx ON message_recipients (message_id);

CREATE TABLE events (
    id                   text PRIMARY KEY,
    type                 text NOT NULL,
    provider             text NOT NULL,
    message_id           uuid REFERENCES messages (id),
    recipient_id         bigint REFERENCES message_recipients (id),
    provider_message_id  text,
    provider_part_id     text,
    recipient            text,
    sender               text,
    status               text NOT NULL,
    final                boolean NOT NULL,
    provider_status      text NOT NULL,
    error_code           text,
    error_message        text,
    occurred_at          timestamptz NOT NULL,
    received_at          timestamptz NOT NULL,
    client_ref           text,
    segments             integer,
    price                jsonb,
    text                 text,
    counts               jsonb,
    raw_id               uuid NOT NULL REFERENCES raw_callbacks (id),
    sequence             integer NOT NULL DEFAULT 1,
    recipient_status     text,
    failure_kind         text,
    occurred_at_source   text NOT NULL,
    synthetic            boolean NOT NULL DEFAULT false,
    stored_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_message_idx ON events (message_id, occurred_at);
CREATE INDEX events_recipient_idx ON events (recipient_id, sequence);
CREATE INDEX events_provider_message_id_idx ON events (provider, provider_message_id);
CREATE INDEX events_raw_idx ON events (raw_id);

CREATE TABLE subscriptions (
    id           uuid PRIMARY KEY,
    url          text NOT NULL,
    secret       text NOT NULL,
    filters      jsonb NOT NULL DEFAULT '{}',
    description  text,
    enabled      boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id  uuid NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    event_id         text NOT NULL REFERENCES events (id),
    status           text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at) WHERE status = 'pending';

-- The order of the recipient state machine (DESIGN.md): a recipient's status only moves to a
-- higher rank, so a late or repeated report never takes it back. Mirrored by STATUS_RANK in
-- normalizers/events.py.
CREATE FUNCTION status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'unknown' THEN 0
        WHEN 'accepted' THEN 1
        WHEN 'scheduled' THEN 1
        WHEN 'queued' THEN 2
        WHEN 'sent' THEN 3
        ELSE 4  -- every final status
    END
$$;

-- Stores the events normalised from one raw callback (already stored): each new event, the
-- recipient's state, and the event's sequence and recipient_status; then the raw row's outcome
-- (`duplicate` when every event was known already). Returns one row per event given, saying
-- whether it was new, then a last row with event_id null carrying the raw row's outcome.
--
-- p_events is a JSON array of schema-v1 events (storage fields absent). Events are applied in
-- (provider_message_id, recipient) order so that two callbacks touching the same recipients lock
-- them in the same order and cannot deadlock; reports for one recipient keep their given order.
CREATE FUNCTION ingest_events(
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

        IF ev->>'type' = 'message.status' AND ev->>'provider_message_id' IS NOT NULL THEN
            INSERT INTO message_recipients AS mr
                (provider, provider_message_id, recipient, status, final, failure_kind,
                 sequence, segments, price)
            VALUES
                (ev->>'provider', ev->>'provider_message_id', coalesce(ev->>'recipient', ''),
                 ev->>'status', (ev->>'final')::boolean, ev->>'failure_kind', 1,
                 (ev->>'segments')::integer, nullif(ev->'price', 'null'::jsonb))
            ON CONFLICT (provider, provider_message_id, recipient) DO UPDATE SET
                status = CASE WHEN status_rank(excluded.status) > status_rank(mr.status)
                              THEN excluded.status ELSE mr.status END,
                final = CASE WHEN status_rank(excluded.status) > status_rank(mr.status)
                             THEN excluded.final ELSE mr.final END,
                failure_kind = CASE WHEN status_rank(excluded.status) > status_rank(mr.status)
                                    THEN excluded.failure_kind ELSE mr.failure_kind END,
                sequence = mr.sequence + 1,
                segments = coalesce(excluded.segments, mr.segments),
                price = coalesce(excluded.price, mr.price),
                updated_at = now()
            RETURNING mr.id, mr.message_id, mr.sequence, mr.status INTO rec;

            UPDATE events AS e
            SET recipient_id = rec.id, message_id = rec.message_id, sequence = rec.sequence,
                recipient_status = rec.status
            WHERE e.id = ev->>'id';
            RETURN QUERY SELECT ev->>'id', true, rec.message_id, rec.sequence, rec.status,
                NULL::text;
        ELSE
            -- Inbound messages and summaries have no recipient state: each stands alone.
            RETURN QUERY SELECT ev->>'id', true, NULL::uuid, 1, NULL::text, NULL::text;
        END IF;
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

-- Stores one callback and everything it produced in one call (one round trip, one transaction):
-- the raw row, then ingest_events. A raw id stored before (a replay) changes nothing and returns
-- only the outcome row.
CREATE FUNCTION ingest_callback(
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
BEGIN
    INSERT INTO raw_callbacks
        (id, provider, method, path, query, headers, body, remote_addr, received_at, outcome,
         error)
    VALUES
        (p_raw_id, p_provider, p_method, p_path, p_query, p_headers, p_body, p_remote_addr,
         p_received_at, p_outcome, p_error)
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::text, false, NULL::uuid, NULL::integer, NULL::text,
            (SELECT r.outcome FROM raw_callbacks r WHERE r.id = p_raw_id);
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM ingest_events(p_raw_id, p_outcome, p_error, p_events);
END
$$;

-- Attaches the reports that arrived before their message was known (orphans) to the message,
-- once the provider's id for one of its recipients is learnt. Returns the recipient row's id.
CREATE FUNCTION attach_orphans(
    p_message_id uuid,
    p_provider text,
    p_provider_message_id text,
    p_recipient text
) RETURNS bigint
LANGUAGE sql AS $$
    WITH recipient_row AS (
        INSERT INTO message_recipients AS mr
            (message_id, provider, provider_message_id, recipient, status, final, sequence)
        VALUES
            (p_message_id, p_provider, p_provider_message_id, coalesce(p_recipient, ''),
             'accepted', false, 0)
        ON CONFLICT (provider, provider_message_id, recipient) DO UPDATE SET
            message_id = excluded.message_id, updated_at = now()
        RETURNING mr.id
    ), attached AS (
        UPDATE events AS e SET message_id = p_message_id
        FROM recipient_row
        WHERE e.recipient_id = recipient_row.id AND e.message_id IS NULL
    )
    SELECT id FROM recipient_row
$$;
