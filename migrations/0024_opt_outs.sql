-- Opt-outs (issue 23): a handset that answers STOP is not sent to again, across every provider.
--
-- The list keeps a keyed hash (HMAC-SHA256) of each E.164 number, and the number itself until
-- it is erased: sends look entries up by the hash, so an erased number stays suppressed. The key
-- is OPT_OUT_SECRET (the session is given its HMAC pads, smsr.opt_out_pads), else one made here
-- once and kept in hub_keys (which whoever reads the database can use: set OPT_OUT_SECRET in
-- production).
--
-- A keyword reply is applied by a trigger on the reply's own insert, in the transaction that
-- stores it: a reply answered 2xx has done its work, whichever instance stored it.

-- A tenant's answer to a HELP or INFO reply (NULL: none, the default).
ALTER TABLE tenants ADD COLUMN help_reply text CHECK (length(help_reply) BETWEEN 1 AND 640);

-- HELP/INFO replies waiting for their answer: made by the reply's trigger, sent (and deleted)
-- by the scheduler's loop through the provider the reply came from.
CREATE TABLE help_replies (
    reply_event_id text PRIMARY KEY,
    tenant text NOT NULL REFERENCES tenants (name),
    provider text NOT NULL,
    handset text NOT NULL,
    ours text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hub_keys (
    name text PRIMARY KEY,
    value bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- 32 bytes from the server's strong random source (gen_random_uuid: core since 13).
INSERT INTO hub_keys (name, value)
SELECT 'opt_out', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');

CREATE TABLE opt_outs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- NULL: a reply attributed to no tenant (it suppresses the number it went to, for anyone).
    tenant text REFERENCES tenants (name),
    number text,  -- E.164; NULL once erased
    number_hash bytea NOT NULL,
    -- The number or sender id the handset opted out of; NULL: the whole tenant.
    sender text,
    source text NOT NULL CHECK (source IN ('keyword', 'provider', 'api', 'import')),
    event_id text,  -- the reply that asked for it
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (tenant IS NOT NULL OR sender IS NOT NULL)
);
-- One entry per handset, tenant and sender; a send's lookup leads with the hash.
CREATE UNIQUE INDEX opt_outs_key ON opt_outs (number_hash, coalesce(tenant, ''), coalesce(sender, ''));
CREATE INDEX opt_outs_tenant_idx ON opt_outs (tenant, created_at DESC, id DESC);
-- Erasure finds a handset's contact.* events (they name it as their sender).
CREATE INDEX events_contact_sender_idx ON events (sender)
    WHERE type IN ('contact.opted_out', 'contact.opted_in');

-- HMAC-SHA256 (RFC 2104) with the core sha256(): no extension needed (the hub may run without
-- DDL rights, migration 0019). The key's two pads are made once per statement (hmac_pads), so
-- that a send's lookup of many numbers costs two sha256() a number.
CREATE FUNCTION hmac_pads(p_key bytea, OUT inner_pad bytea, OUT outer_pad bytea)
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
DECLARE
    k bytea := CASE WHEN length(p_key) > 64 THEN sha256(p_key) ELSE p_key END;
BEGIN
    k := k || decode(repeat('00', 64 - length(k)), 'hex');
    inner_pad := k;
    outer_pad := k;
    FOR i IN 0..63 LOOP
        inner_pad := set_byte(inner_pad, i, get_byte(k, i) # 54);  -- 0x36
        outer_pad := set_byte(outer_pad, i, get_byte(k, i) # 92);  -- 0x5c
    END LOOP;
END
$$;

CREATE FUNCTION hmac_with(p_inner_pad bytea, p_outer_pad bytea, p_message text) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
    SELECT sha256(p_outer_pad || sha256(p_inner_pad || convert_to(p_message, 'UTF8')))
$$;

-- The pads of the list's key, made once: the session's (smsr.opt_out_pads, which the hub makes
-- from OPT_OUT_SECRET), else those of the database's key, made here. A send's lookup then costs
-- two sha256() a number and no loop.
INSERT INTO hub_keys (name, value)
SELECT 'opt_out_pads', p.inner_pad || p.outer_pad FROM hub_keys k, hmac_pads(k.value) AS p
WHERE k.name = 'opt_out';

CREATE FUNCTION opt_out_pads(OUT inner_pad bytea, OUT outer_pad bytea)
    LANGUAGE sql STABLE
    AS $$
    SELECT substring(k.pads FROM 1 FOR 64), substring(k.pads FROM 65 FOR 64)
    FROM (SELECT coalesce(decode(nullif(current_setting('smsr.opt_out_pads', true), ''), 'hex'),
                          (SELECT value FROM hub_keys WHERE name = 'opt_out_pads')) AS pads) AS k
$$;

-- The list's hash of one E.164 number.
CREATE FUNCTION opt_out_hash(p_number text) RETURNS bytea
    LANGUAGE sql STABLE
    AS $$
    SELECT hmac_with(p.inner_pad, p.outer_pad, p_number) FROM opt_out_pads() AS p
$$;

-- The fingerprint of the key the list's hashes were made with: when the key changes (OPT_OUT_SECRET
-- set, or changed), rekey_opt_outs() hashes again every entry that still has its number; an
-- erased entry cannot be, and no longer matches (said at start).
INSERT INTO hub_keys (name, value) SELECT 'opt_out_in_use', sha256(value) FROM hub_keys
WHERE name = 'opt_out_pads';

CREATE FUNCTION rekey_opt_outs(OUT rehashed bigint, OUT erased_lost bigint)
    LANGUAGE plpgsql
    AS $$
DECLARE
    print bytea := (SELECT sha256(p.inner_pad || p.outer_pad) FROM opt_out_pads() AS p);
BEGIN
    rehashed := 0;
    erased_lost := 0;
    PERFORM pg_advisory_xact_lock(hashtext('smsr opt-out rekey'));
    IF (SELECT value FROM hub_keys WHERE name = 'opt_out_in_use') IS NOT DISTINCT FROM print THEN
        RETURN;
    END IF;
    UPDATE opt_outs SET number_hash = opt_out_hash(number) WHERE number IS NOT NULL;
    GET DIAGNOSTICS rehashed = ROW_COUNT;
    SELECT count(*) INTO erased_lost FROM opt_outs WHERE number IS NULL;
    INSERT INTO hub_keys (name, value) VALUES ('opt_out_in_use', print)
    ON CONFLICT (name) DO UPDATE SET value = excluded.value, created_at = now();
END
$$;

-- The keyword lists of the session (OPT_OUT_KEYWORDS, OPT_IN_KEYWORDS, OPT_OUT_ALL_KEYWORDS),
-- comma separated, upper case; the defaults are Twilio's Advanced Opt-Out's.
CREATE FUNCTION opt_out_words(p_which text) RETURNS text[]
    LANGUAGE sql STABLE
    AS $$
    SELECT string_to_array(coalesce(nullif(current_setting('smsr.' || p_which, true), ''),
        CASE p_which
            WHEN 'opt_out_keywords' THEN 'STOP,STOPALL,UNSUBSCRIBE,CANCEL,END,QUIT'
            WHEN 'opt_in_keywords' THEN 'START,UNSTOP'
            WHEN 'opt_out_all_keywords' THEN 'STOPALL'
            WHEN 'help_keywords' THEN 'HELP,INFO'
        END), ',')
$$;

-- What a reply's whole text says: its keyword (trimmed, upper case, without trailing
-- punctuation), or NULL when it is longer text ("don't stop" is not a STOP).
CREATE FUNCTION reply_keyword(p_text text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT CASE WHEN length(p_text) <= 40
                THEN upper(regexp_replace(btrim(p_text), '[[:punct:][:space:]]+$', ''))
           END
$$;

-- A contact.opted_out / contact.opted_in event for the subscribers (the tenant's, and the
-- operator's that name the type): `sender` the handset, `recipient` the number it opted out of
-- (NULL: the whole tenant), details.source how.
CREATE FUNCTION store_contact_event(p_type text, p_reply_id text, p_provider text, p_scope text, p_handset text, p_at timestamptz, p_received_at timestamptz, p_tenant text, p_raw_id uuid, p_source text) RETURNS void
    LANGUAGE sql
    AS $$
    INSERT INTO events
        (id, type, provider, recipient, sender, status, final, provider_status, occurred_at,
         received_at, occurred_at_source, synthetic, sequence, tenant, details, raw_id)
    VALUES
        ('evt_' || left(encode(sha256(convert_to(p_type || ':' || p_reply_id, 'UTF8')), 'hex'), 32),
         p_type, p_provider, p_scope, p_handset, 'unknown', false, p_type, p_at, p_received_at,
         'received', true, 1, p_tenant,
         jsonb_build_object('source', p_source, 'reply_event_id', p_reply_id), p_raw_id)
$$;

CREATE FUNCTION apply_reply_keyword() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    word text := reply_keyword(NEW.text);
    whole_tenant boolean;
    ours text;
    changed integer;
BEGIN
    IF word IS NULL OR NEW.sender IS NULL OR NEW.sender !~ '^\+[0-9]{6,15}$' THEN
        RETURN NULL;
    END IF;
    whole_tenant := NEW.tenant IS NOT NULL
        AND (word = ANY(opt_out_words('opt_out_all_keywords'))
             OR current_setting('smsr.opt_out_scope', true) = 'tenant');
    ours := CASE WHEN whole_tenant THEN NULL ELSE NEW.recipient END;
    IF ours IS NULL AND NEW.tenant IS NULL THEN
        RETURN NULL;  -- nobody's reply to no known number: nothing to scope it to
    END IF;
    IF word = ANY(opt_out_words('opt_out_keywords')) THEN
        INSERT INTO opt_outs (tenant, number, number_hash, sender, source, event_id)
        VALUES (NEW.tenant, NEW.sender, opt_out_hash(NEW.sender), ours, 'keyword', NEW.id)
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS changed = ROW_COUNT;
        IF changed > 0 THEN
            PERFORM store_contact_event('contact.opted_out', NEW.id, NEW.provider, ours,
                NEW.sender, NEW.occurred_at, NEW.received_at, NEW.tenant, NEW.raw_id, 'keyword');
        END IF;
    ELSIF word = ANY(opt_out_words('help_keywords')) THEN
        IF NEW.tenant IS NOT NULL AND NEW.recipient IS NOT NULL
           AND (SELECT t.help_reply IS NOT NULL FROM tenants t WHERE t.name = NEW.tenant) THEN
            INSERT INTO help_replies (reply_event_id, tenant, provider, handset, ours)
            VALUES (NEW.id, NEW.tenant, NEW.provider, NEW.sender, NEW.recipient)
            ON CONFLICT DO NOTHING;
        END IF;
    ELSIF word = ANY(opt_out_words('opt_in_keywords')) THEN
        -- Back in: for the number it wrote to, and the tenant's whole-tenant entry.
        DELETE FROM opt_outs o
        WHERE o.number_hash = opt_out_hash(NEW.sender)
          AND coalesce(o.tenant, '') = coalesce(NEW.tenant, '')
          AND (o.sender IS NULL OR o.sender = NEW.recipient OR ours IS NULL);
        GET DIAGNOSTICS changed = ROW_COUNT;
        IF changed > 0 THEN
            PERFORM store_contact_event('contact.opted_in', NEW.id, NEW.provider, ours,
                NEW.sender, NEW.occurred_at, NEW.received_at, NEW.tenant, NEW.raw_id, 'keyword');
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_reply_keyword AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.type = 'message.inbound') EXECUTE FUNCTION apply_reply_keyword();

-- The recipients of a message that may not be sent to: each looked up by its hash, for the
-- message's tenant (or nobody's entries) and sender (or the tenant's whole-tenant entries).
CREATE FUNCTION suppressed(p_message_id uuid, p_numbers text[]) RETURNS SETOF text
    LANGUAGE sql STABLE
    AS $$
    SELECT n FROM opt_out_pads() AS p, unnest(p_numbers) AS n
    WHERE EXISTS (
        SELECT 1 FROM messages m
        JOIN opt_outs o ON o.number_hash = hmac_with(p.inner_pad, p.outer_pad, n)
        WHERE m.id = p_message_id
          AND (o.tenant = m.tenant OR o.tenant IS NULL)
          AND (o.sender IS NULL OR o.sender = m.sender))
$$;
