-- Tenants (issue 21): one hub shared by many applications, each reaching only its own messages,
-- events, replies and subscriptions. A tenant is named by a short plain name, which is also what
-- the events carry (`tenant`). Rows of no tenant (NULL) are the operator's alone: reports that
-- match no message sent through the hub, replies attributed to nobody, operator subscriptions.

CREATE TABLE tenants (
    name text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    enabled boolean NOT NULL DEFAULT true,
    -- The providers its keys may send through; NULL: every configured one.
    providers text[],
    -- Its own send limits; NULL: the settings' (SEND_RATE_PER_S, SEND_BURST,
    -- SEND_DAILY_RECIPIENTS).
    send_rate_per_s double precision CHECK (send_rate_per_s > 0),
    send_burst integer CHECK (send_burst > 0),
    daily_recipients integer CHECK (daily_recipients >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

-- A single-tenant hub's data and keys move here.
INSERT INTO tenants (name) VALUES ('default');

-- The numbers and sender ids a tenant owns: a reply to one of them is that tenant's.
CREATE TABLE tenant_numbers (
    number text PRIMARY KEY,
    tenant text NOT NULL REFERENCES tenants (name),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenant_numbers_tenant_idx ON tenant_numbers (tenant);

-- A key belongs to one tenant, or to none: an operator key. Keys that could administer the
-- single-tenant hub stay the operator's; the others become the tenant `default`'s.
ALTER TABLE api_keys ADD COLUMN tenant text REFERENCES tenants (name);
UPDATE api_keys SET tenant = 'default' WHERE NOT 'admin' = ANY (scopes);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant);

-- Every message is some tenant's. A constant default is written into the catalogue, not into
-- every row (no table rewrite); then new rows must name theirs. The key is checked for new
-- rows only: every existing one holds 'default', which exists.
ALTER TABLE messages ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE messages ALTER COLUMN tenant DROP DEFAULT;
ALTER TABLE messages ADD CONSTRAINT messages_tenant_fkey FOREIGN KEY (tenant)
    REFERENCES tenants (name) NOT VALID;
CREATE INDEX messages_tenant_created_idx ON messages (tenant, created_at DESC, id DESC);

-- A recipient carries its message's tenant, so that a report learns it from the row it
-- updates anyway; a recipient of no message (a report that outran its send answer, or of a
-- message never sent through the hub) has none until its message adopts it.
ALTER TABLE message_recipients ADD COLUMN tenant text DEFAULT 'default';
UPDATE message_recipients SET tenant = NULL WHERE message_id IS NULL;
ALTER TABLE message_recipients ALTER COLUMN tenant DROP DEFAULT;

-- The event's `tenant` (schema v1, additive). Existing events are the tenant `default`'s but
-- for reports that match no message (orphans, and summaries of no message sent through the
-- hub): the operator's.
ALTER TABLE events ADD COLUMN tenant text DEFAULT 'default';
UPDATE events SET tenant = NULL WHERE message_id IS NULL AND type = 'message.status';
UPDATE events e SET tenant = NULL
WHERE e.type = 'message.summary' AND NOT EXISTS (
    SELECT 1 FROM message_recipients mr
    WHERE mr.provider = e.provider AND mr.provider_message_id = e.provider_message_id
      AND mr.message_id IS NOT NULL);
ALTER TABLE events ALTER COLUMN tenant DROP DEFAULT;
-- A tenant's feed and its inbound replies, in their own order (the operator's keep theirs).
CREATE INDEX events_tenant_feed_idx ON events (tenant, txid, feed_seq) WHERE tenant IS NOT NULL;
CREATE INDEX events_tenant_inbound_idx ON events (tenant, stored_at DESC, id DESC)
    WHERE type = 'message.inbound' AND tenant IS NOT NULL;

-- A subscription is a tenant's (it receives that tenant's events) or the operator's (NULL:
-- every event, as every subscription did before tenants).
ALTER TABLE subscriptions ADD COLUMN tenant text REFERENCES tenants (name);

