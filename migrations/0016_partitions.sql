-- Time partitions (issue 16): the tables that grow with traffic become range partitions by the
-- time each row was written, so that retention drops whole partitions instead of deleting rows.
--   events            by stored_at,  one partition a month: events are looked up by id on the
--                     hot path (a report stored twice is recognised by its id) and by message, and
--                     every such lookup probes each partition's index; a month keeps that at a
--                     few probes under the default retention.
--   raw_callbacks     by received_at, one a day: written once, read rarely (by id, or by
--   delivery_attempts by started_at,  one a day   outcome and time), and they hold the bodies and
--                     answers whose retention should be tight.
-- Each keeps its rows: the existing table becomes the partition for everything before the
-- migration (its "legacy" partition, dropped whole once past retention), a default partition
-- catches a row no partition covers (none in normal running: the worker creates partitions
-- ahead), and the first regular partition runs from the cut to the end of its day or month.
-- The migration holds an exclusive lock on the three tables for its duration: one scan of each
-- (to check the legacy partition's bound) and one build of each new primary key.

-- Unique constraints of a partitioned table must include its partition key: foreign keys to
-- events, raw_callbacks and deliveries' attempts cannot be kept, and rows are retired by time,
-- kind by kind, so nothing may hold a row of another kind in place. The code keeps these
-- relations (an event's raw_id, a delivery's event) and tolerates the other side being gone.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_fkey;
ALTER TABLE events DROP CONSTRAINT events_raw_id_fkey;
ALTER TABLE events DROP CONSTRAINT events_message_id_fkey;
ALTER TABLE events DROP CONSTRAINT events_recipient_id_fkey;
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_delivery_id_fkey;

-- How often each partitioned table is cut.
CREATE FUNCTION partition_unit(p_table text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_table WHEN 'events' THEN 'month' ELSE 'day' END
$$;

-- The name of the partition of `p_table` starting at the unit that holds `p_at` (UTC):
-- events_p202612, raw_callbacks_p20261201.
CREATE FUNCTION partition_name(p_table text, p_at timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT p_table || '_p' || to_char(p_at AT TIME ZONE 'UTC',
        CASE partition_unit(p_table) WHEN 'month' THEN 'YYYYMM' ELSE 'YYYYMMDD' END)
$$;

-- Each partition of a table with its bounds (the default partition left out).
CREATE FUNCTION table_partitions(p_table text)
RETURNS TABLE (name text, starts timestamptz, ends timestamptz)
    LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           CASE WHEN b[1] = 'MINVALUE' THEN '-infinity'::timestamptz ELSE b[1]::timestamptz END,
           CASE WHEN b[2] = 'MAXVALUE' THEN 'infinity'::timestamptz ELSE b[2]::timestamptz END
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
        '^FOR VALUES FROM \(''?([^'')]+)''?\) TO \(''?([^'')]+)''?\)$') AS b
    WHERE i.inhparent = p_table::regclass AND b IS NOT NULL
$$;

-- The tables cut by time: the functions below touch no other.
CREATE FUNCTION partitioned_table(p_table text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_table NOT IN ('events', 'raw_callbacks', 'delivery_attempts') THEN
        RAISE EXCEPTION '% is not a partitioned table of the hub', p_table
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- Creates the missing partitions of `p_table` from the unit holding `p_from` to the one holding
-- `p_until`; returns how many it created. A unit already covered (by the legacy partition, or
-- the first partition cut short) is skipped by name. It runs with its owner's rights
-- (SECURITY DEFINER, a fixed search_path): `serve` and `worker` may run as a role that cannot
-- change the schema (see 0019).
CREATE FUNCTION create_partitions(p_table text, p_from timestamptz, p_until timestamptz)
RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    unit text := partition_unit(p_table);
    step interval := CASE unit WHEN 'month' THEN interval '1 month' ELSE interval '1 day' END;
    starts timestamp := date_trunc(unit, p_from AT TIME ZONE 'UTC');
    created integer := 0;
BEGIN
    PERFORM partitioned_table(p_table);
    WHILE starts <= p_until AT TIME ZONE 'UTC' LOOP
        IF to_regclass(partition_name(p_table, starts AT TIME ZONE 'UTC')) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                partition_name(p_table, starts AT TIME ZONE 'UTC'), p_table,
                starts AT TIME ZONE 'UTC', (starts + step) AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
        starts := starts + step;
    END LOOP;
    RETURN created;
END
$$;

-- Turns `p_table` into a table partitioned by range of `p_key` keeping every row: the table
-- becomes <p_table>_legacy, attached for everything before `p_cut`; its indexes, triggers,
-- identity sequences and checks move to the new parent under their names.
CREATE FUNCTION partition_existing(p_table text, p_key text, p_cut timestamptz) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    legacy text := p_table || '_legacy';
    unit text := partition_unit(p_table);
    idx record;
    trg record;
    col record;
    indexes text[] := '{}';
    definitions text[] := '{}';
    sequence_name text;
    last_value bigint;
    called boolean;
BEGIN
    FOR idx IN
        SELECT c.relname::text AS name, pg_get_indexdef(i.indexrelid) AS def
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = p_table::regclass AND NOT i.indisprimary AND NOT i.indisunique
    LOOP
        indexes := indexes || idx.name;
        definitions := definitions || substring(idx.def FROM ' USING (.*)$');
    END LOOP;

    EXECUTE format('ALTER TABLE %I RENAME TO %I', p_table, legacy);
    FOR idx IN
        SELECT c.relname::text AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = legacy::regclass
    LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', idx.name,
            legacy || substr(idx.name, length(p_table) + 1));
    END LOOP;

    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
        ' INCLUDING STORAGE) PARTITION BY RANGE (%I)', p_table, legacy, p_key);

    -- Identity columns are not allowed on a partitioned table (before Postgres 17): the same
    -- numbering goes on from a sequence of the parent's.
    FOR col IN
        SELECT a.attname::text AS name FROM pg_attribute a
        WHERE a.attrelid = legacy::regclass AND a.attidentity <> '' AND NOT a.attisdropped
    LOOP
        sequence_name := pg_get_serial_sequence(legacy, col.name);
        EXECUTE format('SELECT last_value, is_called FROM %s', sequence_name)
            INTO last_value, called;
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I DROP IDENTITY', legacy, col.name);
        EXECUTE format('CREATE SEQUENCE %I AS bigint OWNED BY %I.%I',
            p_table || '_' || col.name || '_seq', p_table, col.name);
        PERFORM setval(format('%I', p_table || '_' || col.name || '_seq'), last_value, called);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I SET DEFAULT nextval(%L)', p_table,
            col.name, p_table || '_' || col.name || '_seq');
    END LOOP;

    EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (id, %I)', p_table, p_key);
    FOR i IN 1 .. coalesce(array_length(indexes, 1), 0) LOOP
        EXECUTE format('CREATE INDEX %I ON %I USING %s', indexes[i], p_table, definitions[i]);
    END LOOP;

    FOR trg IN
        SELECT t.tgname::text AS name, pg_get_triggerdef(t.oid) AS def FROM pg_trigger t
        WHERE t.tgrelid = legacy::regclass AND NOT t.tgisinternal
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %I', trg.name, legacy);
        EXECUTE regexp_replace(trg.def, ' ON (public\.)?' || legacy || ' ', ' ON ' || p_table || ' ');
    END LOOP;

    -- The parent's key (id and time) replaces the old one (id): built on the legacy rows as
    -- they are attached.
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', legacy,
        (SELECT conname FROM pg_constraint WHERE conrelid = legacy::regclass AND contype = 'p'));
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
        p_table, legacy, p_cut);
    EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', p_table || '_default', p_table);
    -- The first regular partition: from the cut to the end of its unit, under the unit's name.
    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
        partition_name(p_table, p_cut), p_table, p_cut,
        (date_trunc(unit, p_cut AT TIME ZONE 'UTC')
         + CASE unit WHEN 'month' THEN interval '1 month' ELSE interval '1 day' END)
        AT TIME ZONE 'UTC');
END
$$;

-- The cut: the next full hour, so that a row written by an instance whose clock runs a little
-- ahead of the database's still falls in the legacy partition.
SELECT partition_existing(t.name, t.key,
    date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 hour')
FROM (VALUES ('events', 'stored_at'), ('raw_callbacks', 'received_at'),
             ('delivery_attempts', 'started_at')) AS t(name, key);

DROP FUNCTION partition_existing(text, text, timestamptz);

-- From the cut: the units before it are the legacy partition's (from now(), in the hour before
-- midnight, the day's unit would be made again over the legacy partition's last hour, and the
-- migration refused: fixed 2026-12-02, see 0022).
SELECT create_partitions(t.name,
    date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 hour',
    now() + interval '7 days')
FROM (VALUES ('events'), ('raw_callbacks'), ('delivery_attempts')) AS t(name);

-- Events are no longer unique by id alone (see store_events), and a raw callback's key is its id
-- and its time: replays look in the partitions of their own times.
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
                 coalesce((e.v->>'synthetic')::boolean, false), 1);
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
             rec.message_id, rec.id, rec.sequence, rec.status);
        RETURN QUERY SELECT e.v->>'id', true, rec.message_id, rec.sequence, rec.status,
            owner_raw;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION ingest_callback(p_raw_id uuid, p_provider text, p_method text, p_path text, p_query text, p_headers jsonb, p_body bytea, p_remote_addr text, p_received_at timestamp with time zone, p_outcome text, p_error text, p_events jsonb) RETURNS TABLE(event_id text, inserted boolean, message_id uuid, sequence integer, recipient_status text, raw_outcome text)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    stored record;
    given_count integer := 0;
    new_count integer := 0;
    final_outcome text := p_outcome;