-- The tenant a reply belongs to: the owner of the number (or sender id) it was sent to, else
-- the tenant that most recently sent from that number to that handset within the reply window
-- (the setting smsr.reply_window_days, which the hub's connections carry: 30 days without it),
-- else nobody (NULL: the operator's alone).
CREATE FUNCTION reply_tenant(p_ours text, p_handset text, p_at timestamptz) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT coalesce(
        (SELECT tn.tenant FROM tenant_numbers tn WHERE tn.number = p_ours),
        (SELECT m.tenant FROM message_recipients r JOIN messages m ON m.id = r.message_id
         WHERE r.recipient = p_handset AND r.message_id IS NOT NULL AND m.sender = p_ours
           AND m.created_at <= p_at
           AND m.created_at > p_at - make_interval(days =>
               coalesce(nullif(current_setting('smsr.reply_window_days', true), '')::integer,
                        30))
         ORDER BY m.created_at DESC LIMIT 1))
$$;

-- Events reach the subscriptions of their tenant and the operator's.
CREATE OR REPLACE FUNCTION queue_deliveries() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO deliveries (subscription_id, event_id)
    SELECT s.id, NEW.id FROM subscriptions s
    WHERE s.enabled AND (s.tenant IS NULL OR s.tenant = NEW.tenant)
      AND subscription_takes(s.filters, NEW.type, NEW.provider, NEW.status);
    RETURN NULL;
END
$$;

-- Reports stored before their message was known become its tenant's when it adopts them, and
-- are queued then for that tenant's subscriptions (the operator's had them at once).
CREATE FUNCTION adopt_events(p_recipient_id bigint, p_message_id uuid, p_tenant text,
                             p_recipient text) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO deliveries (subscription_id, event_id)
    SELECT s.id, e.id FROM events e JOIN subscriptions s
        ON s.enabled AND s.tenant = p_tenant
       AND subscription_takes(s.filters, e.type, e.provider, e.status)
    WHERE e.recipient_id = p_recipient_id AND e.message_id IS NULL
    ON CONFLICT (subscription_id, event_id) DO NOTHING;
    UPDATE events SET message_id = p_message_id, tenant = p_tenant,
        recipient = coalesce(recipient, p_recipient)
    WHERE recipient_id = p_recipient_id AND message_id IS NULL;
END
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
         segments, deadline, country, tenant)
    VALUES
        (p_message_id, p_provider, p_provider_message_id, p_recipient, pending.status,
         pending.final, pending.sequence, pending.segments, pending.deadline, pending.country,
         pending.tenant)
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
        updated_at = now()
    WHERE id = found_row;
    PERFORM adopt_events(found_row, p_message_id, pending.tenant, p_recipient);
    DELETE FROM message_recipients WHERE id = pending.id;
    RETURN found_row;
END
$$;

CREATE OR REPLACE FUNCTION attach_orphans(p_message_id uuid, p_provider text, p_provider_message_id text, p_recipient text) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    rid bigint;
    owner uuid;
    owner_tenant text := (SELECT m.tenant FROM messages m WHERE m.id = p_message_id);
BEGIN
    INSERT INTO message_recipients AS mr
        (message_id, provider, provider_message_id, recipient, status, final, sequence,
         tenant)
    VALUES
        (p_message_id, p_provider, p_provider_message_id, coalesce(p_recipient, ''),
         'accepted', false, 0, owner_tenant)
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
        UPDATE message_recipients SET message_id = p_message_id, tenant = owner_tenant,
            updated_at = now()
        WHERE id = rid AND message_id IS NULL;
    END IF;
    PERFORM adopt_events(rid, p_message_id, owner_tenant, NULL);
    RETURN rid;
END
$$;

-- store_events: a report's tenant is its recipient's (read from the row the state machine
-- updates anyway: no lookup of its own); a summary's, that of the recipients of its provider
-- id; a reply's, as reply_tenant says.
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
                 occurred_at_source, synthetic, sequence, tenant)
            VALUES
                (e.v->>'id', e.v->>'type', e.v->>'provider', e.v->>'provider_message_id',
                 e.v->>'provider_part_id', e.v->>'recipient', e.v->>'sender', e.v->>'status',
                 (e.v->>'final')::boolean, e.v->>'provider_status', e.v->>'error_code',
                 e.v->>'error_message', (e.v->>'occurred_at')::timestamptz,
                 (e.v->>'received_at')::timestamptz, e.v->>'client_ref',
                 (e.v->>'segments')::integer, nullif(e.v->'price', 'null'::jsonb),
                 e.v->>'text', nullif(e.v->'counts', 'null'::jsonb), owner_raw,
                 e.v->>'failure_kind', e.v->>'occurred_at_source',
                 coalesce((e.v->>'synthetic')::boolean, false), 1, alone_tenant);
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
        RETURNING mr.id, mr.message_id, mr.sequence, mr.status, mr.tenant INTO rec;

        INSERT INTO events
            (id, type, provider, provider_message_id, provider_part_id, recipient, sender,
             status, final, provider_status, error_code, error_message, occurred_at,
             received_at, client_ref, segments, price, text, counts, raw_id, failure_kind,
             occurred_at_source, synthetic, message_id, recipient_id, sequence,
             recipient_status, tenant)
        VALUES
            (e.v->>'id', e.v->>'type', e.v->>'provider', e.key_pmid, e.part_id,
             e.v->>'recipient', e.v->>'sender', e.v->>'status', (e.v->>'final')::boolean,
             e.v->>'provider_status', e.v->>'error_code', e.v->>'error_message',
             (e.v->>'occurred_at')::timestamptz, (e.v->>'received_at')::timestamptz,
             e.v->>'client_ref', (e.v->>'segments')::integer,
             nullif(e.v->'price', 'null'::jsonb), e.v->>'text',
             nullif(e.v->'counts', 'null'::jsonb), owner_raw, e.v->>'failure_kind',
             e.v->>'occurred_at_source', coalesce((e.v->>'synthetic')::boolean, false),
             rec.message_id, rec.id, rec.sequence, rec.status, rec.tenant);
        RETURN QUERY SELECT e.v->>'id', true, rec.message_id, rec.sequence, rec.status,
            owner_raw;
    END LOOP;
END
$$;