BEGIN
    SELECT r.outcome INTO final_outcome FROM raw_callbacks r
    WHERE r.id = p_raw_id AND r.received_at = p_received_at;
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
    ON CONFLICT (id, received_at) DO NOTHING;
    RETURN QUERY SELECT NULL::text, false, NULL::uuid, NULL::integer, NULL::text, final_outcome;
END
$$;

CREATE OR REPLACE FUNCTION ingest_callbacks(p_ids uuid[], p_providers text[], p_methods text[], p_paths text[], p_queries text[], p_headers jsonb[], p_bodies bytea[], p_remote_addrs text[], p_received_at timestamp with time zone[], p_outcomes text[], p_errors text[], p_events jsonb) RETURNS TABLE(raw_id uuid, event_id text, inserted boolean, message_id uuid, sequence integer, recipient_status text, raw_outcome text)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    replayed uuid[];
    stored record;
    inserted_raws uuid[] := '{}';
    earliest timestamptz;
    latest timestamptz;
BEGIN
    -- The callbacks' own times bound the search to their partitions (a day each).
    SELECT min(t), max(t) INTO earliest, latest FROM unnest(p_received_at) AS t;
    SELECT coalesce(array_agg(r.id), '{}') INTO replayed
    FROM raw_callbacks r
    WHERE r.id = ANY(p_ids) AND r.received_at BETWEEN earliest AND latest;
    RETURN QUERY SELECT r.id, NULL::text, false, NULL::uuid, NULL::integer, NULL::text,
        r.outcome
    FROM raw_callbacks r
    WHERE r.id = ANY(replayed) AND r.received_at BETWEEN earliest AND latest;

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
    ON CONFLICT (id, received_at) DO NOTHING
    RETURNING r.id, NULL::text, false, NULL::uuid, NULL::integer, NULL::text, r.outcome;
END
$$;
